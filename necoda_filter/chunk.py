"""The one chunk codec every adapter (HDF5 shim, numcodecs, zarr, batched reader) goes through."""
from __future__ import annotations

import logging

import numpy as np

from . import container, modes
from .constants import ORDER_PARAM_SINCE, PAD_PARAM_SINCE
from .dtypes import code_of
from .options import BOUNDED_NEEDS_A_BOUND, asks_exact, check_bound

log = logging.getLogger("necoda_filter")

#: container parameter naming the coded core of a chunk whose trailing hyperplanes are padding (one value)
CORE_KEY = "_core"
#: container parameter (format version 3) holding the value of that padding when it is not zero: its bit
#: pattern as an unsigned integer of the dtype's size (exact for every dtype: NaN payloads, -0.0)
PAD_KEY = "_pad"
#: padding that is not zero counts only where it is at least this many samples along an axis: a run of equal
#: samples that short at the end of real data (a 1-D chunk ending on a repeated value) is no padding, and
#: marking it would only move an ordinary chunk to format version 3 (unreadable by older releases)
MIN_PAD_SAMPLES = 64
#: container parameter of a chunk given in Fortran order (format version 2): it is coded in its own axis
#: order, and decodes to a Fortran-ordered array, so a byte-level consumer gets back the bytes it gave
ORDER_KEY = "_order"


def _fortran_only(arr: np.ndarray) -> bool:
    """An array laid out in Fortran order and not also in C order (zarr v2 ``order="F"`` chunks)."""
    return arr.ndim >= 2 and arr.flags.f_contiguous and not arr.flags.c_contiguous


def _bits(arr: np.ndarray) -> np.ndarray:
    """``arr`` viewed as unsigned integers of its item size, in its byte order: equal bits, equal integers."""
    return arr.view(f"{arr.dtype.str[0]}u{arr.dtype.itemsize}")


