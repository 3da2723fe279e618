"""Flush the HDF5 files this process has open for writing when the interpreter exits, while Python runs.

The necoda HDF5 filter runs its codecs in Python. A script that writes a necoda dataset and exits without
closing the file leaves the last chunks in HDF5's chunk cache. HDF5 writes them when it closes the file
during interpreter shutdown, and by then the filter can no longer call Python. Those chunks were lost: the
dataset read back as fill values, and only a message on stderr said so. An ``atexit`` handler runs before
that shutdown. It flushes every HDF5 file open for writing (``H5Fflush``), so the filter compresses the
cached chunks while it still can.

Importing ``necoda_filter`` registers the handler. So does the HDF5 plugin, when a dataset is created with
the filter: its ``set_local`` callback imports the package, even in a process that uses the plugin
through ``HDF5_PLUGIN_PATH`` alone. Files closed normally are not touched, nor, in a forked child, the
files it inherited from its parent (they are the parent's to write).

After a failed close the handler touches no HDF5 id at all. When closing a file or dataset fails (a full
disk, or this filter failing to encode a cached chunk, e.g. for a model that is not installed), HDF5 2.0
frees the object but keeps its id: the id still reads as valid, and any call that reaches the object
(``H5Iget_file_id``, ``H5Fget_intent``, a flush, which walks every open dataset) crashes the process
(SIGSEGV after the error had been reported). Nothing HDF5 exposes tells such an id from a good one, so
the failures are noted where they happen — h5py's ``File.close`` raising (:func:`watch_h5py`) and the
filter's encode failing (``_bridge.filter`` calls :func:`note_failure`) — and the handler then leaves every
file to HDF5's own shutdown.
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import sys

log = logging.getLogger("necoda_filter")

#: files open when this process was forked: the parent's to write, never flushed from the child
_inherited: set = set()

#: why HDF5's ids can no longer be trusted in this process (a close or an encode failed), or None
_broken: str | None = None


def note_failure(what: str) -> None:
    """Record that closing an HDF5 object failed in this process (or may have: the filter failed to encode
    a chunk, which HDF5 may have been flushing for a close): the exit handler then touches no id."""
    global _broken
    if _broken is None:
        _broken = what


def watch_h5py(h5py) -> None:
    """Note every failing ``h5py.File.close`` (:func:`note_failure`); idempotent. Called when the filter is
    registered (``_plugin``), once h5py is imported."""
    File = getattr(getattr(getattr(h5py, "_hl", None), "files", None), "File", None)
    close = getattr(File, "close", None)
    if close is None or getattr(close, "_necoda_watch", False):
        return

    @functools.wraps(close)
    def watched_close(self):
        try:
            return close(self)
        except BaseException as e:
            note_failure(f"closing an HDF5 file failed ({type(e).__name__}: {e})")
            raise

    watched_close._necoda_watch = True
    File.close = watched_close


def flush_open_files() -> int:
    """Flush every HDF5 file h5py's library has open for writing (through a file, group, dataset or other
    object id); returns how many files were flushed."""
    h5py = sys.modules.get("h5py")
    if h5py is None:  # no h5py in this process: no files of ours to flush
        return 0
    if _broken is not None:  # HDF5 may hold ids of freed objects: touching any of them can crash
        log.debug("necoda: not flushing HDF5 files at exit: %s earlier in this process", _broken)
        return 0
    try:
        # every open object, not only file ids: `d = h5py.File(p, "w").create_dataset(...)` keeps the file
        # open through its dataset alone; each file is flushed once, through any of its objects
        objs = h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_ALL)
    except Exception:  # HDF5 already shut down, or h5py half torn down
        return 0
    files = _open_files(h5py, objs)
    done = 0
    for fileno, fid in files.items():
        if fileno in _inherited:
            continue
        try:
            if not fid.valid or not fid.get_intent() & h5py.h5f.ACC_RDWR:
                continue
            mpio = getattr(h5py.h5fd, "MPIO", None)
            if mpio is not None and fid.get_access_plist().get_driver() == mpio:
                continue  # a collective flush at one rank's exit could wait forever for the others
            h5py.h5f.flush(fid, h5py.h5f.SCOPE_LOCAL)
            done += 1
        except Exception as e:  # say so: the chunks of this file may not be written
            name = getattr(fid, "name", b"?")
            log.error("necoda: could not flush HDF5 file %r at exit: %s: %s", name, type(e).__name__, e)
    return done


def _open_files(h5py, objs) -> dict:
    """fileno -> a FileID, for the files the objects ``objs`` belong to."""
    files = {}
    for obj in objs:
        try:
            fid = obj if isinstance(obj, h5py.h5f.FileID) else h5py.h5i.get_file_id(obj)
            files.setdefault(fid.fileno, fid)
        except Exception:
            continue
    return files


def _after_fork_in_child() -> None:
    h5py = sys.modules.get("h5py")
    if h5py is not None and _broken is None:
        try:
            _inherited.update(_open_files(h5py, h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_ALL)))
        except Exception:
            pass


atexit.register(flush_open_files)
if "h5py" in sys.modules:
    watch_h5py(sys.modules["h5py"])
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
