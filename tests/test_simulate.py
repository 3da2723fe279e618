"""Tests of the ground-truth simulators (necoda_filter.simulate) and `necoda simulate`."""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import pytest

from necoda_filter.simulate import (EphysSim, ImagingSim, neuropixels_positions, simulate_ephys,
                                    simulate_imaging)


@pytest.fixture(scope="module")
def im():
    # offset high enough that nothing clips at 0 (keeps the noise model exact)
    return simulate_imaging(n_frames=200, height=64, width=64, n_cells=10, offset=400.0, seed=3)


@pytest.fixture(scope="module")
def ep():
    return simulate_ephys(duration_s=0.5, n_channels=64, n_units=12, seed=5)


# ------------------------------------------------------------------ imaging

def test_imaging_shapes_dtypes(im):
    assert isinstance(im, ImagingSim)
    assert im.movie.shape == (200, 64, 64) and im.movie.dtype == np.uint16
    assert im.clean.shape == im.movie.shape and im.clean.dtype == np.float32
    assert im.footprints.shape == (10, 64, 64) and im.footprints.dtype == np.float32
    assert im.traces.shape == (10, 200) and im.traces.dtype == np.float32
    assert im.spikes.shape == (10, 200) and im.spikes.dtype == np.uint8
    assert np.allclose(im.footprints.reshape(10, -1).max(axis=1), 1.0)
    assert im.footprints.min() >= 0
    for k in ("gain", "offset", "read_noise", "fps", "pixel_um", "background"):
        assert k in im.params
    assert im.spikes.sum() > 0


def test_imaging_deterministic_by_seed():
    a = simulate_imaging(n_frames=30, height=32, width=32, n_cells=5, seed=11)
    b = simulate_imaging(n_frames=30, height=32, width=32, n_cells=5, seed=11)
    c = simulate_imaging(n_frames=30, height=32, width=32, n_cells=5, seed=12)
    assert np.array_equal(a.movie, b.movie) and np.array_equal(a.traces, b.traces)
    assert not np.array_equal(a.movie, c.movie)


def test_imaging_clean_decomposition(im):
    """clean = offset + gain * (background >= 0 + footprints . traces), exactly without motion."""
    g, off = im.params["gain"], im.params["offset"]
    cells = np.einsum("nhw,nt->thw", im.footprints, im.traces)
    rest = (im.clean - off) / g - cells
    assert rest.min() > -1e-3  # background + neuropil is non-negative
    assert 0.05 < rest.mean() < im.params["photons_baseline"] * 2


def test_imaging_noise_model(im):
    """Photon transfer: var(movie - clean) = gain * (clean - offset) + (gain * read_noise)^2."""
    g, off, rn = im.params["gain"], im.params["offset"], im.params["read_noise"]
    resid = im.movie.astype(np.float64) - im.clean
    assert abs(resid.mean()) < 0.02 * g
    expected = g * (im.clean.astype(np.float64) - off).mean() + (g * rn) ** 2 + 1 / 12
    assert resid.var() == pytest.approx(expected, rel=0.03)
    # photon counts are realistic for 2p: a few photons per pixel per frame
    photons = (im.clean - off) / g
    assert 1.0 < np.median(photons) < 15.0


def test_imaging_soma_size_and_nucleus():
    s = simulate_imaging(n_frames=10, height=96, width=96, n_cells=8, seed=1, pixel_um=1.0)
    area = (s.footprints > 0.5).sum(axis=(1, 2))
    # 10-15 um ellipses with aspect 0.75-1 at 1 um/pixel: pi*3.75^2 .. pi*7.5^2 pixels (minus nucleus)
    assert np.all(area > 25) and np.all(area < 200)
    s2 = simulate_imaging(n_frames=10, height=48, width=48, n_cells=8, seed=1, pixel_um=2.0)
    area2 = (s2.footprints > 0.5).sum(axis=(1, 2))
    assert np.median(area2) < 0.4 * np.median(area)
    # nucleus: the centre is darker than the cytoplasm ring; without nucleus it is the brightest
    for nuc, check in ((True, lambda c, m: c < 0.6 * m), (False, lambda c, m: c > 0.9 * m)):
        t = simulate_imaging(n_frames=5, height=64, width=64, n_cells=4, seed=2, nucleus=nuc)
        for fp, (cy, cx) in zip(t.footprints, t.params["cell_centres_px"]):
            assert check(fp[int(round(cy)), int(round(cx))], fp.max())


