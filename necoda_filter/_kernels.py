"""ctypes wrapper of ``libnecoda_kernels.so`` (csrc/necoda_kernels.c): the lossless/bounded hot loops.

The library is plain C (no libpython, no libhdf5), built with the package and installed next to
``libh5necoda.so`` in :data:`necoda_filter.PLUGIN_PATH`. It is required: a missing library raises
:class:`KernelsUnavailable` with what to do. ctypes releases the GIL during each call.

Every function here checks its arguments (dtype, contiguity, sizes) before handing pointers to C;
element types travel as codes ``itemsize | 16 if unsigned``.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from ._plugin import PLUGIN_PATH, missing_library

LIBRARY_NAME = "libnecoda_kernels.so"
ABI_VERSION = 9

_i64 = ctypes.c_int64
_u64 = ctypes.c_uint64
_int = ctypes.c_int
_vp = ctypes.c_void_p
_ERRORS = {-1: "bad argument", -2: "out of memory", -3: "value out of range"}


class KernelsUnavailable(RuntimeError):
    """libnecoda_kernels.so is missing or does not match this version of necoda_filter."""


_lib = None


def library_path() -> str:
    return os.path.join(PLUGIN_PATH, LIBRARY_NAME)


def lib():
    """The loaded library (loaded once)."""
    global _lib
    if _lib is None:
        path = library_path()
        if not os.path.exists(path):
            raise KernelsUnavailable(missing_library(LIBRARY_NAME, "kernels", PLUGIN_PATH))
        try:
            L = ctypes.CDLL(path)
        except OSError as e:
            raise KernelsUnavailable(f"cannot load {path}: {e}") from e
        L.nk_version.restype = _int
        L.nk_version.argtypes = []
        if L.nk_version() != ABI_VERSION:
            raise KernelsUnavailable(f"{path} has kernel ABI {L.nk_version()}, expected {ABI_VERSION}: rebuild")
        sigs = {
            "nk_stats": [_vp, _int, _i64, _i64, _vp, _vp],
            "nk_lpc_rows": [_vp, _int, _i64, _i64, _u64, _vp, _vp, _i64, _int, _i64, _i64, _vp, _i64, _vp],
            "nk_lpc_encode": [_vp, _int, _i64, _i64, _u64, _vp, _vp, _i64, _vp, _i64, _int, _i64, _i64, _vp, _vp,
                              _int, _vp],
            "nk_lpc_decode": [_vp, _int, _i64, _i64, _vp, _u64, _vp, _i64, _vp, _i64, _int, _i64, _i64, _vp, _int],
            "nk_img_gram": [_vp, _int, _i64, _i64, _i64, _u64, _vp, _vp, _i64, _vp, _vp],
            "nk_img_residual": [_vp, _int, _i64, _i64, _i64, _u64, _vp, _i64, _i64, _i64, _int, _int, _vp, _i64,
                                _vp, _int, _vp],
            "nk_img_decode": [_vp, _int, _i64, _vp, _i64, _i64, _i64, _vp, _u64, _i64, _i64, _i64, _int, _int,
                              _vp, _int],
            "nk_quant_uniform": [_vp, _int, _i64, _u64, _i64, _i64, _vp, _int],
            "nk_quant_lut": [_vp, _int, _i64, _u64, _vp, _i64, _vp, _i64, _vp, _int, _vp],
            "nk_dequant_uniform": [_vp, _int, _i64, _i64, _i64, _u64, _vp, _int],
            "nk_dequant_lut": [_vp, _int, _i64, _vp, _i64, _vp, _int],
            "nk_moments": [_vp, _int, _i64, _i64, _vp, _vp],
            "nk_error_stats": [_vp, _vp, _int, _i64, _vp],
            "nk_cl_lorenzo": [_vp, _int, _i64, _i64, _i64, _u64, _i64, _i64, _vp, _int, _vp, _int, _int, _vp,
                              _int],
            "nk_learned_finish": [_vp, _i64, _i64, _i64, _i64, _i64, _i64, _vp, _i64, _i64, _i64, _i64, _i64,
                                  _i64, _i64, ctypes.c_float, ctypes.c_float, _int, _vp, _i64, _i64, _i64,
                                  _int],
            "nk_vst": [_vp, _int, _i64, ctypes.c_float, ctypes.c_float, _vp],
            "nk_learned_trunk": [_vp, _vp, _vp, _i64, _i64, _i64, _i64, ctypes.c_float, _int],
            "nk_learned_trunk_reblock": [_vp, _vp, _vp, _vp, _i64, _i64, _i64, _i64, _i64, _i64, ctypes.c_float,
                                         _int],
            "nk_cl_lpc": [_vp, _int, _i64, _i64, _u64, _i64, _i64, _vp, _vp, _i64, _vp, _int, _vp, _int, _int,
                          _vp, _int],
        }
        for name, args in sigs.items():
            f = getattr(L, name)
            f.argtypes = args
            f.restype = _int
        _lib = L
    return _lib


def available() -> bool:
    try:
        lib()
        return True
    except KernelsUnavailable:
        return False


# ---------------------------------------------------------------------------------------------- checks
def _call(name, *args):
    rc = getattr(lib(), name)(*args)
    if rc != 0:
        raise ValueError(f"necoda kernel {name} failed: {_ERRORS.get(rc, rc)}")


def code(dtype) -> int:
    """Element type code of an integer dtype (native byte order)."""
    dt = np.dtype(dtype)
    if dt.kind not in "iu" or dt.itemsize not in (1, 2, 4, 8) or not dt.isnative:
        raise TypeError(f"necoda kernels take native 1/2/4/8-byte integers, not {dt}")
    return dt.itemsize | (16 if dt.kind == "u" else 0)


def _int_array(a, name) -> np.ndarray:
    if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
        raise TypeError(f"{name}: expected a C-contiguous ndarray")
    code(a.dtype)
    return a


def _i64_array(a, n, name) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a.size != n:
        raise ValueError(f"{name}: expected {n} values, got {a.size}")
    return a


def _out_array(out, n, name) -> np.ndarray:
    if not isinstance(out, np.ndarray) or not out.flags.c_contiguous or not out.flags.writeable:
        raise TypeError(f"{name}: expected a writeable C-contiguous ndarray")
    code(out.dtype)
    if out.size != n:
        raise ValueError(f"{name}: expected {n} elements, got {out.size}")
    return out


def _u(v: int) -> int:
    """An integer in [-2**63, 2**64) as the uint64 with the same low 64 bits."""
    v = int(v)
    if not -(1 << 63) <= v < 1 << 64:
        raise OverflowError(f"{v} does not fit 64 bits")
    return v & ((1 << 64) - 1)


def _p(a: np.ndarray) -> int:
    return a.ctypes.data


# ---------------------------------------------------------------------------------------------- sums
def stats(x: np.ndarray):
    """One pass over a 2-D integer array (T, K): (column sums modulo 2**64 as uint64, min, max)."""
    _int_array(x, "x")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError("stats: x must be 2-D with at least one column")
    T, K = x.shape
    sums = np.empty(K, np.uint64)
    mm = np.zeros(2, np.uint64)
    _call("nk_stats", _p(x), code(x.dtype), T, K, _p(sums), _p(mm))
    if x.dtype.kind == "i":
        lo, hi = (int(v) for v in mm.view(np.int64))
    else:
        lo, hi = int(mm[0]), int(mm[1])
    return sums, lo, hi


def offset_sums(sums: np.ndarray, T: int, lo: int) -> np.ndarray:
    """Exact sums of ``x - lo`` from :func:`stats`' sums (the caller knows they fit int64)."""
    return (sums - np.uint64((T * lo) % (1 << 64))).view(np.int64)


