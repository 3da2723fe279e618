"""Input and output paths, and atomic output.

Files are written atomically: to a temporary ``.<OUT>.necoda-tmp-<pid>`` in OUT's directory, fsync'ed and
published as OUT only when complete (:func:`publish`): without ``overwrite`` by a hard link that fails when
OUT exists, also when it appeared while the run was writing (another program, or a second run writing the
same OUT: that file is left as it is and this run's output is not kept), with it by a rename over OUT. The
temporary is removed on any error, Ctrl-C, SIGTERM or SIGHUP, and stale temporaries of dead processes
(SIGKILL) are removed by the next run for the same OUT; compress and decompress name those other
outputs' runs left in the same folder (:func:`stale_temps_elsewhere`).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
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
    """Remove temporaries (files or folders ``.<OUT>.necoda-tmp-<pid>[-n]``) left for ``out`` by processes that
    no longer exist (e.g. after SIGKILL)."""
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
                if p.is_dir() and not p.is_symlink():  # a folder being built (train, evaluate --report)
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
    return removed


_ANY_TEMP = re.compile(r"^\.(.+)" + re.escape(TMP_MARK) + r"(\d+)(?:-\d+)?$")


def stale_temps_elsewhere(out: Path) -> list[Path]:
    """Temporaries next to ``out`` that runs for *other* outputs left behind (their process is gone here, e.g.
    after SIGKILL): :func:`clean_stale_temps` removes a temporary only for the output it was meant to become,
    so these stay until a run for that name. Listed, never removed: on a folder shared between machines the
    process id says nothing about another machine's run."""
    pat = temp_pattern(out)
    try:
        entries = sorted(Path(out).parent.iterdir())
    except OSError:
        return []
    return [p for p in entries if (m := _ANY_TEMP.match(p.name)) and not pat.match(p.name)
            and not _pid_alive(int(m.group(2)))]


#: errors of os.link where the file system has no hard links (FAT/exFAT, some network volumes)
_NO_HARD_LINKS = {errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EXDEV, errno.EMLINK,
                  getattr(errno, "ENOTSUP", errno.EPERM), getattr(errno, "EOPNOTSUPP", errno.EPERM)}


def publish(tmp, path, overwrite: bool = False) -> None:
    """Give the complete temporary ``tmp`` the name ``path`` (same folder). ``overwrite``: rename it over
    whatever ``path`` is. Without it never replace anything, also not what appeared at ``path`` while the
    temporary was written (nor a dangling symbolic link): a hard link then the temporary's name removed,
    FileExistsError (naming ``path``; ``tmp`` is left to the caller to remove) when ``path`` exists; where
    hard links are unsupported, ``path`` is first claimed by an exclusive create and the temporary renamed
    over that placeholder."""
    tmp, path = os.fspath(tmp), Path(path)
    if overwrite:
        os.replace(tmp, path)
        return
    exists = FileExistsError(f"{path} exists: it appeared while this run was writing it (another program or run "
                             f"created it) and was left as it is; this run's output was not kept")
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise exists from None
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            raise exists from None
        os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return
    with contextlib.suppress(OSError):
        os.unlink(tmp)


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
    if os.path.lexists(dst) and not overwrite:  # a dangling symbolic link counts: it would be replaced
        what = "" if dst.exists() else f" (a symbolic link to {os.readlink(dst)}, which does not exist)"
        raise FileExistsError(f"output {dst} exists{what} (use --overwrite to replace it)")
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
def sigterm_as_exit():
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


def claim_temp(dst: Path, folder: bool = False) -> Path:
    """Create (an empty file, or with ``folder`` an empty folder) and return this process's temporary for
    ``dst``: ``.<OUT>.necoda-tmp-<pid>``, or ``...-<pid>-<n>`` when that name is taken (another thread of
    this process writing the same OUT: each run keeps its own temporary, and the later one to finish finds
    OUT there). :func:`clean_stale_temps` removes it once this process is gone."""
    base = dst.parent / f".{dst.name}{TMP_MARK}{os.getpid()}"
    for n in range(1, 1000):
        tmp = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            if folder:
                tmp.mkdir()
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"too many temporaries for {dst} in {dst.parent} (names {base.name}-N)")


@contextlib.contextmanager
def atomic_output(dst: Path, overwrite: bool = False):
    """Yield a temporary path next to ``dst``; on success fsync it and :func:`publish` it as ``dst``
    (``overwrite``: replacing what is there; without it a ``dst`` that exists by then, also one that
    appeared meanwhile, is a FileExistsError and the temporary is removed)."""
    dst = Path(dst)
    clean_stale_temps(dst)
    tmp = claim_temp(dst)
    ok = False
    try:
        with sigterm_as_exit():
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            publish(tmp, dst, overwrite)
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


def replace_folder(new: Path, dst: Path) -> None:
    """Put the complete folder ``new`` (a temporary next to ``dst``) at ``dst``, replacing the folder there
    (the caller decided it may): the old one is renamed aside first and removed last, and comes back if
    the second rename fails."""
    if not os.path.lexists(dst):
        os.rename(new, dst)
        return
    old = dst.parent / f".{dst.name}.necoda-old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(dst, old)
    try:
        os.rename(new, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.unlink(old)
