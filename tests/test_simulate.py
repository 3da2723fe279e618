"""Tests of the ground-truth simulators (necoda_filter.simulate) and `necoda simulate`."""
from __future__ import annotations

import argparse
import json
import os
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


# ------------------------------------------------------------------ `necoda simulate ... OUT.nwb`: QA fixes

def _inspect(path):
    """nwbinspector's messages that matter (not the best-practice suggestions), as (check, message)."""
    nwbinspector = pytest.importorskip("nwbinspector")
    return [(m.check_function_name, m.message) for m in nwbinspector.inspect_nwbfile(nwbfile_path=str(path))
            if m.importance.name in ("ERROR", "CRITICAL", "PYNWB_VALIDATION")]


SMALL_IMG = ["--frames", "40", "--height", "8", "--width", "8"]
SMALL_EPH = ["--channels", "2"]


@pytest.mark.parametrize("argv", [
    ["imaging", *SMALL_IMG, "--cells", "0"],                       # no cells: no ROIs or traces (was unreadable)
    ["imaging", "--frames", "2", "--height", "1", "--width", "1", "--cells", "1"],
    ["imaging", *SMALL_IMG, "--cells", "2", "--dtype", "uint8", "--motion", "1"],
    ["ephys", *SMALL_EPH, "--duration", "0.1", "--units", "4"],    # units, but no spike
    ["ephys", *SMALL_EPH, "--duration", "0.01", "--units", "1"],
    ["ephys", *SMALL_EPH, "--duration", "0.05", "--units", "0"],
    ["ephys", "--channels", "1", "--duration", "0.0001", "--units", "3"],   # 3 samples
    ["ephys", *SMALL_EPH, "--duration", "0.1", "--units", "30"],   # some units fire, most do not
    ["ephys", *SMALL_EPH, "--duration", "0.05", "--dtype", "float32"],
    ["both", *SMALL_IMG, "--cells", "0", *SMALL_EPH, "--duration", "0.05"],
    ["both", *SMALL_IMG, "--cells", "3", *SMALL_EPH, "--duration", "0.05", "--units", "0"],
])
def test_every_simulated_nwb_file_reads_back_and_passes_nwbinspector(argv, tmp_path):
    """Bugs: `--cells 0` wrote an empty PlaneSegmentation that pynwb cannot read back (ConstructError: "Must
    provide at least one of 'image_mask', 'pixel_mask'"); a recording without any spike wrote a Units table
    of empty spike trains (nwbinspector ERRORs, check_units_table_duration). Ground truth that would be
    empty is now left out and the series' description says why; units that did not fire stay in a table
    that has spikes, its description counts them."""
    pynwb = pytest.importorskip("pynwb")
    out = tmp_path / "s.nwb"
    assert _run_cli([argv[0], str(out), *argv[1:], "--seed", "0"]) == 0
    kinds = ("imaging", "ephys") if argv[0] == "both" else (argv[0],)
    ns = argparse.ArgumentParser()
    from necoda_filter.commands import simulate as cmd
    cmd.add_arguments(ns)
    args = ns.parse_args([argv[0], str(out), *argv[1:], "--seed", "0"])
    sims = {k: cmd._simulate(args, k) for k in kinds}
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        if "imaging" in sims:
            im = sims["imaging"]
            tps = nwb.acquisition["TwoPhotonSeries"]
            assert np.array_equal(tps.data[:], im.movie)
            if len(im.footprints) == 0:
                assert "ophys" not in nwb.processing and "no cells were simulated" in tps.description
            else:
                rois = nwb.processing["ophys"]["ImageSegmentation"]["GroundTruthROIs"]
                assert np.array_equal(np.stack(rois["image_mask"][:]), im.footprints)
        if "ephys" in sims:
            ep = sims["ephys"]
            es = nwb.acquisition["ElectricalSeries"]
            assert np.array_equal(es.data[:], ep.data)
            n_units = ep.params["n_units"]
            if ep.spike_times.size == 0:
                assert nwb.units is None and "no Units table" in es.description
                assert (f"none of the {n_units} simulated units" if n_units else "no units were simulated") \
                    in es.description
            else:
                assert len(nwb.units) == n_units
                silent = int(np.sum(np.bincount(ep.spike_units, minlength=n_units) == 0))
                assert (f"{silent} of the {n_units} fired no spike" in nwb.units.description) == (silent > 0)
                for u in range(n_units):
                    assert np.array_equal(nwb.units.get_unit_spike_times(u),
                                          ep.spike_times[ep.spike_units == u] / ep.fs)
    assert _inspect(out) == []
    assert [p.name for p in tmp_path.iterdir()] == ["s.nwb"]