def test_imaging_calcium_kernel_follows_spikes():
    s = simulate_imaging(n_frames=600, height=32, width=32, n_cells=6, seed=4, fps=30.0)
    tr = s.traces.astype(np.float64)
    rises, decays = [], []
    for i in range(6):
        for t in np.nonzero(s.spikes[i])[0]:
            if 2 <= t < 600 - 40:
                rises.append(tr[i, t + 2] - tr[i, t - 1])
                decays.append(tr[i, t + 40] - tr[i, t + 2])
    assert np.mean(rises) > 0  # fluorescence jumps within ~50 ms after a spike
    assert np.median(decays) < 0  # and decays over ~1 s


def test_imaging_background_motion_bitdepth():
    kw = dict(n_frames=40, height=48, width=48, n_cells=6, seed=7)
    p2 = simulate_imaging(**kw)
    p1 = simulate_imaging(background="1p", **kw)
    assert p1.clean.mean() > 4 * p2.clean.mean()  # heavy out-of-focus background
    mo = simulate_imaging(motion_px=1.5, **kw)
    assert mo.shifts.shape == (40, 2) and 0.7 < mo.shifts.std() < 2.5
    assert not np.array_equal(mo.movie, p2.movie)
    assert np.all(p2.shifts == 0)
    b8 = simulate_imaging(dtype="uint8", bit_depth=8, gain=3.0, offset=10.0, **kw)
    assert b8.movie.dtype == np.uint8 and 0 < b8.movie.max() <= 255
    b12 = simulate_imaging(bit_depth=12, gain=500.0, **kw)
    assert b12.movie.max() <= 4095 and b12.params["saturated_fraction"] > 0
    s16 = simulate_imaging(dtype="int16", offset=-200.0, **kw)
    assert s16.movie.dtype == np.int16 and s16.movie.min() < 0
    with pytest.raises(ValueError):
        simulate_imaging(background="3p", **kw)


def test_imaging_default_is_fast():
    t0 = time.perf_counter()
    s = simulate_imaging()  # 500 x 128 x 128
    dt = time.perf_counter() - t0
    assert s.movie.shape == (500, 128, 128)
    assert dt < 15.0, f"default imaging simulation took {dt:.1f} s"


def _assert_imaging_ok(s, T, H, W, N):
    assert s.movie.shape == (T, H, W) and s.movie.dtype == np.uint16
    assert s.clean.shape == (T, H, W) and s.clean.dtype == np.float32
    assert s.footprints.shape == (N, H, W) and s.footprints.dtype == np.float32
    assert s.traces.shape == (N, T) and s.spikes.shape == (N, T) and s.shifts.shape == (T, 2)
    for a in (s.clean, s.footprints, s.traces, s.shifts):
        assert np.all(np.isfinite(a))
    # background + neuropil: positive, of the requested brightness, and no wild pixels
    rest = (s.clean - s.params["offset"]) / s.params["gain"] - np.einsum("nhw,nt->thw", s.footprints, s.traces)
    if s.params["motion_px"] == 0:
        level = s.params["background_photons"] + s.params["neuropil_photons"]
        assert rest.min() > 0 and 0.5 * level < rest.mean() < 2 * level and rest.max() < 5 * rest.mean()


# Fields of view small compared with the smoothing scale of the background (sigma 20 / pixel_um px)
# and neuropil (8 / pixel_um px) fields: 6x6 .. 30x30 raised "lam value too large" after
# overflow / divide-by-zero RuntimeWarnings, whatever the seed; 3x3, 5x5 and 1x32 for some seeds.
@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 3), (5, 5), (8, 8), (16, 16), (24, 24), (30, 30),
                                (1, 32), (32, 1), (8, 64), (64, 8), (3, 17)])
@pytest.mark.parametrize("n_cells", [0, 3])
def test_imaging_tiny_field_of_view(hw, n_cells):
    H, W = hw
    kw = dict(n_frames=12, height=H, width=W, n_cells=n_cells)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in range(6):
            s = simulate_imaging(seed=seed, **kw)
            _assert_imaging_ok(s, 12, H, W, n_cells)
        again = simulate_imaging(seed=5, **kw)
    assert np.array_equal(s.movie, again.movie) and np.array_equal(s.clean, again.clean)
    assert np.array_equal(s.footprints, again.footprints) and np.array_equal(s.traces, again.traces)


