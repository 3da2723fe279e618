"""Fidelity figures must be computed as documented and must not hide damage (edge cases included)."""
import warnings

import numpy as np
import pytest

from necoda_filter import metrics
from necoda_filter.simulate import simulate_ephys, simulate_imaging


def _ref_stats(o, d):
    e = np.array([int(y) - int(x) for x, y in zip(o.ravel().tolist(), d.ravel().tolist())], dtype=object) \
        if o.dtype.kind in "iu" else (d.astype(np.float64) - o.astype(np.float64)).ravel()
    e = np.array([float(v) for v in e])  # exact difference, rounded once
    rmse = np.sqrt(np.mean(e * e))
    rng = float(o.max()) - float(o.min())
    return np.abs(e).max(), rmse, 20 * np.log10(rng / rmse)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "uint32", "int64", "uint64", "float32"])
def test_error_stats_matches_independent_computation(dtype):
    rng = np.random.default_rng(1)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        o = rng.normal(size=(40, 6, 5)).astype(dt)
        d = (o + rng.normal(size=o.shape)).astype(dt)
    else:
        info = np.iinfo(dt)
        o = rng.integers(info.min, info.max, size=(40, 6, 5), dtype=dt, endpoint=True)
        d = rng.integers(info.min, info.max, size=o.shape, dtype=dt, endpoint=True)
    s = metrics.error_stats(o, d)
    mx, rmse, psnr = _ref_stats(o, d)
    assert s["max_abs"] == pytest.approx(mx, rel=1e-12)
    assert s["rmse"] == pytest.approx(rmse, rel=1e-12)
    assert s["psnr"] == pytest.approx(psnr, rel=1e-12)
    assert s["data_range"] == pytest.approx(float(o.max()) - float(o.min()), rel=1e-15)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16"])
@pytest.mark.parametrize("shape", [(1,), (3, 70001), (40, 6, 5)])
def test_error_stats_kernel_equals_the_numpy_passes(dtype, shape, monkeypatch):
    """1- and 2-byte integers go through one C pass (_kernels.error_stats): the same figures as the numpy
    passes, extremes included (differences of +-65535, blocks of 32768 samples at full range)."""
    from necoda_filter import _kernels

    rng = np.random.default_rng(5)
    info = np.iinfo(dtype)
    o = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    d = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    o.flat[:40000:2], d.flat[:40000:2] = info.min, info.max  # the largest differences, many in one block
    got = metrics.error_stats(o, d)
    s1, s2, mx, lo, hi = _kernels.error_stats(o, d)
    e = d.astype(np.int64) - o.astype(np.int64)
    assert (s1, s2, mx, lo, hi) == (int(e.sum()), int((e * e).sum()), int(np.abs(e).max()), int(o.min()), int(o.max()))
    monkeypatch.setattr(_kernels, "ERROR_STATS_DTYPES", frozenset())
    ref = metrics.error_stats(o, d)
    assert got.keys() == ref.keys()
    for k in got:
        assert got[k] == pytest.approx(ref[k], rel=1e-12, nan_ok=True), k  # one sample: no range, PSNR NaN


@pytest.mark.parametrize("dtype", ["int64", "uint64"])
def test_error_stats_and_noise_rmse_exact_for_large_64bit_values(dtype):
    # values near 2**62: converting to float64 before subtracting rounds each by up to 512 units
    rng = np.random.default_rng(2)
    base = rng.integers(2**61, 2**62, size=(200, 4)).astype(dtype)
    e = rng.integers(-100, 101, size=base.shape)
    d = (base.astype(object) + e).astype(dtype)
    s = metrics.error_stats(base, d)
    assert s["max_abs"] == np.abs(e).max()
    assert s["rmse"] == pytest.approx(np.sqrt(np.mean(e.astype(float) ** 2)), rel=1e-12)
    assert s["mean_error"] == pytest.approx(e.mean(), abs=1e-9)
    assert metrics.noise_rmse(base, d, 10.0) == pytest.approx(np.sqrt(np.mean(e.astype(float) ** 2)) / 10, rel=1e-12)
    sig = np.array([1.0, 2.0, 4.0, 8.0])
    assert metrics.noise_rmse(base, d, sig) == pytest.approx(np.sqrt(np.mean((e / sig) ** 2)), rel=1e-12)


def test_unsigned_and_int32_extremes_no_wraparound():
    o = np.array([0, 65535, 3], np.uint16)
    d = np.array([65535, 0, 3], np.uint16)
    assert metrics.error_stats(o, d)["max_abs"] == 65535.0
    o = np.full((10, 3), 2**31 - 1, np.int32)
    d = np.full((10, 3), -2**31, np.int32)
    assert metrics.error_stats(o, d)["rmse"] == 2.0**32 - 1


