"""``necoda bench DATA``: compare necoda's modes with reference codecs on your own data."""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from . import check_dtype, check_output_folder

EPILOG = """\
DATA is one of
  movie.npy | movie.npz [--key K] | movie.tif       T x H x W = imaging, T x C = ephys (channels last)
  file.nwb:/acquisition/TwoPhotonSeries/data        any HDF5/NWB dataset (rate read from the file); a file
                                                    given without :/path lists its datasets
  recording.raw --dtype int16 --channels 4 --fs 15000   interleaved raw binary
  sim:imaging[:n_frames=300,height=128,...]         a fresh simulation with ground truth
  sim:ephys[:duration_s=3,n_channels=384,...]

--codecs takes 'all' (default) or a comma list of families: necoda (every mode; or necoda-lossless,
necoda-bounded, necoda-learned), zstd, lzma, blosc, pcodec, flac, mtscomp, jpegxl, jpeg2k, anscombe,
sz3, zfp, h264, h265, av1. Families that do not apply to the data kind are left out; codecs whose
package is missing are reported as skipped.

Writes OUT/results.json, OUT/results.md (the table) and OUT/rate_distortion.png.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("data", metavar="DATA", help="data file, HDF5 'file:/dataset', or sim:imaging|sim:ephys[:k=v,...]")
    p.add_argument("--codecs", default="all", help="'all' or a comma-separated list of codec families (see below)")
    p.add_argument("--out", default=None, help="output folder (default: ./necoda-bench-<data name>); the folder "
                                               "that holds it must exist (missing folders are not created: a "
                                               "mistyped path is an error)")
    p.add_argument("--key", default=None,
                   help="array name inside an .npz file (default: 'movie' or 'data' when just one of them is "
                        "there, else the only array)")
    p.add_argument("--dtype", default=None, help="sample type of a raw binary file, e.g. int16")
    p.add_argument("--channels", type=int, default=None, help="channel count of a raw binary file")
    p.add_argument("--fs", type=float, default=None,
                   help="sampling rate in Hz (ephys) or frame rate (imaging); default from the file or simulation")
    p.add_argument("--chunk-frames", type=int, default=None,
                   help="chunk length along time: frames (imaging, default 64) or samples (ephys, default ~1 s)")
    p.add_argument("--max-frames", "--max-samples", dest="max_frames", type=int, default=None,
                   help="only use the first N frames/samples")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


OUTPUT_NAMES = ("results.json", "results.md", "rate_distortion.png")


def _check_args(args) -> None:
    """Reject bad values with one clear line before any work."""
    for name, v, ok, what in (("--max-frames", args.max_frames, args.max_frames is None or args.max_frames >= 1, ">= 1"),
                              ("--chunk-frames", args.chunk_frames, args.chunk_frames is None or args.chunk_frames >= 1,
                               ">= 1"),
                              ("--channels", args.channels, args.channels is None or args.channels >= 1, ">= 1"),
                              ("--fs", args.fs, args.fs is None or (args.fs > 0 and args.fs != float("inf")), "> 0")):
        if not ok:
            raise ValueError(f"{name} must be {what}, got {v}")
    check_dtype(args.dtype)
    _check_codecs(args.codecs)
    if args.out is not None:
        _check_out(Path(args.out))


def _check_codecs(codecs: str) -> None:
    """An unknown codec family is named before the data is loaded (it was reported after)."""
    from .. import anchors, bench
    from ..modes import MODE_TABLE

    families, necoda_modes = bench.parse_codecs(codecs)
    unknown = [f for f in families or () if f not in anchors.FAMILIES]
    unknown += [f"necoda-{m}" for m in sorted(necoda_modes or ()) if m not in MODE_TABLE or m == "raw"]
    if unknown:
        raise ValueError(f"--codecs: unknown codec famil{'ies' if len(unknown) > 1 else 'y'} "
                         f"{', '.join(map(repr, unknown))}; choose from {', '.join(anchors.FAMILIES)} (necoda-MODE: "
                         f"{', '.join('necoda-' + m for m in MODE_TABLE if m != 'raw')}) or 'all'")


def _check_out(out: Path) -> None:
    """OUT is a folder that exists, or can be created in a folder that exists, and can be written: checked
    before the bench runs (an unwritable --out failed only after the whole benchmark)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder")
    check_output_folder(out, f"--out {out}")  # the folder OUT is created in (or OUT's parent) must exist
    if out.is_dir():  # an earlier OUT: the results are written into it
        check_output_folder(out / OUTPUT_NAMES[0], f"--out {out}")


def _check_not_input(bench, spec: str, out: Path) -> None:
    """The outputs must never replace the input file."""
    h5 = bench._split_h5(spec)
    src = Path(h5[0] if h5 else spec)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output folder {out} exists and is not a folder")
    for n in OUTPUT_NAMES:
        if src.is_file() and (out / n).exists() and os.path.samefile(src, out / n):
            raise ValueError(f"output {out / n} is the input {spec}; choose another --out")


def _write_atomic(bench, res, out: Path, plots: bool) -> None:
    """Write OUT/results.* via a temporary folder inside OUT, each file renamed into place when complete."""
    from ..nwb.atomic import claim_temp, clean_stale_temps, sigterm_as_exit

    out.mkdir(exist_ok=True)  # its folder exists (checked up front: missing folders are not created)
    marker = out / "results"  # the temporary is OUT/.results.necoda-tmp-<pid>: a killed run's is removed
    clean_stale_temps(marker)
    tmp = claim_temp(marker, folder=True)
    try:
        with sigterm_as_exit():  # SIGTERM/SIGHUP: an exit that runs the clean-up below
            for p in bench.write_outputs(res, tmp, plots=plots):
                os.replace(p, out / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args) -> int:
    from .. import bench
    logging.basicConfig(level=logging.WARNING, format="necoda bench: %(message)s")
    _check_args(args)
    try:
        data = bench.load_data(args.data, key=args.key, dtype=args.dtype, channels=args.channels, fs=args.fs,
                               max_frames=args.max_frames)
    except TypeError as e:  # sim:imaging:bogus=1 -> unexpected keyword argument
        if not args.data.startswith("sim:"):
            raise
        raise ValueError(f"bad simulation parameter in {args.data!r}: {e}") from None
    out = Path(args.out) if args.out else Path(f"necoda-bench-{data.name}")
    if not args.out:
        _check_out(out)
    _check_not_input(bench, args.data, out)
    print(f"necoda bench: {data.kind} {data.array.shape} {data.array.dtype} from {data.source} -> {out}/",
          file=sys.stderr)
    res = bench.run_bench(data, args.codecs, chunk=args.chunk_frames, out_dir=None,
                          progress=not args.no_progress, plots=not args.no_plots)
    _write_atomic(bench, res, out, plots=not args.no_plots)
    print(bench.describe(res))
    print()
    print(bench.format_table(res))
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}"
          + ("" if args.no_plots else f", {out / 'rate_distortion.png'}"), file=sys.stderr)
    return 0


if __name__ == "__main__":  # python -m necoda_filter.commands.bench DATA ... (same as `necoda bench`)
    _p = argparse.ArgumentParser(prog="necoda bench", description=__doc__)
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
