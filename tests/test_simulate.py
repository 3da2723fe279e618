"""Tests of the ground-truth simulators (necoda_filter.simulate) and `necoda simulate`."""
from __future__ import annotations

import argparse
import json
import time

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