# ---------------------------------------------------------------------------------------------- LPC
def _check_blocks(T, nb, L):
    if not (nb >= 1 and L >= 1 and nb * L >= T and nb * L - T < L):
        raise ValueError(f"bad LPC blocks nb={nb} L={L} for T={T}")


def _lpc_args(x, mu, Q, nb, L):
    _int_array(x, "x")
    if x.ndim != 2:
        raise ValueError("x must be 2-D (T, C)")
    T, C = x.shape
    Q = np.ascontiguousarray(Q, dtype=np.int64)
    if Q.ndim != 2 or Q.shape[0] != C or Q.shape[1] > 64:
        raise ValueError("Q must be (C, p <= 64)")
    mu = _i64_array(mu, C, "mu")
    _check_blocks(T, nb, L)
    return T, C, mu, Q


def lpc_rows(x: np.ndarray, lo: int, mu, Q: np.ndarray, shift: int, nb: int, L: int, rows) -> np.ndarray:
    """Per-channel LPC residuals (see csrc) of x (T, C) at the given rows; returns (C, len(rows)) int64."""
    T, C, mu, Q = _lpc_args(x, mu, Q, nb, L)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= T):
        raise ValueError("lpc_rows: row out of range")
    out = np.empty((C, rows.size), np.int64)
    _call("nk_lpc_rows", _p(x), code(x.dtype), T, C, _u(lo), _p(mu), _p(Q), Q.shape[1], int(shift), int(nb),
          int(L), _p(rows), rows.size, _p(out))
    return out


