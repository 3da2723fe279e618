"""The ``necoda`` command. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; register it in COMMANDS (name, module, help)."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: list[tuple[str, str, str]] = [
    ("demo", "necoda_filter.commands.demo", "write an NWB file with compression='necoda' from built-in sample data, read it back in a fresh process, print ratio and speed"),
    ("info", "necoda_filter.commands.info", "per-dataset filter, mode, model and ratio of an HDF5/NWB file"),
    ("compress", "necoda_filter.commands.compress", "copy an NWB file recompressing its imaging/ephys data with necoda (atomic, streamed, parallel; provenance attributes)"),
    ("decompress", "necoda_filter.commands.decompress", "copy an NWB file back to plain HDF5 storage (optionally gzip) readable without the plugin"),
    ("evaluate", "necoda_filter.commands.evaluate", "fidelity of a recompressed NWB file against its original: metrics, PNG figures, Markdown/JSON report"),
    ("bench", "necoda_filter.commands.bench", "compare necoda modes with reference codecs (zstd, FLAC, JPEG-XL, SZ3, ZFP, H.264/5, AV1, ...) on your data: ratio, speed, error, ROI/spike fidelity; table, JSON and plots"),
    ("train", "necoda_filter.commands.train", "train the learned mode's model from the simulator (plus recordings) and export it to ONNX (needs the [train] extra)"),
    ("simulate", "necoda_filter.commands.simulate", "write a simulated calcium-imaging movie or Neuropixels-like recording with its ground truth (footprints, traces, spikes) to .nwb (as NWB series; `both`: movie and recording in one file) or .npz/.npy"),
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="necoda", description="necoda-filter: compression for neuroscience data in HDF5, NWB and Zarr")
    p.add_argument("--version", action="version", version=f"necoda-filter {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname, help_ in COMMANDS:
        try:
            mod = importlib.import_module(modname)
        except ImportError as e:  # one command's missing dependency must not take the others down
            sp = sub.add_parser(name, help=f"{help_} [unavailable: {e}]", description=help_)
            sp.set_defaults(_module=modname, _import_error=e)
            continue
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_module=modname)
        mod.add_arguments(sp)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not getattr(args, "command", None):
        p.print_help()
        return 2
    if getattr(args, "_import_error", None) is not None:
        print(f"necoda {args.command}: unavailable: {args._import_error}", file=sys.stderr)
        return 1
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("necoda: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # whoever read our output stopped (`necoda info FILE | head`): not an error to report. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again (Python's documented recipe).
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, OSError) as e:
        print(f"necoda {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
