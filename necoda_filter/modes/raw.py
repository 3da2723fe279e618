"""Raw mode: the chunk's little-endian bytes, unchanged. Also the container's fallback."""
from __future__ import annotations

import numpy as np

from . import Encoded


class RawMode:
    name = "raw"
    mode_id = 0
    lossy = False
    options = ()

    def encode(self, arr: np.ndarray, **options) -> Encoded:
        return Encoded(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())

    def decode(self, payload, shape, dtype, params, model_id) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(payload) != n:
            raise ValueError(f"raw necoda payload has {len(payload)} bytes, expected {n}")
        return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()


MODE = RawMode()
