"""Bounded mode: every decoded sample lies within a stated error of the original.

Quantize first, then code the quantization indices with the lossless predictors (``lossless.py``):

* ``max_error=E`` (raw units). Integers: index ``q = (x - lo + E) // (2E + 1)`` (E floored to an
  integer), reconstruction ``lo + q (2E + 1)`` clipped to the chunk's range — never more than E away.
  Floats: ``q = round((x - lo) / 2E)``, reconstruction ``lo + 2E q`` cast to the dtype; samples the
  cast pushes past E, and NaN/±inf, are stored exactly as exceptions.
* ``max_error_noise=k`` (noise units, photon-limited imaging). A photon-transfer fit on the chunk,
  ``var(x) = g (x - o)``, floored at the chunk's smallest measured noise variance ``s0²``, gives the
  allowed error ``B(v) = k sqrt(max(g (v - o), s0²))`` at each integer level v (and ``min(B, E)`` when
  ``max_error`` is given too). The integer range is cut greedily into bins whose representative is
  within ``B`` of every member, so the bound holds exactly at every level — a variance-stabilizing
  quantizer (like quantizing the Anscombe transform in steps of 2k) without its approximation. When the
  fit is bad (too few frames, non-positive gain, a fit that claims more noise than measured at some
  level) the bound falls back to ``k s0`` at every level, which is never looser than the measured noise.
  The bound actually applied (``emax`` raw units at the worst level, fit or fallback) is stored in params.
"""
from __future__ import annotations

import math

import numpy as np
from pcodec import standalone

from .. import _kernels as K
from . import Encoded
from .lossless import (DEFAULT_LEVEL, LPC_SHIFT, MAX_ORDER, MODE as LOSSLESS, _analysis_rows, _choose_lpc, _narrow,
                       _offset, narrow_dtype, pack_sections, pco, unpack_sections, unpco)

#: the integer range for which a per-level bin table is built (larger ranges use a uniform bound)
MAX_TABLE_RANGE = 1 << 20
MIN_FIT_FRAMES = 8
MIN_FIT_BINS = 4
#: closed-loop coding needs an integer range below this (all predictor arithmetic then fits int64)
CL_MAX_RANGE = 1 << 32
#: Lorenzo-mix weights tried on >= 3-D chunks (L{t}, L{h,w}, L{t,h,w}, L{w}; sum 2**CL_SHIFT)
CL_SHIFT = 6
CL_LOR_3D = ((64, 0, 0, 0), (0, 64, 0, 0), (0, 0, 64, 0), (32, 32, 0, 0), (32, 0, 32, 0), (48, 16, 0, 0))
#: per-pixel temporal blends tried on >= 3-D chunks: p = m + a (r[t-1] - m) / 2**LPC_SHIFT
CL_BLEND = (0, 2048, 3072)


def _code(q: np.ndarray, level: int, narrowed: bool = False):
    """Lossless-code the indices q (``narrowed``: q already has the narrowest type for its range)."""
    if not narrowed:
        q = _narrow(q)
    enc = LOSSLESS.encode(q, level=level)
    return enc.payload, {"ll": enc.params, "qd": q.dtype.str}


def _uncode(buf, shape, params):
    qd = np.dtype(params["qd"])
    if qd not in (np.dtype("<i2"), np.dtype("<i4"), np.dtype("<i8")):
        raise ValueError("bad bounded index dtype")
    return LOSSLESS.decode(buf, shape, qd, params["ll"], "")