def lpc_encode(x: np.ndarray, lo: int, mu, Q: np.ndarray, W: np.ndarray, shift: int, nb: int, L: int,
               out_dtype=None, want_sums: bool = False):
    """Per-channel LPC then inter-channel prediction with weights W (C, nx) (see csrc).

    Returns (sums, f, rng): ``sums`` (C, 2) int64 = (sum |e[c]|, sum |f[c]|) if ``want_sums`` else None;
    ``f`` the (C, T) residuals in ``out_dtype`` (low bytes; None if no out_dtype) and ``rng`` their
    (min, max) with 0 included (None if no out_dtype)."""
    T, C, mu, Q = _lpc_args(x, mu, Q, nb, L)
    W = np.ascontiguousarray(W, dtype=np.int64)
    if W.ndim != 2 or W.shape[0] != C:
        raise ValueError("lpc_encode: W must be (C, nx)")
    sums = np.zeros((C, 2), np.int64) if want_sums else None
    out = rng = None
    if out_dtype is not None:
        out = np.empty((C, T), out_dtype)
        if out.dtype not in (np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64)):
            raise TypeError("lpc_encode: out_dtype must be int16, int32 or int64")
        rng = np.zeros(2, np.int64)
    _call("nk_lpc_encode", _p(x), code(x.dtype), T, C, _u(lo), _p(mu), _p(Q), Q.shape[1], _p(W), W.shape[1],
          int(shift), int(nb), int(L), None if sums is None else _p(sums), None if out is None else _p(out),
          0 if out is None else out.dtype.itemsize, None if rng is None else _p(rng))
    return sums, out, None if rng is None else (int(rng[0]), int(rng[1]))


def lpc_decode(r: np.ndarray, mu, lo: int, Q: np.ndarray, B: np.ndarray, shift: int, nb: int, L: int,
               out: np.ndarray) -> np.ndarray:
    """Inverse of inter-channel + LPC prediction. r: (C, T) residuals; out: (T, C) integers (filled)."""
    _int_array(r, "r")
    C = int(np.asarray(mu).size)
    if C < 1 or r.size % C:
        raise ValueError("lpc_decode: residual size does not match the channel count")
    T = r.size // C
    mu = _i64_array(mu, C, "mu")
    Q = np.ascontiguousarray(Q, dtype=np.int64)
    B = np.ascontiguousarray(B, dtype=np.int64)
    if Q.ndim != 2 or Q.shape[0] != C or Q.shape[1] > 64 or B.ndim != 2 or B.shape[0] != C:
        raise ValueError("lpc_decode: bad coefficient shapes")
    _check_blocks(T, nb, L)
    _out_array(out, T * C, "out")
    _call("nk_lpc_decode", _p(r), code(r.dtype), T, C, _p(mu), _u(lo), _p(Q), Q.shape[1], _p(B), B.shape[1],
          int(shift), int(nb), int(L), _p(out), out.dtype.itemsize)
    return out


# ---------------------------------------------------------------------------------------------- imaging
def _check_movie(x):
    _int_array(x, "x")
    if x.ndim != 3:
        raise ValueError("expected a (T, H, W) array")
    return x.shape


def img_gram(x: np.ndarray, lo: int, m, ts):
    """Normal equations (G 3×3, g 3) of the imaging predictor fit over frames ts (each >= 2)."""
    T, H, W = _check_movie(x)
    m = _i64_array(m, H * W, "m")
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    if ts.size and (ts.min() < 2 or ts.max() >= T):
        raise ValueError("img_gram: frame index out of range")
    G = np.zeros(9)
    g = np.zeros(3)
    _call("nk_img_gram", _p(x), code(x.dtype), T, H, W, _u(lo), _p(m), _p(ts), ts.size, _p(G), _p(g))
    return G.reshape(3, 3), g


def _classes(cls, n, ncls):
    cls = _i64_array(cls, n, "cls")
    if ncls < 1 or (cls.size and (cls.min() < 0 or cls.max() >= ncls)):
        raise ValueError("class index out of range")
    return cls


