"""The ``necoda`` command. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; register it in COMMANDS (name, module, help)."""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from concurrent.futures import BrokenExecutor

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
    """The ``necoda`` program (``argv``: the words after it; None: this process's command line). As the
    program (argv None), a failed command ends the process itself, past HDF5's own shutdown: see
    :func:`_end_failed_program`."""
    if argv is not None:
        return _main(argv)
    with _HeldDeallocErrors() as held:
        rc = _main(argv)
        if rc != 0:  # they followed from the failure just reported
            _end_failed_program(rc)
        held.release()
    return rc


class _HeldDeallocErrors:
    """Hold back what h5py prints when freeing an object after HDF5 failed to write its file (a full disk):
    each such object prints a traceback twice ("Can't decrement id ref count (file write failed ...)"),
    dozens of lines before the one-line error the command reports. A failed command drops them (its error
    says what happened); a command that succeeds anyway prints them when it ends (:meth:`release`)."""

    def __enter__(self):
        self.held: list[str] = []
        self.prev = sys.excepthook, sys.unraisablehook
        sys.excepthook, sys.unraisablehook = self._excepthook, self._unraisablehook
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    @staticmethod
    def _ours(e) -> bool:
        return isinstance(e, RuntimeError) and "decrement id ref count" in str(e)

    def _excepthook(self, t, v, tb):  # h5py (Cython) prints a failing __dealloc__'s traceback through it
        if not self._ours(v):
            return self.prev[0](t, v, tb)
        import traceback

        self.held.append("".join(traceback.format_exception(t, v, tb)))

    def _unraisablehook(self, u):
        if not self._ours(u.exc_value):
            return self.prev[1](u)
        import traceback

        self.held.append(f"Exception ignored in: {u.object!r}\n"
                         + "".join(traceback.format_exception(u.exc_type, u.exc_value, u.exc_traceback)))

    def release(self) -> None:
        """Print what was held back (to stderr), and stop holding."""
        sys.excepthook, sys.unraisablehook = self.prev
        for text in self.held:
            sys.stderr.write(text)
        self.held.clear()


def _end_failed_program(rc: int) -> None:
    """End this process with ``rc`` after Python's exit handlers (worker pools, logging, temporary folders,
    output buffers) but without HDF5's: after a failed close (a full disk while writing an NWB file) HDF5
    2.0 frees the object but keeps its id, and its shutdown (``H5_term_library``, a C exit handler that runs
    after Python's) closes that id again and crashes the process (SIGSEGV, exit 139) after the error had
    been reported. A failed command has nothing left for HDF5 to write: its outputs were temporaries, removed
    already; its inputs were open for reading."""
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # a closed or broken stream: nothing more can be said on it
                pass
        os._exit(rc)


def _main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(_normalized(sys.argv[1:] if argv is None else [str(a) for a in argv]))
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
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (FileNotFoundError, FileExistsError, ValueError, LookupError, OSError) as e:  # LookupError: KeyError, ModelNotFound
        print(f"necoda {args.command}: error: {error_message(e, _output_of(args))}", file=sys.stderr)
        return 1
    except BrokenExecutor as e:  # a worker process killed (the kernel's OOM killer, a signal): one line too
        hint = "; try fewer --workers" if hasattr(args, "workers") else ""
        print(f"necoda {args.command}: error: a worker process died (killed, e.g. by the system when memory ran "
              f"out{hint}); the run was stopped ({e})", file=sys.stderr)
        return 1
    except RuntimeError as e:  # h5py raises RuntimeError for some failed writes (a full disk while closing)
        if io_errno(e) is None:
            raise
        print(f"necoda {args.command}: error: {error_message(e, _output_of(args))}", file=sys.stderr)
        return 1


def _normalized(argv: list[str]) -> list[str]:
    """``argv`` with the words after the command passed through the command module's
    ``normalize_argv(words)`` when it has one (decompress: ``--gzip`` with no level right after it)."""
    modules = {name: modname for name, modname, _ in COMMANDS}
    for i, tok in enumerate(argv):
        if tok in modules:
            fix = getattr(sys.modules.get(modules[tok]), "normalize_argv", None)
            return argv[:i + 1] + fix(argv[i + 1:]) if fix else argv
        if not tok.startswith("-"):
            break
    return argv


