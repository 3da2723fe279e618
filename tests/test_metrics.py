"""Tests of the fidelity metrics (necoda_filter.metrics) against hand-computed cases, the
simulators' ground truth and (when present) the shared real recordings."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from necoda_filter import metrics as M
from necoda_filter.simulate import simulate_ephys, simulate_imaging

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MOVIE = DATA / "ophys_2p_cortex_300x200x200_int16.npz"
TETRODE = DATA / "ephys_locust_tetrode_15khz_4ch_int16.raw"


@pytest.fixture(scope="module")
def im():
    return simulate_imaging(n_frames=300, height=80, width=80, n_cells=16, offset=300.0, seed=21)


@pytest.fixture(scope="module")
def ep():
    return simulate_ephys(duration_s=1.0, n_channels=48, n_units=16, seed=8)


# ------------------------------------------------------------------ error statistics

def test_error_stats_identical():
    a = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    s = M.error_stats(a, a.copy())
    assert s["max_abs"] == 0 and s["rmse"] == 0 and s["psnr"] == math.inf


def test_error_stats_hand_computed():
    o = np.array([0, 1, 2, 3], dtype=np.uint8)
    d = np.array([0, 1, 2, 5], dtype=np.uint8)  # e = [0, 0, 0, 2]
    s = M.error_stats(o, d)
    assert s["max_abs"] == 2.0
    assert s["rmse"] == pytest.approx(1.0)  # sqrt(4 / 4)
    assert s["psnr"] == pytest.approx(20 * math.log10(3.0))  # range 3 - 0 = 3 -> 9.54 dB
    assert s["psnr"] == pytest.approx(9.5424, abs=1e-4)
    assert M.error_stats(o, d, data_range=255)["psnr"] == pytest.approx(48.1308, abs=1e-4)
    # no uint8 wrap-around: 0 - 5 is -5, not 251
    assert M.error_stats(np.array([5], np.uint8), np.array([0], np.uint8), data_range=1)["max_abs"] == 5


def test_error_stats_known_gaussian_noise():
    rng = np.random.default_rng(0)
    o = rng.integers(0, 4096, size=(200, 50, 50)).astype(np.int32)
    d = o + rng.normal(0.0, 5.0, o.shape)
    s = M.error_stats(o, d)
    assert s["rmse"] == pytest.approx(5.0, rel=0.01)
    assert s["psnr"] == pytest.approx(20 * math.log10((o.max() - o.min()) / s["rmse"]))
    assert s["psnr"] == pytest.approx(20 * math.log10(4095 / 5.0), abs=0.1)  # 58.26 dB
    assert abs(s["mean_error"]) < 0.05


def test_known_shift_offset():
    rng = np.random.default_rng(1)
    o = rng.integers(100, 1000, size=(50, 8, 8)).astype(np.uint16)
    d = o + np.uint16(7)
    s = M.error_stats(o, d)
    assert s["max_abs"] == 7.0 and s["rmse"] == pytest.approx(7.0) and s["mean_error"] == pytest.approx(7.0)
    # a constant offset does not change ROI-trace correlations
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 2:5, 2:5] = True
    r = M.trace_correlations(M.roi_traces(o, mask), M.roi_traces(d, mask))
    assert r[0] == pytest.approx(1.0)
    assert M.noise_rmse(o, d, 3.5) == pytest.approx(2.0)


def test_noise_rmse_scalar_and_per_channel():
    o = np.zeros((10, 2))
    d = np.zeros((10, 2))
    d[:, 0] = 1.0
    d[:, 1] = 4.0
    # ((1/1)^2 + (4/2)^2) / 2 = 2.5
    assert M.noise_rmse(o, d, np.array([1.0, 2.0])) == pytest.approx(math.sqrt(2.5))
    assert M.noise_rmse(o, d, 2.0) == pytest.approx(math.sqrt((1 + 16) / 2) / 2)
    assert M.noise_rmse(o, o, 0.0) == 0.0 and M.noise_rmse(o, d, 0.0) == math.inf
    with pytest.raises(ValueError):
        M.noise_rmse(o, d, np.ones(3))


def test_trace_correlations_hand_computed():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    b = np.array([[1.0, 3.0, 2.0], [3.0, 2.0, 1.0], [10.0, 20.0, 30.0], [1.0, 2.0, 3.0]])
    r = M.trace_correlations(a, b)
    assert r[0] == pytest.approx(0.5)  # cov 0.5 / (1 * 1)
    assert r[1] == pytest.approx(-1.0) and r[2] == pytest.approx(1.0)
    assert np.isnan(r[3])  # constant row: undefined, never a warning or garbage


def test_roi_traces_masks_and_weights():
    mov = np.arange(2 * 2 * 3, dtype=np.uint16).reshape(2, 2, 3)  # frame 0: 0..5, frame 1: 6..11
    m = np.zeros((2, 2, 3), bool)
    m[0, 0, :2] = True  # pixels 0, 1
    m[1, 1, 2] = True  # pixel 5
    tr = M.roi_traces(mov, m)
    assert tr.dtype == np.float64 and tr.shape == (2, 2)
    assert np.allclose(tr, [[0.5, 6.5], [5.0, 11.0]])
    w = np.zeros((1, 2, 3))
    w[0, 0, 0], w[0, 0, 1] = 1.0, 3.0  # weighted mean (0*1 + 1*3) / 4
    assert np.allclose(M.roi_traces(mov, w), [[0.75, 6.75]])
    assert np.isnan(M.roi_traces(mov, np.zeros((1, 2, 3), bool))).all()


# ------------------------------------------------------------------ noise estimation

def test_estimate_noise_imaging_recovers_gain_offset(im):
    p = im.params
    r = M.estimate_noise_imaging(im.movie)
    assert r["ok"], r["reason"]
    assert r["gain"] == pytest.approx(p["gain"], rel=0.10)
    # the zero level absorbs the read noise: offset - gain * read_noise^2 (photons)
    z_true = p["offset"] - p["gain"] * p["read_noise"] ** 2
    assert abs(r["offset"] - z_true) < 0.15 * p["gain"]
    true_sigma = np.sqrt(np.mean((im.movie - im.clean.astype(np.float64)) ** 2))
    assert r["sigma"] == pytest.approx(true_sigma, rel=0.10)


def test_estimate_noise_imaging_without_read_noise_and_negative_offset():
    s = simulate_imaging(n_frames=200, height=64, width=64, n_cells=10, gain=40.0, offset=-150.0,
                         read_noise=0.0, dtype="int16", seed=5)
    r = M.estimate_noise_imaging(s.movie)
    assert r["ok"], r["reason"]
    assert r["gain"] == pytest.approx(40.0, rel=0.05)
    assert r["offset"] == pytest.approx(-150.0, abs=0.15 * 40)


def test_estimate_noise_imaging_short_or_degenerate_is_flagged_but_sane(im):
    true_sigma = np.sqrt(np.mean((im.movie - im.clean.astype(np.float64)) ** 2))
    r = M.estimate_noise_imaging(im.movie[:20])
    assert r["ok"] is False and "30 frames" in r["reason"]
    assert np.isfinite(r["sigma"]) and 0.5 * true_sigma < r["sigma"] < 2 * true_sigma
    assert np.isnan(r["gain"]) or r["gain"] > 0
    # constant movie: no fit, zero noise, no exception
    r = M.estimate_noise_imaging(np.full((50, 16, 16), 7, np.uint16))
    assert r["ok"] is False and r["sigma"] == 0.0 and np.isnan(r["gain"])
    # additive Gaussian noise on a flat image: no mean-variance relation to fit
    rng = np.random.default_rng(3)
    flat = (1000 + rng.normal(0, 20, (100, 32, 32))).astype(np.int16)
    r = M.estimate_noise_imaging(flat)
    assert r["ok"] is False
    assert r["sigma"] == pytest.approx(20.0, rel=0.1)
    # a movie whose variance falls with the mean (not photon data) is never reported as ok
    lvl = np.linspace(100, 5000, 32)[None, None, :] * np.ones((100, 32, 1))
    neg = (lvl + rng.normal(0, 1, lvl.shape) * (6000 - lvl) / 20).astype(np.int32)
    r = M.estimate_noise_imaging(neg)
    assert r["ok"] is False and np.isnan(r["gain"]) and np.isfinite(r["sigma"]) and r["sigma"] > 0


@pytest.mark.skipif(not MOVIE.exists(), reason="shared real data absent")
def test_estimate_noise_imaging_real_movie():
    d = np.load(MOVIE)["data"]
    r = M.estimate_noise_imaging(d)
    # shared/README: photon transfer roughly 97-127 raw units per photon, zero level near 90
    assert r["ok"], r["reason"]
    assert 90.0 <= r["gain"] <= 130.0
    assert 40.0 <= r["offset"] <= 140.0


def test_estimate_noise_ephys_white_noise_hand_computed():
    fs = 30000.0
    rng = np.random.default_rng(4)
    x = rng.normal(0, 10.0, (120000, 3)) * np.array([1.0, 2.0, 0.5])
    # band-passed white noise: sd = sigma * sqrt(mean |H(f)|^2 over 0..fs/2)
    f = np.fft.rfftfreq(1 << 16, 1 / fs)
    gain = np.sqrt(np.mean(M._butter_mag(f, 300.0, 6000.0, 2) ** 2))
    s = M.estimate_noise_ephys(x, fs)
    assert s.shape == (3,)
    assert np.allclose(s, 10.0 * np.array([1.0, 2.0, 0.5]) * gain, rtol=0.03)
    # spikes do not move the MAD much; LFP and DC offsets are filtered out
    y = x[:, :1] + 2000.0 + 300.0 * np.sin(2 * np.pi * 5 * np.arange(x.shape[0]) / fs)[:, None]
    y[::3000] -= 400.0
    assert M.estimate_noise_ephys(y, fs)[0] == pytest.approx(s[0], rel=0.05)


def test_bandpass_passes_spike_band_only():
    fs = 30000.0
    t = np.arange(60000) / fs
    k = slice(5000, -5000)
    assert M.bandpass(np.sin(2 * np.pi * 1000 * t), fs)[k].std() == pytest.approx(np.sqrt(0.5), rel=0.02)
    assert M.bandpass(np.sin(2 * np.pi * 20 * t), fs)[k].std() < 0.01
    assert M.bandpass(np.sin(2 * np.pi * 12000 * t), fs)[k].std() < 0.2


# ------------------------------------------------------------------ ephys fidelity

def test_ephys_fidelity_self_and_noised(ep):
    f = M.ephys_fidelity(ep.data, ep.data, ep.fs)
    assert f["n_spikes"] > 20
    assert f["spike_f1"] == 1.0 and f["waveform_r_median"] == pytest.approx(1.0)
    # a constant offset is outside the spike band: same detections
    f = M.ephys_fidelity(ep.data, ep.data.astype(np.int32) + 100, ep.fs)
    assert f["spike_f1"] == 1.0
    rng = np.random.default_rng(9)
    sig = M.estimate_noise_ephys(ep.data, ep.fs)
    noisy = ep.data + rng.normal(0, 1, ep.data.shape) * (4 * sig / 0.64)
    g = M.ephys_fidelity(ep.data, noisy, ep.fs)
    assert g["spike_f1"] < 0.8 and g["waveform_r_median"] < 0.95
    assert g["n_spikes"] == f["n_spikes"]
    # a prepared reference gives the same answer without re-reading the original
    ref = M.ephys_reference(ep.data, ep.fs)
    assert M.ephys_fidelity(None, noisy, ep.fs, ref=ref) == g


def test_ephys_detection_finds_true_spikes(ep):
    """Large ground-truth spikes are found on their template's peak channel within 0.5 ms."""
    y = M.bandpass(ep.data, ep.fs)
    sig = M.estimate_noise_ephys(ep.data, ep.fs)
    t, c = M.detect_spikes(y, 5 * sig, dead=30)
    tpl_peak = np.abs(ep.templates).max(axis=1)  # (U, C)
    big = tpl_peak.max(axis=1) > 15 * sig.mean()
    tol = 15
    found = total = 0
    for st, u in zip(ep.spike_times, ep.spike_units):
        if not big[u]:
            continue
        ch = int(tpl_peak[u].argmax())
        total += 1
        found += np.any((c == ch) & (np.abs(t - st) <= tol))
    assert total > 10 and found / total > 0.9