@pytest.mark.parametrize("kw", [dict(background="1p"), dict(motion_px=1.0), dict(pixel_um=0.5),
                                dict(pixel_um=0.25, height=48, width=48)])
def test_imaging_tiny_field_of_view_variants(kw):
    """1p background, motion and fine pixels (a larger smoothing scale in pixels) on small fields."""
    args = dict(n_frames=10, height=16, width=16, n_cells=3, seed=1)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = simulate_imaging(**args)
    _assert_imaging_ok(s, 10, args["height"], args["width"], 3)


def test_imaging_small_field_background_matches_stable_formula():
    """The small-field path computes the same log-normal field as the original formula, which is kept
    (bit for bit) wherever it is numerically sound."""
    from necoda_filter.simulate import _lognormal_field
    z = np.random.default_rng(0).standard_normal((64, 48))
    w = np.linspace(0.7, 1.0, 64 * 48).reshape(64, 48)
    for sigma, log_sd, weight, mean in ((8.0, 0.3, None, None), (20.0, 0.1, w, 0.3), (3.0, 0.5, None, 2.0)):
        a = _lognormal_field(z, sigma, log_sd, weight, mean)
        b = _lognormal_field(z, sigma, log_sd, weight, mean, _stable=True)
        assert np.allclose(a, b, rtol=1e-9, atol=0)
        assert a.mean() == pytest.approx(1.0 if mean is None else mean)
    # fields of view much smaller than sigma: finite and positive, mean as asked
    for seed in range(20):
        for hw in ((6, 6), (9, 9), (16, 16), (24, 24), (1, 32)):
            z = np.random.default_rng(seed).standard_normal(hw)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                f = _lognormal_field(z, 20.0, 0.1, None, 0.3)
            assert np.all(np.isfinite(f)) and f.min() > 0 and f.mean() == pytest.approx(0.3)
            # the (tiny) smooth variation is scaled to log-sd 0.1, as on large fields
            g = _lognormal_field(z, 20.0, 0.1, _stable=True)
            assert np.log(g).std() == pytest.approx(0.1, rel=1e-6)
    # 2 x 2 at sigma 20: the filter leaves exactly nothing but the mean -> a flat field
    assert np.array_equal(_lognormal_field(np.ones((2, 2)) + np.eye(2), 20.0, 0.1, _stable=True), np.ones((2, 2)))


@pytest.mark.parametrize("bad, match", [(dict(height=0), r"height must be >= 1, got 0"),
                                        (dict(width=-3), r"width must be >= 1, got -3"),
                                        (dict(n_frames=0), r"n_frames must be >= 1, got 0"),
                                        (dict(n_cells=-1), r"n_cells must be >= 0, got -1")])
def test_imaging_rejects_empty_sizes_by_name(bad, match):
    kw = dict(n_frames=5, height=8, width=8, n_cells=1)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        simulate_imaging(**kw)


# ------------------------------------------------------------------ ephys

def test_ephys_shapes_and_ground_truth(ep):
    assert isinstance(ep, EphysSim)
    T = int(0.5 * 30000)
    assert ep.data.shape == (T, 64) and ep.data.dtype == np.int16
    assert ep.clean.shape == (T, 64) and ep.clean.dtype == np.float32
    assert ep.templates.shape[0] == 12 and ep.templates.shape[2] == 64
    assert ep.channel_positions.shape == (64, 2) and ep.fs == 30000.0
    st, su = ep.spike_times, ep.spike_units
    assert st.size == su.size > 0 and np.all(np.diff(st) >= 0)
    assert su.min() >= 0 and su.max() < 12
    # refractory: no ISI shorter than 2 ms within a unit
    for u in np.unique(su):
        d = np.diff(st[su == u])
        assert d.size == 0 or d.min() >= 2e-3 * ep.fs - 1
    # spatially decaying templates spanning a few tens of channels
    nch = (np.abs(ep.templates).max(axis=1) > 0).sum(axis=1)
    assert np.all(nch >= 4) and np.all(nch <= 60)
    # the template trough is at n_before on its peak channel
    nb = ep.params["n_before"]
    for tpl in ep.templates:
        c = np.abs(tpl).max(axis=0).argmax()
        assert abs(int(tpl[:, c].argmin()) - nb) <= 2


