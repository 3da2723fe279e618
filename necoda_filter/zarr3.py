"""Zarr v3 array-to-bytes codec ``necoda`` (entry point ``zarr.codecs: necoda``).

Zarr v2 arrays use :class:`necoda_filter.NecodaCodec` as their compressor directly.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from zarr.abc.codec import ArrayBytesCodec

from . import chunk, options
from .constants import FILTER_NAME
from .container import MAX_NDIM, CorruptChunk
from .dtypes import code_of


@dataclass(frozen=True)
class NecodaZarrCodec(ArrayBytesCodec):
    is_fixed_size = False
    mode: str = "auto"
    config: dict = field(default_factory=dict)

    def __init__(self, mode: str = "auto", **opts):
        # model= (learned/auto: a built-in name, content id or package folder) is kept as its id, so the
        # array's metadata names the model portably; metadata naming a model not installed here opens
        # (from_dict), and writing or reading a learned chunk then fails naming the id
        strict = opts.pop("_strict_model", True)
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "config", options.check_options(mode, opts, strict_model=strict, stored=not strict))

    @classmethod
    def from_dict(cls, data):
        cfg = dict(data.get("configuration") or {})
        return cls(**cfg, _strict_model=False)

    def to_dict(self):
        return {"name": FILTER_NAME, "configuration": {"mode": self.mode, **self.config}}

    def __repr__(self):  # the constructor call (the dataclass repr showed a config= it does not take)
        opts = "".join(f", {k}={v!r}" for k, v in self.config.items())
        return f"NecodaZarrCodec(mode={self.mode!r}{opts})"

    def __hash__(self):
        return hash((self.mode, tuple(sorted(self.config.items()))))

    def validate(self, *, shape, dtype, chunk_grid):
        code_of(dtype.to_native_dtype())  # refuse unsupported dtypes (bool, complex, ...) when the array is created
        options.check_for_dtype(self.mode, self.config, dtype.to_native_dtype())
        if len(shape) > MAX_NDIM:  # else created, and then no chunk could ever be written
            raise ValueError(f"necoda chunks have at most {MAX_NDIM} dimensions; this array has {len(shape)}")

    def evolve_from_array_spec(self, array_spec):
        # sharding_indexed does not validate its inner codecs, but it evolves them when the array is created
        code_of(array_spec.dtype.to_native_dtype())
        options.check_for_dtype(self.mode, self.config, array_spec.dtype.to_native_dtype())
        return self

    # CPU-bound coding runs in a worker thread, as zarr's own zstd/gzip/blosc codecs do: on the event loop's
    # thread it would code the chunks of a read or write one after another and stall the store I/O meanwhile
    async def _decode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array, chunk_spec):
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def _decode_sync(self, chunk_bytes, chunk_spec):
        data = chunk_bytes.as_numpy_array()
        # the header is checked before decoding: a few KB of hostile or damaged chunk could otherwise make
        # us allocate and fill what its header claims (up to container.MAX_CHUNK_BYTES)
        h = chunk.info(data)
        want = np.dtype(chunk_spec.dtype.to_native_dtype())
        shape = tuple(chunk_spec.shape)
        # chunks store little-endian samples: the one legitimate cast is to a big-endian array dtype
        if h.dtype.newbyteorder("<") != want.newbyteorder("<"):
            raise CorruptChunk(f"necoda chunk holds {h.dtype} samples, the zarr array's dtype is {want}")
        # chunk.encode stores a 0-d chunk as shape (1,)
        if tuple(h.shape) != shape and not (shape == () and tuple(h.shape) == (1,)):
            raise CorruptChunk(f"necoda chunk has shape {tuple(h.shape)}, the zarr array's chunks are {shape}")
        arr = chunk.decode(data)
        arr = arr.astype(want, copy=False).reshape(shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(arr)

    def _encode_sync(self, chunk_array, chunk_spec):
        arr = np.ascontiguousarray(chunk_array.as_numpy_array())
        options.require_model(self.mode, self.config, arr.shape, arr.dtype)  # never stored raw for want of it
        return chunk_spec.prototype.buffer.from_bytes(chunk.encode(arr, self.mode, **self.config))

    def compute_encoded_size(self, input_byte_length, chunk_spec):
        raise NotImplementedError