# ---------------------------------------------------------------------------------------------- noise model
def noise_model(arr: np.ndarray, rng: tuple | None = None) -> dict:
    """Robust photon-transfer fit on one chunk: {"g", "o", "s0", "fit"} (variance in raw units²).

    ``fit`` is "ptc" when ``var = g (x - o)`` is trusted, else "floor" (use the constant ``s0``).
    ``rng``: (min, max) of an integer ``arr`` when the caller has it.
    """
    arr = np.asarray(arr)
    mom = None
    if arr.dtype.kind in "iu" and arr.dtype.isnative and arr.ndim >= 2 and arr.shape[0] >= 2 and arr.size:
        # integer chunks: exact per-column sums in C (the float results below are then the same as
        # numpy's on the float64 copy: every partial sum is an integer below 2**53)
        t = np.ascontiguousarray(arr).reshape(arr.shape[0], -1)
        mom = K.moments(t, *(rng if rng is not None else (int(t.min()), int(t.max()))))
    if mom is not None:
        sums, dsq = mom
        frames = arr.shape[0]
        mu = sums.astype(np.float64) / frames
        v = dsq.astype(np.float64) / (frames - 1) / 2.0
    elif arr.ndim >= 2 and arr.shape[0] >= 2:
        x = np.asarray(arr, dtype=np.float64)
        t = x.reshape(x.shape[0], -1)
        d = np.diff(t, axis=0)
        mu = t.mean(axis=0)
        v = (d * d).mean(axis=0) / 2.0  # per-pixel noise variance, insensitive to slow signals
        frames = x.shape[0]
    else:
        x = np.asarray(arr, dtype=np.float64)
        t = x.reshape(-1)
        if t.size < 3:
            return {"g": 0.0, "o": 0.0, "s0": 0.0, "fit": "floor"}
        d = np.diff(t)
        # robust: median of d² / (2 * median of chi²₁)
        s2 = float(np.median(d * d)) / (2 * 0.45493642311957283)
        return {"g": 0.0, "o": 0.0, "s0": math.sqrt(max(s2, 0.0)), "fit": "floor"}
    # pixels constant over the chunk (a zero or NaN rim left by registration, dead pixels, a crop) have no
    # noise to measure: in the fit they made the quietest bin's variance, hence the floor s0 and every
    # low-level bound, 0 (a 5-pixel NaN rim took a float movie from 11x to 3x). Fit the pixels that vary.
    live = np.isfinite(mu) & np.isfinite(v) & (v > 0)
    if live.sum() >= 10 and not live.all():
        mu, v = mu[live], v[live]
    nb = int(min(20, max(1, mu.size // 50)))
    edges = np.quantile(mu, np.linspace(0, 1, nb + 1))
    idx = np.clip(np.searchsorted(edges, mu, side="right") - 1, 0, nb - 1)
    bm, bv, bn = [], [], []
    for b in range(nb):
        sel = idx == b
        if sel.sum() < 10:
            continue
        bm.append(float(np.median(mu[sel])))
        bv.append(float(np.median(v[sel])))
        bn.append(int(sel.sum()))
    if not bv:
        s2 = float(np.median(v))
        return {"g": 0.0, "o": 0.0, "s0": math.sqrt(max(s2, 0.0)), "fit": "floor"}
    bm, bv, bn = np.array(bm), np.array(bv), np.array(bn, float)
    s0 = math.sqrt(max(float(bv.min()), 0.0))
    out = {"g": 0.0, "o": 0.0, "s0": s0, "fit": "floor"}
    if frames < MIN_FIT_FRAMES or len(bm) < MIN_FIT_BINS or np.ptp(bm) <= 0:
        return out
    w = bn ** 0.2
    A = np.stack([bm, np.ones_like(bm)], 1) * w[:, None]
    try:
        (g, c), *_ = np.linalg.lstsq(A, bv * w, rcond=None)
    except np.linalg.LinAlgError:
        return out
    if not (np.isfinite(g) and np.isfinite(c)) or g <= 0:
        return out
    o = -c / g
    model = np.maximum(g * (bm - o), s0 * s0)
    # never claim more noise than measured at any level: that would loosen the bound there
    if np.any(model > 1.25 * bv + 1e-9):
        # retry as a lower envelope: scale the fit down until it sits under every measurement
        scale = float(np.min(np.where(g * (bm - o) > 0, bv / np.maximum(g * (bm - o), 1e-300), np.inf)))
        if not np.isfinite(scale) or scale < 0.5:
            return out
        g = g * min(scale, 1.0)
        model = np.maximum(g * (bm - o), s0 * s0)
        if np.any(model > 1.25 * bv + 1e-9):
            return out
    return {"g": float(g), "o": float(o), "s0": s0, "fit": "ptc"}


def _bins(lo: int, hi: int, bound) -> np.ndarray:
    """Greedy partition of [lo, hi] into bins; returns (starts, centers) int64 arrays."""
    starts, centers = [], []
    a = lo
    while a <= hi:
        ba = int(math.floor(bound(a)))
        if ba <= 0:
            # run of width-1 bins: jump to the first level where the bound reaches 1
            b = a
            step = 1
            while b + step <= hi and math.floor(bound(b + step)) <= 0:
                b += step
                step *= 2
            # refine by bisection between b and min(b + step, hi + 1)
            lo_b, hi_b = b, min(b + step, hi + 1)
            while hi_b - lo_b > 1:
                mid = (lo_b + hi_b) // 2
                if math.floor(bound(mid)) <= 0:
                    lo_b = mid
                else:
                    hi_b = mid
            run = np.arange(a, lo_b + 1, dtype=np.int64)
            starts.append(run)
            centers.append(run)
            a = lo_b + 1
            continue
        c = min(a + ba, hi)
        b = min(c + int(math.floor(bound(c))), hi)
        starts.append(np.array([a], np.int64))
        centers.append(np.array([c], np.int64))
        a = b + 1
    return np.concatenate(starts), np.concatenate(centers)


# ---------------------------------------------------------------------------------------------- closed loop
def _entropy_bits(q: np.ndarray) -> float:
    """Order-0 empirical entropy of the indices (total bits), from a strided sample when q is large."""
    v = q.reshape(-1)
    step = max(1, v.size // (1 << 18))
    v = v[::step].astype(np.int64)
    v = np.clip(v, -(1 << 15), 1 << 15) + (1 << 15)
    c = np.bincount(v)
    c = c[c > 0].astype(np.float64)
    pr = c / c.sum()
    return float(-(pr * np.log2(pr)).sum()) * q.size


def _cl_candidates(arr: np.ndarray):
    """(kind, layout, extra) closed-loop predictors worth trying for this chunk's shape."""
    n = arr.size
    if arr.ndim >= 3:
        T, W = arr.shape[0], arr.shape[-1]
        sh3 = (T, n // (T * W) if T * W else 1, W)
        out = [("lor", sh3, c) for c in CL_LOR_3D]
        out += [("lpc", (T, n // T), ("blend", a)) for a in CL_BLEND]
        return out
    if arr.ndim == 2:
        T, C = arr.shape
        if C <= 256 and T >= 32:  # time series (T samples x C channels)
            return [("lpc", (T, C), ("fit", 0)), ("lpc", (T, C), ("fit", 1)), ("lpc", (T, C), ("blend", 0))]
        return [("lor", (1, T, C), (0, 64, 0, 0)), ("lor", (1, T, C), (0, 0, 0, 64)),
                ("lor", (T, 1, C), (64, 0, 0, 0))]
    return [("lor", (1, 1, n), (0, 0, 0, 64)), ("lpc", (n, 1), ("fit", 0))]


def _cl_try(arr, lo, R, E, cand, qd, fits=None):
    """Run one closed-loop candidate: (indices, side streams, params). ``fits``: a dict caching the LPC
    fit (shared by the candidates and the final run)."""
    kind, shape, extra = cand
    if kind == "lor":
        q = K.cl_lorenzo(arr, shape, lo, R, E, extra, CL_SHIFT, qd)
        return q, [], {"cl": "lor", "sh": list(shape), "c": list(extra), "s": CL_SHIFT}
    T, C = shape
    x2 = arr.reshape(T, C)
    mode, arg = extra
    mu = np.round(x2.mean(axis=0, dtype=np.float64) - lo).astype(np.int64) if T else np.zeros(C, np.int64)
    # the centre only steers the prediction: a coarse grid (about E / 2) makes it cheap to store
    g = max(1, E // 2)
    mq = np.clip(np.round(mu / g), 0, R // g).astype(np.int64)
    mu = mq * g
    B = np.zeros(C, np.int64)
    if mode == "blend":
        Q = np.full((C, 1 if arg else 0), arg, np.int64)
    else:
        if fits is None or "Q" not in fits:
            rows = _analysis_rows(T)
            xs = _offset(x2[rows], lo) - mu  # uint64 values above 2**63 do not fit int64 before the offset
            Q = _choose_lpc(xs, T, MAX_ORDER)
            if fits is not None:
                fits["Q"] = Q
        Q = fits["Q"] if fits is not None else Q
        if arg and C > 1:
            B[1:] = 1 << (LPC_SHIFT - 1)  # half the neighbour's quantized residual
    q = K.cl_lpc(arr, shape, lo, R, E, mu, Q, B, LPC_SHIFT, qd)
    return q, [mq, Q.reshape(-1), B], {"cl": "lpc", "sh": list(shape), "p": int(Q.shape[1]), "s": LPC_SHIFT,
                                       "g": g}


def _cl_sample(arr: np.ndarray) -> np.ndarray:
    """A contiguous run of about 1/8 of the chunk along axis 0 (at least 2**16 samples), to rank predictors."""
    T = arr.shape[0]
    per = max(1, arr.size // max(T, 1))
    m = max(-(-(1 << 14) // per), T // 8, 4 if arr.ndim >= 3 else 64)
    if m >= T:
        return arr
    a = (T - m) // 2
    return arr[a:a + m]


def _cl_cands_for(arr, sub):
    """Candidates for the sample, with the full chunk's counterpart of each."""
    full = _cl_candidates(arr)
    part = _cl_candidates(sub)
    return list(zip(part, full))


def cl_encode(arr: np.ndarray, lo: int, hi: int, E: int, level: int):
    """Best closed-loop coding of an integer chunk with bound E (values in [lo, hi], hi - lo < 2**32):
    (sections, params). Candidates are ranked on a sample of the chunk by the entropy of their indices
    (plus their side streams' coded size); only the best is run on the whole chunk and pcodec-coded."""
    R = hi - lo
    E = min(E, R)
    qd = narrow_dtype(-K.cl_qmax(R, E), K.cl_qmax(R, E))
    sub = np.ascontiguousarray(_cl_sample(arr))
    scale = arr.size / max(sub.size, 1)
    best = None
    fits = {}
    for cs, cf in _cl_cands_for(arr, sub):
        q, side, _ = _cl_try(sub, lo, R, E, cs, qd, fits)
        cost = _entropy_bits(q) * scale / 8 + sum(len(pco(v, level)) for v in side)
        if best is None or cost < best[0]:
            best = (cost, cf)
    q, side, params = _cl_try(arr, lo, R, E, best[1], qd, fits)
    params.update({"E": E, "qd": q.dtype.str})
    return [pco(q, level, residual=True), *[pco(v, level) for v in side]], params


def cl_decode(sections, n: int, params, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
    """Decode a closed-loop payload into ``out`` (n integers). Damaged payloads raise ValueError: the index
    count, side stream sizes, layout and parameters are checked before the C loop runs, and the loop
    itself rejects indices no encoder could emit."""
    try:
        return _cl_decode(sections, n, params, lo, hi, out)
    except (RuntimeError, TypeError, OverflowError, KeyError) as e:
        raise ValueError(f"bad closed-loop payload: {e}") from None


def _cl_decode(sections, n, params, lo, hi, out):
    E = int(params["E"])
    R = hi - lo
    if not (0 <= R < CL_MAX_RANGE and 0 <= E <= R):
        raise ValueError("bad closed-loop parameters")
    shape = [int(v) for v in params["sh"]]
    if any(v < 0 for v in shape) or int(np.prod(shape, dtype=object)) != n:
        raise ValueError("closed-loop layout does not match the chunk")
    kind = params["cl"]
    if kind == "lor":
        if len(sections) != 1 or len(shape) != 3:
            raise ValueError("bad closed-loop payload")
    elif kind == "lpc":
        if len(sections) != 4 or len(shape) != 2:
            raise ValueError("bad closed-loop payload")
    else:
        raise ValueError(f"unknown closed-loop predictor {kind!r}")
    q = unpco(sections[0], n)
    if q.dtype not in (np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64)):
        q = q.astype(np.int64)
    if kind == "lor":
        return K.cl_lorenzo(None, shape, lo, R, E, params["c"], int(params["s"]), q=q, out=out)
    T, C = shape
    p = int(params["p"])
    if not 0 <= p <= 32:
        raise ValueError("bad closed-loop order")
    g = int(params["g"])
    if not 1 <= g <= max(1, E):
        raise ValueError("bad closed-loop centre grid")
    mu = unpco(sections[1], C, np.int64)
    if mu.size and (mu.min() < 0 or mu.max() > R // g):
        raise ValueError("bad closed-loop centres")
    mu = mu * g
    Q = unpco(sections[2], C * p, np.int64).reshape(C, p)
    B = unpco(sections[3], C, np.int64)
    return K.cl_lpc(None, shape, lo, R, E, mu, Q, B, int(params["s"]), q=q, out=out)


# ---------------------------------------------------------------------------------------------- the mode
class BoundedMode:
    name = "bounded"
    mode_id = 2
    lossy = True
    options = ("max_error", "max_error_noise", "level")

    def encode(self, arr: np.ndarray, max_error=None, max_error_noise=None, level: int = DEFAULT_LEVEL,
               **_ignored) -> Encoded:
        arr = np.ascontiguousarray(arr)
        if max_error is None and max_error_noise is None:
            raise ValueError("bounded mode needs max_error (raw units) or max_error_noise (noise units)")
        if max_error is not None and not (float(max_error) >= 0 and math.isfinite(float(max_error))):
            raise ValueError(f"max_error must be a finite number >= 0, got {max_error!r}")
        if max_error_noise is not None and not (float(max_error_noise) >= 0
                                                and math.isfinite(float(max_error_noise))):
            raise ValueError(f"max_error_noise must be a finite number >= 0, got {max_error_noise!r}")
        level = int(level)
        if arr.dtype.kind == "f":
            return self._encode_float(arr, max_error, max_error_noise, level)
        return self._encode_int(arr, max_error, max_error_noise, level)

    # -- integers
    def _encode_int(self, arr, max_error, max_error_noise, level) -> Encoded:
        if arr.dtype.itemsize > 1 and not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo >= 1 << 62:
            raise ValueError("bounded mode: integer range too wide")
        params = {"k": "i", "lo": str(lo), "hi": str(hi)}
        E = None if max_error is None else int(math.floor(float(max_error)))
        table = None
        if max_error_noise is not None:
            k = float(max_error_noise)
            nm = noise_model(arr, (lo, hi))
            params["nm"] = nm
            g, o, s0 = nm["g"], nm["o"], nm["s0"]
            if nm["fit"] == "ptc" and hi - lo <= MAX_TABLE_RANGE and -(1 << 62) < lo and hi < 1 << 62:
                def bound(v, g=g, o=o, s0=s0, k=k):
                    b = k * math.sqrt(max(g * (v - o), s0 * s0))
                    return b if E is None else min(b, E)
                table = _bins(lo, hi, bound)
            else:
                e_noise = int(math.floor(k * s0))
                E = e_noise if E is None else min(E, e_noise)
        if table is not None:
            starts, centers = table
            widths = np.diff(np.append(starts, hi + 1))
            lut = np.repeat(np.arange(starts.size, dtype=np.int32), widths)  # value - lo -> bin index
            # indices span [0, bins - 1] (lo and hi are both present): that range picks the type
            q, params["emax"] = K.quant_lut(arr, lo, lut, centers, narrow_dtype(0, starts.size - 1))
            payload, p = _code(q, level, narrowed=True)
            params.update(p)
            params["t"] = 1
            open_loop = Encoded(pack_sections([payload, pco(centers, level)]), params)
            # closed loop at the smallest per-level bound (the bound is nondecreasing in the level)
            e_min = int(math.floor(min(bound(lo), bound(hi))))
            return self._pick(arr, lo, hi, e_min, level, open_loop, params)
        # any E >= hi - lo puts every sample in bin 0, like E = hi - lo
        E = min(max(E, 0), hi - lo)
        w = 2 * E + 1
        q = K.quant_uniform(arr, lo, E, narrow_dtype(0, (hi - lo + E) // w))  # q spans [0, (hi-lo+E)//w]
        params["E"] = E
        params["emax"] = E
        payload, p = _code(q, level, narrowed=True)
        params.update(p)
        params["t"] = 0
        return self._pick(arr, lo, hi, E, level, Encoded(pack_sections([payload]), params), params)

    def _pick(self, arr, lo, hi, E, level, open_loop: Encoded, params) -> Encoded:
        """The smaller of the open-loop payload and the closed-loop one (``params["t"] = 2``) at bound E."""
        if hi - lo >= CL_MAX_RANGE or E < 1 or arr.size < 2:
            return open_loop
        sections, cp = cl_encode(arr, lo, hi, E, level)
        payload = pack_sections(sections)
        if len(payload) >= len(open_loop.payload):
            return open_loop
        p = {k: v for k, v in params.items() if k in ("k", "lo", "hi", "nm")}
        p.update(cp)
        p["emax"] = cp["E"]
        p["t"] = 2
        return Encoded(payload, p)

    # -- floats
    def _encode_float(self, arr, max_error, max_error_noise, level) -> Encoded:
        flat = arr.reshape(-1)
        fin = np.isfinite(flat)
        x = flat.astype(np.float64)
        xf = x[fin]
        E = None if max_error is None else float(max_error)
        if max_error_noise is not None:
            nm = noise_model(np.where(np.isfinite(arr), arr, 0).astype(np.float64))
            e_noise = float(max_error_noise) * nm["s0"]
            E = e_noise if E is None else min(E, e_noise)
        params = {"k": "f"}
        lo = float(xf.min()) if xf.size else 0.0
        span = float(xf.max()) - lo if xf.size else 0.0
        if E <= 0 or not math.isfinite(span):
            step = 0.0
        else:
            step = 2.0 * E
            if span / step > 2.0 ** 50:
                raise ValueError("bounded mode: max_error too small for this float range")
        q = np.zeros(flat.size, np.int64)
        if step > 0:
            q[fin] = np.round((xf - lo) / step).astype(np.int64)
            rec = (lo + q.astype(np.float64) * step).astype(arr.dtype)
            bad = ~fin | ~(np.abs(rec.astype(np.float64) - x) <= E)
        else:
            bad = np.ones(flat.size, bool)
        params.update({"lo": lo, "step": step, "E": E if E is not None else 0.0, "emax": E})
        pos = np.flatnonzero(bad)
        payload, p = _code(q.reshape(arr.shape), level)
        params.update(p)
        params["nx"] = int(pos.size)
        bits = flat[pos].view(np.uint16 if arr.dtype.itemsize == 2 else
                              np.uint32 if arr.dtype.itemsize == 4 else np.uint64)
        return Encoded(pack_sections([payload, pco(np.diff(pos, prepend=0), level), pco(bits, level)]), params)

    def decode(self, payload, shape, dtype, params, model_id) -> np.ndarray:
        dtype = np.dtype(dtype)
        sections = unpack_sections(payload)
        n = int(np.prod(shape, dtype=np.int64))
        if params["k"] == "i" and params.get("t") == 2:
            if dtype.kind not in "iu":
                raise ValueError(f"bounded integer payload for {dtype}")
            lo, hi = int(params["lo"]), int(params["hi"])
            rec = np.empty(n, dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype)
            cl_decode(sections, n, params, lo, hi, rec)
            return (rec if rec.dtype == dtype else rec.astype(dtype)).reshape(shape)
        q = _uncode(sections[0], shape, params).reshape(-1)
        if params["k"] == "i":
            if dtype.kind not in "iu":
                raise ValueError(f"bounded integer payload for {dtype}")
            lo, hi = int(params["lo"]), int(params["hi"])
            rec = np.empty(q.shape, dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype)
            if params["t"] == 1:
                centers = np.asarray(standalone.simple_decompress(bytes(sections[1])), np.int64)
                try:
                    K.dequant_lut(q, centers, rec)
                except ValueError:
                    raise ValueError("bounded bin index out of range") from None
            else:
                E = int(params["E"])
                if not 0 <= E < 1 << 62 or not 0 <= hi - lo < 1 << 62:
                    raise ValueError("bad bounded parameters")
                K.dequant_uniform(q, 2 * E + 1, hi - lo, lo, rec)
            return (rec if rec.dtype == dtype else rec.astype(dtype)).reshape(shape)
        if params["k"] != "f" or dtype.kind != "f":
            raise ValueError(f"bounded payload of kind {params['k']!r} for {dtype}")
        lo, step = float(params["lo"]), float(params["step"])
        rec = (lo + q.astype(np.float64) * step).astype(dtype)
        nx = int(params["nx"])
        if nx:
            pos = np.cumsum(unpco(sections[1], nx, np.int64))
            if int(pos.min()) < 0 or int(pos.max()) >= n:
                raise ValueError("bounded exception position out of range")
            ut = np.uint16 if dtype.itemsize == 2 else np.uint32 if dtype.itemsize == 4 else np.uint64
            rec.view(ut)[pos] = unpco(sections[2], nx, ut)
        return rec.reshape(shape)


MODE = BoundedMode()