def test_the_edge_cases_above_do_have_what_they_test():
    """The spike-less cases of the test above (seed 0) really have no spike, and the partly silent one some."""
    assert simulate_ephys(duration_s=0.1, n_channels=2, n_units=4, seed=0).spike_times.size == 0
    assert simulate_ephys(duration_s=0.01, n_channels=2, n_units=1, seed=0).spike_times.size == 0
    some = simulate_ephys(duration_s=0.1, n_channels=2, n_units=30, seed=0)
    counts = np.bincount(some.spike_units, minlength=30)
    assert counts.sum() > 0 and (counts == 0).sum() > 0


def _fill_during_write(monkeypatch, suffix, out, content=b"mine"):
    """Make OUT appear (someone else's file) while `necoda simulate` writes its temporary."""
    def appear():
        if not os.path.lexists(out):
            out.write_bytes(content)
    if suffix == ".nwb":
        import pynwb
        orig = pynwb.NWBHDF5IO.write

        def write(self, *a, **k):
            orig(self, *a, **k)
            appear()
        monkeypatch.setattr(pynwb.NWBHDF5IO, "write", write)
    else:
        name = "save" if suffix == ".npy" else "savez"
        orig = getattr(np, name)

        def save(*a, **k):
            orig(*a, **k)
            appear()
        monkeypatch.setattr(np, name, save)


ONE = ["--duration", "0.05", "--channels", "2", "--units", "1"]


