"""Numpy pre/post-processing shared by the learned mode (encode/decode) and training.

Everything here is plain numpy (no torch, no ONNX) so that training sees exactly the normalisation the
codec applies, and so that the decoder side is reproducible from the few floats stored in chunk params.

Noise units: a photon-limited movie ``x = gain * photons + offset`` is variance-stabilised with the
generalised Anscombe transform ``v = 2 * sqrt(max((x - offset) / gain + 3/8, 0))`` whose noise has unit
standard deviation. ``gain``/``offset`` are estimated per chunk (photon-transfer fit of temporal
difference variance against the mean) and stored in the chunk params.
"""
from __future__ import annotations

import numpy as np
from pcodec import ChunkConfig, standalone


def estimate_gain_offset(x: np.ndarray) -> tuple[float, float]:
    """Photon-transfer fit on a (T, H, W) chunk: var(frame differences)/2 ≈ gain * (mean - offset).

    Returns (gain, offset) as Python floats (rounded to 6 significant digits so they survive JSON exactly).
    Falls back to a plain scaling (gain = robust std, offset = low percentile) when the fit is not usable
    (too few frames, non-photon data).
    """
    x = np.asarray(x)
    T = x.shape[0]
    flat = x.reshape(T, -1)
    if flat.shape[1] > 16384:  # subsample pixels for speed (deterministic stride)
        flat = flat[:, :: int(np.ceil(flat.shape[1] / 16384))]
    if T > 64:  # at most 32 frame pairs, spread over the chunk
        idx = np.linspace(0, T // 2 - 1, 32).astype(np.int64) * 2
        flat = flat[np.stack([idx, idx + 1], 1).reshape(-1)]
        T = flat.shape[0]
    xf = flat.astype(np.float32)
    lo = float(np.percentile(xf[:: max(1, T // 16)], 0.5))
    hi = float(np.percentile(xf[:: max(1, T // 16)], 99.5))
    gain = offset = None
    if T >= 4:
        n = (T // 2) * 2
        d = xf[1:n:2] - xf[0:n:2]  # non-overlapping pairs
        m = 0.5 * (xf[1:n:2] + xf[0:n:2])
        mu = m.mean(0)
        var = 0.5 * (d * d).mean(0)
        # bin pixels by mean and take the lower-quartile variance per bin (robust to activity)
        qs = np.quantile(mu, np.linspace(0.02, 0.98, 21))
        mids, vs = [], []
        for a, b in zip(qs[:-1], qs[1:]):
            sel = (mu >= a) & (mu < b)
            if sel.sum() >= 20:
                mids.append(float(np.median(mu[sel])))
                vs.append(float(np.median(var[sel])))
        if len(mids) >= 5:
            A = np.vstack([mids, np.ones(len(mids))]).T
            (g, c), *_ = np.linalg.lstsq(A, np.asarray(vs), rcond=None)
            if np.isfinite(g) and g > 1e-6 and np.isfinite(c):
                gain = float(g)
                offset = float(-c / g)
                # the fitted zero level absorbs read noise (generalised Anscombe); keep it sane
                offset = min(offset, float(np.median(mu)))
                offset = max(offset, lo - 10 * (hi - lo) - 10 * gain)
    if gain is None:
        s = float(np.std(xf)) if xf.size else 1.0
        gain = max(s, 1e-3) ** 2 / max(s, 1e-3)  # = std: unit-ish scaling
        offset = lo
    return float(f"{gain:.6g}"), float(f"{offset:.6g}")


def vst(x: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """Generalised Anscombe transform to noise units, as a fresh float32 array. The C kernel
    (``_kernels.vst``: one pass instead of seven, 53 -> ~10 ms for a 64x512x512 uint16 chunk) gives the
    same bits as the numpy lines below, which run for other inputs (and are the reference in tests)."""
    from .. import _kernels

    x = np.asarray(x)
    if x.dtype in _kernels.VST_CODES and x.dtype.isnative and x.flags.c_contiguous and _kernels.available():
        return _kernels.vst(x, np.float32(offset), np.float32(1.0 / gain))
    return _vst_numpy(x, gain, offset)


def _vst_numpy(x: np.ndarray, gain: float, offset: float) -> np.ndarray:
    v = np.asarray(x).astype(np.float32)  # always a fresh float32 array (in-place below)
    v -= np.float32(offset)
    v *= np.float32(1.0 / gain)
    v += np.float32(0.375)
    np.maximum(v, 0.0, out=v)
    np.sqrt(v, out=v)
    v *= np.float32(2.0)
    return v


def inverse_vst(v: np.ndarray, gain: float, offset: float, out: np.ndarray | None = None) -> np.ndarray:
    """Algebraic inverse of :func:`vst` (in place into ``out`` when given, a float32 array)."""
    y = np.maximum(np.asarray(v, dtype=np.float32), 0.0, out=out)
    y *= y
    y *= np.float32(0.25 * gain)
    y += np.float32(offset - 0.375 * gain)
    return y


# ---------------------------------------------------------------- baseline image (integer-coded)

def block_mean(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img.astype(np.float32)
    H, W = img.shape
    h, w = -(-H // f), -(-W // f)
    p = np.pad(img, ((0, h * f - H), (0, w * f - W)), mode="edge")
    return p.reshape(h, f, w, f).mean(axis=(1, 3), dtype=np.float32)


def _interp_axis(a: np.ndarray, f: int, n: int, axis: int) -> np.ndarray:
    """Linear interpolation of cell-centred samples (factor f) to n samples along axis (edge clamped)."""
    m = a.shape[axis]
    pos = (np.arange(n, dtype=np.float64) + 0.5) / f - 0.5
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, m - 1)
    i1 = np.clip(i0 + 1, 0, m - 1)
    w = np.clip(pos - np.floor(pos), 0.0, 1.0).astype(np.float32)
    w = np.where(pos < 0, 0.0, w).astype(np.float32)
    a0 = np.take(a, i0, axis=axis)
    a1 = np.take(a, i1, axis=axis)
    shp = [1] * a.ndim
    shp[axis] = n
    w = w.reshape(shp)
    return a0 * (1 - w) + a1 * w


def upsample(img: np.ndarray, f: int, shape) -> np.ndarray:
    if f == 1:
        return img.astype(np.float32)
    return _interp_axis(_interp_axis(img.astype(np.float32), f, shape[0], 0), f, shape[1], 1).astype(np.float32)


def quantize_baseline(base: np.ndarray, step: float, factor: int) -> np.ndarray:
    """Integer grid of the (block-averaged) baseline image."""
    return np.round(block_mean(base, factor) / np.float32(step)).astype(np.int32)


def dequantize_baseline(q: np.ndarray, step: float, factor: int, shape) -> np.ndarray:
    return upsample(q.astype(np.float32) * np.float32(step), factor, shape)


def encode_ints_2d(q: np.ndarray) -> bytes:
    """Integer image -> bytes: vertical difference then pcodec (which adds its own horizontal delta)."""
    r = q.astype(np.int32).copy()
    r[1:] -= q[:-1]
    return standalone.simple_compress(np.ascontiguousarray(r).reshape(-1), ChunkConfig(compression_level=8))


def decode_ints_2d(buf: bytes, shape) -> np.ndarray:
    r = standalone.simple_decompress(bytes(buf))
    n = int(np.prod(shape))
    if r.dtype != np.int32 or r.size != n:
        raise ValueError(f"baseline block decoded to {r.size} x {r.dtype}, expected {n} x int32")
    return np.cumsum(r.reshape(shape), axis=0, dtype=np.int64).astype(np.int32)


def encode_ints(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a, dtype=np.int32).reshape(-1)
    if not a.any():
        return b""
    return standalone.simple_compress(a, ChunkConfig(compression_level=8))


def decode_ints(buf: bytes, n: int) -> np.ndarray:
    if len(buf) == 0:
        return np.zeros(n, np.int32)
    r = standalone.simple_decompress(bytes(buf))
    if r.dtype != np.int32 or r.size != n:
        raise ValueError(f"latent block decoded to {r.size} x {r.dtype}, expected {n} x int32")
    return r
