"""``NecodaCodec``: the numcodecs codec (entry point ``numcodecs.codecs: necoda``) over the same chunk codec.

Chunks keep their shape when the caller passes an ndarray (zarr does); a flat buffer is coded as 1-D
uint8 bytes. As for every numcodecs codec, ``decode`` gives back the bytes ``encode`` was given, in memory
order: an F-ordered chunk (zarr v2 ``order="F"``) is coded in its own axis order (time stays time for the
learned mode) and decodes to an F-ordered array (container format version 2). Big-endian chunks are
refused: chunks store little-endian samples, and a byte-level consumer (zarr v2 views the decoded bytes as
the array's dtype) would read them byte-swapped; zarr v3 (:mod:`necoda_filter.zarr3`) handles byte order.

``model=`` (learned/auto) takes a built-in name, a content id or a package folder and is kept as the id,
so the config (zarr's ``.zarray``) names the model portably; a config naming a model that is not
installed here opens, and encoding or decoding a learned chunk then fails naming the id.
"""
from __future__ import annotations

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_contiguous_ndarray, ensure_ndarray, ndarray_copy

from . import chunk, options
from .constants import FILTER_NAME
from .dtypes import UnsupportedDtype


class NecodaCodec(Codec):
    codec_id = FILTER_NAME

    def __init__(self, mode: str = "auto", max_error=None, max_error_noise=None, quality=None, level=None,
                 model=None, *, _strict_model: bool = True):
        self.mode = mode
        self.options = options.check_options(
            mode, dict(max_error=max_error, max_error_noise=max_error_noise, quality=quality, level=level,
                       model=model), strict_model=_strict_model, stored=not _strict_model)

    def encode(self, buf):
        arr = buf if isinstance(buf, np.ndarray) else ensure_ndarray(buf)
        if arr.dtype.str[0] == ">":
            raise UnsupportedDtype(
                f"necoda (numcodecs) cannot code big-endian {arr.dtype.str} data: decode returns little-endian "
                f"samples, which zarr v2 would read byte-swapped; use dtype {arr.dtype.newbyteorder('<').str!r} "
                "(or a zarr v3 array with NecodaZarrCodec)")
        if self.mode == "bounded" and arr.ndim == 1 and arr.dtype == np.uint8 and not getattr(self, "_warned", False):
            # what zarr v2 hands a compressor after a byte-level filter (Shuffle, BitShuffle: 1-D bytes): the
            # bound would hold for those bytes, not for the array's samples (measured: max error 514 for
            # max_error=2 on int16 behind Shuffle). Real 1-D uint8 data looks the same, so a warning only.
            import warnings

            self._warned = True
            warnings.warn("necoda bounded mode got 1-D uint8 bytes: if a byte-level filter (Shuffle, BitShuffle) "
                          "runs before it, its error bound applies to those bytes, not to your samples; remove "
                          "the filter (necoda does its own prediction)", UserWarning, stacklevel=2)
        # an F-ordered chunk (zarr v2 order="F") is coded in its own axis order and decodes to an F-ordered
        # array: the same bytes in memory, as numcodecs requires (chunk.ORDER_KEY)
        options.require_model(self.mode, self.options, arr.shape, arr.dtype)  # never stored raw for want of it
        options.check_for_dtype(self.mode, self.options, arr.dtype)  # nor for options this dtype cannot take
        return chunk.encode(arr, self.mode, **self.options)

    def decode(self, buf, out=None):
        buf = ensure_contiguous_ndarray(buf)
        if out is not None:
            # checked against the header before decoding: a few KB of hostile or damaged chunk could
            # otherwise make us allocate and fill what its header claims (up to container.MAX_CHUNK_BYTES)
            out = ensure_ndarray(out)
            if out.dtype == object:  # numcodecs: never decode into an object array (samples, not bytes)
                raise TypeError("necoda cannot decode into an object array")
            h = chunk.info(buf)
            if out.nbytes != h.nbytes:
                raise ValueError(f"output buffer has {out.nbytes} bytes, the chunk decodes to {h.nbytes}")
            if out.dtype.itemsize == h.dtype.itemsize and out.dtype != np.uint8:
                # an output typed like the samples (zarr-python 2 passes the chunk's array; zarr-python 3's
                # format-2 arrays pass no ``out``, so there nothing can be checked): a chunk of another
                # type of that size would be reinterpreted (a uint16 chunk in an int16 array read 60000 as
                # -5536): refused by the HDF5 shim's rule (same kind). Outputs of another item size, and
                # uint8, are numcodecs' byte-level convention (the bytes of the chunk, whatever their view).
                chunk.check_layout(h.dtype, h.shape, out.dtype, h.shape)
            if not (out.flags.c_contiguous or out.flags.f_contiguous):
                # reshape(-1) of such an array is a copy: the decoded chunk would never reach ``out``
                raise ValueError("an output array with contiguous memory is required")
            return ndarray_copy(chunk.decode(buf), out)
        return chunk.decode(buf)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("id", None)
        unknown = [k for k in config if k != "mode" and k not in options.OPTION_NAMES]
        if unknown:  # the package's own message (as the zarr v3 codec's), not __init__'s TypeError
            raise TypeError(f"unknown necoda option {unknown[0]!r}; options are mode, {', '.join(options.OPTION_NAMES)}")
        return cls(**config, _strict_model=False)  # a stored config opens where its model is not installed

    def get_config(self):
        return {"id": self.codec_id, "mode": self.mode, **self.options}

    def __repr__(self):
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"NecodaCodec(mode={self.mode!r}{opts})"