@pytest.mark.parametrize("suffix", [".nwb", ".npz", ".npy"])
@pytest.mark.parametrize("hard_links", [True, False])
def test_a_file_created_during_the_run_is_never_overwritten_without_force(suffix, hard_links, tmp_path,
                                                                          monkeypatch):
    """Bug: the writers ended with os.replace(tmp, OUT), replacing a file created at OUT while they ran.
    Without --force the temporary is now published by a hard link (or, where hard links are unsupported,
    an exclusive create of OUT and a rename over it), which fails when OUT exists; --force replaces."""
    if suffix == ".nwb":
        pytest.importorskip("pynwb")
    if not hard_links:
        def no_link(*a, **k):
            raise PermissionError(1, "Operation not permitted")  # e.g. a FAT/exFAT or some network volumes
        monkeypatch.setattr(os, "link", no_link)
    out = tmp_path / f"x{suffix}"
    _fill_during_write(monkeypatch, suffix, out)
    with pytest.raises(FileExistsError, match="exists"):
        _run_cli(["ephys", str(out), *ONE])
    assert out.read_bytes() == b"mine"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left
    out.unlink()
    # without a competitor it is written, with the usual permissions, nothing else left
    monkeypatch.undo()
    if not hard_links:
        monkeypatch.setattr(os, "link", no_link)
    assert _run_cli(["ephys", str(out), *ONE]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.is_file() and out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    # --force: what appeared is replaced
    out.unlink()
    _fill_during_write(monkeypatch, suffix, out)
    assert _run_cli(["ephys", str(out), *ONE, "--force"]) == 0
    assert out.read_bytes() != b"mine" and out.stat().st_size > 100
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("suffix", [".nwb", ".npz"])
def test_a_dangling_symbolic_link_at_out_counts_as_existing(suffix, tmp_path):
    if suffix == ".nwb":
        pytest.importorskip("pynwb")
    target = tmp_path / "elsewhere" / f"t{suffix}"
    out = tmp_path / f"x{suffix}"
    out.symlink_to(target)
    with pytest.raises(FileExistsError, match="--force"):
        _run_cli(["ephys", str(out), *ONE])
    assert out.is_symlink() and not target.exists() and not target.parent.exists()
    assert _run_cli(["ephys", str(out), *ONE, "--force"]) == 0  # replaces the link, never writes through it
    assert not out.is_symlink() and out.is_file() and not target.parent.exists()


def test_write_nwb_never_overwrites_unless_asked(tmp_path, monkeypatch):
    pytest.importorskip("pynwb")
    from necoda_filter.simulate_nwb import write_nwb
    ep = simulate_ephys(duration_s=0.05, n_channels=2, n_units=1, seed=0)
    out = tmp_path / "w.nwb"
    out.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        write_nwb(out, ephys=ep)
    assert out.read_bytes() == b"mine"
    (tmp_path / "dangling.nwb").symlink_to(tmp_path / "nowhere.nwb")
    with pytest.raises(FileExistsError):
        write_nwb(tmp_path / "dangling.nwb", ephys=ep)
    assert not (tmp_path / "nowhere.nwb").exists()
    # OUT created while the file is written: left alone, the temporary removed
    new = tmp_path / "new.nwb"
    _fill_during_write(monkeypatch, ".nwb", new)
    with pytest.raises(FileExistsError):
        write_nwb(new, ephys=ep)
    assert new.read_bytes() == b"mine"
    monkeypatch.undo()
    assert write_nwb(out, ephys=ep, overwrite=True) == out and out.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.nwb", "new.nwb", "w.nwb"]


def test_the_temporary_always_ends_in_nwb(tmp_path, monkeypatch):
    """Bug: `necoda demo --out X.NWB` made pynwb warn that `.X.15617.tmp.NWB does not end in '.nwb'`: the
    temporary took OUT's suffix. It now always ends in .nwb (and a .npz/.npy one in OUT's suffix)."""
    pynwb = pytest.importorskip("pynwb")
    from necoda_filter.simulate_nwb import write_nwb
    names = []
    orig = pynwb.NWBHDF5IO.write

    def write(self, *a, **k):
        names.append(os.path.basename(self.source))
        return orig(self, *a, **k)
    monkeypatch.setattr(pynwb.NWBHDF5IO, "write", write)
    ep = simulate_ephys(duration_s=0.05, n_channels=2, n_units=1, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_nwb(tmp_path / "X.NWB", ephys=ep)
    assert [str(w.message) for w in caught if "end in" in str(w.message)] == []
    (name,) = names
    assert name.startswith(".X.") and name.endswith(".tmp.nwb")
    assert [p.name for p in tmp_path.iterdir()] == ["X.NWB"]


SIGNAL_CHILD = r"""
import sys, time
import numpy as np, pynwb
suffix = sys.argv[1]
def slow(orig):
    def f(*a, **k):
        orig(*a, **k)
        print("written", flush=True)   # the temporary is complete but not yet published
        time.sleep(120)
    return f
if suffix == ".nwb":
    pynwb.NWBHDF5IO.write = slow(pynwb.NWBHDF5IO.write)
else:
    np.savez = slow(np.savez)
from necoda_filter.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("suffix, sig", [(".nwb", "SIGTERM"), (".nwb", "SIGHUP"), (".npz", "SIGTERM")])
def test_sigterm_or_hangup_during_the_write_leaves_no_temporary(suffix, sig, tmp_path):
    """Bug: SIGTERM during the write left `.big.14942.tmp.nwb` next to OUT. As in `necoda compress`
    (nwb.atomic.sigterm_as_exit), SIGTERM and SIGHUP now end the run cleanly: temporary removed, no OUT,
    exit status 128 + the signal number."""
    import signal
    import subprocess
    import sys
    if suffix == ".nwb":
        pytest.importorskip("pynwb")
    signum = getattr(signal, sig, None)
    if signum is None:
        pytest.skip(f"no {sig} here")
    out = tmp_path / f"big{suffix}"
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_CHILD, suffix, "simulate", "ephys", str(out), *ONE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "written", (line, proc.poll())
        assert any(".tmp" in p.name for p in tmp_path.iterdir())  # the temporary exists now
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def _main_err(capsys, argv):
    from necoda_filter.cli import main
    rc = main(["simulate", *argv])
    cap = capsys.readouterr()
    assert rc == 1, (rc, cap)
    assert "Traceback" not in cap.err and cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("necoda simulate: error: "), lines
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["imaging", "--pixel-um", "0"], ["--pixel-um", "> 0"]),            # was an OverflowError traceback
    (["imaging", "--pixel-um", "-1"], ["--pixel-um", "> 0"]),           # was "could not broadcast"
    (["ephys", "--uv-per-bit", "0"], ["--uv-per-bit", "> 0"]),          # was a ZeroDivisionError
    (["ephys", "--dtype", "bool"], ["--dtype", "bool"]),                # was an hdmf BuildError
    (["ephys", "--dtype", "float16"], ["--dtype", "float16"]),          # NWB validation refuses float16
    (["imaging", "--dtype", "float32"], ["--dtype", "integer"]),
    (["imaging", "--photons", "-1"], ["--photons", ">= 0"]),
    (["ephys", "--fs", "nan"], ["--fs", "nan"]),
    (["both", "--fps", "inf"], ["--fps", "inf"]),
    (["imaging", "--bit-depth", "0"], ["--bit-depth", "1..16"]),
    (["imaging", "--bit-depth", "-3"], ["--bit-depth", "-3"]),
    (["imaging", "--bit-depth", "9", "--dtype", "uint8"], ["--bit-depth", "1..8"]),
    (["imaging", "--gain", "-5"], ["--gain", "> 0"]),
    (["imaging", "--read-noise", "-1"], ["--read-noise", ">= 0"]),
    (["imaging", "--motion", "-1"], ["--motion", ">= 0"]),
    (["imaging", "--offset", "nan"], ["--offset", "finite"]),
    (["ephys", "--noise-uv", "-1"], ["--noise-uv", ">= 0"]),
    (["ephys", "--duration", "1e-6"], ["--duration", "--fs", "one sample"]),
    (["ephys", "--channels", "0"], ["--channels", "at least 1"]),
    (["both", "--channels", "0"], ["--channels", "at least 1"]),        # before the movie is simulated
    (["both", "--units", "-1"], ["--units"]),
    (["imaging", "--frames", "0"], ["--frames"]),
    (["imaging", "--cells", "-2"], ["--cells"]),
    (["ephys", "--seed", "-1"], ["--seed"]),
    (["both", "--dtype", "uint16"], ["--dtype", "`both`", "separately"]),  # was uint16 ephys, 57 % clipped
])
def test_bad_options_are_one_line_errors_naming_the_option_before_any_work(argv, words, tmp_path, capsys,
                                                                           no_simulation):
    msg = _main_err(capsys, [argv[0], str(tmp_path / "x.nwb"), *argv[1:]])
    for w in words:
        assert w in msg, msg
    assert list(tmp_path.iterdir()) == []


def test_out_that_cannot_be_written_is_named_before_any_work(tmp_path, capsys, no_simulation):
    """Bugs: OUT inside a file (`s_img.nwb/x.nwb`) gave "[Errno 17] File exists" after the simulation; an
    unwritable target named the temporary. Both now name OUT, before any work."""
    f = tmp_path / "s_img.nwb"
    f.write_bytes(b"mine")
    for out in (f / "x.nwb", f / "a" / "b" / "x.npz"):
        msg = _main_err(capsys, ["imaging", str(out)])
        assert str(out) in msg and "s_img.nwb is not a folder" in msg
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        probe = ro / "probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            writable = True   # root: permissions do not stop us
        except OSError:
            writable = False
        if not writable:
            msg = _main_err(capsys, ["ephys", str(ro / "x.nwb")])
            assert str(ro / "x.nwb") in msg and ".tmp" not in msg
    finally:
        os.chmod(ro, 0o755)
    if os.path.isdir("/proc/self"):  # a folder where nothing can be created, whoever we are
        for out in ("/proc/x.nwb", "/proc/x.npz"):
            msg = _main_err(capsys, ["ephys", out])
            assert out in msg and ".tmp" not in msg
    assert f.read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["ro", "s_img.nwb"]


def test_ephys_saturation_is_reported_and_dtype_defaults(tmp_path, capsys):
    """The ephys summary line reports the clipped fraction as the imaging one does; uint8 imaging clips to
    its own 8 bits by default (--bit-depth defaults to 16 or the type's width if smaller)."""
    assert _run_cli(["ephys", str(tmp_path / "u.npz"), *ONE, "--dtype", "uint16"]) == 0
    line = capsys.readouterr().out
    z = np.load(tmp_path / "u.npz")
    sat = json.loads(str(z["params_json"]))["saturated_fraction"]
    assert sat > 0.3 and f"saturated {sat:.2%}" in line
    assert _run_cli(["ephys", str(tmp_path / "i.npz"), *ONE]) == 0
    assert "saturated 0.00%" in capsys.readouterr().out
    assert _run_cli(["imaging", str(tmp_path / "b.npz"), "--frames", "5", "--height", "8", "--width", "8",
                     "--dtype", "uint8", "--gain", "3", "--offset", "10"]) == 0
    p = json.loads(str(np.load(tmp_path / "b.npz")["params_json"]))
    assert p["bit_depth"] == 8 and p["clip_range"] == [0.0, 255.0]
    assert _run_cli(["imaging", str(tmp_path / "d.npz"), "--frames", "5", "--height", "8", "--width", "8"]) == 0
    assert json.loads(str(np.load(tmp_path / "d.npz")["params_json"]))["bit_depth"] == 16


def test_necoda_help_says_simulate_writes_nwb(capsys):
    from necoda_filter.cli import main
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    start = out.index("simulate write a simulated")
    assert ".nwb" in out[start:start + 300]


def test_simulate_nwb_says_when_nwbinspector_will_guess_the_movie_is_transposed(tmp_path, capsys):
    """nwbinspector's check_data_orientation reports a series with fewer frames than pixels per side as
    CRITICAL (a guess from the shape). `simulate` says so, naming the fix, and only then."""
    nwbinspector = pytest.importorskip("nwbinspector")  # noqa: F841
    short = tmp_path / "short.nwb"
    assert _run_cli(["imaging", str(short), "--frames", "10", "--height", "16", "--width", "12", "--cells", "1"]) == 0
    err = capsys.readouterr().err
    assert "check_data_orientation" in err and "--frames >= 16" in err
    assert [c for c, _ in _inspect(short)] == ["check_data_orientation"]  # the note is about a real report
    long = tmp_path / "long.nwb"
    assert _run_cli(["imaging", str(long), "--frames", "16", "--height", "16", "--width", "12", "--cells", "1"]) == 0
    assert "check_data_orientation" not in capsys.readouterr().err
    assert _inspect(long) == []