def test_match_spikes_hand_computed():
    ta = np.array([100, 200, 300, 100])
    ca = np.array([0, 0, 0, 1])
    tb = np.array([102, 290, 100])
    cb = np.array([0, 0, 0])
    # (100,102) on ch 0 matches; 290 is 10 away from 300 (> tol 5); (100 on ch 1) has no partner
    assert M.match_spikes(ta, ca, tb, cb, tol=5) == 1
    assert M.match_spikes(ta, ca, tb, cb, tol=10) == 2


@pytest.mark.skipif(not TETRODE.exists(), reason="shared real data absent")
def test_ephys_real_tetrode():
    x = np.fromfile(TETRODE, dtype=np.int16).reshape(-1, 4)[:150000]
    s = M.estimate_noise_ephys(x, 15000.0)
    assert np.all((s > 5) & (s < 500))
    f = M.ephys_fidelity(x, x, 15000.0)
    assert f["n_spikes"] > 50 and f["spike_f1"] == 1.0
    q = (np.round(x / 16.0) * 16).astype(np.int16)  # coarse quantisation
    g = M.ephys_fidelity(x, q, 15000.0)
    assert g["spike_f1"] < 1.0 and g["waveform_r_median"] < 1.0


# ------------------------------------------------------------------ imaging fidelity