def img_residual(x: np.ndarray, lo: int, m, coef, shift: int, wide: bool, cls, ncls: int, out_dtype):
    """Imaging residuals of x (T, H, W), grouped by pixel class: class k's pixels (raster order) form a
    T × n_k row-major block, blocks in class order, in one flat buffer of ``out_dtype`` (int16/32/64,
    values stored as their low bytes). ``wide``: 64-bit work type (else 32-bit, valid only when the
    caller proved no intermediate overflows int32). Returns (buffer, (min, max) of all residuals, 0 included).
    """
    T, H, W = _check_movie(x)
    m = _i64_array(m, H * W, "m")
    cls = _classes(cls, H * W, ncls)
    c0, c1, c2 = (int(v) for v in np.asarray(coef, np.int64))
    out = np.empty(T * H * W, out_dtype)
    if out.dtype not in (np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64)):
        raise TypeError("img_residual: out_dtype must be int16, int32 or int64")
    rng = np.zeros(2, np.int64)
    _call("nk_img_residual", _p(x), code(x.dtype), T, H, W, _u(lo), _p(m), c0, c1, c2, int(shift), int(bool(wide)),
          _p(cls), int(ncls), _p(out), out.dtype.itemsize, _p(rng))
    return out, (int(rng[0]), int(rng[1]))


def img_decode(parts, cls, m, lo: int, coef, shift: int, wide: bool, out: np.ndarray) -> np.ndarray:
    """Inverse imaging prediction. parts[k]: (T × n_k) signed residuals of class k, all one dtype;
    out: (T, H, W) integers (filled with the low bytes of d + m + lo)."""
    if not isinstance(out, np.ndarray) or out.ndim != 3:
        raise ValueError("img_decode: out must be (T, H, W)")
    T, H, W = out.shape
    _out_array(out, T * H * W, "out")
    m = _i64_array(m, H * W, "m")
    ncls = len(parts)
    cls = _classes(cls, H * W, ncls)
    counts = np.bincount(cls, minlength=ncls)
    dt = None
    for k, p in enumerate(parts):
        _int_array(p, "parts")
        if p.dtype.kind != "i" or p.dtype.itemsize not in (2, 4, 8):
            raise TypeError("img_decode: residuals must be int16/32/64")
        if dt is not None and p.dtype != dt:
            raise TypeError("img_decode: residual streams of different dtypes")
        dt = p.dtype
        if p.size != T * counts[k]:
            raise ValueError("img_decode: residual stream size does not match its class")
    ptrs = (ctypes.c_void_p * ncls)(*[_p(p) for p in parts])
    c0, c1, c2 = (int(v) for v in np.asarray(coef, np.int64))
    _call("nk_img_decode", ctypes.cast(ptrs, ctypes.c_void_p), dt.itemsize, ncls, _p(cls), T, H, W, _p(m), _u(lo),
          c0, c1, c2, int(shift), int(bool(wide)), _p(out), out.dtype.itemsize)
    return out


# ---------------------------------------------------------------------------------------------- bounded
def quant_uniform(x: np.ndarray, lo: int, E: int, out_dtype) -> np.ndarray:
    """q = (x - lo + E) // (2E + 1) (x - lo + E must lie in [0, 2**62))."""
    _int_array(x, "x")
    E = int(E)
    if E < 0 or E >= 1 << 62:
        raise ValueError("quant_uniform: E out of range")
    out = np.empty(x.shape, out_dtype)
    code(out.dtype)
    _call("nk_quant_uniform", _p(x), code(x.dtype), x.size, _u(lo), E, 2 * E + 1, _p(out), out.dtype.itemsize)
    return out


def quant_lut(x: np.ndarray, lo: int, lut: np.ndarray, centers: np.ndarray, out_dtype):
    """q = lut[x - lo]; returns (q, max |centers[q] - x|)."""
    _int_array(x, "x")
    lut = np.ascontiguousarray(lut, dtype=np.int32)
    centers = np.ascontiguousarray(centers, dtype=np.int64)
    if lut.size < 1 or centers.size < 1:
        raise ValueError("quant_lut: empty table")
    out = np.empty(x.shape, out_dtype)
    code(out.dtype)
    emax = np.zeros(1, np.int64)
    _call("nk_quant_lut", _p(x), code(x.dtype), x.size, _u(lo), _p(lut), lut.size, _p(centers), centers.size,
          _p(out), out.dtype.itemsize, _p(emax))
    return out, int(emax[0])


