"""``necoda_filter.read(dataset, selection)``: batched, parallel decode of many necoda chunks.

Reading a whole movie through h5py decodes its chunks one after the other in the filter, inside HDF5.
:func:`read` instead fetches the stored chunk bytes with ``read_direct_chunk`` (under h5py's lock, in the
thread that drives the decoders: the caller, or for the main thread a dispatcher thread, so that Ctrl-C
cannot land inside the pools' locking), decodes them in parallel with :func:`necoda_filter.chunk.decode`
and places each decoded chunk's selected part into the output array — a box of a learned chunk is
decoded straight into it, with no chunk-sized temporary, and a box spanning few frames from the latent
frames around it only (``chunk.decode_box``; one frame reads about 2× faster than through h5py, which
decodes every touched chunk whole). Values are identical to ``dataset[selection]``; two things to know:

* in a file open for writing, ``read_direct_chunk`` first flushes the dataset's chunk cache: a chunk
  cached dirty would be encoded now, and encoded *again* when a later write to it (the next frames of
  an acquisition) decodes, modifies and re-encodes it — for a lossy dataset the errors of each coding
  add up, and bounded mode's ``max_error`` no longer holds. So a dataset of a file open for writing
  whose filter mode (cd_values) is lossy or ``auto`` is read with plain ``dataset[selection]`` (the
  values written, from the cache); lossless and raw datasets of such a file are read chunk by chunk
  (their flush changes no value).
* ``read`` is not atomic against writes to the same dataset from other threads: h5py's own read is
  one ``H5Dread`` under h5py's lock, ``read`` takes that lock once per chunk, so a read running while
  another thread writes may return some chunks from before the write and some from after it.

Every stored chunk's header is checked against the dataset (element type kind and size, number of
samples, as the HDF5 filter does) before anything is decoded: a chunk that does not belong there raises
:class:`UnreadableChunk` (a ``CorruptChunk``, and an ``OSError`` like h5py's error) naming the chunk,
and so does a chunk HDF5 cannot read (damaged file); only a chunk never written reads as the fill value.

Parallelism: about half of a lossless/bounded chunk decode runs in pcodec, which holds the GIL (the
other half, the C prediction kernels called through ctypes, releases it), so threads alone scale to
about 1.3x. By default multi-chunk reads are therefore decoded in a persistent pool of worker processes
that write into an output array in shared memory — no decoded data is copied between processes. It is a
file in /dev/shm (else the temporary folder) without a name (``O_TMPFILE``, else unlinked as soon as it
is created), which the workers open through ``/proc/<reader pid>/fd/<fd>``, so nothing is left behind
even if the process is killed. Where the workers cannot open that (no ``/proc``; checked when the pool
starts) they open the file by its name ``necoda-read-<pid>-<id>``, unlinked when the read ends; such
files of processes killed during a read are removed when a later pool starts (any process's).
``executor="thread"`` uses a persistent thread pool instead (best for codecs that release the GIL, and on a busy
machine where the extra processes get no extra CPU), ``"serial"`` decodes in the calling thread — still
faster than h5py slicing, which copies every decoded chunk three more times. Reads touching less than
``PARALLEL_MIN_BYTES`` of chunks are decoded serially. Learned-mode datasets (recognised from the first
chunk's header) are decoded in threads: ONNX Runtime and the C kernels release the GIL, and each thread
runs a single-threaded ONNX session (``models.runtime.worker_threads``) so the threads never nest ORT
thread pools (a read touching fewer chunks than workers gives each ORT session the spare cores).

Selections: integers, slices with positive steps, ``...``, and increasing integer lists or boolean
masks on an axis — what h5py accepts. Anything else, datasets that are not chunked, or whose filter
pipeline is not exactly the necoda filter, fall back to plain ``dataset[selection]``.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import logging
import mmap
import os
import re
import sys
import tempfile
import threading
import uuid
import warnings
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait

import numpy as np

from . import chunk, cpus, modes
from .constants import FILTER_ID
from .mainthread import check as _check
from .mainthread import off_main_thread as _off_main_thread
from .mainthread import result as _result

LEARNED_MODE_ID = modes.MODE_IDS["learned"]

__all__ = ["read"]

#: "auto" decodes in parallel only when the chunks touched hold at least this many decoded bytes
PARALLEL_MIN_BYTES = 8 << 20

_pool_lock = threading.RLock()
_pool: ProcessPoolExecutor | None = None
_pool_workers = 0
#: decoder threads of executor="thread", kept between reads like the processes: each keeps its ONNX
#: output buffer (``runtime.scratch``) warm, so a read does not re-fault ~64 MB per thread
_tpool: ThreadPoolExecutor | None = None
_tpool_workers = 0
#: reads running on each pool. A pool that :func:`shutdown_pool` releases, or that a read with another
#: worker count replaces, while reads in other threads use it is stopped by the last of them: stopping it
#: under their feet cancelled their queued chunks (the reads failed, or in threads waited forever).
_users: dict = {}
_retired: set = set()


#: pools a forked child inherited: kept, never used or freed (see _after_fork_in_child)
_inherited: list = []


def _after_fork_in_child() -> None:
    """A forked child (``os.fork``, multiprocessing) has no copy of the pools' threads and processes:
    it starts its own pools (a read on the inherited ones waited forever) with a fresh lock. The
    inherited pool objects are kept, not dropped: freeing a ProcessPoolExecutor runs a callback that
    takes its shutdown lock, which the parent's pool-manager thread may have held at the fork — the child
    then hung in this handler (seen when a read replaced the pool: the new workers never started and
    the read waited forever)."""
    global _pool_lock, _pool, _tpool
    _inherited.extend(p for p in (_pool, _tpool, *_users, *_retired) if p is not None)
    _pool_lock = threading.RLock()
    _pool = _tpool = None
    _users.clear()
    _retired.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Fallback(Exception):
    pass


class UnreadableChunk(chunk.container.CorruptChunk, OSError):
    """A stored chunk that cannot be read as the dataset's chunk: its header names another element type or
    number of samples, its header is invalid, or it is stored unfiltered with the wrong size. h5py raises
    OSError for such a chunk; this is also a ``CorruptChunk``, what corrupt chunk payloads raise."""


def _exit_with_parent(parent: int) -> None:
    """Watchdog thread of a worker: exit when the parent process is gone (e.g. killed with SIGKILL).
    Forked workers inherit the parent's end of the task queue, so they would otherwise wait forever."""
    import time

    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _open_hdf5_files() -> frozenset:
    """(st_dev, st_ino) of the files HDF5 has open in this process (those on disk)."""
    import h5py

    keys = set()
    for fid in h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE):
        try:
            st = os.stat(fid.name)
        except (OSError, TypeError, ValueError):  # in memory, a Python file object, ...
            continue
        keys.add((st.st_dev, st.st_ino))
    return frozenset(keys)


