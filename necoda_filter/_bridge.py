"""What the C shim calls: encode or decode one HDF5 chunk. Keep it small and free of state:
the shim passes a memoryview over HDF5's buffer that is only valid during the call."""
from __future__ import annotations

import numpy as np

import logging

from . import chunk, options

H5Z_FLAG_REVERSE = 0x0100
log = logging.getLogger("necoda_filter")


def filter(flags: int, cd_values: tuple, data: memoryview) -> bytes:
    """Entry point for csrc/h5necoda.c. An exception makes the filter fail: HDF5 then reports the
    chunk unreadable (h5py raises OSError); the message is logged here because h5py shows only its own."""
    try:
        if flags & H5Z_FLAG_REVERSE:
            return decode(cd_values, data)
        return encode(cd_values, data)
    except Exception as e:
        log.error("necoda %s failed: %s: %s", "decode" if flags & H5Z_FLAG_REVERSE else "encode",
                  type(e).__name__, e)
        raise


def encode(cd_values, data) -> bytes:
    mode, opts = options.user_options(cd_values[: options.CD_USER_SLOTS])
    dtype, shape = options.chunk_layout(cd_values)
    arr = np.frombuffer(data, dtype=dtype)
    if arr.size == int(np.prod(shape, dtype=np.int64)):
        arr = arr.reshape(shape)
    return chunk.encode(arr, mode, **opts)


def decode(cd_values, data) -> bytes:
    arr = chunk.decode(data)
    try:
        dtype, shape = options.chunk_layout(cd_values)
    except ValueError:
        dtype, shape = arr.dtype, arr.shape
    expected = np.dtype(dtype)
    if arr.dtype.itemsize != expected.itemsize or arr.dtype.kind != expected.kind:
        raise chunk.container.CorruptChunk(
            f"necoda chunk holds {arr.dtype} data but the dataset type is {expected}")
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise chunk.container.CorruptChunk(
            f"necoda chunk holds {arr.shape} samples but the dataset's chunks are {tuple(shape)}")
    if expected.byteorder == ">":
        arr = arr.astype(expected)
    return arr.tobytes()