def _padded_core(arr: np.ndarray) -> tuple | None:
    """``(core shape, padding bits)`` of ``arr`` when its trailing hyperplanes along some axes all hold its
    last sample (bit for bit), or None when there are none.

    HDF5 hands filters full-size edge chunks padded with the dataset's fill value (0 unless set; 65535 or -1
    are common "missing" markers), zarr and numcodecs with the array's fill value: left in, that padding
    would distort what lossy modes estimate from a chunk (noise model, baseline, network input — the learned
    network smears a step to 65535 into the real pixels). The padding is restored exactly on decode.
    Padding bits 0 (+0.0 for floats) are the only padding format versions 1 and 2 know; other padding must
    span at least ``MIN_PAD_SAMPLES`` samples along an axis."""
    if arr.ndim == 0 or arr.size == 0:
        return None
    bits = _bits(arr)  # compare bits: -0.0 is no +0.0 padding, and NaN padding equals itself
    v = bits.reshape(-1)[-1]
    pad = int(v)
    core = list(arr.shape)
    differs = None
    for ax in range(arr.ndim):
        if np.all(np.take(bits, -1, axis=ax) == v):  # cheap test on the last hyperplane first
            if differs is None:
                differs = bits != v if pad else bits  # (zero padding: the test of format versions 1 and 2)
            other = tuple(i for i in range(arr.ndim) if i != ax)
            nz = np.flatnonzero(np.any(differs, axis=other))
            c = int(nz[-1]) + 1 if nz.size else 0
            if pad and (arr.shape[ax] - c) * (arr.size // arr.shape[ax]) < MIN_PAD_SAMPLES:
                continue
            core[ax] = c
    if 0 in core or tuple(core) == arr.shape:
        return None
    return tuple(core), pad


def _fill(out: np.ndarray, pad: int) -> None:
    """Set every sample of ``out`` to the padding whose bits are ``pad``."""
    if pad:
        _bits(out)[...] = pad
    else:
        out[...] = 0


def encode(arr: np.ndarray, mode: str = "auto", *, on_raw=None, **options) -> bytes:
    """Compress one chunk into a self-describing necoda container.

    ``on_raw``: called with the reason (text) when the chosen mode failed on the chunk and it is stored raw.

    Trailing hyperplanes that all hold the chunk's last sample (an edge chunk's padding) are left out of what
    the mode codes and restored exactly on decode (``_core``, and ``_pad`` with format version 3 when that
    value is not zero).

    If the mode cannot handle the chunk (it raises), or a lossless mode does not beat raw size,
    the chunk is stored raw inside the container: data is never lost and never written unmarked.
    A Fortran-ordered ``arr`` is coded in its own axis order (the network sees time as time) and decodes
    to a Fortran-ordered array with the same values (format version 2).
    """
    arr = np.asarray(arr)
    fortran = _fortran_only(arr)
    arr = np.ascontiguousarray(arr)
    code_of(arr.dtype)  # clear error for unsupported dtypes
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype.itemsize > 1 and arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    name = modes.resolve(mode, arr.shape, arr.dtype)
    # a bad bound is the caller's mistake, not a chunk the mode cannot handle: an error, not a raw chunk
    for k in ("max_error", "max_error_noise"):
        if options.get(k) is not None:
            options[k] = check_bound(k, options[k])
    if name == "bounded" and options.get("max_error") is None and options.get("max_error_noise") is None:
        raise ValueError(BOUNDED_NEEDS_A_BOUND)
    if name == "learned" and mode == "auto" and asks_exact(options, arr.dtype):  # lossless, not learned stored raw
        name = "lossless"
    m = modes.get(name)
    raw_size = arr.nbytes
    enc = None
    if name != "raw":
        padded = _padded_core(arr)
        try:
            if padded is None:
                enc = m.encode(arr, **options)
            else:
                core, pad = padded
                enc = m.encode(np.ascontiguousarray(arr[tuple(slice(0, c) for c in core)]), **options)
                enc.params = {**enc.params, CORE_KEY: list(core), **({PAD_KEY: pad} if pad else {})}
        except Exception as e:  # noqa: BLE001 — any failure falls back to raw, loudly in the log
            enc, failed = None, name
            if mode == "auto" and name == "learned":  # "auto" chose it: the exact mode is the other choice
                try:
                    m = modes.get("lossless")
                    enc = m.encode(arr, **options)
                    log.info("necoda auto: the learned mode could not code a %s %s chunk (%s: %s); coded "
                             "losslessly", arr.shape, arr.dtype, type(e).__name__, e)
                except Exception:  # noqa: BLE001 — then raw, as below
                    enc = None
            if enc is None:
                name = failed
                log.warning("necoda %s encoder could not handle a %s %s chunk (%s: %s); stored raw",
                            name, arr.shape, arr.dtype, type(e).__name__, e)
                if on_raw is not None:
                    on_raw(f"{type(e).__name__}: {e}")
        if enc is not None and not m.lossy and len(enc.payload) >= raw_size:
            enc = None
    if enc is None:
        m = modes.get("raw")
        enc = m.encode(arr)
    params = enc.params
    version = PAD_PARAM_SINCE if params and PAD_KEY in params else 1  # the lowest version that describes it
    if fortran:
        params, version = {**(params or {}), ORDER_KEY: "F"}, max(version, ORDER_PARAM_SINCE)
    return container.pack(m.mode_id, arr.dtype, arr.shape, enc.payload, params, enc.model_id, version)


def _open(buf):
    """(header, payload, mode, params without the container keys, core shape or None, padding bits) of a
    chunk."""
    h, payload = container.unpack(buf)
    if h.mode_id not in modes.MODE_NAMES:
        raise container.CorruptChunk(f"necoda chunk uses unknown mode id {h.mode_id}")
    m = modes.get(h.mode_id)
    params, core = h.params, None
    if ORDER_KEY in params:
        if params[ORDER_KEY] != "F" or h.version < ORDER_PARAM_SINCE:
            raise container.CorruptChunk(f"necoda chunk has an invalid {ORDER_KEY} parameter "
                                         f"{params[ORDER_KEY]!r} (format version {h.version})")
        params = {k: v for k, v in params.items() if k != ORDER_KEY}
    if CORE_KEY in params:
        params = {k: v for k, v in params.items() if k != CORE_KEY}
        params_core = h.params[CORE_KEY]
        if (not isinstance(params_core, list) or len(params_core) != len(h.shape)
                or not all(isinstance(c, int) and 0 < c <= s for c, s in zip(params_core, h.shape))):
            raise container.CorruptChunk(f"necoda chunk has an invalid core shape {params_core!r}")
        core = tuple(params_core)
    pad = 0
    if PAD_KEY in params:
        params = {k: v for k, v in params.items() if k != PAD_KEY}
        pad = h.params[PAD_KEY]
        # written only with a core, by format version 3, and never 0 (zero padding is written without it)
        if (core is None or h.version < PAD_PARAM_SINCE or type(pad) is not int
                or not 0 < pad < 1 << (8 * h.dtype.itemsize)):
            raise container.CorruptChunk(f"necoda chunk has an invalid padding value {pad!r} "
                                         f"(format version {h.version}, core {core})")
    return h, payload, m, params, core, pad


def _run(h, m, fn):
    """Call a mode's decoder; anything it raises on bad bytes becomes a CorruptChunk."""
    try:
        return fn()
    except container.CorruptChunk:
        raise
    except Exception as e:  # noqa: BLE001 — anything a mode raises on bad bytes is a corrupt chunk
        from ._kernels import KernelsUnavailable
        from .models.registry import ModelNotFound

        if isinstance(e, (ModelNotFound, FileNotFoundError, KernelsUnavailable)):
            raise  # a model or the kernels library not installed here (a broken install): not corruption
        # KeyError / IndexError included: a parameter block or section table that lacks an entry
        raise container.CorruptChunk(f"necoda {modes.MODE_NAMES[h.mode_id]} payload could not be decoded: "
                                     f"{type(e).__name__}: {e}") from e


def _check(arr, shape, dtype):
    arr = np.asarray(arr)
    if arr.shape != tuple(shape) or arr.dtype != dtype:
        raise container.CorruptChunk(f"necoda chunk decoded to {arr.shape} {arr.dtype}, header says {tuple(shape)} {dtype}")
    return arr


def decode(buf, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one necoda chunk. Raises ``container.CorruptChunk`` on anything invalid."""
    h, payload, m, params, core, pad = _open(buf)
    arr = _check(_run(h, m, lambda: m.decode(payload, core or h.shape, h.dtype, params, h.model_id)),
                 core or h.shape, h.dtype)
    if core is not None:
        if pad:
            full = np.empty(h.shape, dtype=h.dtype)
            _fill(full, pad)
        else:
            full = np.zeros(h.shape, dtype=h.dtype)
        full[tuple(slice(0, c) for c in core)] = arr
        arr = full
    if ORDER_KEY in h.params:  # given in Fortran order: give it back so (same values, same bytes in memory)
        arr = np.asfortranarray(arr)
    if out is not None:
        # same number of samples, any shape and layout, filled in the chunk's memory order (C, or F for
        # an F-ordered chunk): never out.reshape(...), which returns a copy (and leaves ``out`` unwritten)
        # when ``out`` is not contiguous in that order
        if out.size != arr.size:
            raise ValueError(f"output array has {out.size} elements, the chunk decodes to {arr.size} {h.shape}")
        np.copyto(out, arr if out.shape == arr.shape else arr.reshape(out.shape, order="A"), casting="no")
        return out
    return arr


def decode_box(buf, out: np.ndarray, start) -> np.ndarray:
    """Decode the box of a chunk that starts at ``start`` and has ``out``'s shape into ``out``.

    Equal to ``out[...] = decode(buf)[box]``; modes that can (learned chunks with a packed decoder) write
    the box straight into ``out`` — a view into a reader's array — without a chunk-sized temporary."""
    h, payload, m, params, core, pad = _open(buf)
    start = tuple(int(s) for s in start)
    if out.ndim != len(h.shape) or len(start) != out.ndim or out.dtype != h.dtype or any(
            s < 0 or s + n > c for s, n, c in zip(start, out.shape, h.shape)):
        raise ValueError(f"box at {start} of shape {out.shape} {out.dtype} is not inside a {h.shape} {h.dtype} chunk")
    shape = core or h.shape
    # the part of the box inside the coded core; the rest is padding (zero, or the value ``pad`` holds)
    inner = tuple(max(0, min(s + n, c) - s) for s, n, c in zip(start, out.shape, shape))
    if 0 in inner:
        _fill(out, pad)
        return out
    if inner != out.shape:
        _fill(out, pad)
    view = out[tuple(slice(0, n) for n in inner)]
    if "into" in getattr(m, "decode_options", ()):
        got = _run(h, m, lambda: m.decode(payload, shape, h.dtype, params, h.model_id, into=(view, start)))
        if got is None:
            return out
    else:
        got = _run(h, m, lambda: m.decode(payload, shape, h.dtype, params, h.model_id))
    arr = _check(got, shape, h.dtype)
    view[...] = arr[tuple(slice(s, s + n) for s, n in zip(start, inner))]
    return out


def info(buf) -> container.Header:
    """Header of a chunk without decoding its payload."""
    return container.parse_header(buf)


def check_layout(got_dtype, got_shape, dtype, shape) -> None:
    """A chunk's header (dtype, shape) against what its dataset stores (dtype, chunk shape): the same kind and
    sample size, and as many samples, else CorruptChunk (the rule of the HDF5 shim, ``read`` and the codecs)."""
    expected = np.dtype(dtype)
    if got_dtype.itemsize != expected.itemsize or got_dtype.kind != expected.kind:
        raise container.CorruptChunk(
            f"necoda chunk holds {got_dtype} data but the dataset type is {expected}")
    if int(np.prod(got_shape, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
        raise container.CorruptChunk(
            f"necoda chunk holds {tuple(got_shape)} samples but the dataset's chunks are {tuple(shape)}")
