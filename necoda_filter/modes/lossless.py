"""Lossless mode: chunk-local prediction + pcodec residual coding. Bit-exact for every supported dtype.

Schemes (chosen per chunk, stored as ``params["s"]``):

``"pc"``   plain pcodec over the C-order samples (floats, 8-bit types, tiny chunks, huge-range integers).
``"lpc"``  2-D T×C integers (ephys; 1-D series as T×1): per-channel linear prediction along axis 0 with
           adaptive order (Levinson-Durbin on the channel's autocorrelation, order chosen by estimated
           residual cost), integer coefficients with ``LPC_SHIFT`` fractional bits stored in the payload,
           then inter-channel prediction of each channel's residual from the residuals of up to
           ``XCH`` preceding channels (integer coefficients), residuals through pcodec.  The time axis is
           cut into blocks of ``BLOCK`` samples that are predicted independently (zero history at each
           block start).
``"img"``  ≥3-D integers (imaging, T×H×W; more dims fold into H): per-pixel temporal mean ``m`` (stored)
           plus a temporal/spatial predictor of the deviation from previous decoded frames
           (3×3 box sums of the previous two frames and the previous pixel), least-squares weights
           quantized to integers; residuals grouped by the brightness class of ``m`` (shot noise makes
           the residual scale depend on brightness) and each group coded by its own pcodec stream.

All predictor arithmetic is exact integer arithmetic on values offset into a < 2**32 range (wider data
uses "pc"), done by the C kernels of ``libnecoda_kernels.so`` (csrc/necoda_kernels.c, through
``necoda_filter._kernels``); only the predictor *fits* use floating point, and their results (the integer
coefficients) are stored in the payload.

Residual streams are coded by pcodec with its delta search off (``DeltaSpec.no_op()``: the residuals are
already decorrelated, and the search costs ~15 % of the encode time) unless a quick look at the stream
says differencing helps; side streams keep the automatic choice. ``level`` (default
:data:`DEFAULT_LEVEL`) is pcodec's compression level. pcodec is most of the encode time (~85 % at level 8);
lower levels trade ratio for speed (on the shared recordings, level 7: -0.3 % ratio, level 6: -1 %,
level 5: -2 to -2.5 %, level 4: -4 to -5 %, for roughly +5, +10, +15, +25 % encode speed).
"""
from __future__ import annotations

import struct

import numpy as np
from pcodec import ChunkConfig, DeltaSpec, standalone

from .. import _kernels as K
from . import Encoded

K.lib()  # the kernels are required: a missing library fails here, with what to do, not at first use

LPC_SHIFT = 12
MAX_ORDER = 8
BLOCK = 512
XCH = 3
IMG_SHIFT = 12
MAX_RANGE = 1 << 32
#: pcodec compression level used when the caller gives none, and pcodec's highest (levels are 0..MAX_LEVEL)
DEFAULT_LEVEL = 8
MAX_LEVEL = 12


# ---------------------------------------------------------------------------------------------- helpers
def pack_sections(parts) -> bytes:
    head = struct.pack("<I", len(parts)) + b"".join(struct.pack("<Q", len(p)) for p in parts)
    return b"".join([head, *parts])


def unpack_sections(buf) -> list:
    mv = memoryview(buf).cast("B")
    if len(mv) < 4:
        raise ValueError("lossless payload truncated")
    (n,) = struct.unpack_from("<I", mv, 0)
    if n > 1 << 20 or 4 + 8 * n > len(mv):
        raise ValueError("lossless payload has a bad section table")
    lens = struct.unpack_from(f"<{n}Q", mv, 4)
    pos = 4 + 8 * n
    out = []
    for ln in lens:
        if pos + ln > len(mv):
            raise ValueError("lossless payload section overruns the payload")
        out.append(mv[pos:pos + ln])
        pos += ln
    if pos != len(mv):
        raise ValueError("lossless payload has trailing bytes")
    return out