def dequant_uniform(q: np.ndarray, w: int, span: int, lo: int, out: np.ndarray) -> np.ndarray:
    """out = min(q * w, span) + lo (low bytes)."""
    _int_array(q, "q")
    _out_array(out, q.size, "out")
    if w < 1 or span < 0:
        raise ValueError("dequant_uniform: bad step or span")
    _call("nk_dequant_uniform", _p(q), code(q.dtype), q.size, int(w), int(span), _u(lo), _p(out),
          out.dtype.itemsize)
    return out


def dequant_lut(q: np.ndarray, centers: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = centers[q] (low bytes); ValueError if an index is out of range."""
    _int_array(q, "q")
    _out_array(out, q.size, "out")
    centers = np.ascontiguousarray(centers, dtype=np.int64)
    _call("nk_dequant_lut", _p(q), code(q.dtype), q.size, _p(centers), centers.size, _p(out), out.dtype.itemsize)
    return out


def moments(x: np.ndarray, lo: int, hi: int):
    """Per-column (sum of x, sum of squared successive differences) of a 2-D integer array (T, K) whose
    values lie in [lo, hi], as int64 arrays; None when some partial sum could reach 2**53 (then they are
    not exact in float64 either, and the caller computes them its own way)."""
    _int_array(x, "x")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError("moments: x must be 2-D with at least one column")
    T, K = x.shape
    big = max(abs(int(lo)), abs(int(hi)))
    if big * T >= 1 << 53 or (int(hi) - int(lo)) ** 2 * T >= 1 << 53:
        return None
    sums = np.empty(K, np.uint64)
    dsq = np.empty(K, np.uint64)
    _call("nk_moments", _p(x), code(x.dtype), T, K, _p(sums), _p(dsq))
    return sums.view(np.int64), dsq.view(np.int64)


#: element types :func:`error_stats` takes (differences below 2**16: exact 64-bit sums)
ERROR_STATS_DTYPES = frozenset(np.dtype(t) for t in ("i1", "u1", "i2", "u2"))
#: :func:`error_stats` takes fewer samples than this (the squared differences then sum below 2**63)
ERROR_STATS_MAX_N = 1 << 31


def error_stats(a: np.ndarray, b: np.ndarray):
    """One pass over two C-contiguous integer arrays of one 1- or 2-byte type and 1 <= size < 2**31:
    exact (sum of b - a, sum of (b - a)**2, max |b - a|, min a, max a) as Python ints."""
    if a.dtype != b.dtype or a.dtype not in ERROR_STATS_DTYPES or not a.dtype.isnative:
        raise TypeError(f"error_stats takes two arrays of one native 1- or 2-byte integer type, not {a.dtype}, {b.dtype}")
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.flags.c_contiguous and b.flags.c_contiguous):
        raise TypeError("error_stats: expected C-contiguous ndarrays")
    if a.size != b.size or not 1 <= a.size < ERROR_STATS_MAX_N:
        raise ValueError(f"error_stats: sizes {a.size} and {b.size} (equal, 1 .. 2**31 - 1)")
    out = np.zeros(5, np.uint64)
    _call("nk_error_stats", _p(a), _p(b), code(a.dtype), a.size, _p(out))
    s1, s2, mx, lo, hi = (int(v) for v in out.view(np.int64))
    return s1, s2, mx, lo, hi


# ---------------------------------------------------------------------------------------------- closed loop
def _cl_check(R, E):
    R, E = int(R), int(E)
    if not (0 <= R < 1 << 32 and 0 <= E <= R + 1):
        raise ValueError("closed loop: range must be < 2**32 and 0 <= E <= range + 1")
    return R, E


def _q_dtype(qd):
    qd = np.dtype(qd)
    if qd not in (np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64)):
        raise TypeError("closed loop: indices must be int16, int32 or int64")
    return qd


def cl_qmax(R: int, E: int) -> int:
    """The largest |index| the closed loop can emit for range R and bound E."""
    return (int(R) + int(E)) // (2 * int(E) + 1)


def cl_lorenzo(x: np.ndarray | None, shape3, lo: int, R: int, E: int, coef, shift: int, q_dtype=None,
               q: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Closed-loop Lorenzo-mix coding of a (T, H, W) integer array (see csrc ``nk_cl_lorenzo``).

    Encode: ``x`` given (values in [lo, lo + R]), returns the indices (``q_dtype``). Decode: ``x`` None,
    ``q`` the indices and ``out`` the (T, H, W) integer output (filled and returned)."""
    T, H, W = (int(v) for v in shape3)
    if T < 0 or H < 1 or W < 1:
        raise ValueError("cl_lorenzo: bad shape")
    R, E = _cl_check(R, E)
    c = np.ascontiguousarray(coef, dtype=np.int64)
    if c.size != 4 or np.abs(c).max() > 1 << 16 or not 1 <= int(shift) <= 16:
        raise ValueError("cl_lorenzo: bad coefficients")
    n = T * H * W
    if x is not None:
        _int_array(x, "x")
        if x.size != n:
            raise ValueError("cl_lorenzo: x does not match the shape")
        q = np.empty(n, _q_dtype(q_dtype))
        _call("nk_cl_lorenzo", _p(x), code(x.dtype), T, H, W, _u(lo), R, E, _p(c), int(shift), _p(q),
              q.dtype.itemsize, 0, None, 0)
        return q
    _int_array(q, "q")
    _q_dtype(q.dtype)
    if q.size != n:
        raise ValueError("cl_lorenzo: index count does not match the shape")
    _out_array(out, n, "out")
    _call("nk_cl_lorenzo", None, 0, T, H, W, _u(lo), R, E, _p(c), int(shift), _p(q), q.dtype.itemsize, 1,
          _p(out), out.dtype.itemsize)
    return out


def cl_lpc(x: np.ndarray | None, shape2, lo: int, R: int, E: int, mu, Q, B, shift: int, q_dtype=None,
           q: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Closed-loop per-channel linear prediction (+ inter-channel term) of a (T, C) integer array (see csrc
    ``nk_cl_lpc``). Encode / decode as :func:`cl_lorenzo`."""
    T, C = (int(v) for v in shape2)
    if T < 0 or C < 1:
        raise ValueError("cl_lpc: bad shape")
    R, E = _cl_check(R, E)
    mu = _i64_array(mu, C, "mu")
    Q = np.ascontiguousarray(Q, dtype=np.int64)
    B = _i64_array(B, C, "B")
    if Q.ndim != 2 or Q.shape[0] != C or Q.shape[1] > 32 or not 1 <= int(shift) <= 16:
        raise ValueError("cl_lpc: bad coefficients")
    if (mu.size and (mu.min() < 0 or mu.max() > R)) or np.abs(Q).max(initial=0) >= 1 << 16 \
            or np.abs(B).max(initial=0) >= 1 << 16:
        raise ValueError("cl_lpc: coefficients out of range")
    n = T * C
    if x is not None:
        _int_array(x, "x")
        if x.size != n:
            raise ValueError("cl_lpc: x does not match the shape")
        q = np.empty(n, _q_dtype(q_dtype))
        _call("nk_cl_lpc", _p(x), code(x.dtype), T, C, _u(lo), R, E, _p(mu), _p(Q), Q.shape[1], _p(B),
              int(shift), _p(q), q.dtype.itemsize, 0, None, 0)
        return q
    _int_array(q, "q")
    _q_dtype(q.dtype)
    if q.size != n:
        raise ValueError("cl_lpc: index count does not match the shape")
    _out_array(out, n, "out")
    _call("nk_cl_lpc", None, 0, T, C, _u(lo), R, E, _p(mu), _p(Q), Q.shape[1], _p(B), int(shift), _p(q),
          q.dtype.itemsize, 1, _p(out), out.dtype.itemsize)
    return out


# ---------------------------------------------------------------------------------------------- learned
def _learned_code(dtype) -> int:
    """Element code of the learned-mode kernels: :func:`code` for integers, itemsize | 32 for floats."""
    dt = np.dtype(dtype)
    return dt.itemsize | 32 if dt.kind == "f" else code(dt)


#: output dtypes nk_learned_finish stores itself (wider integers: numpy path)
LEARNED_FINISH_CODES = {np.dtype(t): _learned_code(t) for t in ("i1", "u1", "i2", "u2", "f4", "f8")}


def finish_layout_ok(out: np.ndarray) -> bool:
    """True when :func:`learned_finish` can write into the 3-D array ``out``: contiguous rows and
    non-overlapping, increasing strides (any C-ordered array and any box of one)."""
    T, H, W = out.shape
    item = out.dtype.itemsize
    st, sy, sx = out.strides
    return not ((W > 1 and sx != item) or st % item or sy % item or (H > 1 and sy < W * item)
                or (T > 1 and st < (H - 1) * sy + W * item))


#: layouts of the learned decoder's float tensors the kernels read: 1 planar (NCHW), else ONNX Runtime's
#: blocked NCHWc layout with that many channels per block (models/trunk.py)
LEARNED_BLOCKS = (1, 4, 8, 16)


def learned_finish(p: np.ndarray, origin, bq: np.ndarray, a: float, b: float, out: np.ndarray,
                   window=(0, 0, 0), threads: int = 1) -> None:
    """Finish one tile of the learned decoder's packed output ``p`` (t2, 32, h4, w4), whose first voxel is
    at ``origin`` (t0, y0, x0) of the chunk: add the baseline ``bq`` (the chunk's (H, W) image), invert the
    VST ``a * max(v, 0)**2 + b`` (rounded and clipped for integer ``out``) and store the voxels that fall in
    the box of the chunk starting at ``window`` (wt, wy, wx) with ``out``'s shape, into ``out``. ``out``
    may be a view into a larger array (any positive strides, rows contiguous): a reader can decode a box
    of a chunk straight into its own array. Padding beyond the box is dropped. ``threads`` > 1 splits the
    frame pairs over that many threads (the same bytes: each thread writes its own frames). ``p`` may also
    be in ONNX Runtime's blocked layout, (t2, 32 / B, h4, w4, B) for B in 4, 8, 16 (the same values)."""
    ok = isinstance(p, np.ndarray) and p.dtype == np.float32 and p.flags.c_contiguous
    blk = 1 if ok and p.ndim == 4 else (p.shape[-1] if ok and p.ndim == 5 else 0)
    if blk not in LEARNED_BLOCKS or p.shape[1] * blk != 32:
        raise TypeError("learned_finish: p must be a C-contiguous float32 (t2, 32, h4, w4) array, or "
                        "(t2, 32/B, h4, w4, B) blocked")
    if not isinstance(out, np.ndarray) or out.ndim != 3 or not out.flags.writeable:
        raise TypeError("learned_finish: out must be a writeable 3-D (T, H, W) array")
    c = LEARNED_FINISH_CODES.get(out.dtype)
    if c is None or not out.dtype.isnative:
        raise TypeError(f"learned_finish: unsupported output dtype {out.dtype}")
    T, H, W = out.shape
    item = out.dtype.itemsize
    st, sy, sx = out.strides
    if not finish_layout_ok(out):
        raise TypeError("learned_finish: out must have contiguous rows and non-overlapping, increasing strides")
    wt, wy, wx = (int(v) for v in window)
    if not isinstance(bq, np.ndarray) or bq.dtype != np.float32 or bq.ndim != 2 or bq.strides[1] != 4 \
            or bq.shape[0] < wy + H or bq.shape[1] < wx + W:
        raise TypeError("learned_finish: bq must be a float32 (H, W) image with contiguous rows covering the window")
    t0, y0, x0 = (int(v) for v in origin)
    _call("nk_learned_finish", p.ctypes.data, p.shape[0], p.shape[2], p.shape[3], t0, y0, x0, bq.ctypes.data,
          bq.strides[0] // 4, wt, wy, wx, T, H, W, float(np.float32(a)), float(np.float32(b)), c, out.ctypes.data,
          max(st // item, 0) if T > 1 else H * W, sy // item if H > 1 else W, blk, max(1, int(threads)))


def learned_trunk(u: np.ndarray, ctx: np.ndarray, s: np.ndarray, alpha: float, threads: int = 1) -> np.ndarray:
    """The split decoder's elementwise trunk in one pass, in place: ``u`` (n, t2, C, h, w) becomes
    ``LeakyRelu(((u + ctx) + s0) + ctx * s1, alpha)`` with ``s`` (n, 1, 2C, h, w) = [s0, s1] along
    channels, computed in float32 in that order (the same bits as the ONNX operators: models/trunk.py).
    All three may instead be in ONNX Runtime's blocked layout, the channel axis split into C / B blocks
    and B moved last: u, ctx (n, t2, C / B, h, w, B), s (n, 1, 2C / B, h, w, B)."""
    nd = u.ndim if isinstance(u, np.ndarray) else 0
    for name, a in (("u", u), ("ctx", ctx), ("s", s)):
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous or a.ndim != nd \
                or nd not in (5, 6):
            raise TypeError(f"learned_trunk: {name} must be a C-contiguous float32 array, all three 5-D "
                            f"(planar) or all 6-D (blocked)")
    if not u.flags.writeable:
        raise TypeError("learned_trunk: u must be writeable")
    blk = u.shape[5] if nd == 6 else 1
    n, t2, cb, h, w = u.shape[:5]
    if blk not in LEARNED_BLOCKS or ctx.shape != u.shape or s.shape != (n, 1, 2 * cb, h, w) + u.shape[5:]:
        raise ValueError(f"learned_trunk: shapes u {u.shape}, ctx {ctx.shape}, s {s.shape} do not match")
    # elementwise, and s indexed by channel and pixel only: a blocked layout is the planar pass over C / B
    # channel blocks of h * w * B values each
    _call("nk_learned_trunk", u.ctypes.data, ctx.ctypes.data, s.ctypes.data, n, t2, cb, h * w * blk,
          float(np.float32(alpha)), max(1, int(threads)))
    return u


def learned_trunk_reblock(u: np.ndarray, ctx: np.ndarray, s: np.ndarray, out: np.ndarray, channels: int,
                          alpha: float, threads: int = 1) -> np.ndarray:
    """:func:`learned_trunk` for a blocked layout whose block B does not divide the C = ``channels``
    channels (ONNX Runtime's 16 on AVX-512 against 24): ``u`` (n, t8, r*C / B, h, w, B) holds r frame pairs
    per block row as the head's convolution wrote them, ``s`` (n, 2C / B, h, w, B); ``ctx`` and the result
    ``out`` (n, t8*r, ceil(C / B), h, w, B) are in the tail's layout, each frame pair's channels padded to
    whole blocks (``out``'s padding lanes are written 0, ``ctx``'s are not read). Returns ``out``."""
    arrays = (("u", u), ("ctx", ctx), ("s", s), ("out", out))
    for name, a in arrays:
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous or a.ndim != 6:
            raise TypeError(f"learned_trunk_reblock: {name} must be a 6-D C-contiguous float32 array")
    if not out.flags.writeable:
        raise TypeError("learned_trunk_reblock: out must be writeable")
    if any(np.may_share_memory(out, a) for _, a in arrays[:3]):
        raise ValueError("learned_trunk_reblock: out must not overlap u, ctx or s")
    C, B = int(channels), u.shape[5]
    n, t8, ub, h, w = u.shape[:5]
    nb = -(-C // B) if C > 0 else 0
    r = ub * B // C if C > 0 and (ub * B) % C == 0 else 0
    if (B not in LEARNED_BLOCKS or r < 1 or (2 * C) % B or ctx.shape != (n, t8 * r, nb, h, w, B)
            or out.shape != ctx.shape or s.shape != (n, 1, 2 * C // B, h, w, B)):
        raise ValueError(f"learned_trunk_reblock: shapes u {u.shape}, ctx {ctx.shape}, s {s.shape}, "
                         f"out {out.shape} do not match {C} channels")
    _call("nk_learned_trunk_reblock", u.ctypes.data, ctx.ctypes.data, s.ctypes.data, out.ctypes.data, n, t8, r,
          C, h * w, B, float(np.float32(alpha)), max(1, int(threads)))
    return out


#: input dtypes nk_vst converts itself (64-bit integers: numpy path)
VST_CODES = {np.dtype(t): _learned_code(t) for t in ("i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8")}


def vst(x: np.ndarray, offset, inv_gain) -> np.ndarray:
    """``2 * sqrt(max((float32(x) - offset) * inv_gain + 0.375, 0))`` as a new float32 array of x's shape,
    in one pass with numpy's float32 rounding in numpy's order (models/prep.py:vst). ``x``: a C-contiguous
    array of a dtype in :data:`VST_CODES`; ``offset``, ``inv_gain``: float32 values."""
    c = VST_CODES.get(x.dtype) if isinstance(x, np.ndarray) else None
    if c is None or not x.dtype.isnative or not x.flags.c_contiguous:
        raise TypeError(f"vst: x must be a C-contiguous native array of {sorted(str(d) for d in VST_CODES)}")
    out = np.empty(x.shape, np.float32)
    _call("nk_vst", x.ctypes.data, c, x.size, float(np.float32(offset)), float(np.float32(inv_gain)), out.ctypes.data)
    return out