def test_imaging_fidelity_identical_noised_and_truth(im):
    f = M.imaging_fidelity(im.movie, im.movie, footprints=im.footprints, true_traces=im.traces)
    assert f["n_rois"] == 16 and f["roi_source"] == "footprints"
    assert f["roi_r_median"] == pytest.approx(1.0) and f["roi_r_p05"] == pytest.approx(1.0)
    assert f["true_r_median_dec"] == pytest.approx(f["true_r_median_orig"])
    assert f["true_r_median_orig"] > 0.7
    rng = np.random.default_rng(2)
    noisy = im.movie + rng.normal(0, 600, im.movie.shape)
    g = M.imaging_fidelity(im.movie, noisy, footprints=im.footprints, true_traces=im.traces,
                           noise=M.estimate_noise_imaging(im.movie))
    assert g["roi_r_median"] < 0.99 and g["roi_r_p05"] <= g["roi_r_median"]
    assert g["true_r_median_dec"] < f["true_r_median_orig"]
    assert g["rmse_noise_units"] > 2.0
    # the noise-free movie tracks the truth better than the noisy original
    h = M.imaging_fidelity(im.movie, im.clean, footprints=im.footprints, true_traces=im.traces)
    assert h["true_r_median_dec"] > h["true_r_median_orig"]


def test_detect_rois_on_simulation(im):
    masks = M.detect_rois(im.movie, max_rois=50)
    assert masks.dtype == bool and masks.shape[1:] == im.movie.shape[1:]
    assert 4 <= masks.shape[0] <= 16
    fp = im.footprints > 0.3
    purity = [(fp[:, m].sum(axis=1) / m.sum()).max() for m in masks]
    assert np.median(purity) > 0.8  # ROIs sit on real cells
    area = masks.sum(axis=(1, 2))
    assert np.all(area >= 9) and np.all(area <= 460)
    f = M.imaging_fidelity(im.movie, im.movie)
    assert f["roi_source"] == "detected" and f["n_rois"] == masks.shape[0] and f["roi_r_median"] == pytest.approx(1.0)
    # pure noise has no cells
    rng = np.random.default_rng(0)
    assert M.detect_rois(rng.poisson(5.0, (200, 48, 48)).astype(np.uint16)).shape[0] <= 2
