"""Fidelity metrics shared by tests, ``necoda bench`` and evaluation. Numpy, and one C kernel (exact error
 statistics of 1- and 2-byte integers, ``_kernels.error_stats``).

Conventions: ``orig`` is the original array, ``dec`` the decoded one, compared in float64.
Imaging movies are (T, H, W); ephys recordings are (T, C), channels last. Every summary ignores
NaN entries (a constant ROI trace has an undefined correlation).

Filtering is zero-phase in the frequency domain (FFT, with a Butterworth magnitude response),
processed in overlapping time blocks so long recordings need bounded memory.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = [
    "error_stats", "noise_rmse", "noise_sse", "estimate_noise_imaging", "estimate_noise_ephys", "estimate_noise_events",
    "bandpass",
    "detect_rois", "roi_traces", "trace_correlations", "imaging_fidelity", "detect_spikes",
    "match_spikes", "ephys_reference", "ephys_fidelity",
]


# --------------------------------------------------------------------------------------------------
# generic error statistics
# --------------------------------------------------------------------------------------------------

def _blocks(n: int, rows: int):
    for i in range(0, n, rows):
        yield slice(i, min(n, i + rows))


def _rows_per_block(a: np.ndarray, target: int = 1 << 22) -> int:
    per_row = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
    return max(1, target // max(per_row, 1))


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b - a in float64. Integer pairs are subtracted exactly before the conversion (64-bit values
    above 2**53 would otherwise lose up to 2**10 units each; the exact difference is rounded once)."""
    if a.dtype.kind in "iub" and b.dtype.kind in "iub":
        if a.dtype.itemsize <= 4 and b.dtype.itemsize <= 4:  # exact in float64 (|values| < 2**32), one pass
            return np.subtract(b, a, dtype=np.float64)
        if a.dtype == b.dtype:
            ua, ub = a.astype(np.uint64), b.astype(np.uint64)  # modular: (ub - ua) mod 2**64 is exact
            return np.where(b >= a, (ub - ua).astype(np.float64), -(ua - ub).astype(np.float64))
    return b.astype(np.float64) - a.astype(np.float64)


def _error_stats_kernel(orig: np.ndarray, dec: np.ndarray):
    """The C kernel's exact (sum e, sum e^2, max |e|, min, max) for two arrays of one 1- or 2-byte
    integer type, or None (other types, or no kernels: the numpy passes below)."""
    from . import _kernels

    if orig.dtype != dec.dtype or orig.dtype not in _kernels.ERROR_STATS_DTYPES or not orig.dtype.isnative \
            or orig.size >= _kernels.ERROR_STATS_MAX_N or not _kernels.available():
        return None
    return _kernels.error_stats(np.ascontiguousarray(orig), np.ascontiguousarray(dec))


def error_stats(orig, dec, data_range=None) -> dict:
    """Pointwise error statistics of ``dec`` against ``orig``.

    e = dec - orig (float64), n = number of samples

    - ``max_abs`` = max |e|
    - ``rmse``    = sqrt(sum e^2 / n)
    - ``psnr``    = 20 log10(R / rmse) dB with R = ``data_range`` or orig.max() - orig.min();
                    +inf when rmse == 0 (and NaN when R == 0 < rmse; -inf when rmse is inf)
    - also ``mean_error`` (= mean e, the bias) and ``data_range`` (R).

    Integer inputs are subtracted exactly (no wraparound, no float64 rounding of 64-bit values).
    NaN/inf are not skipped: a NaN in either array makes ``max_abs``, ``rmse`` and ``psnr`` NaN
    (never a finite figure that hides it); mask such samples first if they should not count.
    """
    orig = np.asarray(orig)
    dec = np.asarray(dec)
    if orig.shape != dec.shape:
        raise ValueError(f"shape mismatch: {orig.shape} vs {dec.shape}")
    n = orig.size
    if n == 0:
        raise ValueError("empty arrays")
    got = _error_stats_kernel(orig, dec)
    if got is not None:  # 1- and 2-byte integers: one exact pass in C (0.1 s -> 0.01 s for 64x512x512)
        s1, s2, mx, lo, hi = got
        rmse = math.sqrt(s2 / n)  # the exact sum, rounded once
        R = float(hi - lo) if data_range is None else float(data_range)
        return {"max_abs": float(mx), "rmse": rmse, "psnr": psnr_db(R, rmse), "mean_error": s1 / n, "data_range": R}
    a = orig.reshape(orig.shape[0], -1) if orig.ndim > 1 else orig.reshape(-1, 1)
    b = dec.reshape(a.shape)
    mxs, los, his = [], [], []  # per-block extremes; np.max/np.min of them propagate NaN
    s2 = 0.0
    s1 = 0.0
    for sl in _blocks(a.shape[0], _rows_per_block(a)):
        e = _diff(a[sl], b[sl])
        mxs.append(float(np.max(np.abs(e))))
        s2 += float(np.dot(e.ravel(), e.ravel()))
        s1 += float(e.sum())
        los.append(float(a[sl].min()))
        his.append(float(a[sl].max()))
    mx = float(np.max(mxs))
    lo, hi = float(np.min(los)), float(np.max(his))
    rmse = float(np.sqrt(s2 / n))
    with np.errstate(invalid="ignore", over="ignore"):
        R = float(hi - lo) if data_range is None else float(data_range)
    return {"max_abs": mx, "rmse": rmse, "psnr": psnr_db(R, rmse), "mean_error": s1 / n, "data_range": R}


def psnr_db(data_range: float, rmse: float) -> float:
    """20 log10(data_range / rmse) dB; +inf when rmse == 0, -inf when rmse is infinite (a NaN/inf sample
    not returned as itself), NaN when data_range is not > 0 or rmse is NaN."""
    if rmse == 0.0:
        return float("inf")
    if not (data_range > 0) or np.isnan(rmse):
        return float("nan")
    if np.isinf(rmse):
        return float("-inf")
    return float(20.0 * np.log10(data_range / rmse))