def test_neuropixels_geometry():
    pos = neuropixels_positions(384)
    assert pos.shape == (384, 2)
    assert np.allclose(np.unique(np.diff(np.unique(pos[:, 1]))), 20.0)  # 20 um row pitch
    assert np.all(np.bincount((pos[:, 1] / 20).astype(int)) == 2)  # two sites per row
    assert set(pos[0::4, 0]) != set(pos[2::4, 0])  # staggered rows


def test_ephys_noise_and_lfp(ep):
    p = ep.params
    resid = ep.data.astype(np.float64) - ep.clean
    want = np.sqrt((p["noise_uv"] / p["uv_per_bit"]) ** 2 + 1 / 12)
    assert resid.std(axis=0).mean() == pytest.approx(want, rel=0.05)
    c = np.corrcoef(resid.T)
    assert np.mean([c[i, i + 1] for i in range(63)]) > 0.3  # neighbours correlated
    assert abs(np.mean([c[i, i + 30] for i in range(30)])) < 0.25  # far channels much less
    # LFP: slow content shared between channels with a slow spatial gradient
    clean = ep.clean.astype(np.float64) - ep.clean.mean(axis=0)
    low = np.cumsum(clean, axis=0)
    low = (low[300:] - low[:-300]) / 300  # 10 ms boxcar: LFP band
    cl = np.corrcoef(low.T)
    assert np.mean([cl[i, i + 2] for i in range(62)]) > 0.9
    nolfp = simulate_ephys(duration_s=0.5, n_channels=64, n_units=12, seed=5, lfp=False)
    assert clean.std() > 3 * (nolfp.clean - nolfp.clean.mean(axis=0)).std()


def test_ephys_deterministic_and_fast():
    a = simulate_ephys(duration_s=0.2, n_channels=32, n_units=5, seed=1)
    b = simulate_ephys(duration_s=0.2, n_channels=32, n_units=5, seed=1)
    c = simulate_ephys(duration_s=0.2, n_channels=32, n_units=5, seed=2)
    assert np.array_equal(a.data, b.data) and np.array_equal(a.spike_times, b.spike_times)
    assert not np.array_equal(a.data, c.data)
    t0 = time.perf_counter()
    s = simulate_ephys()  # 2 s x 384 channels
    dt = time.perf_counter() - t0
    assert s.data.shape == (60000, 384)
    assert dt < 15.0, f"default ephys simulation took {dt:.1f} s"


