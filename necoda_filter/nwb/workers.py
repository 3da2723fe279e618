"""Chunk encoding and decoding in worker processes, and the pool that runs them.

The chunk functions are at module level: they run in worker processes (pickled by reference).
"""
from __future__ import annotations

import errno
import logging
import math
import mmap
import sys
import zlib
from concurrent.futures import Future

import numpy as np

from .. import chunk, cpus, modes


def finite_pair(o: np.ndarray, d: np.ndarray):
    """``(o, d, mismatch, lo, hi)`` for error statistics of decoded ``d`` against original ``o``.

    NaN/inf would turn every statistic into NaN (which ``max()`` then silently drops): samples not
    finite on both sides are set to 0 in both (no error), ``mismatch`` says whether one of them was not
    returned as itself (an infinite error), ``lo``/``hi`` are the finite extremes of ``o`` (inf/-inf
    when it has none)."""
    if o.dtype.kind != "f" or (np.isfinite(o).all() and np.isfinite(d).all()):
        return o, d, False, float(o.min()), float(o.max())
    both = np.isfinite(o) & np.isfinite(d)
    mismatch = bool((~both & (o != d) & ~(np.isnan(o) & np.isnan(d))).any())
    fin_o = o[np.isfinite(o)]
    lo, hi = (float(fin_o.min()), float(fin_o.max())) if fin_o.size else (math.inf, -math.inf)
    return np.where(both, o, 0).astype(o.dtype), np.where(both, d, 0).astype(d.dtype), mismatch, lo, hi


def _native_order(a: np.ndarray) -> np.ndarray:
    """``a`` in native byte order with the same values, bit for bit (NaN payloads included)."""
    return a if a.dtype.isnative else a.byteswap().view(a.dtype.newbyteorder("="))


def _encode_chunk(arr: np.ndarray, mode: str, opts: dict, valid: tuple, sigma) -> tuple[bytes, dict]:
    """Encode one full (padded) chunk as the filter would, decode it again and measure the error on
    the valid (unpadded) region. Runs in a worker process."""
    from .. import metrics
    from ..models import runtime

    # the decoder's activations must not stay resident next to the encoder's in every worker: its arena is
    # shrunk after each decode. The encoder's is kept: shrinking it too cost ~0.1 s per 64x512x512 learned
    # chunk (its activations re-faulted every time) and lowered no peak (one-thread worker, 5 chunks:
    # 0.55 s/chunk and 980 MB with neither shrunk, 0.67 s and 740 MB with the decoder's, 0.75 s and 720 MB
    # with both)
    from .. import options

    options.require_model(mode, opts, arr.shape, arr.dtype)  # a model that vanished: an error, never raw chunks
    why: list[str] = []  # why the mode could not code the chunk, when it is stored raw
    enc = chunk.encode(arr, mode, on_raw=why.append, **opts)
    h = chunk.info(enc)
    with runtime.arena_shrink():
        dec = chunk.decode(enc)
    sl = tuple(slice(0, v) for v in valid)
    # a big-endian dataset (arr in file byte order) decodes to native order: compare in one order, bit for bit
    o = _native_order(arr[sl])
    d = _native_order(dec[sl])
    n = int(o.size)
    st = {"n": n, "mode_id": h.mode_id, "model_id": h.model_id, "stored": len(enc), "version": h.version}
    if h.mode_id == modes.MODE_IDS["learned"] and isinstance(h.params.get("q"), int):
        st["quality"] = h.params["q"]  # the level actually coded (the model's default when none was asked)
    lossy = modes.get(h.mode_id).lossy
    if not lossy:  # bit for bit (NaN payloads and -0.0 included), whatever the values
        u = np.dtype(f"u{o.dtype.itemsize}")
        if not np.array_equal(o.view(u), d.view(u)):
            raise RuntimeError(f"necoda {modes.MODE_NAMES[h.mode_id]} chunk did not round-trip exactly: "
                               "refusing to write it")
    if h.mode_id == modes.MODE_IDS["raw"] and mode != "raw":
        lossy_mode = modes.get(modes.resolve(mode, arr.shape, arr.dtype)).lossy
        st["raw_reason"] = why[0] if why else "" if lossy_mode else "lossless coding was not smaller than the raw chunk"
    o0, d0 = o, d
    o, d, mismatch, lo, hi = finite_pair(o, d)
    st["lo"] = lo
    st["hi"] = hi
    if not lossy:  # returned bit for bit (checked above): no error to measure (that pass was 0.1 s of ~0.8 s
        st.update(sse=0.0, max_abs=0.0)  # per 64x512x512 lossless chunk)
        if sigma is not None:
            st["noise_sse"], st["noise_n"] = 0.0, n
        return enc, st
    es = metrics.error_stats(o, d)
    # a lossy mode can return the chunk exactly (bounded with max_error 0): then nothing was lost
    u = np.dtype(f"u{o0.dtype.itemsize}")
    st["exact"] = bool(not mismatch and es["max_abs"] == 0 and np.array_equal(o0.view(u), d0.view(u)))
    st["sse"] = math.inf if mismatch else es["rmse"] ** 2 * n
    st["max_abs"] = math.inf if mismatch else es["max_abs"]
    if sigma is not None and np.ndim(sigma) == 0 and float(sigma) > 0:
        # one noise level (imaging): the noise-unit sum of squares is the sum of squares over sigma^2, so no
        # second pass over the chunk (that pass was 0.13 of 1.18 s per 64x512x512 learned chunk)
        st["noise_sse"] = math.inf if mismatch else st["sse"] / float(sigma) ** 2
        st["noise_n"] = n
    elif sigma is not None:  # per channel: over the channels that have a noise level (metrics.noise_sse)
        nsse, st["noise_n"] = metrics.noise_sse(o, d, sigma)
        st["noise_sse"] = math.inf if mismatch else nsse
    return enc, st