def narrow_dtype(lo: int, hi: int):
    """Smallest signed int type holding [lo, hi] (pcodec is fastest on narrow types)."""
    for dt in (np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _narrow(a: np.ndarray) -> np.ndarray:
    if a.size == 0:
        return a.astype(np.int32)
    dt = narrow_dtype(int(a.min()), int(a.max()))
    return a if a.dtype == dt else a.astype(dt)


def _delta_may_help(a: np.ndarray, seg: int = 1024, nseg: int = 8) -> bool:
    """Whether differencing shrinks a few evenly spread runs of ``a`` (then pcodec's delta search is
    worth its time; for decorrelated residuals differencing roughly doubles the variance instead)."""
    if a.size < 2:
        return False
    if a.size <= seg * nseg:
        s = a.astype(np.float64)[None, :]
    else:
        starts = np.linspace(0, a.size - seg, nseg).astype(np.int64)
        s = a[starts[:, None] + np.arange(seg)].astype(np.float64)
    return bool(np.abs(np.diff(s, axis=1)).sum() < np.abs(s - s.mean()).sum())


def pco(a: np.ndarray, level: int = DEFAULT_LEVEL, residual: bool = False) -> bytes:
    """pcodec stream of ``a``. ``residual=True``: decorrelated data, for which pcodec's delta search
    (~20 % of its encode time) is skipped unless a quick look says differencing helps."""
    a = np.ascontiguousarray(a).reshape(-1)
    if a.dtype == np.float16:
        a = a.view(np.uint16)
    if a.size == 0:
        return b""
    if residual and not _delta_may_help(a):
        cfg = ChunkConfig(compression_level=int(level), enable_8_bit=True, delta_spec=DeltaSpec.no_op())
    else:
        cfg = ChunkConfig(compression_level=int(level), enable_8_bit=True)
    return standalone.simple_compress(a, cfg)


def unpco(buf, n: int, dtype=None) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=dtype or np.int64)
    out = standalone.simple_decompress(buf if isinstance(buf, bytes) else bytes(buf))
    if out.size != n:
        raise ValueError(f"pcodec stream holds {out.size} values, expected {n}")
    if dtype is not None and out.dtype != dtype:
        if np.dtype(dtype) == np.float16 and out.dtype == np.uint16:
            return out.view(np.float16)
        out = out.astype(dtype)
    return out


def _int_range(arr: np.ndarray):
    return int(arr.min()), int(arr.max())


# ---------------------------------------------------------------------------------------------- LPC (2-D)
def _levinson(r: np.ndarray, pmax: int):
    """All-order LPC solutions and prediction-error powers from autocorrelation r[0..pmax]."""
    a = np.zeros(0)
    err = r[0]
    sols, errs = [a], [err]
    for p in range(1, pmax + 1):
        if err <= 1e-9 * r[0]:
            break
        k = (r[p] - np.dot(a, r[p - 1:0:-1])) / err if p > 1 else r[1] / err
        a = np.concatenate([a - k * a[::-1], [k]])
        err = err * (1 - k * k)
        sols.append(a)
        errs.append(err)
    return sols, errs


