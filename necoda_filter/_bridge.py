"""What the C shim calls: encode or decode one HDF5 chunk. Keep it small and free of state:
the shim passes a memoryview over HDF5's buffer that is only valid during the call."""
from __future__ import annotations

import numpy as np

from . import chunk, options

H5Z_FLAG_REVERSE = 0x0100


def filter(flags: int, cd_values: tuple, data: memoryview) -> bytes:
    if flags & H5Z_FLAG_REVERSE:
        return decode(cd_values, data)
    return encode(cd_values, data)


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
        dtype = arr.dtype
    expected = np.dtype(dtype)
    if arr.dtype.itemsize != expected.itemsize or arr.dtype.kind != expected.kind:
        raise chunk.container.CorruptChunk(
            f"necoda chunk holds {arr.dtype} data but the dataset type is {expected}")
    if expected.byteorder == ">":
        arr = arr.astype(expected)
    return arr.tobytes()