def noise_sse(orig, dec, sigma) -> tuple[float, int]:
    """(sum of squared errors in noise units, samples counted), over the channels (last axis) that have a
    noise level: a channel whose sigma is NaN or <= 0 (no estimate: flat or missing where the noise was
    measured) is left out, so that one dead channel does not turn the whole figure into +inf (what
    :func:`noise_rmse` gives for an error at sigma 0). A scalar sigma counts every sample when it is > 0 and
    none otherwise. The noise-unit RMSE of several blocks is sqrt(sum of the sums / sum of the counts)."""
    sig = np.asarray(sigma, dtype=np.float64)
    orig = np.asarray(orig)
    dec = np.asarray(dec)
    if sig.ndim == 0:
        if not (np.isfinite(sig) and sig > 0):
            return 0.0, 0
    else:
        ok = np.isfinite(sig) & (sig > 0)
        if not ok.any():
            return 0.0, 0
        if not ok.all():
            if sig.shape[-1] != orig.shape[-1]:
                raise ValueError(f"sigma of shape {sig.shape} does not match the last axis {orig.shape[-1]}")
            orig, dec, sig = orig[..., ok], dec[..., ok], sig[..., ok]
    nr = noise_rmse(orig, dec, sig)
    return nr * nr * orig.size, int(orig.size)


def noise_rmse(orig, dec, sigma) -> float:
    """RMSE in noise units: sqrt(mean((dec - orig)^2 / sigma^2)).

    ``sigma`` is a scalar, or an array broadcasting against the last axis (per-channel sigma for
    ephys (T, C)). A sample whose sigma is 0 counts as 0 when its error is 0 and makes the result
    +inf otherwise. Equals ``rmse / sigma`` for scalar sigma.
    """
    orig = np.asarray(orig)
    dec = np.asarray(dec)
    if orig.shape != dec.shape:
        raise ValueError(f"shape mismatch: {orig.shape} vs {dec.shape}")
    if orig.size == 0:
        raise ValueError("empty arrays")
    sig = np.asarray(sigma, dtype=np.float64)
    a = orig.reshape(orig.shape[0], -1) if orig.ndim > 1 else orig.reshape(-1, 1)
    b = dec.reshape(a.shape)
    if sig.ndim == 0:
        inv2 = None
    else:
        if sig.shape[-1] != orig.shape[-1]:
            raise ValueError(f"sigma of shape {sig.shape} does not match the last axis {orig.shape[-1]}")
        s = np.broadcast_to(sig, orig.shape[1:] if orig.ndim > 1 else orig.shape[-1:]).reshape(1, -1)
        with np.errstate(divide="ignore"):
            inv2 = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0) ** 2, np.inf)
    tot = 0.0
    for sl in _blocks(a.shape[0], _rows_per_block(a)):
        e2 = _diff(a[sl], b[sl]) ** 2
        if inv2 is None:
            tot += float(e2.sum())
        else:
            with np.errstate(invalid="ignore"):
                w = np.where(e2 > 0, e2 * inv2, 0.0)
            tot += float(w.sum())
    ms = tot / orig.size
    if inv2 is None:
        s0 = float(sig)
        if s0 <= 0:
            return 0.0 if ms == 0 else float("inf")
        return float(np.sqrt(ms) / s0)
    return float(np.sqrt(ms))


# --------------------------------------------------------------------------------------------------
# noise estimation
# --------------------------------------------------------------------------------------------------