def _analysis_rows(T: int, limit: int = 1 << 16) -> np.ndarray | slice:
    """Rows used to fit predictors: all of them, or evenly spread segments of 4096 rows."""
    if T <= limit:
        return slice(None)
    seg = 4096
    starts = np.linspace(0, T - seg, limit // seg).astype(np.int64)
    return (starts[:, None] + np.arange(seg)[None, :]).ravel()


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # not BLAS: multi-threaded BLAS stalls badly on a shared machine for these tiny products
    return float(np.add.reduce(a * b))


#: bits/sample an extra predictor order must save on average to be worth its decode time
ORDER_PENALTY = 0.004


def _choose_lpc(xs: np.ndarray, T: int, pmax: int) -> np.ndarray:
    """Per-channel integer coefficients, shape (C, order) (order = max chosen, zero padded), fitted on the
    analysis rows ``xs`` (n × C) of a T-row chunk."""
    n, C = xs.shape
    coefs = []
    for c in range(C):
        v = xs[:, c].astype(np.float64)
        v = v - v.mean()
        r0 = _dot(v, v)
        if r0 == 0 or n <= 2 * pmax:
            coefs.append(np.zeros(0, np.int64))
            continue
        r = np.array([r0] + [_dot(v[:-k], v[k:]) for k in range(1, pmax + 1)])
        sols, errs = _levinson(r, pmax)
        best, best_cost = 0, None
        for p, (a, e) in enumerate(zip(sols, errs)):
            cost = 0.5 * T * np.log2(max(e / n, 1e-12)) + 16 * p + ORDER_PENALTY * T * p
            if best_cost is None or cost < best_cost - 1e-9:
                best, best_cost = p, cost
        q = np.clip(np.round(sols[best] * (1 << LPC_SHIFT)), -(1 << 15), (1 << 15) - 1).astype(np.int64)
        coefs.append(q)
    order = max((len(q) for q in coefs), default=0)
    Q = np.zeros((C, order), np.int64)
    for c, q in enumerate(coefs):
        Q[c, :len(q)] = q
    return Q


def _lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Small least squares via the normal equations, without BLAS threads."""
    k = A.shape[1]
    G = np.array([[_dot(A[:, i], A[:, j]) for j in range(k)] for i in range(k)])
    b = np.array([_dot(A[:, i], y) for i in range(k)])
    G += np.eye(k) * (1e-9 * (np.trace(G) + 1.0))
    try:
        return np.linalg.solve(G, b)
    except np.linalg.LinAlgError:
        return None


def _blocks(T: int):
    nb = max(1, -(-T // BLOCK))
    L = -(-T // nb)
    return nb, L


def _offset(a: np.ndarray, lo: int) -> np.ndarray:
    """``a - lo`` as int64 (exact: the caller guarantees a range < 2**32)."""
    if a.dtype == np.uint64:
        return (a - np.uint64(lo)).astype(np.int64)
    x = a.astype(np.int64)
    x -= lo
    return x


def lpc_encode(x: np.ndarray, lo: int, colsum: np.ndarray, level: int):
    """x: (T, C) integers with ``x - lo`` in [0, 2**32), ``colsum`` = exact column sums of ``x - lo``.
    Returns (sections, params).

    Per channel, centred on its rounded mean ``mu``: residual
    ``e[t] = xc[t] - floor((sum_i Q[i] xc[t-1-i] + 2**(LPC_SHIFT-1)) / 2**LPC_SHIFT)`` with zero history at
    the start of each block of L rows (the first block is the short one); then channel c's residual is
    predicted the same way from the residuals of channels c-1..c-XCH (coefficients ``B``) when that
    saves ≥ 0.5 % of its absolute sum.
    """
    T, C = x.shape
    mu = np.round(colsum / T).astype(np.int64) if T else np.zeros(C, np.int64)
    rows = _analysis_rows(T)
    rows = np.arange(T) if isinstance(rows, slice) else rows
    xs = _offset(x[rows], lo)
    xs -= mu
    Q = _choose_lpc(xs, T, MAX_ORDER)
    p = Q.shape[1]
    nb, L = _blocks(T)
    # inter-channel prediction of each residual from the residuals of up to XCH preceding channels:
    # weights fitted on the analysis rows, kept where they shrink the channel's absolute sum by 0.5 %
    W = np.zeros((C, XCH), np.int64)
    if C > 1:
        ef = K.lpc_rows(x, lo, mu, Q, LPC_SHIFT, nb, L, rows).astype(np.float64)
        for c in range(1, C):
            ks = list(range(max(0, c - XCH), c))
            w = _lstsq(ef[ks].T, ef[c])
            if w is None:
                continue
            wq = np.clip(np.round(w * (1 << LPC_SHIFT)), -(1 << 15), (1 << 15) - 1).astype(np.int64)
            for j, k in enumerate(ks):
                W[c, c - k - 1] = wq[j]
    B = np.zeros((C, XCH), np.int64)
    f = None
    if W.any():
        # one pass gives the absolute sums with and without and, optimistically, the residuals with W
        sums, f, rng = K.lpc_encode(x, lo, mu, Q, W, LPC_SHIFT, nb, L, np.int16, want_sums=True)
        for c in range(1, C):
            if float(sums[c, 1]) < 0.995 * float(sums[c, 0]):
                B[c] = W[c]
        if not np.array_equal(B, W):
            f = None
    if f is None:
        _, f, rng = K.lpc_encode(x, lo, mu, Q, B, LPC_SHIFT, nb, L, np.int16)
    wide = narrow_dtype(*rng)
    if wide != f.dtype:
        _, f, _ = K.lpc_encode(x, lo, mu, Q, B, LPC_SHIFT, nb, L, wide)
    sections = [pco(mu, level), pco(Q.reshape(-1), level), pco(B.reshape(-1), level),
                pco(f, level, residual=True)]
    return sections, {"p": int(p), "nb": nb, "L": L}


def _residual_stream(buf, n: int) -> np.ndarray:
    r = unpco(buf, n)
    if r.dtype.kind != "i" or r.dtype.itemsize not in (2, 4, 8):
        raise ValueError(f"residual stream has dtype {r.dtype}")
    return r


def _native_out(shape, dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype)


def lpc_decode(sections, T: int, C: int, params, dtype, lo: int) -> np.ndarray:
    p, nb, L = int(params["p"]), int(params["nb"]), int(params["L"])
    if nb * L < T or nb * L - T >= L or nb < 1 or L < 1 or p < 0 or p > 64:
        raise ValueError("bad lpc parameters")
    mu = unpco(sections[0], C, np.int64)
    Q = unpco(sections[1], C * p, np.int64).reshape(C, p)
    B = unpco(sections[2], C * XCH, np.int64).reshape(C, XCH)
    if np.abs(Q).max(initial=0) >= 1 << 15 or np.abs(B).max(initial=0) >= 1 << 15:
        raise ValueError("bad lpc coefficients")
    r = _residual_stream(sections[3], T * C)
    dtype = np.dtype(dtype)
    out = _native_out((T, C), dtype)
    K.lpc_decode(r, mu, lo, Q, B, LPC_SHIFT, nb, L, out)
    return out if out.dtype == dtype else out.astype(dtype)


# ---------------------------------------------------------------------------------------------- imaging
NCLS = 12


def _classes(m: np.ndarray, thr: np.ndarray) -> np.ndarray:
    return np.searchsorted(thr, m.ravel(), side="right")


def _img_work_dtype(R: int, coef: np.ndarray, shift: int):
    """int32 when no intermediate of the predictor can overflow it, else int64 (stored as params["w"]:
    the kernels always compute in 64 bits, which gives the same exact results)."""
    c = np.abs(coef.astype(np.int64))
    bound = (int(c[0]) + int(c[1])) * 9 * R + int(c[2]) * R + (1 << shift) + 18 * R
    return np.int32 if bound < (1 << 31) - 1 else np.int64


def _fit_frames(T: int) -> np.ndarray:
    ts = np.arange(2, T)
    if ts.size > 24:
        ts = ts[np.linspace(0, ts.size - 1, 24).astype(np.int64)]
    return ts


def img_encode(x: np.ndarray, lo: int, hi: int, colsum: np.ndarray, level: int):
    """x: (T, H, W) integers with ``x - lo`` in [0, 2**32), ``hi`` = x.max(), ``colsum`` = exact per-pixel
    sums of ``x - lo``. Returns (sections, params).

    Deviation from the per-pixel rounded temporal mean ``d = x - lo - m``; prediction
    ``floor((c0 box(d[t-1]) + c1 box(d[t-2]) + c2 d[t-1] + 2**(shift-1)) / 2**shift)`` (box = 3×3 sum with zero
    padding, frames before 0 are zero), coefficients least-squares fitted on ≤ 24 frames.
    """
    T, H, W = x.shape
    m = np.round(colsum / T).astype(np.int64)
    R = hi - lo + 1
    ts = _fit_frames(T)
    w = None
    if ts.size:
        G, g = K.img_gram(x, lo, m, ts)
        G += np.eye(3) * (1e-9 * (np.trace(G) + 1.0))
        try:
            w = np.linalg.solve(G, g)
        except np.linalg.LinAlgError:
            w = None
    shift = IMG_SHIFT
    coef = np.zeros(3, np.int64)
    if w is not None and np.all(np.isfinite(w)):
        while True:
            coef = np.clip(np.round(w * (1 << shift)), -(1 << 20), 1 << 20).astype(np.int64)
            if _img_work_dtype(R, coef, shift) == np.int32 or shift <= 4:
                break
            shift -= 1
    wt = _img_work_dtype(R, coef, shift)
    # brightness classes from m (the decoder has m before any residual)
    qs = np.unique(np.quantile(m, np.linspace(0, 1, NCLS + 1)[1:-1], method="lower").astype(np.int64)) \
        if m.size >= 64 * NCLS else np.zeros(0, np.int64)
    cls = _classes(m, qs)
    nc = len(qs) + 1
    counts = np.bincount(cls, minlength=nc)
    start = np.concatenate([[0], np.cumsum(counts)]) * T
    # residuals grouped by class, each class in the narrowest type holding it (first try int16 for all)
    wide = wt != np.int32
    buf, rng = K.img_residual(x, lo, m, coef, shift, wide, cls, nc, np.int16)
    widest = narrow_dtype(*rng)
    if widest.itemsize > 2:
        buf, _ = K.img_residual(x, lo, m, coef, shift, wide, cls, nc, widest)
    sections = [pco(_narrow(m), level), pco(coef, level), pco(qs, level)]
    for k in range(nc):
        part = buf[start[k]:start[k + 1]]
        sections.append(pco(part if buf.dtype == np.int16 else _narrow(part), level, residual=True))
    return sections, {"nc": int(nc), "sh": int(shift), "w": int(np.dtype(wt).itemsize)}


def img_decode(sections, T: int, H: int, W: int, params, dtype, lo: int) -> np.ndarray:
    nc, shift, wbytes = int(params["nc"]), int(params["sh"]), int(params["w"])
    if nc < 1 or len(sections) != 3 + nc or not 1 <= shift <= 30 or wbytes not in (4, 8):
        raise ValueError("bad imaging parameters")
    m = unpco(sections[0], H * W, np.int64)
    coef = unpco(sections[1], 3, np.int64)
    qs = unpco(sections[2], nc - 1, np.int64)
    cls = _classes(m, qs)
    counts = np.bincount(cls, minlength=nc)
    if len(counts) != nc:
        raise ValueError("bad imaging classes")
    parts = [_residual_stream(sections[3 + k], T * n) if n else None for k, n in enumerate(counts)]
    rt = max((q.dtype for q in parts if q is not None), key=lambda d: d.itemsize, default=np.dtype(np.int16))
    parts = [np.zeros(0, rt) if q is None else q if q.dtype == rt else q.astype(rt) for q in parts]
    dtype = np.dtype(dtype)
    out = _native_out((T, H, W), dtype)
    K.img_decode(parts, cls, m, lo, coef, shift, wbytes == 8, out)
    return out if out.dtype == dtype else out.astype(dtype)


# ---------------------------------------------------------------------------------------------- the mode
class LosslessMode:
    name = "lossless"
    mode_id = 1
    lossy = False
    options = ("level",)

    def scheme_for(self, arr: np.ndarray, rng=None) -> str:
        if arr.dtype.kind not in "iu" or arr.dtype.itemsize == 1 or arr.size < 64:
            return "pc"
        lo, hi = rng if rng is not None else _int_range(arr)
        if hi - lo >= MAX_RANGE:
            return "pc"
        if arr.ndim >= 3 and arr.shape[0] >= 4 and arr.shape[-1] >= 3 and arr.size // arr.shape[0] >= 64:
            return "img"
        if arr.ndim <= 2 and arr.shape[0] >= 32:
            return "lpc"
        return "pc"

    def encode(self, arr: np.ndarray, level: int = DEFAULT_LEVEL, **_ignored) -> Encoded:
        arr = np.ascontiguousarray(arr)
        if arr.dtype.itemsize > 1 and arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype.itemsize > 1 and not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        level = int(min(max(int(level), 0), MAX_LEVEL))
        rng = None
        if arr.dtype.kind in "iu" and arr.dtype.itemsize > 1 and arr.size >= 64:
            # one pass: range and column sums (the per-channel / per-pixel means)
            sums, lo, hi = K.stats(arr.reshape(arr.shape[0], -1))
            rng = (lo, hi)
        scheme = self.scheme_for(arr, rng)
        if scheme == "pc":
            return Encoded(pco(arr, level), {"s": "pc"})
        T = arr.shape[0]
        colsum = K.offset_sums(sums, T, lo)
        if scheme == "lpc":
            sections, params = lpc_encode(arr.reshape(T, -1), lo, colsum, level)
        else:
            sections, params = img_encode(arr.reshape(T, -1, arr.shape[-1]), lo, hi, colsum, level)
        params.update({"s": scheme, "lo": str(lo)})
        return Encoded(pack_sections(sections), params)

    def decode(self, payload, shape, dtype, params, model_id) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        scheme = params.get("s", "pc")
        if scheme == "pc":
            if n == 0:  # an empty chunk codes to an empty stream (bounded mode codes empty index arrays)
                if len(payload):
                    raise ValueError("lossless payload has bytes for an empty chunk")
                return np.zeros(shape, dtype)
            out = unpco(payload, n)
            if dtype == np.float16:
                out = out.view(np.float16)
            if out.dtype != dtype:
                raise ValueError(f"lossless payload decoded to {out.dtype}, expected {dtype}")
            return out.reshape(shape)
        sections = unpack_sections(payload)
        lo = int(params["lo"])
        if dtype.kind not in "iu" or dtype.itemsize == 1:
            raise ValueError(f"lossless scheme {scheme!r} does not apply to {dtype}")
        if scheme == "lpc":
            T = shape[0]
            C = n // T if T else 1
            if len(sections) != 4:
                raise ValueError("bad lpc payload")
            return lpc_decode(sections, T, C, params, dtype, lo).reshape(shape)
        if scheme == "img":
            T, W = shape[0], shape[-1]
            H = n // (T * W)
            return img_decode(sections, T, H, W, params, dtype, lo).reshape(shape)
        raise ValueError(f"unknown lossless scheme {scheme!r}")


MODE = LosslessMode()
