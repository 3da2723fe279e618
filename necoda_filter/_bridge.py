"""What the C shim calls: encode or decode one HDF5 chunk. Keep it small and free of state:
the shim passes a memoryview over HDF5's buffer that is only valid during the call."""
from __future__ import annotations

import ctypes
import logging
import sys

import numpy as np

from . import chunk, options

H5Z_FLAG_REVERSE = 0x0100
log = logging.getLogger("necoda_filter")


def filter(flags: int, cd_values: tuple, data: memoryview) -> bytes:
    """Encode entry point for csrc/h5necoda.c (decoding goes through :func:`decode_owned`). An exception
    makes the filter fail: HDF5 then reports the chunk unwritable/unreadable (h5py raises OSError); the
    message is logged here because h5py shows only its own."""
    try:
        if flags & H5Z_FLAG_REVERSE:
            raise ValueError("the necoda shim decodes through _bridge.decode_owned")
        return encode(cd_values, data)
    except Exception as e:
        from .exitflush import note_failure

        # HDF5 may be flushing this chunk for a close, which then fails and leaves an id the exit flush
        # must not touch (exitflush)
        note_failure("the necoda filter failed to encode a chunk")
        log.error("necoda encode failed: %s: %s", type(e).__name__, e)
        raise


def encode(cd_values, data) -> bytes:
    mode, opts = options.user_options(cd_values)  # by the layout version in slot 0
    dtype, shape = options.chunk_layout(cd_values)
    want = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if len(data) != want:  # stored flat, such a chunk could never be read back as the dataset's chunk
        raise ValueError(f"HDF5 handed necoda {len(data)} bytes for a {tuple(shape)} {np.dtype(dtype)} chunk "
                         f"({want} bytes): a filter before necoda in the pipeline changed them; necoda must "
                         "come first")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    # a model named by the cd_values and not installed here fails the write (chunk.encode would store it raw)
    options.require_model(mode, opts, arr.shape, arr.dtype)
    return chunk.encode(arr, mode, **opts)


def _libc():
    """The process's C library: the shim frees what :func:`decode_owned` allocates with the same malloc."""
    global _LIBC
    if _LIBC is None:
        lib = ctypes.CDLL(None)
        lib.malloc.restype = ctypes.c_void_p
        lib.malloc.argtypes = [ctypes.c_size_t]
        lib.free.restype = None
        lib.free.argtypes = [ctypes.c_void_p]
        lib.madvise.restype = ctypes.c_int
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _LIBC = lib
    return _LIBC


#: Linux MADV_HUGEPAGE; decoded-chunk buffers of at least HUGE_MIN_BYTES ask for transparent huge pages
MADV_HUGEPAGE = 14
HUGE = 2 << 20
HUGE_MIN_BYTES = 4 << 20


def _advise_huge(lib, addr: int, n: int) -> None:
    """Ask for transparent huge pages over the 2 MiB-aligned part of a fresh buffer: a 32 MB chunk is
    first touched as 16 page faults instead of 8192 (numpy does the same for its large arrays). Measured
    through h5py, whole reads of 512 frames of bench_read.py's learned movie: 1.58 → 1.42 s (median of 8
    reads in 2 processes run alternately with the old code).
    Advice only: ignored where THP is off, and a no-op off Linux."""
    if n < HUGE_MIN_BYTES or not sys.platform.startswith("linux"):
        return
    lo = (addr + HUGE - 1) & ~(HUGE - 1)
    hi = (addr + n) & ~(HUGE - 1)
    if hi > lo:
        lib.madvise(lo, hi - lo, MADV_HUGEPAGE)


_LIBC = None


def decode_owned(flags: int, cd_values: tuple, data: memoryview) -> tuple[int, int]:
    """Decode entry point for csrc/h5necoda.c: decode the chunk straight into a malloc'd buffer and return
    ``(address, size)``; the shim hands the buffer to HDF5, which frees it. Saves the two chunk-sized copies
    a ``bytes`` result costs (``tobytes`` and the shim's memcpy); learned chunks are decoded straight into
    the buffer (``chunk.decode_box``)."""
    try:
        h = chunk.info(data)
        try:
            dtype, shape = options.chunk_layout(cd_values)
        except ValueError:
            dtype, shape = h.dtype, h.shape
        chunk.check_layout(h.dtype, h.shape, dtype, shape)
        n = int(np.prod(h.shape, dtype=np.int64)) * h.dtype.itemsize
        if n <= 0:
            raise chunk.container.CorruptChunk("necoda chunk is empty")
        lib = _libc()
        addr = lib.malloc(n)
        if not addr:
            raise MemoryError(f"could not allocate {n} bytes for a decoded chunk")
        try:
            _advise_huge(lib, addr, n)
            out = np.frombuffer((ctypes.c_char * n).from_address(addr), dtype=h.dtype).reshape(h.shape)
            chunk.decode_box(data, out, (0,) * out.ndim)
            if np.dtype(dtype).byteorder == ">" and out.dtype.itemsize > 1:
                out.byteswap(inplace=True)  # the dataset's (big-endian) file type
            del out
        except BaseException:
            lib.free(addr)
            raise
        return addr, n
    except Exception as e:
        log.error("necoda decode failed: %s: %s", type(e).__name__, e)
        raise