def _close_inherited_files(keys) -> None:
    """Close a forked worker's copies of the parent's HDF5 file descriptors.

    HDF5 locks files with flock(), whose lock belongs to the open file description that a forked
    child shares: a persistent worker holding a copy would keep the file locked after the user closed it
    (``h5py.File(path, "a")`` fails with "unable to lock file" until :func:`shutdown_pool`). Workers never
    use these descriptors. ``keys`` are the files HDF5 had open when the pool was made; a file another
    thread opened while the workers were being forked is found by its flock() in ``/proc/locks``."""
    import stat

    keys = set(keys) | _flocked_files()
    if not keys:
        return
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(folder)
            break
        except OSError:
            continue
    else:
        return
    for name in names:
        fd = int(name)
        if fd < 3:
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in keys:
            os.close(fd)


def _flocked_files() -> set:
    """(st_dev, st_ino) of the files with a flock() lock, from ``/proc/locks`` (Linux; else empty)."""
    keys = set()
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return keys
    for line in lines:
        f = line.split()
        if len(f) < 6 or f[1] != "FLOCK":
            continue
        try:  # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF": major:minor in hex, then the inode
            major, minor, ino = f[5].split(":")
            keys.add((os.makedev(int(major, 16), int(minor, 16)), int(ino)))
        except ValueError:
            continue
    return keys


#: (worker process) the barrier its warm-up task waits on (see :func:`_new_process_pool`)
_warmup_barrier = None


def _worker_init(parent: int | None = None, hdf5_files=frozenset(), warmup_barrier=None):
    global _warmup_barrier
    import signal

    _warmup_barrier = warmup_barrier

    _close_inherited_files(hdf5_files)
    import necoda_filter  # noqa: F401 — registers the codecs
    from .models import runtime

    runtime.set_process_threads(1)  # one decoder per core: no nested ORT thread pools
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's cleanup handler
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="necoda-parent-watch").start()


def _open_shared(path, ident):
    """Open the parent's shared array ``path`` (:class:`SharedArray`) in a worker, checking it is that file
    (``ident``: its (st_dev, st_ino) in the parent): a ``/proc/<pid>/fd/<fd>`` seen through another PID
    namespace's /proc could name some other process's file, which decoded chunks would then overwrite (or
    an encoder would code in place of the parent's chunk)."""
    fh = open(path, "r+b")
    st = os.fstat(fh.fileno())
    if ident is not None and (st.st_dev, st.st_ino) != tuple(ident):
        fh.close()
        raise OSError(f"necoda: {path} is not the parent's shared array file in this worker")
    return fh


def _noop(probe=None):
    """Warm-up task: waits until every worker runs one, so each worker has run its initializer (closed
    its copies of the parent's HDF5 files) when the pool is handed out. Returns whether the worker could
    open ``probe``, the parent's unlinked file as ``/proc/<pid>/fd/<fd>`` (see :class:`SharedArray`)."""
    ok = False
    if probe is not None:
        try:
            with _open_shared(*probe):
                ok = True
        except OSError:
            pass
    if _warmup_barrier is not None:
        try:
            _warmup_barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass
    return ok


#: free space /dev/shm must have for a worker pool to start: multiprocessing keeps the pool's semaphores
#: (a page each) and the warm-up barrier's state there, the latter in a page it writes without reserving
POOL_SHM_MIN_BYTES = 1 << 20


def _check_pool_room() -> None:
    """OSError (ENOSPC) when /dev/shm has less than :data:`POOL_SHM_MIN_BYTES` free. Python's multiprocessing
    checks room for its shared state before making its semaphores, which then take that room: its first
    write then killed the process with SIGBUS (QA: 16 KiB free), no error anyone could handle."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:  # no /dev/shm: multiprocessing uses another folder
        return
    free = st.f_bavail * st.f_frsize
    if free < POOL_SHM_MIN_BYTES:
        raise OSError(errno.ENOSPC, f"no room in /dev/shm ({free // 1024} KiB free) for the semaphores of worker "
                                    "processes (free some space there; read()'s default executor and necoda "
                                    "compress/decompress work in one process meanwhile)")


def _new_process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes, all started now.

    "fork" where available: unlike "spawn"/"forkserver" it does not re-run the user's ``__main__``
    script in each worker (a script without an ``if __name__ == "__main__"`` guard would run again).
    The workers are forked at once (one warm-up task each) so they are created before the caller
    starts threads of its own (progress bars), and they only decode/encode bytes — they never touch
    HDF5 objects inherited from the parent, and close their copies of its HDF5 files' descriptors.
    """
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    _sweep_stale_outputs()
    _check_pool_room()
    # one warm-up task per worker, held at a barrier until all have started: otherwise one worker could
    # run several while another had not yet closed the parent's HDF5 files (another process or thread
    # then failed to open one of them for writing: "unable to lock file")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(os.getpid(), _open_hdf5_files() if method == "fork" else frozenset(),
                                         ctx.Barrier(workers)))
    probe = None
    try:
        try:
            probe = SharedArray((1,), np.uint8, by_fd=True)
        except OSError:
            pass
        ok = [f.result() for f in [pool.submit(_noop, probe and (probe.worker_path, probe.ident)) for _ in range(workers)]]
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if probe is not None:
            probe.close()
    # whether the workers open the shared output through /proc (unlinked at once) or by its name
    pool.necoda_outputs_by_fd = probe is not None and all(ok)
    return pool