def test_error_stats_nan_in_decoded_is_not_hidden():
    rng = np.random.default_rng(3)
    o = rng.normal(size=(100, 4))
    d = o.copy()
    d[50, 1] = np.nan
    s = metrics.error_stats(o, d)
    assert np.isnan(s["max_abs"]) and np.isnan(s["rmse"]) and np.isnan(s["psnr"])


def test_error_stats_infinite_error_without_warning():
    o = np.linspace(0, 1, 40).reshape(10, 4)
    d = o.copy()
    d[3, 1] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = metrics.error_stats(o, d)
    assert s["max_abs"] == np.inf and s["rmse"] == np.inf and s["psnr"] == -np.inf


def test_error_stats_identical_and_constant():
    o = np.arange(40, dtype=np.uint16).reshape(10, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = metrics.error_stats(o, o)
        c = np.full((10, 4), 7, np.uint16)
        sc = metrics.error_stats(c, c)
        sc1 = metrics.error_stats(c, c + 1)
    assert s["psnr"] == np.inf and s["rmse"] == 0 and s["max_abs"] == 0
    assert sc["psnr"] == np.inf
    assert np.isnan(sc1["psnr"]) and sc1["rmse"] == 1.0  # range 0: PSNR undefined, not a number
    # the peak is the data range of the original (not the dtype maximum), or data_range when given
    d = o + 1
    assert metrics.error_stats(o, d)["psnr"] == pytest.approx(20 * np.log10(39.0))
    assert metrics.error_stats(o, d, data_range=65535)["psnr"] == pytest.approx(20 * np.log10(65535.0))


def test_empty_arrays_raise_clearly():
    for f in (lambda: metrics.error_stats(np.zeros((0, 3)), np.zeros((0, 3))),
              lambda: metrics.noise_rmse(np.zeros((0, 3)), np.zeros((0, 3)), 1.0),
              lambda: metrics.noise_rmse(np.zeros((0, 3)), np.zeros((0, 3)), np.ones(3))):
        with pytest.raises(ValueError, match="empty"):
            f()


@pytest.fixture(scope="module")
def imaging():
    return simulate_imaging(n_frames=200, height=48, width=48, n_cells=8, seed=3)


def test_imaging_corrupted_decodes_score_clearly_worse(imaging):
    mv, fp, tt = imaging.movie, imaging.footprints, imaging.traces
    rng = np.random.default_rng(1)
    good = metrics.imaging_fidelity(mv, mv, footprints=fp, true_traces=tt)
    assert good["roi_r_median"] == 1.0 and good["roi_r_p05"] == 1.0
    shuffled = metrics.imaging_fidelity(mv, mv[rng.permutation(mv.shape[0])], footprints=fp, true_traces=tt)
    noisy = np.clip(mv + rng.normal(0, 3 * mv.std(), mv.shape), 0, 65535).astype(mv.dtype)
    noise = metrics.imaging_fidelity(mv, noisy, footprints=fp, true_traces=tt)
    for f in (shuffled, noise):
        assert f["roi_r_median"] < 0.9 and f["true_r_median_dec"] < good["true_r_median_dec"] - 0.1


def test_imaging_destroyed_rois_lower_the_figures(imaging):
    mv, fp, tt = imaging.movie, imaging.footprints, imaging.traces
    zero = metrics.imaging_fidelity(mv, np.zeros_like(mv), footprints=fp, true_traces=tt)
    assert zero["roi_r_median"] == 0.0 and zero["true_r_median_dec"] == 0.0  # not NaN
    half = mv.copy()
    half[:, :, :24] = np.median(mv)  # half the field of view lost
    f = metrics.imaging_fidelity(mv, half, footprints=fp, true_traces=tt)
    assert f["roi_r_p05"] < 0.5


def test_one_frame_movie_and_roi_detection_on_noise():
    rng = np.random.default_rng(4)
    mv = rng.poisson(20, (1, 16, 16)).astype(np.uint16)
    fp = np.zeros((1, 16, 16))
    fp[0, 4:8, 4:8] = 1
    f = metrics.imaging_fidelity(mv, mv, footprints=fp)
    assert np.isnan(f["roi_r_median"])  # undefined, not 1.0
    assert metrics.detect_rois(rng.normal(100, 5, (200, 40, 40))).shape[0] == 0


@pytest.fixture(scope="module")
def ephys():
    return simulate_ephys(duration_s=0.5, n_channels=8, n_units=4, seed=2)


def test_ephys_corrupted_decodes_score_clearly_worse(ephys):
    x, fs = ephys.data, ephys.fs
    rng = np.random.default_rng(5)
    ref = metrics.ephys_reference(x, fs)
    assert ref["t"].size > 20
    good = metrics.ephys_fidelity(x, x, fs, ref=ref)
    assert good["spike_f1"] == 1.0 and good["waveform_r_median"] == pytest.approx(1.0)
    zero = metrics.ephys_fidelity(x, np.zeros_like(x), fs, ref=ref)
    assert zero["spike_f1"] == 0.0 and zero["spike_recall"] == 0.0
    assert zero["waveform_r_median"] == 0.0  # lost waveforms are r = 0, not NaN
    for d in (x[rng.permutation(x.shape[0])], (x + rng.normal(0, 200, x.shape)).astype(x.dtype)):
        f = metrics.ephys_fidelity(x, d, fs, ref=ref)
        assert f["spike_f1"] < 0.5 and f["waveform_r_median"] < 0.5
    half = x.copy()
    half[:, :4] = 0
    assert metrics.ephys_fidelity(x, half, fs, ref=ref)["spike_f1"] < 0.9


def test_spike_f1_without_spikes_is_not_reported_as_perfect():
    rng = np.random.default_rng(6)
    n = rng.normal(0, 10, (15000, 4))
    f = metrics.ephys_fidelity(n, n, 30000.0)
    assert f["n_spikes"] == 0 and np.isnan(f["spike_f1"]) and np.isnan(f["spike_recall"])
    spikes = n.copy()
    spikes[::1500, :] -= 500  # detections only in the decoded
    f = metrics.ephys_fidelity(n, spikes, 30000.0)
    assert f["n_spikes"] == 0 and f["n_spikes_dec"] > 0 and f["spike_f1"] == 0.0


def test_noise_sse_leaves_out_channels_without_a_noise_level():
    """QA 19: one channel with no noise estimate (NaN or flat where the noise was measured) made the stored
    noise-unit RMSE +inf although every sample was within the bound. Such channels are left out."""
    o = np.zeros((4, 3))
    d = o.copy()
    d[:, 0] = 1.0
    d[:, 2] = 2.0
    assert metrics.noise_rmse(o, d, [np.nan, 1.0, 2.0]) == np.inf  # the strict per-sample figure is unchanged
    sse, n = metrics.noise_sse(o, d, [np.nan, 1.0, 2.0])
    assert sse == pytest.approx(4.0) and n == 8  # channel 2: (2/2)^2 x 4; channel 1: 0
    sse, n = metrics.noise_sse(o, d, [0.0, 1.0, 2.0])
    assert sse == pytest.approx(4.0) and n == 8
    assert metrics.noise_sse(o, d, [np.nan, 0.0, np.nan]) == (0.0, 0)
    assert metrics.noise_sse(o, d, 2.0) == pytest.approx((float(((d - o) ** 2).sum()) / 4, 12))
    assert metrics.noise_sse(o, d, np.nan) == (0.0, 0)


def test_compress_noise_unit_rmse_is_finite_with_a_flat_channel(tmp_path):
    """The write-time record of a bounded recording with one channel flat in the noise window."""
    from conftest import series_file
    from necoda_filter import nwb

    x = np.ascontiguousarray(simulate_ephys(duration_s=3.0, n_channels=6, seed=3).data, dtype=np.int16)
    x[:70000, 2] = 0
    series_file(tmp_path / "in.h5", {"e": ("ElectricalSeries", x, 30000.0)})
    (rep,) = nwb.recompress_file(tmp_path / "in.h5", tmp_path / "out.h5",
                                 nwb.Settings(ephys="bounded", max_error=2.0), workers=1, progress=False)
    p = rep.provenance
    assert p["max_abs_error"] <= 2 and np.isfinite(p["noise_rmse"]) and 0 < p["noise_rmse"] < 1


def test_evaluate_and_the_write_time_record_give_the_same_noise_unit_rmse(tmp_path):
    """QA 19: evaluate measured the noise on its own window (5 s) while compress used 2 s, so the two
    reported different noise-unit RMSEs for the same data (0.4040 vs 0.4089). Evaluate now uses compress's
    noise estimate."""
    import json

    import h5py
    from conftest import series_file

    from necoda_filter import cli, nwb, provenance

    x = np.ascontiguousarray(simulate_ephys(duration_s=6.0, n_channels=4, seed=4).data, dtype=np.int16)
    series_file(tmp_path / "in.h5", {"e": ("ElectricalSeries", x, 30000.0)})
    nwb.recompress_file(tmp_path / "in.h5", tmp_path / "out.h5", nwb.Settings(ephys="bounded", max_error=3.0),
                        workers=1, progress=False)
    assert cli.main(["evaluate", str(tmp_path / "in.h5"), str(tmp_path / "out.h5"), "--report", str(tmp_path / "rep")]) == 0
    (got,) = json.loads((tmp_path / "rep" / "report.json").read_text())["datasets"]
    with h5py.File(tmp_path / "out.h5", "r") as f:
        rec = provenance.read(f["e/data"])
    assert got["rmse_noise"] == pytest.approx(rec["noise_rmse"], rel=1e-9)
    assert got["rmse"] == pytest.approx(rec["rmse"], rel=1e-9)
