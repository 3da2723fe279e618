"""Lossless mode (first version): pcodec over the C-order samples, with pcodec's own delta search.

Integer and float data round-trip bit-exactly; 8-bit data uses pcodec's 8-bit support.
"""
from __future__ import annotations

import numpy as np
from pcodec import ChunkConfig, standalone

from . import Encoded


class LosslessMode:
    name = "lossless"
    mode_id = 1
    lossy = False
    options = ("level",)

    def encode(self, arr: np.ndarray, level: int = 8, **_ignored) -> Encoded:
        flat = np.ascontiguousarray(arr).reshape(-1)
        if flat.dtype.itemsize > 1 and flat.dtype.byteorder == ">":
            flat = flat.astype(flat.dtype.newbyteorder("<"))
        if flat.dtype == np.float16:
            flat = flat.view(np.uint16)
        payload = standalone.simple_compress(flat, ChunkConfig(compression_level=int(level), enable_8_bit=True))
        return Encoded(payload)

    def decode(self, payload, shape, dtype, params, model_id) -> np.ndarray:
        out = standalone.simple_decompress(bytes(payload))
        if dtype == np.float16:
            out = out.view(np.float16)
        n = int(np.prod(shape, dtype=np.int64))
        if out.dtype != dtype or out.size != n:
            raise ValueError(f"lossless payload decoded to {out.size} x {out.dtype}, expected {n} x {dtype}")
        return out.reshape(shape)


MODE = LosslessMode()