@pytest.mark.parametrize("n_samples", [1, 2, 5, 60, 3000])
@pytest.mark.parametrize("n_channels", [1, 2, 3])
def test_ephys_tiny_recordings(n_samples, n_channels):
    """A few samples (fewer than one spike template) and one to three channels: finite, no warnings."""
    kw = dict(duration_s=n_samples / 30000.0, n_channels=n_channels, n_units=3, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = simulate_ephys(**kw)
        b = simulate_ephys(**kw)
    assert a.data.shape == (n_samples, n_channels) and a.data.dtype == np.int16
    assert a.clean.shape == (n_samples, n_channels) and np.all(np.isfinite(a.clean))
    assert a.templates.shape[0] == 3 and a.templates.shape[2] == n_channels and np.all(np.isfinite(a.templates))
    assert a.channel_positions.shape == (n_channels, 2)
    nb, na = a.params["n_before"], a.params["n_after"]
    assert np.all((a.spike_times >= nb) & (a.spike_times < n_samples - na))  # whole spikes only
    assert np.array_equal(a.data, b.data) and np.array_equal(a.spike_times, b.spike_times)


@pytest.mark.parametrize("bad, match", [(dict(n_channels=0), r"n_channels must be >= 1, got 0"),
                                        (dict(n_units=-1), r"n_units must be >= 0, got -1"),
                                        (dict(duration_s=0.0), r"duration_s \* fs .*at least 1 sample"),
                                        (dict(duration_s=1e-5), r"duration_s \* fs .*at least 1 sample")])
def test_ephys_rejects_empty_sizes_by_name(bad, match):
    kw = dict(duration_s=0.01, n_channels=4, n_units=1)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        simulate_ephys(**kw)


# ------------------------------------------------------------------ CLI

def _run_cli(argv):
    from necoda_filter.commands import simulate as cmd
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd.run(p.parse_args(argv))


def test_cli_simulate_imaging_npz_and_npy(tmp_path, capsys):
    out = tmp_path / "m.npz"
    assert _run_cli(["imaging", str(out), "--frames", "20", "--height", "32", "--width", "24",
                     "--cells", "3", "--seed", "2"]) == 0
    z = np.load(out)
    assert z["movie"].shape == (20, 32, 24) and z["footprints"].shape == (3, 32, 24)
    assert z["traces"].shape == (3, 20) and z["spikes"].shape == (3, 20) and z["clean"].shape == (20, 32, 24)
    assert json.loads(str(z["params_json"]))["seed"] == 2
    ref = simulate_imaging(n_frames=20, height=32, width=24, n_cells=3, seed=2)
    assert np.array_equal(z["movie"], ref.movie)
    npy = tmp_path / "m.npy"
    assert _run_cli(["imaging", str(npy), "--frames", "20", "--height", "32", "--width", "24", "--cells", "3"]) == 0
    assert np.load(npy).shape == (20, 32, 24)
    with pytest.raises(FileExistsError):
        _run_cli(["imaging", str(npy), "--frames", "5"])
    with pytest.raises(ValueError):
        _run_cli(["imaging", str(tmp_path / "m.txt")])


def test_cli_simulate_ephys_through_main(tmp_path):
    from necoda_filter.cli import main
    out = tmp_path / "e.npz"
    rc = main(["simulate", "ephys", str(out), "--duration", "0.1", "--channels", "16", "--units", "3"])
    assert rc == 0
    z = np.load(out)
    assert z["data"].shape == (3000, 16) and z["data"].dtype == np.int16
    assert z["templates"].shape[0] == 3 and z["channel_positions"].shape == (16, 2)
    assert z["spike_times"].size == z["spike_units"].size


def test_cli_simulate_both_into_one_nwb_file_with_its_ground_truth(tmp_path):
    """`necoda simulate both OUT.nwb`: the movie and the recording as NWB series, bit for bit what the
    simulators give for the same arguments, with the ground truth (footprints, traces, spike counts,
    spike times, channel positions) where NWB keeps such things; nwbinspector finds nothing to fix."""
    pynwb = pytest.importorskip("pynwb")
    out = tmp_path / "sim.nwb"
    assert _run_cli(["both", str(out), "--frames", "40", "--height", "32", "--width", "24", "--cells", "3",
                     "--duration", "0.2", "--channels", "8", "--units", "3", "--seed", "4"]) == 0
    im = simulate_imaging(n_frames=40, height=32, width=24, n_cells=3, seed=4)
    ep = simulate_ephys(duration_s=0.2, n_channels=8, n_units=3, seed=4)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        tps, es = nwb.acquisition["TwoPhotonSeries"], nwb.acquisition["ElectricalSeries"]
        assert np.array_equal(tps.data[:], im.movie) and tps.rate == im.params["fps"]
        assert np.array_equal(es.data[:], ep.data) and es.rate == ep.fs
        assert es.conversion == pytest.approx(ep.params["uv_per_bit"] * 1e-6)
        rois = nwb.processing["ophys"]["ImageSegmentation"]["GroundTruthROIs"]
        assert np.array_equal(np.stack(rois["image_mask"][:]), im.footprints)
        fl = nwb.processing["ophys"]["Fluorescence"]
        assert np.array_equal(fl["GroundTruthTraces"].data[:], im.traces.T)
        assert np.array_equal(fl["GroundTruthSpikeCounts"].data[:], im.spikes.T)
        el = nwb.electrodes.to_dataframe()
        assert np.array_equal(el[["rel_x", "rel_y"]].to_numpy(), ep.channel_positions)
        assert len(nwb.units) == 3
        for u in range(3):
            assert np.array_equal(nwb.units.get_unit_spike_times(u), ep.spike_times[ep.spike_units == u] / ep.fs)
    nwbinspector = pytest.importorskip("nwbinspector")
    msgs = [m for m in nwbinspector.inspect_nwbfile(nwbfile_path=str(out))
            if m.importance.name not in ("BEST_PRACTICE_SUGGESTION",)]
    assert msgs == [], [(m.check_function_name, m.message) for m in msgs]
    # one kind into NWB; `both` only into NWB; never an existing OUT without --force
    assert _run_cli(["ephys", str(tmp_path / "e.nwb"), "--duration", "0.1", "--channels", "4", "--units", "1"]) == 0
    with pytest.raises(ValueError, match="nwb"):
        _run_cli(["both", str(tmp_path / "b.npz")])
    with pytest.raises(FileExistsError):
        _run_cli(["both", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.nwb", "sim.nwb"]  # no temporaries left
