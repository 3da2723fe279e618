"""The ``necoda`` subcommands (one module each) and the argument checks they share."""
from __future__ import annotations


def check_dtype(value, option: str = "--dtype") -> None:
    """A clear one-line error for a data type numpy does not know (None: not given)."""
    import numpy as np

    if value is None:
        return
    try:
        np.dtype(value)
    except TypeError:
        raise ValueError(f"{option}: unknown data type {value!r}") from None


def whole_number(minimum: int, meaning: str = ""):
    """An argparse type: an integer of at least ``minimum`` (``meaning`` says what the minimum means)."""
    def parse(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum}{meaning} or more, not {value}")
        return value

    return parse


#: argparse type of counts such as ``--workers``: an integer of at least 1 (0 or -2 were taken as 1)
positive_int = whole_number(1)


def missing(packages) -> list[str]:
    """The ones of ``packages`` that cannot be imported here (checked without importing them), so that a
    command can say what to install before any work instead of failing halfway with a traceback."""
    import importlib.util

    out = []
    for name in packages:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: sys.modules[name] is None (import blocked)
            found = False
        if not found:
            out.append(name)
    return out


def check_learned_bound(max_error, max_error_noise, exact: str) -> None:
    """Refuse a learned-mode safeguard bound below one raw unit (``--max-error`` < 1, ``--max-error-noise``
    0): the safeguard codes the residual within the bound less a one-unit margin (docs/LEARNED.md), so every
    chunk would be stored raw, a file larger than its input. ``exact``: the option that asks for a copy."""
    if max_error_noise == 0 or (max_error is not None and max_error < 1):
        raise ValueError("the learned mode's safeguard needs a bound of at least one raw unit (--max-error >= 1, "
                         "or --max-error-noise > 0: K times the chunk's noise sigma, itself at least one unit); "
                         f"for an exact copy use {exact}")


#: what every command that writes says about the folder its output goes in (--help and errors)
OUTPUT_FOLDER_RULE = "its folder must exist (missing folders are not created: a mistyped path is an error)"


def check_output_folder(path, name: str | None = None) -> None:
    """The rule every command that writes (compress, decompress, simulate, demo, evaluate --report, bench
    --out, train --out) follows: the folder that is to hold the output ``path`` (a file or a folder the
    command creates) must already exist and be writable; missing folders are never created, so that a typo
    in a path is an error rather than a new folder tree. Checked before any work: an error names ``name``
    (default ``path``) and the folder."""
    import errno
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    name = str(path) if name is None else name
    folder = path.parent
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if os.path.lexists(existing) and not existing.is_dir():  # a file where a folder should be
        raise NotADirectoryError(f"cannot write {name}: {existing} is not a folder")
    if existing != folder:
        raise FileNotFoundError(f"cannot write {name}: folder {folder} does not exist (create it first; "
                                "missing folders are not created)")
    try:  # os.access is not enough: as root it says yes to read-only mounts and /proc
        fd, probe = tempfile.mkstemp(prefix=".necoda-probe-", dir=folder)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            raise PermissionError(f"cannot write {name}: folder {folder} is not writable") from None
        return  # e.g. ENOSPC: the write reports it
    os.close(fd)
    os.unlink(probe)


def note_stale_temps(out) -> None:
    """After a command wrote ``out``: name (on stderr) the temporaries that interrupted runs for *other*
    outputs left in the same folder (``nwb.atomic.stale_temps_elsewhere``; a run for OUT removes its own)."""
    import sys
    from pathlib import Path

    from ..nwb.atomic import stale_temps_elsewhere

    found = stale_temps_elsewhere(Path(out))
    if not found:
        return

    def size(p: Path) -> int:
        try:
            return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        except OSError:
            return 0

    shown = ", ".join(f"{p.name} ({size(p) / 1e9:.2g} GB)" for p in found[:5]) + \
        (f" and {len(found) - 5} more" if len(found) > 5 else "")
    print(f"note: {Path(out).parent or '.'} holds what interrupted runs for other outputs left: {shown}; remove "
          "them (a run for the same output removes its own)", file=sys.stderr)