_HDF5_ERRNO = re.compile(r"\berrno = (\d+)")
_HDF5_DETAIL = re.compile(r"\((?:file (?:write|read) failed|unable to extend file|[^()]*\berrno = \d+)", re.I)
#: the failure was writing (an output), not e.g. opening an input
_WRITING = re.compile(r"write failed|unable to extend|close", re.I)
#: the hidden temporary ``necoda compress``/``decompress`` write (nwb/atomic.py): ``.OUT.necoda-tmp-PID``
_HIDDEN_TEMPORARY = re.compile(r"(?:^|(?<=[/'\"\s]))\.([^/'\"\s]+)\.necoda-tmp-\d+(?=$|['\"\s,:;)])")


def io_errno(e: BaseException) -> int | None:
    """The errno of an I/O failure: ``e.errno``, or the one HDF5 names in the message h5py gives a
    RuntimeError (``... errno = 28, error message = 'No space left on device' ...``); None if neither."""
    err = getattr(e, "errno", None)
    if isinstance(err, int) and err > 0:
        return err
    m = _HDF5_ERRNO.search(str(e))
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def error_message(e: BaseException, output=None) -> str:
    """One line for the error ``e``: HDF5's multi-line I/O detail (time, descriptor, buffer address, the
    hidden temporary's name) becomes its summary and the system's reason, e.g. ``writing out.nwb: Can't
    close file: No space left on device``; ``output`` (the file the command writes) is named when the
    failure is a write. A permission error names the file (``cannot open IN: permission denied``) or the
    folder that cannot be written."""
    text = str(e)
    err = io_errno(e)
    m = _HDF5_DETAIL.search(text)
    denied = _permission_message(e, text, err, m is not None)
    if denied is not None:
        return denied
    if err is not None and m is not None:
        lead = _ERRNO_PREFIX.sub("", text[:m.start()]).split(", errno =")[0].strip().rstrip(":,")
        reason = os.strerror(err)
        text = f"{lead}: {reason}" if lead else reason
        # whether HDF5 failed writing: judged on HDF5's own text (the part from its "[Errno N]"), not on a
        # hint of ours before it ("... close it there ..." is no failed close)
        hdf5_part = str(e)[str(e).rfind("[Errno"):] if "[Errno" in str(e) else str(e)
        if output is not None and str(output) not in text and _WRITING.search(hdf5_part):
            text = f"writing {output} failed: {text}"
    text = _HIDDEN_TEMPORARY.sub(lambda m: m.group(1), text)  # .OUT.necoda-tmp-123 -> OUT
    return " ".join(text.split())


_ERRNO_PREFIX = re.compile(r"\[Errno \d+\]\s*")
#: the file HDF5 names in an I/O error: ``(unable to open file: name = 'x.nwb', errno = 13, ...``
_HDF5_NAME = re.compile(r"\bname = '([^']*)'")


def _permission_message(e: BaseException, text: str, err, hdf5: bool) -> str | None:
    """``cannot open FILE: permission denied`` (an input), ``cannot write FILE: folder F is not writable``
    (a new output), for an EACCES/EPERM error that names its file (HDF5's raw text, or an OSError's
    filename: ``[Errno 13] Permission denied: '...'``); None for any other error, and for messages already
    written for people (no file name attached)."""
    import errno

    if err not in (errno.EACCES, errno.EPERM):
        return None
    name = getattr(e, "filename", None)
    if name is None and hdf5:
        m = _HDF5_NAME.search(text)
        name = m.group(1) if m else None
    if not name:
        return None
    name = _HIDDEN_TEMPORARY.sub(lambda m: m.group(1), os.fsdecode(name))  # the hidden temporary -> OUT
    folder = os.path.dirname(name) or "."
    if not os.path.lexists(name):  # a new file: its folder refused it
        if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
            return f"cannot write {name}: folder {folder} is not writable (permission denied)"
        return f"cannot write {name}: permission denied"
    if os.path.isdir(name):
        return f"cannot open {name}: permission denied (a folder)"
    return f"cannot open {name}: permission denied"


def _output_of(args):
    for name in ("output", "out"):
        v = getattr(args, name, None)
        if isinstance(v, (str, os.PathLike)):
            return v
    return None


if __name__ == "__main__":
    sys.exit(main())