#: this worker's map of a parent's shared array: (path, ident, nbytes, writable, mmap) or None
_shared_map = None


def _shared(path: str, ident, nbytes: int, writable: bool) -> mmap.mmap:
    """The parent's shared array file (``reader.SharedArray``), mapped once per array and kept: the chunks
    of one dataset all pass through it. A new array replaces the map of the last one."""
    global _shared_map
    from ..reader import _open_shared

    key = (path, tuple(ident) if ident is not None else None, int(nbytes), bool(writable))
    if _shared_map is not None and _shared_map[:4] == key:
        return _shared_map[4]
    old, _shared_map = _shared_map, None
    if old is not None:
        try:
            old[4].close()
        except BufferError:  # an error's traceback still holds a view: unmapped when that is freed
            pass
    with _open_shared(path, ident) as fh:
        mm = mmap.mmap(fh.fileno(), nbytes, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    _shared_map = (*key, mm)
    return mm


def _slot(shared: tuple, slot: int, writable: bool = False) -> np.ndarray:
    """Slot ``slot`` of the parent's shared array ``shared`` = (path, ident, nbytes, shape, dtype)."""
    path, ident, nbytes, shape, dtype = shared
    return np.frombuffer(_shared(path, ident, nbytes, writable), dtype=np.dtype(dtype),
                         count=int(np.prod(shape, dtype=np.int64))).reshape(shape)[slot]


def _release_slot(shared: tuple, slot: int, writable: bool = False) -> None:
    """Drop this worker's page mappings of slot ``slot`` (the data stays in the shared file): otherwise
    every worker's resident memory would count every slot it ever used."""
    path, ident, nbytes, shape, dtype = shared
    per = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    page = mmap.PAGESIZE
    lo = slot * per // page * page
    hi = min(int(nbytes), -(-(slot + 1) * per // page) * page)
    if hi > lo and hasattr(mmap, "MADV_DONTNEED"):
        _shared(path, ident, nbytes, writable).madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _encode_slot(shared: tuple, slot: int, mode: str, opts: dict, valid: tuple, sigma) -> tuple[bytes, dict]:
    """:func:`_encode_chunk` on the chunk in slot ``slot`` of the parent's shared array (slots, *chunk
    shape): the chunk is not pickled through a pipe (at 32 MB a chunk, those copies into fresh memory cost
    more system time than a second encoder process saved)."""
    try:
        return _encode_chunk(_slot(shared, slot), mode, opts, valid, sigma)
    finally:
        _release_slot(shared, slot)


def _decode_slot(shared: tuple, slot: int, buf: bytes, filter_mask: int, shape: tuple, dtype: str) -> int:
    """:func:`_decode_chunk` (without deflate) into slot ``slot`` of the parent's shared array (slots,
    chunk bytes) of uint8; returns the chunk's byte count."""
    raw = _decode_chunk(buf, filter_mask, shape, dtype, None)
    _slot(shared, slot, writable=True)[:len(raw)] = np.frombuffer(raw, np.uint8)
    _release_slot(shared, slot, writable=True)
    return len(raw)


def shared_slots(executor, shape: tuple, dtype, name: str):
    """``(array, spec)``: a ``reader.SharedArray`` of ``shape`` (slots, ...) through which ``executor``'s
    worker processes get or return chunks, and what a worker needs to find it (:func:`shared_spec`);
    ``(None, None)`` when ``executor`` is no process pool, or when neither /dev/shm nor the temporary folder
    has room for the array (the chunks of dataset ``name`` then go through pipes)."""
    from concurrent.futures import ProcessPoolExecutor

    from ..reader import SharedArray

    if not isinstance(executor, ProcessPoolExecutor):
        return None, None
    try:
        arr = SharedArray(shape, dtype, by_fd=getattr(executor, "necoda_outputs_by_fd", False))
    except OSError as e:
        logging.getLogger("necoda_filter").info("necoda: %s: chunks pass through pipes (%s)", name, e)
        return None, None
    return arr, shared_spec(arr)


def shared_spec(arr) -> tuple:
    """What a worker needs to find ``arr`` (a ``reader.SharedArray``): (path, ident, nbytes, shape, dtype)."""
    return arr.worker_path, arr.ident, arr.nbytes, arr.arr.shape, arr.arr.dtype.str


def _decode_chunk(buf: bytes, filter_mask: int, shape: tuple, dtype: str, gzip_level: int | None) -> bytes:
    """Decode one stored necoda chunk to the raw bytes of the file type (optionally deflated as
    HDF5's gzip filter would). Runs in a worker process."""
    dt = np.dtype(dtype)
    if filter_mask & 1:  # the necoda filter was skipped for this chunk: bytes are raw
        raw = bytes(buf)
    else:
        arr = chunk.decode(buf)
        if tuple(arr.shape) != tuple(shape):
            arr = arr.reshape(shape)
        raw = np.ascontiguousarray(arr, dtype=dt).tobytes()
    if gzip_level is not None:
        return zlib.compress(raw, gzip_level)
    return raw


class _Inline:
    """Executor stand-in that runs tasks immediately in the calling process."""

    def submit(self, fn, *args, **kwargs) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001
            f.set_exception(e)
        return f

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def make_executor(workers: int | None):
    workers = cpus.workers() if workers is None else int(workers)
    if workers <= 1:
        return _Inline(), 1
    from ..reader import _new_process_pool

    try:
        return _new_process_pool(workers), workers
    except OSError as e:  # /dev/shm full: no room for the pool's semaphores; code the chunks here instead
        if e.errno != errno.ENOSPC:
            raise
        logging.getLogger("necoda_filter").warning("necoda: no worker processes (%s): coding in this process", e)
        return _Inline(), 1


def _progress(total, desc, enabled):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                leave=True, dynamic_ncols=True, file=sys.stderr)


def _chunk_grid(shape, chunks):
    return [range(0, max(s, 0), c) for s, c in zip(shape, chunks)]