def _theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Theil-Sen line y = slope * x + intercept: slope = median of pairwise slopes,
    intercept = median(y - slope * x). Also returns the relative spread of the pairwise slopes
    (IQR / 1.349 / |slope|) as a crude uncertainty."""
    i, j = np.triu_indices(x.size, 1)
    dx = x[j] - x[i]
    keep = dx > 0
    sl = (y[j] - y[i])[keep] / dx[keep]
    if sl.size == 0:
        return float("nan"), float("nan"), float("inf")
    slope = float(np.median(sl))
    icpt = float(np.median(y - slope * x))
    q1, q3 = np.percentile(sl, [25, 75])
    rel = float((q3 - q1) / 1.349 / abs(slope)) if slope != 0 else float("inf")
    return slope, icpt, rel


def estimate_noise_imaging(movie, window: int = 16, n_bins: int = 50, pct_range: tuple[float, float] = (5.0, 95.0),
                           min_count: int = 100, max_frames: int = 2000, max_pixels: int = 250_000) -> dict:
    """Photon-transfer (mean-variance) fit of a (T, H, W) movie of shot-noise-limited data.

    Model: x = offset + gain * Poisson(lam) + read noise, so var(x) = gain * (E x - offset) + r.

    Points: for every pixel and every window of w = ``window`` consecutive frames (w is reduced to
    2 * (T // 8), at least 2, for short movies), the local temporal mean I = mean(x_t .. x_{t+w-1})
    and the difference of the two middle frames d = x_{t+w/2} - x_{t+w/2-1}. Frame differences
    cancel everything slower than the frame rate (background, bleaching, neuropil, most of a
    calcium transient), a local (rather than whole-movie) mean keeps transients out of the
    intensity axis, and for Poisson counts the conditioning is exact: var(d | I) = 2 gain (I -
    offset) + 2 r. (Averaging w frames keeps the read noise in I small, which would otherwise
    flatten the fitted slope.) The windows are binned by I (``n_bins`` equal-width bins between the
    ``pct_range`` percentiles of I; bins with fewer than ``min_count`` windows dropped); bin k gives
    (M_k, V_k) = (mean I, mean d^2 / 2), fitted by a Theil-Sen line V = g M + c (median of the
    pairwise slopes: robust to bins dominated by transients or clipping). Then

    - ``gain``   = g (raw units per photon);
    - ``offset`` = -c / g, the zero level where the extrapolated variance vanishes. With Gaussian
      read noise of variance r (raw units^2) this is offset_true - r / g: the read noise is folded
      into the zero level (the two are not separable from the mean-variance line alone), and it is
      the level a variance-stabilising (Anscombe) transform needs. ``read_var`` is thus NaN;
    - ``sigma``  = sqrt(g (mean(x) - offset)) = rms noise sd over the movie, raw units;
    - ``ok``     = the fit is trustworthy: T >= 30 frames; g finite and > 0; >= 5 populated bins
      spanning >= 2 noise sd at the median intensity; relative spread of the pairwise slopes
      (IQR / 1.349 / g) <= 0.3; the zero level below the median of x; and ``sigma`` within a
      factor 3 of the robust fallback below.

    Not ok: ``sigma`` is the fallback sigma_fb = median over (up to ~5000 regularly spaced) pixels of MAD_t(x_{t+1} - x_t) / 0.6745
    / sqrt(2) (robust per-pixel noise sd; rms of the differences / sqrt 2 if the MAD is 0).
    ``gain`` and ``offset`` are NaN when the fitted slope is not positive and finite, otherwise
    reported as fitted. Also returned: ``sigma_fallback``, ``n_frames``, ``window``,
    ``slope_rel_spread``, ``reason`` (why not ok; '' when ok), ``points`` = (M_k list, V_k list).

    Frame-to-frame motion adds variance to d and biases the gain up (about +12 % for 1 px rms
    jitter on simulated 2p data); use a motion-corrected movie when it matters. At most
    ``max_frames`` frames (the first ones) and ``max_pixels`` pixels (a regular spatial subsample)
    are used, for speed. Non-finite samples (the NaN border of a registered float movie, inf) are left
    out: the frames with no finite sample, then the pixels not finite in every remaining frame.
    """
    x = np.asarray(movie)
    if x.ndim != 3:
        raise ValueError(f"expected a (T, H, W) movie, got shape {x.shape}")
    T = x.shape[0]
    x = x[:max_frames]
    H, W = x.shape[1:]
    step = int(np.ceil(np.sqrt(H * W / max_pixels))) if H * W > max_pixels else 1
    x = x[:, ::step, ::step]
    xf = x.reshape(x.shape[0], -1)
    masked = xf.dtype.kind == "f" and not np.isfinite(xf).all()
    if masked:  # NaN borders of a registered movie, inf: only pixels finite in every (not all-NaN) frame
        fin = np.isfinite(xf)
        keep_t = fin.any(axis=1)
        xf = xf[keep_t][:, fin[keep_t].all(axis=0)]
    npx = xf.shape[1]
    t_used = xf.shape[0]
    w = int(max(2, min(int(window) // 2 * 2, 2 * (t_used // 8))))
    out = {"gain": float("nan"), "offset": float("nan"), "sigma": float("nan"), "ok": False,
           "sigma_fallback": float("nan"), "read_var": float("nan"), "n_frames": int(T), "window": w,
           "slope_rel_spread": float("inf"), "reason": "", "points": ([], [])}
    if masked and (t_used < 2 or npx == 0):
        out["reason"] = "no pixel is finite in 2 or more frames"
        return out
    if t_used < 2 or npx == 0:
        out["sigma"] = out["sigma_fallback"] = 0.0
        out["reason"] = "fewer than 2 frames"
        return out

    # robust fallback sigma: MAD of temporal differences (<= ~5000 pixels, for speed)
    dd = np.diff(xf[:, ::max(1, npx // 5000)].astype(np.float64), axis=0)
    mad = np.median(np.abs(dd - np.median(dd, axis=0)), axis=0)
    sig_fb = float(np.median(mad) / 0.6745 / np.sqrt(2.0))
    if sig_fb == 0.0:  # coarsely quantised data: use the rms of the differences instead
        sig_fb = float(np.sqrt(np.mean(dd * dd) / 2.0))
    out["sigma_fallback"] = out["sigma"] = sig_fb
    x_mean = float(xf.mean(dtype=np.float64))
    x_med = float(np.median(xf[:: max(1, t_used // 50)]))

    def windows(p0, p1):
        blk = xf[:, p0:p1].astype(np.float64)
        c = np.concatenate([np.zeros((1, p1 - p0)), np.cumsum(blk, axis=0)])
        inten = (c[w:] - c[:-w]) / w
        h = w // 2
        d = blk[h:t_used - w + h + 1] - blk[h - 1:t_used - w + h]
        return inten, d

    if t_used < w:
        out["reason"] = "fewer frames than the window"
        return out
    cols = max(1, (1 << 21) // max(t_used, 1))
    blk = xf[:, ::max(1, npx // 5000)].astype(np.float64)
    c = np.concatenate([np.zeros((1, blk.shape[1])), np.cumsum(blk, axis=0)])
    samp_i = (c[w:] - c[:-w]) / w
    lo, hi = np.percentile(samp_i, pct_range)
    if not hi > lo:
        out["reason"] = "constant movie"
        return out
    width = (hi - lo) / n_bins
    cnt = np.zeros(n_bins)
    s_i = np.zeros(n_bins)
    s_d2 = np.zeros(n_bins)
    for p0 in range(0, npx, cols):
        inten, d = windows(p0, min(npx, p0 + cols))
        k = np.floor((inten - lo) / width).astype(np.int64).ravel()
        keep = (k >= 0) & (k < n_bins)
        k = k[keep]
        cnt += np.bincount(k, minlength=n_bins)
        s_i += np.bincount(k, weights=inten.ravel()[keep], minlength=n_bins)
        s_d2 += np.bincount(k, weights=d.ravel()[keep] ** 2, minlength=n_bins)
    good = np.nonzero(cnt >= min_count)[0]
    M = s_i[good] / cnt[good]
    V = s_d2[good] / cnt[good] / 2.0
    out["points"] = (M.tolist(), V.tolist())
    reasons = []
    if T < 30:
        reasons.append("fewer than 30 frames")
    if M.size < 5:
        reasons.append("fewer than 5 populated intensity bins")
    g, c0, rel = _theil_sen(M, V) if M.size >= 2 else (float("nan"), float("nan"), float("inf"))
    out["slope_rel_spread"] = rel
    if not (np.isfinite(g) and g > 0):
        reasons.append("non-positive or undefined gain")
        out["reason"] = "; ".join(reasons)
        return out
    z = -c0 / g
    out["gain"], out["offset"] = float(g), float(z)
    sig_pt = float(np.sqrt(max(g * (x_mean - z), 0.0)))
    sig_med = float(np.sqrt(max(g * (float(np.median(M)) - z), 0.0)))
    if M.size >= 2 and (M.max() - M.min()) < 2.0 * sig_med:
        reasons.append("too little dynamic range")
    if rel > 0.3:
        reasons.append("scattered mean-variance relation")
    if z >= x_med:
        reasons.append("zero level above the median value")
    if not (np.isfinite(sig_pt) and sig_pt > 0):
        reasons.append("non-positive noise")
    elif sig_fb > 0 and not (1 / 3 <= sig_pt / sig_fb <= 3):
        reasons.append("photon-transfer sigma inconsistent with the robust noise estimate")
    out["reason"] = "; ".join(reasons)
    if not reasons:
        out["ok"] = True
        out["sigma"] = sig_pt
    return out


def _butter_mag(f: np.ndarray, lo: float | None, hi: float | None, order: int) -> np.ndarray:
    h = np.ones_like(f)
    with np.errstate(divide="ignore", over="ignore"):
        if lo is not None and lo > 0:
            h *= 1.0 / np.sqrt(1.0 + (lo / np.maximum(f, 1e-300)) ** (2 * order))
            h[f == 0] = 0.0
        if hi is not None:
            h *= 1.0 / np.sqrt(1.0 + (f / hi) ** (2 * order))
    return h


def bandpass(x, fs: float, lo: float | None = 300.0, hi: float | None = 6000.0, order: int = 2,
             block: int = 1 << 15, ch_block: int = 64, dtype=np.float32) -> np.ndarray:
    """Zero-phase band-pass of x (T,) or (T, C) along axis 0: the spectrum is multiplied by the
    Butterworth magnitude |H(f)| = [1 + (lo/f)^(2n)]^-1/2 [1 + (f/hi)^(2n)]^-1/2 (n = ``order``;
    no phase shift, so peaks keep their timing). Computed in float32 on overlapping time blocks of
    about ``block`` samples with a margin of max(1024, 50 ms) each side (reflect-padded at the
    ends of the signal) and ``ch_block`` channels at a time. ``hi`` is capped at 0.45 fs; ``lo`` or
    ``hi`` None (or lo <= 0) disables that side."""
    x = np.asarray(x)
    one_d = x.ndim == 1
    if one_d:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"expected (T,) or (T, C), got {x.shape}")
    T, C = x.shape
    if hi is not None:
        hi = min(hi, 0.45 * fs)
    margin = int(max(1024, 0.05 * fs))
    out = np.empty((T, C), dtype)
    core = max(block - 2 * margin, 4096)
    for c0 in range(0, T, core):
        c1 = min(T, c0 + core)
        a0, a1 = max(0, c0 - margin), min(T, c1 + margin)
        n_raw = a1 - a0
        pl = min(margin - (c0 - a0), n_raw - 1)
        pr = min(margin - (a1 - c1), n_raw - 1)
        n = n_raw + pl + pr
        nfft = 1 << int(np.ceil(np.log2(max(n, 2))))
        hmag = _butter_mag(np.fft.rfftfreq(nfft, 1.0 / fs), lo, hi, order).astype(np.float32)
        keep_mean = lo is None or lo <= 0
        s0 = pl + (c0 - a0)
        for k0 in range(0, C, ch_block):
            k1 = min(C, k0 + ch_block)
            seg = np.ascontiguousarray(x[a0:a1, k0:k1].T, dtype=np.float32)  # (cb, n_raw)
            mean = seg.mean(axis=1, keepdims=True)
            seg -= mean
            if pl > 0 or pr > 0:
                seg = np.pad(seg, [(0, 0), (pl, pr)], mode="reflect")
            spec = np.fft.rfft(seg, nfft, axis=1)
            spec *= hmag[None, :]
            y = np.fft.irfft(spec, nfft, axis=1)[:, s0:s0 + (c1 - c0)]
            if keep_mean:
                y += mean
            out[c0:c1, k0:k1] = y.T
    return out[:, 0] if one_d else out


def _mad_sd_columns(y: np.ndarray, ch_block: int = 64) -> np.ndarray:
    """Per-column median(|y - median(y)|) / 0.6745 of a (T, C) array, in float64."""
    C = y.shape[1]
    out = np.empty(C)
    for k0 in range(0, C, ch_block):
        blk = np.ascontiguousarray(y[:, k0:k0 + ch_block].T)
        med = np.median(blk, axis=1, keepdims=True)
        np.subtract(blk, med, out=blk)
        np.abs(blk, out=blk)
        out[k0:k0 + ch_block] = np.median(blk, axis=1) / 0.6745
    return out


def estimate_noise_ephys(x, fs: float, lo: float = 300.0, hi: float = 6000.0) -> np.ndarray:
    """Per-channel noise sd of a (T, C) recording (or (T,) single channel):
    sigma_c = median(|y_c - median(y_c)|) / 0.6745 with y = :func:`bandpass` (lo..hi Hz,
    default 300-6000) of x. The MAD ignores the sparse spikes. Returns float64 (C,) ((1,) for 1-D).

    Non-finite samples (NaN gaps, inf) are left out: they are filled with the channel's median for the
    filter and the MAD is taken over the finite samples only (the filter's ringing at a gap's edges is
    as sparse as spikes); a channel without finite samples gets NaN."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.dtype.kind != "f" or np.isfinite(x).all():
        return _mad_sd_columns(bandpass(x, fs, lo, hi))
    fin = np.isfinite(x)
    out = np.full(x.shape[1], np.nan)
    filled = np.array(x, dtype=np.float64)
    for c in range(x.shape[1]):
        if fin[:, c].any():
            filled[~fin[:, c], c] = np.median(filled[fin[:, c], c])
        else:
            filled[:, c] = 0.0
    y = bandpass(filled, fs, lo, hi)
    for c in range(x.shape[1]):
        yc = y[fin[:, c], c].astype(np.float64)
        if yc.size:
            out[c] = np.median(np.abs(yc - np.median(yc))) / 0.6745
    return out


def estimate_noise_events(x, edge: float = 0.25) -> np.ndarray:
    """Per-channel noise sd of spike snippets (events, samples) or (events, channels, samples), e.g. a
    SpikeEventSeries: sigma_c = median |d| / 0.6745 / sqrt(2) of the differences d of consecutive samples
    *within* each snippet, over its first and last ``edge`` fraction of samples (at least 2 each: the
    baseline around the spike, which a snippet is centred on). Differences across events (axis 0) would
    measure waveform and baseline variability, not noise. Finite samples only; a channel without any
    gets NaN. Returns float64 (C,) ((1,) for 2-D input)."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise ValueError(f"expected (events, samples) or (events, channels, samples), got {x.shape}")
    S = x.shape[2]
    if S < 3:
        raise ValueError(f"snippets of {S} sample(s): too short to estimate noise within them")
    m = max(2, int(round(S * edge)))
    idx = np.unique(np.r_[np.arange(0, min(m, S)), np.arange(max(0, S - m), S)])
    xf = x.astype(np.float64)
    d = np.concatenate([np.diff(xf[:, :, idx[idx < S // 2]], axis=2),
                        np.diff(xf[:, :, idx[idx >= S // 2]], axis=2)], axis=2)
    out = np.full(x.shape[1], np.nan)
    for c in range(x.shape[1]):
        dc = d[:, c].ravel()
        dc = dc[np.isfinite(dc)]
        if dc.size:
            med = float(np.median(np.abs(dc))) / 0.6745 / np.sqrt(2.0)
            if med == 0.0:  # coarsely quantised: rms of the differences instead
                med = float(np.sqrt(np.mean(dc * dc) / 2.0))
            out[c] = med
    return out


# --------------------------------------------------------------------------------------------------
# imaging: ROIs and traces
# --------------------------------------------------------------------------------------------------

def _box_mean_time(x: np.ndarray, w: int) -> np.ndarray:
    """Running mean over ``w`` frames along axis 0 (centred, edges use the available frames)."""
    T = x.shape[0]
    if w <= 1 or T <= 1:
        return x.copy()
    c = np.concatenate([np.zeros((1,) + x.shape[1:], x.dtype), np.cumsum(x, axis=0, dtype=np.float64).astype(x.dtype)])
    h = w // 2
    i0 = np.clip(np.arange(T) - h, 0, T)
    i1 = np.clip(np.arange(T) + h + 1, 0, T)
    cnt = (i1 - i0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return (c[i1] - c[i0]) / cnt


def _smooth2d(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D image (reflect edges), kernel radius 3 sigma."""
    if sigma <= 0:
        return img.copy()
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = img.astype(np.float64)
    for ax in (0, 1):
        p = np.pad(out, [(r, r) if a == ax else (0, 0) for a in (0, 1)], mode="reflect")
        acc = np.zeros_like(out)
        n = out.shape[ax]
        for j, kj in enumerate(k):
            acc += kj * (p[j:j + n] if ax == 0 else p[:, j:j + n])
        out = acc
    return out


def _zscore_hp(movie: np.ndarray, hp_frames: int, max_frames: int) -> np.ndarray:
    """Float32 movie, temporally binned to at most ``max_frames``, high-passed (minus a running mean of
    ``hp_frames``), lightly low-passed (3-frame mean), z-scored per pixel (zero-variance pixels -> 0)."""
    x = np.asarray(movie)
    T = x.shape[0]
    if T > max_frames:
        b = int(np.ceil(T / max_frames))
        Tb = T // b
        x = x[:Tb * b].reshape(Tb, b, *x.shape[1:]).astype(np.float32).mean(axis=1)
    else:
        x = x.astype(np.float32)
    x = x - _box_mean_time(x, hp_frames)
    if x.shape[0] >= 3:
        x = _box_mean_time(x, 3)
    x -= x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0, keepdims=True)
    x /= np.where(sd > 0, sd, np.inf)
    return x


def detect_rois(movie, max_rois: int = 50, cell_radius_px: float = 6.0, hp_frames: int = 31,
                corr_threshold: float = 0.3, seed_mad: float = 3.0, max_frames: int = 1000,
                grow_smooth_px: float = 1.0, grow_fraction: float = 0.5) -> np.ndarray:
    """Simple, documented soma detector run on an (original) (T, H, W) movie.

    1. Preprocess: bin to <= ``max_frames`` frames, temporal high-pass (subtract a
       ``hp_frames``-frame running mean), 3-frame smoothing, per-pixel z-score -> z(t, p).
    2. Local correlation image: CI(p) = mean over the 8 neighbours q of mean_t z(t,p) z(t,q);
       noise is uncorrelated between pixels while a cell's pixels share its transients.
    3. Seeds: local maxima of CI blurred by sigma 1 px, within a (2 r + 1)^2 window
       (r = ``cell_radius_px``), above median(CI) + ``seed_mad`` * 1.4826 MAD(CI), taken in
       decreasing CI order, skipping seeds already inside an accepted ROI.
    4. Region growing on zs = z blurred in space by ``grow_smooth_px`` (and re-z-scored):
       reference trace = mean zs over the 3x3 around the seed; candidate pixels lie within 2 r of
       the seed, outside accepted ROIs, with correlation to the reference above
       max(``corr_threshold``, ``grow_fraction`` * the seed's own value); the ROI is the
       4-connected component of candidates containing the seed, accepted when its area is between
       pi (r/2)^2 and 4 pi r^2 (soma size).

    Only active cells are found (an activity-based detector cannot see silent ones); on the
    default simulation about half the cells are found, with > 90 % of each ROI inside its cell.
    Returns a bool array (N, H, W), N <= ``max_rois``, strongest first.
    """
    x = np.asarray(movie)
    if x.ndim != 3:
        raise ValueError(f"expected a (T, H, W) movie, got shape {x.shape}")
    T, H, W = x.shape
    if T < 3:
        return np.zeros((0, H, W), bool)
    z = _zscore_hp(x, hp_frames, max_frames)
    Tz = z.shape[0]
    ci = np.zeros((H, W))
    cnt = np.zeros((H, W))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            ys = slice(max(0, dy), H + min(0, dy))
            yd = slice(max(0, -dy), H + min(0, -dy))
            xs = slice(max(0, dx), W + min(0, dx))
            xd = slice(max(0, -dx), W + min(0, -dx))
            prod = np.einsum("tij,tij->ij", z[:, yd, xd], z[:, ys, xs], dtype=np.float64) / Tz
            ci[yd, xd] += prod
            cnt[yd, xd] += 1
    ci /= np.maximum(cnt, 1)
    cis = _smooth2d(ci, 1.0)
    r = max(1, int(round(cell_radius_px)))
    med = np.median(cis)
    mad = 1.4826 * np.median(np.abs(cis - med))
    thr = med + seed_mad * max(mad, 1e-12)
    # local maxima in a (2r+1)^2 window
    pad = np.pad(cis, r, mode="constant", constant_values=-np.inf)
    lmax = np.full((H, W), -np.inf)
    for dy in range(-r, r + 1):
        row = pad[r + dy:r + dy + H]
        for dx in range(-r, r + 1):
            np.maximum(lmax, row[:, r + dx:r + dx + W], out=lmax)
    cand = np.argwhere((cis >= lmax) & (cis > thr))
    cand = cand[np.argsort(-cis[cand[:, 0], cand[:, 1]], kind="stable")]
    # region growing works on a spatially smoothed copy (per-pixel SNR of 2p data is low)
    if grow_smooth_px > 0:
        zs = np.empty_like(z)
        for t in range(Tz):
            zs[t] = _smooth2d(z[t], grow_smooth_px)
        zs -= zs.mean(axis=0, keepdims=True)
        sd = zs.std(axis=0, keepdims=True)
        zs /= np.where(sd > 0, sd, np.inf)
    else:
        zs = z
    taken = np.zeros((H, W), bool)
    rois = []
    amin, amax = np.pi * (r / 2.0) ** 2, 4 * np.pi * r * r
    R = 2 * r
    for cy, cx in cand:
        if len(rois) >= max_rois:
            break
        if taken[cy, cx]:
            continue
        y0, y1, x0, x1 = max(0, cy - R), min(H, cy + R + 1), max(0, cx - R), min(W, cx + R + 1)
        ref = zs[:, max(0, cy - 1):cy + 2, max(0, cx - 1):cx + 2].reshape(Tz, -1).mean(axis=1)
        sd = ref.std()
        if sd == 0:
            continue
        ref = (ref - ref.mean()) / sd
        win = zs[:, y0:y1, x0:x1]
        corr = np.tensordot(ref, win, axes=(0, 0)) / Tz
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= R * R
        good = (corr > max(corr_threshold, grow_fraction * corr[cy - y0, cx - x0])) & inside & ~taken[y0:y1, x0:x1]
        if not good[cy - y0, cx - x0]:
            continue
        comp = np.zeros_like(good)
        q = deque([(cy - y0, cx - x0)])
        comp[cy - y0, cx - x0] = True
        while q:
            a, b = q.popleft()
            for na, nb in ((a - 1, b), (a + 1, b), (a, b - 1), (a, b + 1)):
                if 0 <= na < good.shape[0] and 0 <= nb < good.shape[1] and good[na, nb] and not comp[na, nb]:
                    comp[na, nb] = True
                    q.append((na, nb))
        area = int(comp.sum())
        if area < amin or area > amax:
            continue
        mask = np.zeros((H, W), bool)
        mask[y0:y1, x0:x1] = comp
        taken |= mask
        rois.append(mask)
    if not rois:
        return np.zeros((0, H, W), bool)
    return np.stack(rois)


def roi_traces(movie, masks) -> np.ndarray:
    """ROI traces (N, T) float64: trace_i(t) = sum_p w_i(p) x(t, p) / sum_p w_i(p) with w_i the mask
    (bool: plain mean over the mask) or float weights (e.g. footprints; negative weights are
    clipped to 0). An empty mask gives a NaN row."""
    x = np.asarray(movie)
    wts = np.asarray(masks)
    if wts.ndim == 2:
        wts = wts[None]
    if x.shape[1:] != wts.shape[1:]:
        raise ValueError(f"masks {wts.shape} do not match movie frames {x.shape}")
    T = x.shape[0]
    Wm = np.maximum(wts.reshape(wts.shape[0], -1).astype(np.float64), 0.0)
    tot = Wm.sum(axis=1)
    used = np.nonzero(Wm.any(axis=0))[0]  # only pixels inside some ROI
    Wu = Wm[:, used]
    xf = x.reshape(T, -1)
    out = np.empty((wts.shape[0], T))
    for sl in _blocks(T, max(1, (1 << 22) // max(used.size, 1))):
        out[:, sl] = Wu @ xf[sl][:, used].astype(np.float64).T
    with np.errstate(invalid="ignore", divide="ignore"):
        out /= np.where(tot > 0, tot, np.nan)[:, None]
    return out


def trace_correlations(a, b) -> np.ndarray:
    """Row-wise Pearson r: r_i = sum_t (a_it - mean a_i)(b_it - mean b_i) / sqrt(SS(a_i) SS(b_i)).
    Rows with zero variance (or containing NaN/inf) give NaN; a 1-D input is one row."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    da = a - a.mean(axis=1, keepdims=True)
    db = b - b.mean(axis=1, keepdims=True)
    num = (da * db).sum(axis=1)
    den = np.sqrt((da * da).sum(axis=1) * (db * db).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    r[~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _r_vs_reference(ref, x) -> np.ndarray:
    """:func:`trace_correlations` of ``x`` against reference rows ``ref``, where a reference row that
    is finite and not constant counts r = 0 when its correlation is undefined (``x`` row constant,
    e.g. zeroed, or not finite): the signal was lost, and a NaN would be dropped from the summaries."""
    ref = np.atleast_2d(np.asarray(ref, dtype=np.float64))
    r = trace_correlations(ref, x)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(ref).all(axis=1) & (np.ptp(ref, axis=1) > 0) if ref.shape[1] else np.zeros(ref.shape[0], bool)
    r[ok & np.isnan(r)] = 0.0
    return r


def _nan_stat(v: np.ndarray, fn, *a) -> float:
    v = v[np.isfinite(v)]
    return float(fn(v, *a)) if v.size else float("nan")


def imaging_fidelity(orig, dec, masks=None, true_traces=None, footprints=None, noise=None,
                     footprint_threshold: float = 0.3, max_rois: int = 50) -> dict:
    """ROI-trace fidelity of a decoded (T, H, W) movie.

    ROIs: ``masks`` if given; else ``footprints > footprint_threshold * max`` per footprint (rows
    then correspond to cells); else :func:`detect_rois` on ``orig``. Traces are ROI means
    (:func:`roi_traces`). Returns

    - ``roi_r_median``, ``roi_r_p05``: median and 5th percentile over ROIs of Pearson r between
      original and decoded ROI traces (rows whose original trace is constant or not finite are
      excluded; a decoded trace that is constant or not finite where the original varies counts
      r = 0, so destroyed ROIs lower the figures instead of vanishing from them);
    - ``n_rois`` and ``roi_source`` ('masks' | 'footprints' | 'detected');
    - with ``true_traces`` (N, T) and ROIs that correspond to them (footprints, or N masks):
      ``true_r_median_orig`` / ``true_r_median_dec`` (median r of original / decoded ROI traces
      against the true traces) and ``true_r_p05_dec``; NaN when ROIs do not correspond;
    - with ``noise`` (a scalar sigma or the dict of :func:`estimate_noise_imaging`):
      ``rmse_noise_units`` = :func:`noise_rmse`.
    """
    orig = np.asarray(orig)
    dec = np.asarray(dec)
    if orig.shape != dec.shape or orig.ndim != 3:
        raise ValueError(f"expected two (T, H, W) movies of equal shape, got {orig.shape}, {dec.shape}")
    if masks is not None:
        m = np.asarray(masks)
        if m.ndim == 2:
            m = m[None]
        src = "masks"
    elif footprints is not None:
        fp = np.asarray(footprints, dtype=np.float64)
        mx = fp.reshape(fp.shape[0], -1).max(axis=1)
        m = fp > (footprint_threshold * mx)[:, None, None]
        src = "footprints"
    else:
        m = detect_rois(orig, max_rois=max_rois)
        src = "detected"
    out: dict = {"n_rois": int(m.shape[0]), "roi_source": src}
    if m.shape[0]:
        to = roi_traces(orig, m)
        td = roi_traces(dec, m)
        r = _r_vs_reference(to, td)
        out["roi_r_median"] = _nan_stat(r, np.median)
        out["roi_r_p05"] = _nan_stat(r, np.percentile, 5)
    else:
        to = td = None
        out["roi_r_median"] = out["roi_r_p05"] = float("nan")
    if true_traces is not None:
        tt = np.atleast_2d(np.asarray(true_traces, dtype=np.float64))
        if to is not None and src != "detected" and tt.shape == to.shape:
            ro = _r_vs_reference(tt, to)
            rd = _r_vs_reference(tt, td)
            out["true_r_median_orig"] = _nan_stat(ro, np.median)
            out["true_r_median_dec"] = _nan_stat(rd, np.median)
            out["true_r_p05_dec"] = _nan_stat(rd, np.percentile, 5)
        else:
            out["true_r_median_orig"] = out["true_r_median_dec"] = out["true_r_p05_dec"] = float("nan")
    if noise is not None:
        sig = noise["sigma"] if isinstance(noise, dict) else noise
        out["rmse_noise_units"] = noise_rmse(orig, dec, sig)
    return out


# --------------------------------------------------------------------------------------------------
# ephys: spike detection and agreement
# --------------------------------------------------------------------------------------------------

def detect_spikes(y: np.ndarray, thresholds: np.ndarray, dead: int) -> tuple[np.ndarray, np.ndarray]:
    """Negative-peak threshold detection on a filtered (T, C) signal.

    A sample t on channel c is a candidate when y[t,c] < -thresholds[c] and it is a local minimum
    (y[t-1,c] >= y[t,c] < y[t+1,c]). Candidates are taken per channel in time order; one within
    ``dead`` samples after the last kept one replaces it only if deeper (so the kept peaks are
    the deepest of each burst of threshold crossings). Returns (times, channels), sorted by
    channel then time.
    """
    y = np.asarray(y)
    T, C = y.shape
    if T < 3:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    thr = -np.asarray(thresholds, dtype=np.float64).reshape(1, C)
    mid = y[1:-1]
    cand = (mid < thr) & (mid <= y[:-2]) & (mid < y[2:])
    t, c = np.nonzero(cand)
    t = t + 1
    order = np.lexsort((t, c))
    t, c = t[order], c[order]
    keep_t, keep_c = [], []
    last_t, last_c, last_v = -(10**18), -1, 0.0
    vals = y[t, c]
    for ti, ci, vi in zip(t.tolist(), c.tolist(), vals.tolist()):
        if ci == last_c and ti - last_t <= dead:
            if vi < last_v:
                keep_t[-1] = ti
                last_v = vi
                last_t = ti
            continue
        keep_t.append(ti)
        keep_c.append(ci)
        last_t, last_c, last_v = ti, ci, vi
    return np.asarray(keep_t, np.int64), np.asarray(keep_c, np.int64)


def match_spikes(ta, ca, tb, cb, tol: int) -> int:
    """Number of one-to-one matches between detections (ta, ca) and (tb, cb): same channel and
    |ta - tb| <= tol, greedy in time order per channel (optimal when detections on a channel are
    more than 2 tol apart, which the dead time ensures)."""
    n = 0
    for ch in np.union1d(ca, cb):
        a = np.sort(ta[ca == ch])
        b = np.sort(tb[cb == ch])
        i = j = 0
        while i < a.size and j < b.size:
            d = a[i] - b[j]
            if abs(d) <= tol:
                n += 1
                i += 1
                j += 1
            elif d < 0:
                i += 1
            else:
                j += 1
    return n


def _found_fraction(times: np.ndarray, detections: np.ndarray, tol: int) -> float:
    """Fraction of the sorted ``times`` with a detection (any channel) within +-``tol`` samples."""
    if not times.size:
        return float("nan")
    d = np.sort(detections)
    if not d.size:
        return 0.0
    i = np.clip(np.searchsorted(d, times), 1, d.size - 1) if d.size > 1 else np.zeros(times.size, np.int64)
    near = np.minimum(np.abs(d[i] - times), np.abs(d[np.maximum(i - 1, 0)] - times))
    return float(np.mean(near <= tol))


def ephys_reference(orig, fs: float, threshold: float = 5.0, lo: float = 300.0, hi: float = 6000.0,
                    dead_ms: float = 1.0) -> dict:
    """The original-side work of :func:`ephys_fidelity` (filtered signal, sigma, detections), to
    pass as ``ref=`` when comparing many decoded versions of the same recording."""
    orig = np.asarray(orig)
    if orig.ndim == 1:
        orig = orig[:, None]
    yo = bandpass(orig, fs, lo, hi)
    sig = _mad_sd_columns(yo)
    thr = threshold * sig
    thr = np.where(thr > 0, thr, np.inf)  # a channel without noise has no detections
    dead = max(1, int(round(dead_ms * fs / 1000.0)))
    to, co = detect_spikes(yo, thr, dead)
    return {"y": yo, "sigma": sig, "thr": thr, "dead": dead, "t": to, "c": co, "shape": orig.shape,
            "fs": float(fs), "lo": lo, "hi": hi}


def ephys_fidelity(orig, dec, fs: float, threshold: float = 5.0, lo: float = 300.0, hi: float = 6000.0,
                   dead_ms: float = 1.0, tol_ms: float = 0.5, snippet_ms: float = 1.0,
                   max_snippets: int = 20000, ref: dict | None = None, true_times=None) -> dict:
    """Spike-band fidelity of a decoded (T, C) recording.

    Both signals are band-passed (:func:`bandpass`, ``lo``-``hi`` Hz). Thresholds are
    ``threshold`` * sigma_c with sigma_c from the ORIGINAL (:func:`estimate_noise_ephys`, MAD/0.6745)
    and used for both, so a codec is judged on the same absolute threshold. Spikes are detected
    with :func:`detect_spikes` (dead time ``dead_ms``) on each. Returns

    - ``spike_f1`` = 2 M / (N_orig + N_dec), M = detections matched on the same channel within
      +-``tol_ms`` (:func:`match_spikes`); NaN when neither has a detection;
      (``ref`` = :func:`ephys_reference` of ``orig`` skips the original-side work; ``orig`` is then
      not read and may be None)
    - ``spike_precision`` = M / N_dec, ``spike_recall`` = M / N_orig;
    - ``waveform_r_median``: median over original detections (at most ``max_snippets``, evenly
      spaced) of Pearson r between the original and decoded filtered snippets, +-``snippet_ms``
      around the peak on the detection channel (a constant or non-finite decoded snippet counts
      r = 0);
    - ``n_spikes`` = N_orig, ``n_spikes_dec`` = N_dec, ``sigma`` (per-channel, list);
    - with ``true_times`` (sample indices of known spikes: a simulation's truth, or a lab's sorted units):
      ``true_recall_orig`` / ``true_recall_dec``, the fraction of them with a detection on any channel
      within +-``tol_ms`` in the original / decoded data (NaN when there are none), and ``n_true``.
    """
    dec = np.asarray(dec)
    if dec.ndim == 1:
        dec = dec[:, None]
    if ref is None:
        ref = ephys_reference(orig, fs, threshold, lo, hi, dead_ms)
    elif ref["fs"] != float(fs) or ref["lo"] != lo or ref["hi"] != hi:
        raise ValueError("ref was prepared with other fs/lo/hi")
    if tuple(ref["shape"]) != dec.shape:
        raise ValueError(f"shape mismatch: {tuple(ref['shape'])} vs {dec.shape}")
    yo, sig, thr, dead, to, co = ref["y"], ref["sigma"], ref["thr"], ref["dead"], ref["t"], ref["c"]
    yd = bandpass(dec, fs, lo, hi)
    tol = int(round(tol_ms * fs / 1000.0))
    td, cd = detect_spikes(yd, thr, dead)
    M = match_spikes(to, co, td, cd, tol)
    No, Nd = int(to.size), int(td.size)
    out = {
        "spike_f1": (2.0 * M / (No + Nd)) if (No + Nd) else float("nan"),
        "spike_precision": (M / Nd) if Nd else float("nan"),
        "spike_recall": (M / No) if No else float("nan"),
        "n_spikes": No, "n_spikes_dec": Nd, "n_matched": int(M), "sigma": sig.tolist(),
    }
    if true_times is not None:
        tt = np.sort(np.asarray(true_times, dtype=np.int64))
        out["n_true"] = int(tt.size)
        out["true_recall_orig"] = _found_fraction(tt, to, tol)
        out["true_recall_dec"] = _found_fraction(tt, td, tol)
    h = max(1, int(round(snippet_ms * fs / 1000.0)))
    ok = (to >= h) & (to < yo.shape[0] - h)
    ts, cs = to[ok], co[ok]
    if ts.size > max_snippets:
        sel = np.linspace(0, ts.size - 1, max_snippets).astype(np.int64)
        ts, cs = ts[sel], cs[sel]
    if ts.size:
        idx = ts[:, None] + np.arange(-h, h + 1)[None, :]
        r = _r_vs_reference(yo[idx, cs[:, None]], yd[idx, cs[:, None]])
        out["waveform_r_median"] = _nan_stat(r, np.median)
    else:
        out["waveform_r_median"] = float("nan")
    return out
