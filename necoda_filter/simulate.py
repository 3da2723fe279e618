"""Ground-truth simulators for calcium imaging and extracellular electrophysiology.

Both simulators are pure numpy, deterministic for a given ``seed``, and fast enough to be
called from tests and benchmarks (a 500 x 128 x 128 movie or 2 s of 384-channel ephys take
about a second on one core).

Imaging (:func:`simulate_imaging`)
    expected photons per pixel and frame
        lam(t, y, x) = bleach(t) * [ bg(y, x) * (1 + bg_mod(t)) + np(y, x) * np_t(t) ]
                       + sum_i footprint_i(y, x) * traces_i(t)        (+ out-of-focus cells, "1p")
    then (optionally) a rigid sub-pixel shift per frame, and
        movie = clip(round(offset + gain * Poisson(lam) + gain * read_noise * N(0, 1)))
        clean = offset + gain * lam           (float32, not clipped, no noise)
    so the photon-transfer curve of the movie is  var = gain * (mean - offset) + (gain*read_noise)^2.

Ephys (:func:`simulate_ephys`)
    clean(t, c) = adc_offset_c + [ lfp(t, c) + sum_spikes a_k * template_{u_k}(t - t_k, c) ] / uv_per_bit
    data        = clip(round(clean + noise / uv_per_bit))
    with spatially correlated Gaussian background noise of ``noise_uv`` µV rms per channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ImagingSim", "EphysSim", "simulate_imaging", "simulate_ephys", "neuropixels_positions"]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _smooth_noise(z: np.ndarray, sigma_px: float, zero_mean: bool = False) -> np.ndarray:
    """White noise ``z`` (h, w) low-passed by a Gaussian of ``sigma_px`` (FFT, periodic); with
    ``zero_mean`` the mean (DC) term is dropped."""
    h, w = z.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    tf = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fy**2 + fx**2))
    spec = np.fft.rfft2(z) * tf
    if zero_mean:
        spec[0, 0] = 0.0
    return np.fft.irfft2(spec, s=(h, w))


def _gauss_field_zero_mean(z: np.ndarray, sigma_px: float) -> np.ndarray:
    """The smooth zero-mean part of the white noise ``z`` (:func:`_smooth_noise`) normalised to sd 1;
    zeros if the filter leaves nothing of it (a field of view of a few pixels)."""
    f = _smooth_noise(z, sigma_px, zero_mean=True)
    m = float(np.abs(f).max())
    if not m > 0.0:
        return np.zeros_like(f)
    f /= m  # O(1) values: the sd below is exact even when the smooth part is ~1e-200
    sd = f.std()
    return f / sd if sd > 0 else np.zeros_like(f)


def _lognormal_field(z: np.ndarray, sigma_px: float, log_sd: float, weight: np.ndarray | None = None,
                     mean: float | None = None, *, _stable: bool = False) -> np.ndarray:
    """``weight * exp(log_sd * g)`` rescaled to mean ``mean`` (1 when None), ``g`` the white noise ``z``
    low-passed by a Gaussian of ``sigma_px`` (FFT, periodic) and normalised to sd 1.

    The original computation (first branch) keeps the mean of ``z`` in ``g``: it passes the filter
    unattenuated and is divided by the sd of the smooth part like the rest. That constant cancels in
    the rescaling, but on a field of view small compared with ``sigma_px`` (height and width below
    ~30 px for sigma 20 px; 1 x 32 at some seeds) the sd is ~1e-7 .. 1e-15, ``g`` ~ 1e6 .. 1e14 and
    ``exp`` overflows to inf or underflows to all zeros (nan / divide by zero, then numpy's "lam value
    too large" in the Poisson draw). Whenever that computation hits a floating-point error it is
    redone from the zero-mean field, the same quantity in exact arithmetic; everywhere else it is
    kept, bit for bit (the simulated data of tests and benchmarks must not change)."""
    if not _stable:
        try:
            with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
                f = _smooth_noise(z, sigma_px)
                sd = f.std()
                f = np.exp(log_sd * (f / sd if sd > 0 else f))
                if weight is not None:
                    f = weight * f
                if mean is None:
                    f /= f.mean()
                else:
                    f *= mean / f.mean()
                return f
        except FloatingPointError:
            pass
    f = np.exp(log_sd * _gauss_field_zero_mean(z, sigma_px))  # |exponent| <= log_sd * sqrt(h * w)
    if weight is not None:
        f = weight * f
    return f * ((1.0 if mean is None else mean) / f.mean())


def _slow_process(rng: np.random.Generator, n: int, tau: float, k: int = 1) -> np.ndarray:
    """k independent zero-mean, unit-sd Gaussian processes of length n with correlation time ~tau samples."""
    z = rng.standard_normal((k, n))
    f = np.fft.rfftfreq(n)
    tf = np.exp(-2.0 * (np.pi * max(tau, 1e-3)) ** 2 * f**2)
    tf[0] = 0.0  # zero mean
    y = np.fft.irfft(np.fft.rfft(z, axis=1) * tf, n=n, axis=1)
    # normalise by the theoretical sd (a short series may contain almost none of the slow band)
    sd_theory = np.sqrt(np.sum(tf[1:] ** 2 * np.where(np.arange(1, f.size) == n / 2, 1.0, 2.0)) / n) if n > 1 else 0.0
    return y / sd_theory if sd_theory > 1e-12 else np.zeros_like(y)


def _ellipse(h, w, cy, cx, a, b, theta, nucleus, nucleus_frac, nucleus_depth, edge_px=0.6):
    """Soft elliptical soma footprint (max 1) with an optional darker nucleus, on an (h, w) grid.

    Returns (y0, y1, x0, x1, patch) for the bounding box only (cheap)."""
    r = int(np.ceil(max(a, b) * 1.3 + 3))
    y0, y1 = max(0, int(np.floor(cy)) - r), min(h, int(np.floor(cy)) + r + 2)
    x0, x1 = max(0, int(np.floor(cx)) - r), min(w, int(np.floor(cx)) + r + 2)
    if y0 >= y1 or x0 >= x1:
        return y0, y1, x0, x1, np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    rho = np.sqrt(u * u + v * v)
    edge = edge_px / min(a, b)  # soft edge of ~edge_px pixels
    f = 1.0 / (1.0 + np.exp((rho - 1.0) / edge))
    if nucleus:
        f *= 1.0 - nucleus_depth / (1.0 + np.exp((rho - nucleus_frac) / edge))
    m = f.max()
    if m > 0:
        f /= m
    return y0, y1, x0, x1, f.astype(np.float32)


def _place_centres(rng, n, h, w, min_dist, margin):
    """Random centres with a soft minimum distance (rejection sampling, relaxed if crowded)."""
    pts: list[tuple[float, float]] = []
    d = float(min_dist)
    tries = 0
    while len(pts) < n:
        cy = rng.uniform(margin, max(margin + 1e-3, h - margin))
        cx = rng.uniform(margin, max(margin + 1e-3, w - margin))
        if all((cy - py) ** 2 + (cx - px) ** 2 >= d * d for py, px in pts):
            pts.append((cy, cx))
            tries = 0
        else:
            tries += 1
            if tries > 200:  # crowded field of view: allow more overlap
                d *= 0.8
                tries = 0
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def _fourier_shift(frames: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift each frame (T, H, W) by shifts (T, 2) = (dy, dx) pixels, sub-pixel, periodic."""
    t, h, w = frames.shape
    fy = np.fft.fftfreq(h)[None, :, None]
    fx = np.fft.rfftfreq(w)[None, None, :]
    out = np.empty_like(frames)
    step = 64
    for i in range(0, t, step):
        sl = slice(i, min(t, i + step))
        sy = shifts[sl, 0][:, None, None]
        sx = shifts[sl, 1][:, None, None]
        ph = np.exp(-2j * np.pi * (fy * sy + fx * sx))
        out[sl] = np.fft.irfft2(np.fft.rfft2(frames[sl]) * ph, s=(h, w), axes=(1, 2))
    return out


def _int_range(dtype: np.dtype, bit_depth: int | None) -> tuple[float, float]:
    """Clip range for an integer dtype at a given bit depth (unsigned: [0, 2^b-1]; signed: ±2^(b-1))."""
    info = np.iinfo(dtype)
    if bit_depth is None:
        return float(info.min), float(info.max)
    b = int(bit_depth)
    if info.min < 0:
        lo, hi = -(2 ** (b - 1)), 2 ** (b - 1) - 1
    else:
        lo, hi = 0, 2**b - 1
    return float(max(lo, info.min)), float(min(hi, info.max))


# --------------------------------------------------------------------------------------------------
# imaging
# --------------------------------------------------------------------------------------------------

@dataclass
class ImagingSim:
    """A simulated calcium-imaging movie with its ground truth.

    movie      (T, H, W) integer raw camera/PMT units (what a microscope would write)
    clean      (T, H, W) float32 expected value of ``movie`` (offset + gain * expected photons),
               no shot or read noise, not clipped
    footprints (N, H, W) float32 spatial footprints, max 1, in the motion-free reference frame
    traces     (N, T) float32 true fluorescence of each cell in photons per pixel per frame at
               footprint value 1 (includes baseline, transients and bleaching): the in-focus cell
               part of ``clean`` is ``offset + gain * einsum('nhw,nt->thw', footprints, traces)``
               (exactly, when motion_px == 0)
    spikes     (N, T) uint8 spike counts per frame
    params     dict of every parameter used (gain, offset, read_noise, fps, pixel_um, ...)
    shifts     (T, 2) float32 rigid (dy, dx) shift of each frame in pixels (zeros without motion)
    """

    movie: np.ndarray
    clean: np.ndarray
    footprints: np.ndarray
    traces: np.ndarray
    spikes: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    shifts: np.ndarray | None = None


def simulate_imaging(
    n_frames: int = 500,
    height: int = 128,
    width: int = 128,
    n_cells: int = 40,
    fps: float = 30.0,
    gain: float = 100.0,
    offset: float = 100.0,
    read_noise: float = 0.5,
    photons_baseline: float = 4.0,
    background: str = "2p",
    nucleus: bool = True,
    motion_px: float = 0.0,
    dtype: str = "uint16",
    bit_depth: int | None = 16,
    seed: int = 0,
    pixel_um: float = 1.0,
    *,
    cell_diameter_um: tuple[float, float] = (10.0, 15.0),
    rate_hz: float = 0.8,
    tau_rise_s: float = 0.05,
    tau_decay_s: tuple[float, float] = (0.5, 1.0),
    dff_per_spike: float = 0.8,
    neuropil_photons: float | None = None,
    background_photons: float | None = None,
    bleach_fraction: float = 0.05,
) -> ImagingSim:
    """Simulate a calcium-imaging movie with known footprints, traces and spikes.

    Units: ``gain`` is raw units per detected photon; ``offset`` is raw units of the zero-photon
    level; ``read_noise`` is the sd of the additive Gaussian read noise **in photons** (so
    ``gain * read_noise`` raw units); ``photons_baseline`` is the mean resting fluorescence of a
    cell in photons per pixel per frame at footprint value 1 (a few photons for two-photon data);
    ``pixel_um`` is the pixel size, which sets how many pixels a 10-15 µm soma covers.

    Cells: elliptical somata with diameters drawn in ``cell_diameter_um`` and, with ``nucleus``,
    a nucleus at 45 % of the radius at 30 % brightness. Spikes: Poisson with per-cell rates
    (log-normal around ``rate_hz``) modulated by a slow shared population drive. Fluorescence:
    ``F = F0 * (1 + dff)``, ``dff = A * c / (1 + c / 10)``, ``c`` = spike counts convolved with a
    GCaMP-like kernel ``(1 - exp(-t/tau_rise)) * exp(-t/tau_decay)`` (peak 1), ``A`` ~
    ``dff_per_spike``.

    Background: ``"2p"`` = dim uniform-ish background (``background_photons``, default 0.3) plus
    spatially smooth neuropil (``neuropil_photons``, default 0.5 * photons_baseline) whose
    temporal activity follows the population; ``"1p"`` additionally has a heavy, smooth
    out-of-focus background (default 15 * photons_baseline) with vignetting, slow fluctuations and
    blurred out-of-focus cells. Both are multiplied by an exponential bleaching of
    ``bleach_fraction`` over the movie. Any field of view from 1 x 1 pixel works, including ones
    smaller than the smoothing scales of these fields (8 and 20 µm).

    Motion: ``motion_px > 0`` adds rigid sub-pixel jitter (sd ``motion_px`` per axis, mildly
    smoothed in time) applied to the whole scene (Fourier shift on a padded canvas).

    Digitisation: ``movie = clip(round(offset + gain * Poisson(lam) + N(0, (gain*read_noise)^2)))``
    clipped to ``bit_depth`` bits of ``dtype`` (unsigned: [0, 2^b - 1], signed: [-2^(b-1), 2^(b-1) - 1]).
    The fraction of saturated samples is reported in ``params["saturated_fraction"]``.
    """
    if background not in ("2p", "1p"):
        raise ValueError(f"background must be '2p' or '1p', got {background!r}")
    T, H, W, N = int(n_frames), int(height), int(width), int(n_cells)
    for name, v, v_min in (("n_frames", T, 1), ("height", H, 1), ("width", W, 1), ("n_cells", N, 0)):
        if v < v_min:
            raise ValueError(f"{name} must be >= {v_min}, got {v}")
    dt = np.dtype(dtype)
    if dt.kind not in "iu":
        raise ValueError(f"dtype must be an integer type, got {dt}")
    rng = np.random.default_rng(seed)

    if neuropil_photons is None:
        neuropil_photons = 0.5 * photons_baseline
    if background_photons is None:
        background_photons = 0.3 if background == "2p" else 15.0 * photons_baseline

    # ---- canvas (padded when there is motion so that shifted-in borders contain real scene)
    m = int(np.ceil(4 * motion_px)) + 2 if motion_px > 0 else 0
    Hc, Wc = H + 2 * m, W + 2 * m

    # ---- cells: geometry
    d_lo, d_hi = cell_diameter_um
    radius_px = rng.uniform(d_lo, d_hi, N) / 2.0 / pixel_um
    aspect = rng.uniform(0.75, 1.0, N)
    theta = rng.uniform(0, np.pi, N)
    r_mean = float(np.mean(radius_px)) if N else 6.0
    centres = _place_centres(rng, N, H, W, min_dist=1.4 * r_mean, margin=0.3 * r_mean) + m
    fp_canvas = np.zeros((N, Hc, Wc), np.float32)
    for i in range(N):
        a = radius_px[i]
        b = radius_px[i] * aspect[i]
        y0, y1, x0, x1, patch = _ellipse(Hc, Wc, centres[i, 0], centres[i, 1], a, b, theta[i],
                                         nucleus, 0.45, 0.7)
        fp_canvas[i, y0:y1, x0:x1] = patch

    # ---- spikes and traces
    t_s = np.arange(T) / fps
    pop = _slow_process(rng, T, tau=0.5 * fps, k=1)[0]  # shared population drive
    own = _slow_process(rng, T, tau=1.0 * fps, k=max(N, 1))[:N]
    rates = rate_hz * np.exp(rng.normal(0.0, 0.6, N))
    lam_sp = rates[:, None] / fps * np.exp(0.6 * pop[None, :] + 0.5 * own - 0.5 * (0.36 + 0.25))
    spikes = rng.poisson(np.minimum(lam_sp, 5.0)).astype(np.uint8)

    k_len = min(T, int(np.ceil(8 * max(tau_decay_s) * fps)) + 2)
    tk = (np.arange(k_len) + 0.5) / fps
    tau_d = rng.uniform(tau_decay_s[0], tau_decay_s[1], N)
    kern = (1.0 - np.exp(-tk[None, :] / tau_rise_s)) * np.exp(-tk[None, :] / tau_d[:, None])
    kern /= kern.max(axis=1, keepdims=True)
    nfft = 1 << int(np.ceil(np.log2(T + k_len)))
    conv = np.fft.irfft(np.fft.rfft(spikes.astype(np.float64), nfft, axis=1)
                        * np.fft.rfft(kern, nfft, axis=1), nfft, axis=1)[:, :T]
    conv = np.maximum(conv, 0.0)
    amp = dff_per_spike * np.exp(rng.normal(0.0, 0.3, N))
    dff = amp[:, None] * conv / (1.0 + conv / 10.0)
    F0 = photons_baseline * np.exp(rng.normal(0.0, 0.3, N))
    bleach = (1.0 - bleach_fraction) + bleach_fraction * np.exp(-t_s / max(t_s[-1] / 2.0, 1e-9)) \
        if T > 1 else np.ones(1)
    traces = (F0[:, None] * (1.0 + dff) * bleach[None, :]).astype(np.float32)

    # ---- background and neuropil
    np_field = _lognormal_field(rng.standard_normal((Hc, Wc)), 8.0 / pixel_um, 0.3)
    mean_dff = dff.mean(axis=0) if N else np.zeros(T)
    np_t = 1.0 + 0.25 * mean_dff / max(float(np.abs(mean_dff).max()), 1e-9) \
        + 0.05 * _slow_process(rng, T, tau=2.0 * fps)[0]
    yy, xx = np.mgrid[0:Hc, 0:Wc]
    rr = ((yy - (Hc - 1) / 2) ** 2 + (xx - (Wc - 1) / 2) ** 2) / (0.5 * (Hc**2 + Wc**2) / 4.0)
    vignette = 1.0 - 0.3 * rr
    bg_field = _lognormal_field(rng.standard_normal((Hc, Wc)), 20.0 / pixel_um, 0.1, vignette, background_photons)
    bg_t = 1.0 + 0.03 * _slow_process(rng, T, tau=3.0 * fps)[0]

    lam = (bleach * bg_t)[:, None, None] * bg_field[None].astype(np.float32)
    lam = lam.astype(np.float32)
    lam += ((bleach * neuropil_photons * np_t)[:, None, None] * np_field[None]).astype(np.float32)
    if N:
        lam += (traces.T @ fp_canvas.reshape(N, -1)).reshape(T, Hc, Wc)

    if background == "1p":
        # out-of-focus cells: broad Gaussian blobs with their own calcium activity
        n_oof = max(2 * N, 10)
        c_oof = np.column_stack([rng.uniform(0, Hc, n_oof), rng.uniform(0, Wc, n_oof)])
        s_oof = rng.uniform(8.0, 15.0, n_oof) / pixel_um
        blobs = np.exp(-((yy[None] - c_oof[:, 0, None, None]) ** 2 + (xx[None] - c_oof[:, 1, None, None]) ** 2)
                       / (2 * s_oof[:, None, None] ** 2)).astype(np.float32)
        sp_oof = rng.poisson(np.full((n_oof, T), rate_hz / fps)).astype(np.float64)
        k_oof = (1.0 - np.exp(-tk / tau_rise_s)) * np.exp(-tk / np.mean(tau_decay_s))
        k_oof /= k_oof.max()
        c2 = np.fft.irfft(np.fft.rfft(sp_oof, nfft, axis=1) * np.fft.rfft(k_oof, nfft)[None], nfft, axis=1)[:, :T]
        tr_oof = (photons_baseline * 0.5 * (1.0 + dff_per_spike * np.maximum(c2, 0)) * bleach).astype(np.float32)
        lam += (tr_oof.T @ blobs.reshape(n_oof, -1)).reshape(T, Hc, Wc)

    # ---- rigid motion
    shifts = np.zeros((T, 2), np.float32)
    if motion_px > 0:
        raw = rng.normal(0.0, motion_px, (T, 2))
        if T > 2:
            raw = (raw + np.roll(raw, 1, axis=0) * 0.5) / np.sqrt(1.25)
        shifts = raw.astype(np.float32)
        lam = _fourier_shift(lam, shifts.astype(np.float64)).astype(np.float32)
        lam = lam[:, m:m + H, m:m + W]
        np.maximum(lam, 0.0, out=lam)
    lam = np.ascontiguousarray(lam)

    # ---- photon noise, gain, read noise, offset, digitisation
    photons = rng.poisson(lam)
    raw = photons.astype(np.float32)
    raw *= np.float32(gain)
    raw += np.float32(offset)
    if read_noise > 0:
        raw += rng.standard_normal(raw.shape, dtype=np.float32) * np.float32(gain * read_noise)
    lo, hi = _int_range(dt, bit_depth)
    np.rint(raw, out=raw)
    sat = float(np.mean((raw < lo) | (raw > hi)))
    np.clip(raw, lo, hi, out=raw)
    movie = raw.astype(dt)
    del raw, photons

    clean = lam
    clean *= np.float32(gain)
    clean += np.float32(offset)

    params = dict(
        kind="imaging", n_frames=T, height=H, width=W, n_cells=N, fps=float(fps), gain=float(gain),
        offset=float(offset), read_noise=float(read_noise), read_noise_units="photons",
        read_noise_raw=float(gain * read_noise), photons_baseline=float(photons_baseline),
        neuropil_photons=float(neuropil_photons), background_photons=float(background_photons),
        background=background, nucleus=bool(nucleus), motion_px=float(motion_px), dtype=str(dt),
        bit_depth=None if bit_depth is None else int(bit_depth), clip_range=(lo, hi), seed=seed,
        pixel_um=float(pixel_um), cell_diameter_um=tuple(cell_diameter_um), rate_hz=float(rate_hz),
        tau_rise_s=float(tau_rise_s), tau_decay_s=tuple(tau_decay_s), dff_per_spike=float(dff_per_spike),
        bleach_fraction=float(bleach_fraction), saturated_fraction=sat,
        cell_centres_px=(centres - m).tolist(), cell_radius_px=radius_px.tolist(),
    )
    return ImagingSim(movie=movie, clean=clean, footprints=np.ascontiguousarray(fp_canvas[:, m:m + H, m:m + W]),
                      traces=traces, spikes=spikes, params=params, shifts=shifts)


# --------------------------------------------------------------------------------------------------
# ephys
# --------------------------------------------------------------------------------------------------

@dataclass
class EphysSim:
    """A simulated extracellular recording with its ground truth.

    data              (T, C) integer ADC samples (channels last)
    clean             (T, C) float32 noise-free signal in the same ADC units: per-channel offset +
                      LFP + spikes (not rounded, not clipped); ``data - clean`` is noise + rounding
    spike_times       (S,) int64 sample index of each spike's negative peak, sorted
    spike_units       (S,) int64 unit index of each spike
    templates         (U, n_samples, C) float32 unit templates in ADC units (peak at sample
                      ``params['n_before']``)
    channel_positions (C, 2) float64 (x, y) µm
    fs                sampling rate, Hz
    params            dict of every parameter used (uv_per_bit, noise_uv, unit positions, ...)
    spike_amplitudes  (S,) float32 per-spike amplitude scaling applied to the template
    """

    data: np.ndarray
    clean: np.ndarray
    spike_times: np.ndarray
    spike_units: np.ndarray
    templates: np.ndarray
    channel_positions: np.ndarray
    fs: float
    params: dict[str, Any] = field(default_factory=dict)
    spike_amplitudes: np.ndarray | None = None


def neuropixels_positions(n_channels: int = 384, pitch_um: float = 20.0) -> np.ndarray:
    """Neuropixels-1.0-like site positions (C, 2) in µm: two sites per row, rows ``pitch_um`` apart,
    columns at x = (16, 48) on even rows and (0, 32) on odd rows (staggered)."""
    c = np.arange(n_channels)
    row = c // 2
    col = c % 2
    x = np.where(row % 2 == 0, 16.0 + 32.0 * col, 0.0 + 32.0 * col)
    y = pitch_um * row
    return np.column_stack([x, y]).astype(np.float64)


def simulate_ephys(
    duration_s: float = 2.0,
    n_channels: int = 384,
    fs: float = 30000.0,
    n_units: int = 30,
    lfp: bool = True,
    noise_uv: float = 7.0,
    uv_per_bit: float = 2.34,
    dtype: str = "int16",
    seed: int = 0,
    *,
    adc_offset: float = 0.0,
    channel_offset_sd_bits: float = 5.0,
    lfp_uv: float = 80.0,
    amplitude_uv: tuple[float, float] = (60.0, 300.0),
    rate_hz: float = 5.0,
    refractory_ms: float = 2.0,
    ms_before: float = 1.0,
    ms_after: float = 2.0,
    amplitude_jitter: float = 0.1,
    noise_spatial_corr: float = 0.5,
    common_noise_fraction: float = 0.1,
    space_um: float = 25.0,
) -> EphysSim:
    """Simulate a Neuropixels-like recording with known spikes (our own generator).

    Geometry: :func:`neuropixels_positions` (2 staggered columns, 20 µm row pitch).

    Units: somata at x ~ U(-10, 58) µm, y ~ U(0, probe length), distance from the probe plane
    z ~ U(15, 60) µm. The peak amplitude ``A`` ~ U(``amplitude_uv``) at distance z decays with
    the 3-D distance d to each site as ``A * max(0, exp(-(d - z) / space_um) - 0.01) / 0.99``
    (``space_um`` = 25: halves every ~17 µm, zero beyond ~115 µm, i.e. a few tens of channels). Waveform per channel:
    ``-exp(-t^2 / 2 s1^2) + beta * exp(-(t - tau)^2 / 2 s2^2)`` normalised to a trough of -1, with
    ``s1`` widening and a small delay growing with distance.

    Spike trains: rate log-normal around ``rate_hz``; inter-spike intervals =
    ``refractory_ms`` + exponential, so no ISI is shorter than the refractory period; each spike
    scales its template by ``1 + amplitude_jitter * N(0, 1)``.

    Noise (µV): Gaussian, ``noise_uv`` rms per channel, a mix of independent, neighbour-correlated
    (``noise_spatial_corr``: kernel along the channel axis) and common-mode
    (``common_noise_fraction`` of variance) components. LFP (``lfp``): four 1/f^2 (flat below 4 Hz) sources band-limited
    to 1-300 Hz (one with a 6-10 Hz theta rhythm), mixed with weights varying slowly (mm scale,
    one with a polarity reversal) along the probe, ``lfp_uv`` rms in total.

    Digitisation: ``data = clip(round(adc_offset + offset_c + (signal + noise) / uv_per_bit))``
    with per-channel offsets ``offset_c ~ N(0, channel_offset_sd_bits)``; default 2.34 µV/bit
    (Neuropixels 1.0 AP band at gain 500). ``clean`` is in the same ADC units.
    """
    T = int(round(duration_s * fs))
    C = int(n_channels)
    U = int(n_units)
    if not T >= 1:
        raise ValueError(f"duration_s * fs must give at least 1 sample, got duration_s={duration_s!r} "
                         f"and fs={fs!r} ({T} samples)")
    if C < 1:
        raise ValueError(f"n_channels must be >= 1, got {C}")
    if U < 0:
        raise ValueError(f"n_units must be >= 0, got {U}")
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    pos = neuropixels_positions(C)
    ymax = float(pos[:, 1].max()) if C else 0.0

    n_before = int(round(ms_before * fs / 1000.0))
    n_after = int(round(ms_after * fs / 1000.0))
    ns = n_before + n_after + 1
    t_ms = (np.arange(ns) - n_before) * 1000.0 / fs

    # ---- units and templates (µV first, converted to ADC units at the end)
    ux = rng.uniform(-10.0, 58.0, U)
    uy = rng.uniform(0.0, max(ymax, 1.0), U)
    uz = rng.uniform(15.0, 60.0, U)
    A = rng.uniform(amplitude_uv[0], amplitude_uv[1], U)
    s1 = rng.uniform(0.10, 0.25, U)
    beta = rng.uniform(0.15, 0.45, U)
    tau = rng.uniform(0.35, 0.7, U)
    s2 = rng.uniform(0.3, 0.6, U)
    templates = np.zeros((U, ns, C), np.float32)
    ch_range = np.zeros((U, 2), np.int64)
    for u in range(U):
        d = np.sqrt((pos[:, 0] - ux[u]) ** 2 + (pos[:, 1] - uy[u]) ** 2 + uz[u] ** 2)
        a = A[u] * np.maximum(0.0, np.exp(-(d - uz[u]) / space_um) - 0.01) / 0.99
        idx = np.nonzero(a > 0)[0]
        if idx.size == 0:
            idx = np.array([int(np.argmin(d))])
            a[idx] = A[u]
        lo_c, hi_c = int(idx.min()), int(idx.max()) + 1
        ch_range[u] = (lo_c, hi_c)
        dd = (d[lo_c:hi_c] - uz[u])[None, :]
        w1 = s1[u] * (1.0 + dd / 150.0)
        delay = dd * 0.001  # 0.1 ms per 100 µm
        tt = t_ms[:, None] - delay
        wf = -np.exp(-0.5 * (tt / w1) ** 2) + beta[u] * np.exp(-0.5 * ((tt - tau[u]) / (s2[u] * (1 + dd / 300.0))) ** 2)
        wf /= -wf.min(axis=0, keepdims=True)
        templates[u, :, lo_c:hi_c] = (wf * a[None, lo_c:hi_c]).astype(np.float32)

    # ---- spike trains (refractory)
    rates = rate_hz * np.exp(rng.normal(0.0, 0.7, U))
    rates = np.clip(rates, 0.2, 40.0)
    refr = refractory_ms / 1000.0
    times, units = [], []
    for u in range(U):
        mean_isi = max(1.0 / rates[u] - refr, 1e-4)
        n = int(duration_s * rates[u] * 1.5 + 20)
        isi = refr + rng.exponential(mean_isi, n)
        st = rng.uniform(0, mean_isi) + np.cumsum(isi)
        st = st[st < duration_s]
        si = np.round(st * fs).astype(np.int64)
        si = si[(si >= n_before) & (si < T - n_after)]
        times.append(si)
        units.append(np.full(si.size, u, np.int64))
    spike_times = np.concatenate(times) if times else np.zeros(0, np.int64)
    spike_units = np.concatenate(units) if units else np.zeros(0, np.int64)
    order = np.argsort(spike_times, kind="stable")
    spike_times, spike_units = spike_times[order], spike_units[order]
    spike_amps = (1.0 + amplitude_jitter * rng.standard_normal(spike_times.size)).clip(0.5, 1.5).astype(np.float32)

    # ---- signal in µV
    sig = np.zeros((T, C), np.float32)
    for t0, u, am in zip(spike_times, spike_units, spike_amps):
        lo_c, hi_c = ch_range[u]
        sig[t0 - n_before:t0 + n_after + 1, lo_c:hi_c] += am * templates[u, :, lo_c:hi_c]

    lfp_params = {}
    if lfp and T > 1:
        K = 4
        f = np.fft.rfftfreq(T, 1.0 / fs)
        band = (f >= 1.0) & (f <= 300.0)
        shape = np.zeros_like(f)
        shape[band] = 1.0 / np.maximum(f[band], 4.0)  # 1/f^2 power above 4 Hz
        # smooth band edges
        shape *= 1.0 / (1.0 + (1.0 / np.maximum(f, 1e-9)) ** 4) / (1.0 + (f / 300.0) ** 8)
        Z = (rng.standard_normal((K, f.size)) + 1j * rng.standard_normal((K, f.size))) * shape[None]
        theta_f = rng.uniform(6.0, 10.0)
        Z[0] += 4.0 * np.exp(-0.5 * ((f - theta_f) / 0.7) ** 2) * (rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size))
        src = np.fft.irfft(Z, n=T, axis=1)
        src /= np.maximum(src.std(axis=1, keepdims=True), 1e-12)
        yy = pos[:, 1]
        Lk = rng.uniform(2000.0, 8000.0, K)
        ph = rng.uniform(0, 2 * np.pi, K)
        wts = np.cos(2 * np.pi * yy[None, :] / Lk[:, None] + ph[:, None])
        wts[1] = np.tanh((yy - rng.uniform(0.3, 0.7) * max(ymax, 1.0)) / 300.0)  # polarity reversal
        wts *= rng.uniform(0.5, 1.0, K)[:, None]
        # rms of the mixture (sources are unit-sd and nearly uncorrelated): sqrt(mean_c sum_k w_kc^2)
        rms = float(np.sqrt(np.mean(np.sum(wts**2, axis=0))))
        wts *= lfp_uv / max(rms, 1e-12)
        sig += src.T.astype(np.float32) @ wts.astype(np.float32)  # (T, C)
        lfp_params = dict(lfp_sources=K, theta_hz=float(theta_f), lfp_spatial_scale_um=Lk.tolist())

    # ---- noise (µV) and ADC, in time blocks (cache friendly, bounded memory)
    ch_off = adc_offset + rng.normal(0.0, channel_offset_sd_bits, C)
    inv = np.float32(1.0 / uv_per_bit)
    clean = sig
    clean *= inv
    clean += ch_off.astype(np.float32)[None, :]
    k = np.array([0.25, 0.5, 1.0, 0.5, 0.25], np.float32)
    k /= np.float32(np.sqrt((k**2).sum()))
    pad = len(k) // 2
    c_sp = float(noise_spatial_corr) if C > 1 else 0.0
    c_cm = float(common_noise_fraction)
    w_ind = np.float32(np.sqrt(max(0.0, 1.0 - c_sp - c_cm)))
    w_sp, w_cm = np.float32(np.sqrt(c_sp)), np.float32(np.sqrt(c_cm))
    # var(w_ind*n_c + w_sp*smooth_c) with n_c inside smooth_c: w_ind^2 + w_sp^2 + 2 w_ind w_sp k[mid]
    sd_tot = float(np.sqrt(w_ind**2 + w_sp**2 + 2 * w_ind * w_sp * k[pad] + w_cm**2))
    scale = np.float32(noise_uv / sd_tot) * inv
    if np.dtype(dt).kind in "iu":
        info = np.iinfo(dt)
        lo, hi = float(info.min), float(info.max)
    else:
        lo, hi = -np.inf, np.inf
    data = np.empty((T, C), dt)
    n_sat = 0
    blk = 4096
    for b0 in range(0, T, blk):
        b1 = min(T, b0 + blk)
        white = rng.standard_normal((b1 - b0, C + 2 * pad), dtype=np.float32)
        nb = white[:, pad:pad + C] * w_ind
        if w_sp > 0:
            for j, kj in enumerate(k):
                nb += (w_sp * kj) * white[:, j:j + C]
        if w_cm > 0:
            nb += w_cm * rng.standard_normal((b1 - b0, 1), dtype=np.float32)
        nb *= scale
        nb += clean[b0:b1]
        np.rint(nb, out=nb)
        n_sat += int(np.count_nonzero((nb < lo) | (nb > hi)))
        np.clip(nb, lo, hi, out=nb)
        data[b0:b1] = nb
    sat = n_sat / float(T * C)
    templates *= inv

    params = dict(
        kind="ephys", duration_s=float(duration_s), n_channels=C, fs=float(fs), n_units=U, lfp=bool(lfp),
        noise_uv=float(noise_uv), uv_per_bit=float(uv_per_bit), dtype=str(dt), seed=seed,
        adc_offset=float(adc_offset), channel_offsets=ch_off.tolist(), lfp_uv=float(lfp_uv if lfp else 0.0),
        amplitude_uv=tuple(amplitude_uv), rate_hz=float(rate_hz), unit_rates_hz=rates.tolist(),
        refractory_ms=float(refractory_ms), space_um=float(space_um), n_before=n_before, n_after=n_after,
        unit_positions_um=np.column_stack([ux, uy, uz]).tolist(), unit_amplitude_uv=A.tolist(),
        unit_channel_range=ch_range.tolist(), saturated_fraction=sat,
        noise_spatial_corr=float(noise_spatial_corr), common_noise_fraction=float(common_noise_fraction),
        **lfp_params,
    )
    return EphysSim(data=data, clean=clean, spike_times=spike_times, spike_units=spike_units,
                    templates=templates, channel_positions=pos, fs=float(fs), params=params,
                    spike_amplitudes=spike_amps)