def _retire(pool, wait: bool) -> None:
    """Stop ``pool`` now when no read uses it, else when the last read using it ends (under _pool_lock)."""
    if _users.get(pool):
        _retired.add(pool)
    else:
        pool.shutdown(wait=wait, cancel_futures=True)


def _process_pool(workers: int) -> ProcessPoolExecutor:
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers != workers or getattr(_pool, "_broken", False):
            if _pool is not None:
                _retire(_pool, wait=False)
                _pool = None  # a new pool that fails to start must not leave the retired one current
            _pool = _new_process_pool(workers)
            _pool_workers = workers
            _stop_at_multiprocessing_exit()
        return _pool


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    global _tpool, _tpool_workers
    with _pool_lock:
        if _tpool is None or _tpool_workers != workers:
            if _tpool is not None:
                _retire(_tpool, wait=False)
            _tpool = ThreadPoolExecutor(workers, thread_name_prefix="necoda-read")
            _tpool_workers = workers
        return _tpool


_exit_hook_pid = None


def _stop_at_multiprocessing_exit() -> None:
    """Stop the pools also when this process is a multiprocessing child that exits: it skips atexit
    (``os._exit``) and first waits for its own child processes, such as our workers, which then never
    exited (the child hung when its target returned)."""
    global _exit_hook_pid
    if _exit_hook_pid != os.getpid():
        from multiprocessing import util

        util.Finalize(None, shutdown_pool, exitpriority=100)  # before the queues' own finalizers (10)
        _exit_hook_pid = os.getpid()


@contextlib.contextmanager
def _using(get_pool, workers: int):
    """The current pool (``_process_pool`` / ``_thread_pool``), kept running while the block runs."""
    with _pool_lock:
        pool = get_pool(workers)
        _users[pool] = _users.get(pool, 0) + 1
    try:
        yield pool
    finally:
        with _pool_lock:
            _users[pool] -= 1
            if not _users[pool]:
                del _users[pool]
                if pool in _retired:
                    _retired.discard(pool)
                    pool.shutdown(wait=False, cancel_futures=True)


def _submit(pool, fn, *args, inline_ok: bool) -> Future:
    """``pool.submit(fn, *args)``, or ``fn(*args)`` run in this thread when the pool takes no more work:
    at interpreter exit concurrent.futures refuses new tasks before it waits for non-daemon threads, so a
    read running in one of them failed with "cannot schedule new futures after shutdown". (A daemon
    thread still gets that error: it must not go on using HDF5 while the interpreter finalizes.)
    ``inline_ok``: whether the reading thread may run the task itself (the caller is not a daemon thread;
    the dispatcher thread that drives the main thread's reads is one)."""
    try:
        return pool.submit(fn, *args)
    except BrokenExecutor:
        raise
    except RuntimeError:
        if not inline_ok:
            raise
        f = Future()
        try:
            f.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001 — raised by f.result(), like a pool's task
            f.set_exception(e)
        return f


def _stored_chunks(plan, fetch, fill_missing, stop):
    """``(stored bytes, filter mask, out slices, local selection)`` of each chunk of ``plan`` that is
    stored, in order, fetched in the calling thread; a chunk never written gets ``fill_missing(out slices)``.
    Raises Stopped once ``stop`` is set."""
    for off, dsl, lsel in plan:
        _check(stop)
        got = fetch(off)
        if got is None:
            fill_missing(dsl)
        else:
            yield got[1], got[0], dsl, lsel


def _cancel_and_wait(futures) -> None:
    """Cancel the queued ``futures`` and wait for the running ones."""
    for f in futures:
        f.cancel()
    wait(futures)


def _bound_in_flight(futures: list, limit: int, stop) -> list:
    """Wait until fewer than ``limit`` of ``futures`` are pending (bounds the compressed bytes queued);
    returns the pending ones, raising the error of any that failed (and Stopped once ``stop`` is set)."""
    while len(futures) >= limit:
        done, pending = wait(futures, timeout=None if stop is None else 0.1, return_when="FIRST_COMPLETED")
        for f in done:
            f.result()
        futures = list(pending)
        _check(stop)
    return futures


def shutdown_pool() -> None:
    """Stop the worker processes and threads of :func:`read` (started on first use and reused); their
    ONNX sessions, arenas and buffers go with them. A pool that reads running in other threads still use
    stops when they end (the next read starts a new one)."""
    global _pool, _tpool
    with _pool_lock:
        if _pool is not None:
            _retire(_pool, wait=True)
            _pool = None
        if _tpool is not None:
            _retire(_tpool, wait=True)
            _tpool = None


atexit.register(shutdown_pool)


# --------------------------------------------------------------------------------------------------
# selections
# --------------------------------------------------------------------------------------------------

