"""Input and output paths, and atomic output.

Files are written atomically: to a temporary ``.<OUT>.necoda-tmp-<pid>`` in OUT's directory, fsync'ed and
renamed over OUT only when complete; the temporary is removed on any error, Ctrl-C, SIGTERM or SIGHUP, and stale
temporaries of dead processes (SIGKILL) are removed by the next run for the same OUT.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from pathlib import Path

import h5py

TMP_MARK = ".necoda-tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_pattern(out: Path) -> re.Pattern:
    return re.compile(re.escape("." + out.name + TMP_MARK) + r"(\d+)(?:-\d+)?$")


def clean_stale_temps(out: Path) -> list[Path]:
    """Remove temporaries left for ``out`` by processes that no longer exist (e.g. after SIGKILL)."""
    removed = []
    pat = temp_pattern(out)
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pat.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def check_paths(src, dst, overwrite: bool = False) -> tuple[Path, Path]:
    src = Path(src)
    dst = Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"input file {src} does not exist")
    if not src.is_file():
        raise ValueError(f"input {src} is not a file")
    if not h5py.is_hdf5(src):
        raise ValueError(f"input file {src} is not an HDF5/NWB file")
    if os.path.realpath(src) == os.path.realpath(dst) or (dst.exists() and os.path.samefile(src, dst)):
        raise ValueError(f"refusing to overwrite the input file {src} (input and output are the same file)")
    if dst.is_dir():  # before the --overwrite advice: --overwrite never replaces a folder
        raise IsADirectoryError(f"output {dst} is a directory (give the path of the file to write)")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"output {dst} exists (use --overwrite to replace it)")
    if not dst.parent.exists():
        raise FileNotFoundError(f"output folder {dst.parent} does not exist")
    if not dst.parent.is_dir():
        raise NotADirectoryError(f"output folder {dst.parent} is not a folder")
    return src, dst


def open_input(path) -> h5py.File:
    """``h5py.File(path, "r")``; an error names the file, and a lock held by a writer says so."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        hint = ""
        if "lock" in str(e).lower():
            hint = (" (another program has it open for writing: close it there, or if you are sure nothing "
                    "writes it any more, set HDF5_USE_FILE_LOCKING=FALSE)")
        raise OSError(f"cannot open {path}{hint}: {e}") from e


class _Terminated(SystemExit):
    pass


@contextlib.contextmanager
def _sigterm_as_exit():
    """Turn SIGTERM and SIGHUP (terminal or ssh session closed) into an exception (so cleanup runs)
    while the block runs in the main thread; a signal already ignored (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated(128 + signum)

    old = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def atomic_output(dst: Path):
    """Yield a temporary path next to ``dst``; on success fsync it and rename it to ``dst``."""
    dst = Path(dst)
    clean_stale_temps(dst)
    tmp = dst.parent / f".{dst.name}{TMP_MARK}{os.getpid()}"
    if tmp.exists():
        tmp.unlink()
    ok = False
    try:
        with _sigterm_as_exit():
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dst)
            ok = True
            with contextlib.suppress(OSError):
                dfd = os.open(dst.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
    finally:
        if not ok:
            with contextlib.suppress(OSError):
                tmp.unlink()