class _Axis:
    """The selected indices along one axis: either an arithmetic range or an increasing index list."""

    __slots__ = ("start", "step", "count", "idx", "drop")

    def __init__(self, start=0, step=1, count=0, idx=None, drop=False):
        self.start, self.step, self.count, self.idx, self.drop = start, step, count, idx, drop

    def indices(self) -> np.ndarray:
        if self.idx is not None:
            return self.idx
        return self.start + self.step * np.arange(self.count, dtype=np.int64)

    def pieces(self, c: int):
        """(chunk index, out_lo, out_hi, local selection) for each chunk this axis touches."""
        out = []
        if self.idx is None:
            if self.count == 0:
                return out
            last = self.start + self.step * (self.count - 1)
            for ci in range(self.start // c, last // c + 1):
                c0 = ci * c
                # first k with start + k*step >= c0, and first k with start + k*step >= c0 + c
                lo = max(0, -(-(c0 - self.start) // self.step))
                hi = min(self.count, -(-(c0 + c - self.start) // self.step))
                if hi <= lo:
                    continue
                a = self.start + self.step * lo - c0
                b = self.start + self.step * (hi - 1) - c0 + 1
                out.append((ci, lo, hi, slice(a, b, self.step)))
            return out
        idx = self.idx
        if idx.size == 0:
            return out
        cid = idx // c
        bounds = np.flatnonzero(np.diff(cid)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [idx.size]])
        for lo, hi in zip(starts.tolist(), ends.tolist()):
            ci = int(cid[lo])
            out.append((ci, lo, hi, idx[lo:hi] - ci * c))
        return out


def _normalize(selection, shape) -> list[_Axis]:
    sel = selection if isinstance(selection, tuple) else (selection,)
    if sum(1 for s in sel if s is Ellipsis) > 1:
        raise _Fallback
    if any(s is Ellipsis for s in sel):
        i = next(k for k, s in enumerate(sel) if s is Ellipsis)
        n_fill = len(shape) - (len(sel) - 1)
        if n_fill < 0:
            raise _Fallback
        sel = sel[:i] + (slice(None),) * n_fill + sel[i + 1:]
    if len(sel) > len(shape):
        raise _Fallback
    sel = sel + (slice(None),) * (len(shape) - len(sel))
    axes = []
    for s, n in zip(sel, shape):
        if isinstance(s, (bool, np.bool_)):
            raise _Fallback
        if isinstance(s, (int, np.integer)):
            i = int(s)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise _Fallback  # h5py raises its own error
            axes.append(_Axis(i, 1, 1, drop=True))
        elif isinstance(s, slice):
            if s.step is not None and s.step < 1:
                raise _Fallback
            start, stop, step = s.indices(n)
            count = max(0, -(-(stop - start) // step))
            axes.append(_Axis(start, step, count))
        elif isinstance(s, (list, np.ndarray)):
            a = np.asarray(s)
            if a.ndim != 1:
                raise _Fallback
            if a.dtype == bool:
                if a.size != n:
                    raise _Fallback
                a = np.flatnonzero(a)
            elif a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() >= n)):
                raise _Fallback
            a = a.astype(np.int64)
            if a.size > 1 and np.any(np.diff(a) <= 0):
                raise _Fallback  # h5py requires increasing order
            axes.append(_Axis(idx=a))
        else:
            raise _Fallback
    if sum(1 for a in axes if a.idx is not None) > 1:
        raise _Fallback  # h5py allows one index list per selection: let it say so
    return axes


# --------------------------------------------------------------------------------------------------
# decoding tasks
# --------------------------------------------------------------------------------------------------

def _decode(buf, filter_mask: int, chunk_shape, dtype) -> np.ndarray:
    """The decoded chunk, in the dataset's chunk shape. ``buf`` passed :func:`_check_stored`."""
    if filter_mask & 1:  # the filter was skipped for this chunk: raw bytes of the file type
        return np.frombuffer(buf, dtype=dtype).reshape(chunk_shape)
    arr = chunk.decode(buf)  # its header passed chunk.check_layout in _check_stored: the size fits
    return arr if arr.shape == tuple(chunk_shape) else arr.reshape(chunk_shape)


def _check_stored(buf, filter_mask: int, chunk_shape, dtype, where: str) -> None:
    """Raise :class:`UnreadableChunk` (naming the chunk, ``where``) unless ``buf`` can be the dataset's
    chunk: a necoda header with the dataset's element kind and size and number of samples — the rule of
    the HDF5 filter (``_bridge.decode_owned``), checked before any decode work — or, stored unfiltered,
    exactly the chunk's bytes."""
    if filter_mask & 1:
        want = int(np.prod(chunk_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if len(buf) != want:
            raise UnreadableChunk(f"{where} is stored unfiltered (filter mask {filter_mask}) in {len(buf)} "
                                  f"bytes; a {tuple(chunk_shape)} {np.dtype(dtype)} chunk has {want}")
        return
    try:
        h = chunk.info(buf)
        chunk.check_layout(h.dtype, h.shape, dtype, chunk_shape)
    except chunk.container.CorruptChunk as e:
        raise UnreadableChunk(f"{where}: {e}") from None


def _local_index(lsel):
    if any(isinstance(s, np.ndarray) for s in lsel):
        return np.ix_(*[s if isinstance(s, np.ndarray) else np.arange(s.start, s.stop, s.step) for s in lsel])
    return tuple(lsel)


def _place(out, dsl, arr, lsel):
    out[dsl] = arr[_local_index(lsel)]


def _box_start(lsel):
    """Start of the selection in the chunk when it is a box (unit-step slices on every axis), else None."""
    if all(isinstance(s, slice) and s.step in (None, 1) for s in lsel):
        return tuple(s.start for s in lsel)
    return None


def _decode_place(out, dsl, buf, filter_mask: int, chunk_shape, dtype, lsel) -> None:
    """Decode one stored chunk and write its selected part to ``out[dsl]`` — straight into ``out`` for a
    box of a chunk whose header matches the dataset's chunk shape (no chunk-sized temporary)."""
    start = _box_start(lsel)
    if start is not None and not filter_mask & 1:
        dst = out[dsl]
        if dst.ndim == len(chunk_shape) and dst.dtype == dtype:
            try:
                hdr = chunk.info(buf)
                same = tuple(hdr.shape) == tuple(chunk_shape) and hdr.dtype == dst.dtype
            except Exception:  # noqa: BLE001 — a bad header raises below, in the full decode
                same = False
            if same:
                chunk.decode_box(buf, dst, start)
                return
    _place(out, dsl, _decode(buf, filter_mask, chunk_shape, dtype), lsel)


def _process_task(path, ident, nbytes, out_shape, out_dtype, tasks, chunk_shape, chunk_dtype):
    """Worker process: decode chunks and write them into the shared output file."""
    with _open_shared(path, ident) as fh:
        mm = mmap.mmap(fh.fileno(), nbytes)
    try:
        out = np.frombuffer(mm, dtype=out_dtype).reshape(out_shape)
        for buf, mask, dsl, lsel in tasks:
            _decode_place(out, dsl, buf, mask, chunk_shape, np.dtype(chunk_dtype), lsel)
        del out
    finally:
        try:
            mm.close()
        except BufferError:  # a decode error's traceback still holds views of the map: it is unmapped
            pass             # when they are freed; the decode error itself propagates
    return len(tasks)


_OUTPUT_PREFIX = "necoda-read-"


def _output_folder() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _shared_folders() -> list[str]:
    """Where a :class:`SharedArray` may live, in order: /dev/shm (memory), then the temporary folder (a disk
    file, cached in memory like any file) when /dev/shm is too small for it (Docker's default is 64 MB)."""
    first = _output_folder()
    rest = tempfile.gettempdir()
    return [first] if os.path.realpath(rest) == os.path.realpath(first) else [first, rest]


class SharedArray:
    """An array in a file in /dev/shm, mapped by the parent and its worker processes: the output of a
    process-pool read, the chunks ``necoda compress`` and ``decompress`` pass to and from their workers.

    The file's space is reserved when it is created (``posix_fallocate``): a process that wrote into a
    mapped page the file system had no room for would be killed by SIGBUS, not given an error. Where
    /dev/shm has too little room the array goes to the temporary folder; where that has none either,
    OSError (ENOSPC) names both.

    ``by_fd``: the file has no name (``O_TMPFILE``; else it is unlinked as soon as it is created) and the
    workers open it as ``/proc/<pid>/fd/<fd>`` (``worker_path``), so a reader killed (SIGKILL, SIGTERM)
    leaves nothing behind; else they open it by name and it is unlinked by :meth:`close` (a killed
    reader's file is removed by :func:`_sweep_stale_outputs` when a later pool starts). ``arr`` stays
    valid after :meth:`close`."""

    def __init__(self, shape, dtype, by_fd: bool):
        count = int(np.prod(shape, dtype=np.int64))
        self.nbytes = max(1, count * np.dtype(dtype).itemsize)
        self.path = self.fd = None
        full = []
        for folder in _shared_folders():
            try:
                mm = self._create(folder, by_fd)
                break
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                full.append(folder)
        else:
            raise OSError(errno.ENOSPC, f"no room for a {self.nbytes / 1e6:.1f} MB shared array in "
                                        f"{' or '.join(full)}")
        self.worker_path = f"/proc/{os.getpid()}/fd/{self.fd}" if by_fd else self.path
        st = os.fstat(self.fd)
        self.ident = (st.st_dev, st.st_ino)  # the workers check they opened this very file
        self.arr = np.frombuffer(mm, dtype=dtype, count=count).reshape(shape)

    def _create(self, folder: str, by_fd: bool) -> mmap.mmap:
        """Make the file in ``folder``, reserve its space and map it (OSError, nothing left, if not)."""
        if by_fd and hasattr(os, "O_TMPFILE"):
            with contextlib.suppress(OSError):  # a file that never has a name (Linux; tmpfs supports it)
                self.fd = os.open(folder, os.O_RDWR | os.O_TMPFILE, 0o600)
        if self.fd is None:
            self.path = os.path.join(folder, f"{_OUTPUT_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if by_fd and self.path is not None:
                os.unlink(self.path)
                self.path = None
            os.ftruncate(self.fd, self.nbytes)
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(self.fd, 0, self.nbytes)
                except OSError as e:  # a file system that cannot reserve (nor emulate it): unreserved
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
            return mmap.mmap(self.fd, self.nbytes)
        except BaseException:
            self.close()
            raise

    def discard(self) -> None:
        """Free the file's space now and :meth:`close`: for arrays whose data nobody reads again (the
        chunk slots of ``necoda compress``/``decompress`` once every chunk is back). A worker that mapped
        the file keeps its map until its next dataset, and so would keep the whole file's space in
        /dev/shm; truncated, it holds nothing. ``arr`` must not be touched afterwards (its pages are
        gone: reading them raises SIGBUS)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
        self.close()

    def close(self) -> None:
        """Unlink the file (when it has a name) and close the descriptor the workers open it through."""
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


#: output files younger than this are never swept (a live reader of another PID namespace sharing /dev/shm)
_SWEEP_MIN_AGE_S = 60.0


def _sweep_stale_outputs() -> None:
    """Remove the named output files (``necoda-read-<pid>-<id>``) of processes that no longer exist: left
    behind by readers killed during a read where the workers open the file by name (or by versions of
    this module that always did), in every folder a :class:`SharedArray` may use."""
    import time

    now = time.time()
    for folder in _shared_folders():  # /dev/shm, and the temporary folder shared arrays fall back to
        _sweep_folder(folder, now)


#: the name of a named shared array: prefix, the creating process's id, a uuid4 in hex
_OUTPUT_NAME = re.compile(re.escape(_OUTPUT_PREFIX) + r"([1-9][0-9]{0,9})-[0-9a-f]{32}")


def _sweep_folder(folder: str, now: float) -> None:
    """Remove this user's regular files named exactly like a shared array, at least ``_SWEEP_MIN_AGE_S``
    old, whose process is gone (links and anything else named otherwise are left alone)."""
    import stat

    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _OUTPUT_NAME.fullmatch(name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or not 0 < pid < 2**31:
            continue
        try:
            os.kill(pid, 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except (OSError, OverflowError):  # alive, another user's: leave it
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and now - st.st_mtime >= _SWEEP_MIN_AGE_S:
                os.unlink(path)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------
# read
# --------------------------------------------------------------------------------------------------

def _mostly_gil_free(got) -> bool:
    """True when the dataset's first chunk is a learned chunk: its decode runs in ONNX Runtime and C
    kernels that release the GIL, so threads scale without the copies through worker processes."""
    if got is None or got[0] & 1:
        return False
    try:
        return chunk.info(got[1]).mode_id == LEARNED_MODE_ID
    except Exception:  # noqa: BLE001 — a bad first chunk raises later, in its own decode
        return False


def _first_stored(plan, fetch, tries: int = 8):
    """The stored bytes of the first of the first ``tries`` chunks of ``plan`` that was written (None if none
    was): a dataset whose first chunk was never written is still known by its others."""
    for off, _, _ in plan[:tries]:
        got = fetch(off)
        if got is not None:
            return got
    return None


def _gpu_decodes(got) -> bool:
    """True when the dataset's first chunk is a learned chunk and ONNX Runtime decodes on a GPU here."""
    if not _mostly_gil_free(got):
        return False
    from .models import runtime

    try:
        return runtime.providers() != ["CPUExecutionProvider"]
    except ImportError:  # no onnxruntime: the chunk's own decode says so
        return False


def _not_allocated(dsid, off, err: BaseException) -> bool:
    """Whether the dataset's chunk index holds no chunk at ``off``, whose ``read_direct_chunk`` raised
    ``err`` (False when that cannot be told)."""
    by_coord = getattr(dsid, "get_chunk_info_by_coord", None)
    if by_coord is None:  # HDF5 < 1.10.5: by the error
        if isinstance(err, MemoryError):
            return dsid.get_storage_size() == 0
        return isinstance(err, RuntimeError) and "not allocated" in str(err)
    try:
        return by_coord(tuple(off)).byte_offset is None
    except Exception:  # noqa: BLE001 — a damaged index: not known to be missing
        return False


def _missing_chunk_value(dataset):
    """What ``dataset[...]`` holds where no chunk was written: h5py reads into a zeroed array and HDF5
    writes the fill value over it, unless the fill value is undefined or the fill time is "never"."""
    import h5py

    plist = dataset.id.get_create_plist()
    if (plist.get_fill_time() == h5py.h5d.FILL_TIME_NEVER
            or plist.fill_value_defined() == h5py.h5d.FILL_VALUE_UNDEFINED):
        return 0
    return dataset.fillvalue


def _necoda_cd_values(dataset) -> tuple | None:
    """The cd_values of a chunked dataset whose filter pipeline is exactly the necoda filter, else None."""
    if dataset.chunks is None:
        return None
    plist = dataset.id.get_create_plist()
    if plist.get_nfilters() != 1:
        return None
    f = plist.get_filter(0)
    return tuple(f[2]) if f[0] == FILTER_ID else None


#: mode ids of cd_values slot 1 (every layout) whose chunks decode to exactly the values written
_LOSSLESS_MODE_IDS = frozenset((modes.MODE_IDS["raw"], modes.MODE_IDS["lossless"]))


def _may_be_lossy(cd_values) -> bool:
    """Whether chunks written with these cd_values may be coded lossy (mode auto, bounded, learned, or not
    known here); empty cd_values are the defaults (auto)."""
    return len(cd_values) < 2 or int(cd_values[1]) not in _LOSSLESS_MODE_IDS


def _rereads_lossy(dataset, cd_values) -> bool:
    """True for a possibly lossy dataset of a file open for writing, which :func:`read` reads with plain
    slicing: ``read_direct_chunk`` would flush a chunk HDF5 caches dirty, coding it once more than it is
    when later writes complete it (module docstring)."""
    return _may_be_lossy(cd_values) and dataset.file.mode == "r+"


def read(dataset, selection=Ellipsis, *, out: np.ndarray | None = None, workers: int | None = None,
         executor: str = "auto") -> np.ndarray:
    """Read ``dataset[selection]`` decoding necoda chunks in parallel.

    :param dataset: an h5py.Dataset (any: non-necoda datasets are read with plain slicing); zarr arrays
        (hdmf-zarr) and numpy arrays are sliced as they are.
    :param selection: what you would put in ``dataset[...]``; e.g. ``np.s_[0:1000, :, ::2]``.
    :param out: an array to read into instead of a new one (like h5py's ``read_direct``): writeable, the
        shape of ``dataset[selection]`` and exactly the dataset's dtype (no conversion). Reading block
        after block of a movie into one buffer saves allocating and first touching a new array each time.
    :param workers: number of parallel decoders (default: CPUs available to this process, no more than
        three quarters of the memory available holds at 0.8 GB each: ``cpus.workers``).
    :param executor: "auto" (worker processes for multi-chunk reads), "process", "thread" or "serial".
    :returns: a numpy array equal to ``dataset[selection]`` (``out`` when given).
    """
    if executor not in ("auto", "process", "thread", "serial"):
        raise ValueError(f"executor must be auto, process, thread or serial, not {executor!r}")
    import h5py

    if not isinstance(dataset, h5py.Dataset):
        # what pynwb/hdmf hand out besides h5py datasets: zarr arrays (hdmf-zarr, which decode their chunks
        # concurrently themselves) and in-memory numpy arrays; plain slicing gives the same values
        if not all(hasattr(dataset, a) for a in ("__getitem__", "shape", "dtype")):
            raise TypeError(f"read() takes an h5py.Dataset (or an array-like with shape, dtype and slicing), "
                            f"not {type(dataset).__name__}")
        if out is not None:
            _check_out_type(out, dataset.dtype)
        return _plain(dataset, selection, out)
    if out is not None:
        _check_out_type(out, dataset.dtype)
    if not dataset.id.valid:  # what dataset[...] raises, with a message saying why
        raise RuntimeError("cannot read a closed dataset (its file was closed)")
    cd_values = _necoda_cd_values(dataset)
    if cd_values is None or dataset.dtype.fields is not None or _rereads_lossy(dataset, cd_values):
        return _plain(dataset, selection, out)
    try:
        axes = _normalize(selection, dataset.shape)
    except _Fallback:
        return _plain(dataset, selection, out)

    shape = tuple(a.count if a.idx is None else a.idx.size for a in axes)
    chunks = dataset.chunks
    dtype = dataset.dtype
    final = tuple(0 if a.drop else slice(None) for a in axes)
    out_full = None
    if out is not None:
        _check_out_shape(out, tuple(n for n, a in zip(shape, axes) if not a.drop))
        # the same memory with the dropped (integer-indexed) axes put back as length 1: always a view
        out_full = np.expand_dims(out, tuple(k for k, a in enumerate(axes) if a.drop))

    def new_output():
        return out_full if out is not None else np.empty(shape, dtype)

    def returned(arr):
        return out if out is not None else arr[final]

    if int(np.prod(shape, dtype=np.int64)) == 0:
        return returned(new_output())

    per_axis = [a.pieces(c) for a, c in zip(axes, chunks)]
    plan = []  # (offset, out slices, local selection)
    for combo in itertools.product(*per_axis):
        off = tuple(ci * c for (ci, _, _, _), c in zip(combo, chunks))
        dsl = tuple(slice(lo, hi) for (_, lo, hi, _) in combo)
        lsel = tuple(ls for (_, _, _, ls) in combo)
        plan.append((off, dsl, lsel))

    if workers is None:  # the memory it may take is read (~0.1 ms) only where decoders could run in parallel
        workers = cpus.workers() if len(plan) > 1 else cpus.available()
    workers = max(1, int(workers))
    dsid = dataset.id
    chunk_dtype = np.dtype(dtype)
    fill = []  # the value of chunks never written, looked up when the first one is met

    def missing():
        if not fill:
            fill.append(_missing_chunk_value(dataset))
        return fill[0]

    def where(off):
        return f"chunk at offset {off} of dataset {dataset.name!r}"

    def fetch(off):
        """(filter mask, stored bytes) of the chunk at ``off``, checked against the dataset; None for a
        chunk never written (its values are the fill value)."""
        try:
            got = dsid.read_direct_chunk(off)
        except (RuntimeError, OSError, ValueError, MemoryError) as e:
            # RuntimeError "chunk storage is not allocated" for a chunk never written; MemoryError when
            # no chunk is written yet (no chunk index: H5Dget_chunk_storage_size leaves the size h5py
            # allocates its buffer with unset). But also OSError for a stored chunk HDF5 cannot read (a
            # damaged file: "addr overflow"), which h5py slicing raises: only a chunk the index does not
            # hold is missing.
            if not dsid.valid:  # its file was closed meanwhile (by another thread): not a missing chunk
                raise RuntimeError("cannot read a closed dataset (its file was closed)") from None
            if _not_allocated(dsid, off, e):
                return None
            if isinstance(e, MemoryError):
                raise
            raise OSError(f"cannot read the stored {where(off)}: {type(e).__name__}: {e}") from e
        _check_stored(got[1], got[0], chunks, dtype, where(off))
        return got

    mode = executor
    if mode == "auto":
        touched = len(plan) * int(np.prod(chunks, dtype=np.int64)) * dtype.itemsize
        mode = "process" if workers > 1 and len(plan) > 1 and touched >= PARALLEL_MIN_BYTES else "serial"
    if mode == "process" and (workers < 2 or len(plan) < 2):
        mode = "serial"
    first = _first_stored(plan, fetch) if mode == "process" else None  # what decides between the two below
    if mode == "process" and executor == "auto" and _mostly_gil_free(first):
        mode = "thread"
    if mode == "process" and "onnxruntime" in sys.modules and _gpu_decodes(first):
        # a forked worker cannot use the GPU this process has set up (CUDA: "initialization error"), and
        # ONNX Runtime would decode there on the CPU instead: slower, and not the GPU's values. Threads
        # share this process's GPU session. (Without onnxruntime imported here, nothing was set up.)
        if executor == "process":
            warnings.warn("read(executor='process'): learned chunks are decoded on the GPU, which worker "
                          "processes cannot share; using threads", RuntimeWarning, stacklevel=2)
        mode = "thread"

    def run_serial():
        dst = new_output()
        for off, dsl, lsel in plan:
            got = fetch(off)
            if got is None:
                dst[dsl] = missing()
            else:
                _decode_place(dst, dsl, got[1], got[0], chunks, chunk_dtype, lsel)
        return returned(dst)

    if mode == "serial":
        return run_serial()

    if mode == "thread":
        dst = new_output()

        from .models import runtime

        def job(buf, mask, dsl, lsel):
            with runtime.worker_threads(ort_threads):
                _decode_place(dst, dsl, buf, mask, chunks, chunk_dtype, lsel)

        def fill_missing(dsl):
            dst[dsl] = missing()

        # one decoder per core, no nested ORT thread pools; fewer chunks than workers: cores go to ORT
        ort_threads = max(1, workers // min(workers, len(plan)))
        inline_ok = not threading.current_thread().daemon

        def run_threads(stop):
            # the stored bytes are fetched here, in the thread driving the pool, not in the decoders: a
            # caller holding h5py's lock (a visititems callback) would otherwise block them forever
            with _using(_thread_pool, workers) as pool:
                futures = []
                try:
                    for item in _stored_chunks(plan, fetch, fill_missing, stop):
                        futures.append(_submit(pool, job, *item, inline_ok=inline_ok))
                        futures = _bound_in_flight(futures, 4 * workers, stop)
                    for f in futures:
                        _result(f, stop)
                finally:  # an error: do not leave decoders writing into ``dst`` behind the caller's back
                    _cancel_and_wait(futures)
            return returned(dst)

        return _off_main_thread(run_threads)

    # process pool writing into shared memory; the reading thread fetches the stored bytes
    inline_ok = not threading.current_thread().daemon

    def run_processes(stop):
        try:
            return process_read(stop)
        except OSError as e:
            # no room in /dev/shm for the pool's semaphores, or anywhere for the shared output: "auto" reads
            # serially instead (in the caller's thread)
            if executor == "auto" and e.errno == errno.ENOSPC:
                return _NO_ROOM
            raise

    def process_read(stop):
        with _using(_process_pool, workers) as pool:
            output = SharedArray(shape, dtype, by_fd=getattr(pool, "necoda_outputs_by_fd", False))
            path, nbytes, shm = output.worker_path, output.nbytes, output.arr
            try:
                # batches of chunks per task: enough tasks to balance the workers, few enough to keep the
                # per-task overhead (pickling, opening the shared file) small
                target = max(1, min(16, len(plan) // (4 * workers)))
                futures = []
                try:
                    batch = []
                    batch_bytes = 0
                    inflight_limit = 4 * workers

                    def fill_missing(dsl):
                        shm[dsl] = missing()

                    for item in _stored_chunks(plan, fetch, fill_missing, stop):
                        batch.append(item)
                        batch_bytes += len(item[0])
                        if len(batch) >= target or batch_bytes >= (64 << 20):
                            futures.append(_submit(pool, _process_task, path, output.ident, nbytes, shape, dtype.str, batch,
                                                   chunks, chunk_dtype.str, inline_ok=inline_ok))
                            batch, batch_bytes = [], 0
                            futures = _bound_in_flight(futures, inflight_limit, stop)
                    if batch:
                        futures.append(_submit(pool, _process_task, path, output.ident, nbytes, shape, dtype.str, batch,
                                               chunks, chunk_dtype.str, inline_ok=inline_ok))
                    for f in futures:
                        _result(f, stop)
                finally:  # an error or an interrupt: no task left to write into the output
                    _cancel_and_wait(futures)
            finally:
                output.close()
        if out is not None:  # the workers wrote into shared memory: one copy into the caller's array
            np.copyto(out_full, shm)
        return returned(shm)

    got = _off_main_thread(run_processes)
    if got is _NO_ROOM:  # "auto" with no room for the shared output: read here, one chunk after another
        global _told_no_room
        if not _told_no_room:
            _told_no_room = True
            logging.getLogger("necoda_filter").warning(
                "necoda read: no room in /dev/shm or the temporary folder for worker processes: reading in this "
                "process (slower) while that lasts")
        return run_serial()
    return got


#: whether read() has logged (once per process) that it reads serially for want of shared memory
_told_no_room = False


#: what a process read returns when there is no room for its shared output (``executor="auto"`` only)
_NO_ROOM = object()


def _check_out_type(out, dtype) -> None:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, not {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out has dtype {out.dtype} but the dataset's is {dtype} (read does not convert)")
    if not out.flags.writeable:
        raise ValueError("out is read-only")


def _check_out_shape(out, shape) -> None:
    if out.shape != tuple(shape):
        raise ValueError(f"out has shape {out.shape} but the selection has shape {tuple(shape)}")


def _plain(dataset, selection, out):
    """``dataset[selection]`` (h5py, zarr or numpy slicing), into ``out`` when given."""
    got = dataset[selection]
    if out is None:
        # a new array, as from h5py: numpy slicing gives views, which writing to would change the input
        return np.array(got) if isinstance(dataset, np.ndarray) else got
    _check_out_shape(out, np.shape(got))
    out[...] = got
    return out


class FastDataset:
    """An h5py dataset whose slicing goes through :func:`read` (parallel chunks; learned boxes decoded
    from the latents around them): ``data = necoda_filter.fast(nwb.acquisition["TwoPhotonSeries"].data)``,
    then ``data[:, 100:164, 200:264]`` — the same values as slicing the dataset, for analysis code that
    expects an array-like (shape, dtype, len, slicing, ``np.asarray``)."""

    def __init__(self, dataset, *, workers: int | None = None, executor: str = "auto"):
        self.dataset = dataset
        self.workers = workers
        self.executor = executor

    shape = property(lambda self: self.dataset.shape)
    dtype = property(lambda self: self.dataset.dtype)
    ndim = property(lambda self: len(self.dataset.shape))
    size = property(lambda self: int(np.prod(self.dataset.shape, dtype=np.int64)))
    chunks = property(lambda self: getattr(self.dataset, "chunks", None))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, selection):
        return read(self.dataset, selection, workers=self.workers, executor=self.executor)

    def __array__(self, dtype=None, copy=None):
        a = self[...]
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"<necoda_filter.FastDataset of {self.dataset!r}>"


def fast(dataset, *, workers: int | None = None, executor: str = "auto") -> FastDataset:
    """``dataset`` (an h5py dataset, e.g. a pynwb TimeSeries' ``data``) sliced through :func:`read`."""
    return FastDataset(dataset, workers=workers, executor=executor)
