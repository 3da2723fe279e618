"""What ``necoda compress`` does to each series: per-kind bounds, which series the learned mode codes,
lossiness from the measured error, the noise of spike snippets, NaN-aware noise estimates (QA round 13)."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from necoda_filter import cli, metrics, nwb
from conftest import series_file

RNG = np.random.default_rng(13)




def movie(t=16, h=32, w=32):
    return (RNG.poisson(20, (t, h, w)) * 10 + 100).astype(np.int16)


def ephys(n=6000, c=2, sigma=20.0):
    return RNG.normal(0, sigma, (n, c)).astype(np.int16)


def prov(path, ds):
    with h5py.File(path, "r") as f:
        a = f[ds].attrs
        comments = str(f[ds].parent.attrs.get("comments", ""))
        return {k[len("necoda_"):]: a[k] for k in a if k.startswith("necoda_")}, comments


def compress(src, out, *argv):
    return cli.main(["compress", str(src), str(out), "--quiet", "--workers", "1", *map(str, argv)])


def test_a_shared_bound_is_refused_when_it_would_also_reach_a_learned_movie(tmp_path, capsys):
    """F4: ``--imaging learned --ephys bounded --max-error 3`` put a 3-unit safeguard on the learned movie
    (ratio 2 instead of ~460), silently."""
    src, out = tmp_path / "in.h5", tmp_path / "o.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", movie(), 30.0), "es": ("ElectricalSeries", ephys(), 15000.0)})
    assert compress(src, out, "--imaging", "learned", "--ephys", "bounded", "--max-error", 3) == 1
    err = capsys.readouterr().err
    assert "--ephys-max-error" in err and "--imaging-max-error" in err and "learned" in err, err
    assert not out.exists()
    with pytest.raises(ValueError, match="--ephys-max-error"):  # the API refuses it too
        nwb.Settings(imaging="learned", ephys="bounded", max_error=3).check()
    # QA: refused also for a file with no imaging at all, where the shared bound can only mean the ephys
    eph = tmp_path / "ephys_only.h5"
    series_file(eph, {"es": ("ElectricalSeries", ephys(), 15000.0)})
    assert compress(eph, out, "--imaging", "learned", "--ephys", "bounded", "--max-error", 3) == 0
    assert json.loads(prov(out, "es/data")[0]["options"]) == {"max_error": 3.0}
    out.unlink()
    # ... and when --only leaves one kind
    assert compress(src, out, "--imaging", "learned", "--ephys", "bounded", "--max-error", 3, "--only", "es") == 0
    out.unlink()
    # a per-kind option on a kind whose mode takes no bound is an error (it would be ignored)
    assert compress(src, out, "--ephys-max-error", 2) == 1
    assert "--ephys-max-error applies to" in capsys.readouterr().err
    # the learned safeguard check holds for the per-kind value, in its own name
    assert compress(src, out, "--imaging", "learned", "--imaging-max-error", 0.5) == 1
    assert "--imaging-max-error" in capsys.readouterr().err


def test_per_kind_bounds(tmp_path):
    src, out = tmp_path / "in.h5", tmp_path / "o.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", movie(), 30.0), "es": ("ElectricalSeries", ephys(), 15000.0)})
    assert compress(src, out, "--imaging", "bounded", "--ephys", "bounded", "--imaging-max-error", 6,
                    "--ephys-max-error", 1) == 0
    pi, _ = prov(out, "ts/data")
    pe, _ = prov(out, "es/data")
    assert json.loads(pi["options"]) == {"max_error": 6.0} and 1 < pi["max_abs_error"] <= 6
    assert json.loads(pe["options"]) == {"max_error": 1.0} and pe["max_abs_error"] <= 1
    # --imaging learned with a bound for the bounded ephys only: the learned movie has no safeguard
    out2 = tmp_path / "o2.h5"
    assert compress(src, out2, "--imaging", "learned", "--ephys", "bounded", "--ephys-max-error", 2) == 0
    pi, _ = prov(out2, "ts/data")
    pe, _ = prov(out2, "es/data")
    assert pi["mode"] == "learned" and "max_error" not in json.loads(pi["options"])
    assert json.loads(pe["options"]) == {"max_error": 2.0}


def test_learned_codes_only_what_it_is_for(tmp_path, capsys):
    """F10: ``--imaging learned`` coded an RGB video, a line scan, a single frame and float movies with the
    two-photon model (max error 194 of 255 on the video), and said nothing."""
    src, out = tmp_path / "in.h5", tmp_path / "o.h5"
    series_file(src, {
        "rgb": ("ImageSeries", RNG.integers(0, 256, (10, 24, 24, 3), dtype=np.uint8), 30.0),
        "line": ("ImageSeries", movie(40, 1, 30)[:, 0], 30.0),
        "frame": ("ImageSeries", movie(1), None),
        "float": ("TwoPhotonSeries", movie().astype(np.float32), 30.0),
        "stimulus/templates/mov": ("ImageSeries", movie(), 30.0),
    })
    assert compress(src, out, "--imaging", "learned") == 0
    text = capsys.readouterr().out
    for name, why in (("rgb", "4-D data"), ("line", "2-D data"), ("frame", "1 frame"), ("float", "float32 data"),
                      ("stimulus/templates/mov", "stimulus")):
        p, comments = prov(out, f"{name}/data")
        assert p["mode"] == "lossless" and not p["lossy"] and "LOSSILY" not in comments, name
        line = next(ln for ln in text.splitlines() if f"/{name}/data:" in ln)
        assert "mode lossless (asked learned: " in line and why in line, line
    # with an imaging bound, they are coded bounded within it
    assert compress(src, tmp_path / "b.h5", "--imaging", "learned", "--imaging-max-error", 2) == 0
    p, _ = prov(tmp_path / "b.h5", "rgb/data")
    assert p["mode"] == "bounded" and p["max_abs_error"] <= 2


def test_bounded_max_error_zero_is_not_recorded_as_lossy(tmp_path, capsys):
    """F6: bounded with max_error 0 (exact for integers, measured max error 0) was recorded LOSSY."""
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", movie(), 30.0),
                      "f": ("TwoPhotonSeries", movie().astype(np.float32), 30.0)})
    assert compress(src, tmp_path / "z.h5", "--imaging", "bounded", "--max-error", 0) == 0
    for ds in ("ts/data", "f/data"):
        p, comments = prov(tmp_path / "z.h5", ds)
        assert p["mode"] == "bounded" and p["max_abs_error"] == 0 and not p["lossy"], ds
        assert "LOSSILY" not in comments
    assert "returned every sample exactly" in capsys.readouterr().out
    assert compress(src, tmp_path / "b.h5", "--imaging", "bounded", "--max-error", 3) == 0
    p, comments = prov(tmp_path / "b.h5", "ts/data")
    assert p["lossy"] and p["max_abs_error"] > 0 and "LOSSILY" in comments


def test_max_error_noise_on_spike_snippets_uses_the_noise_within_them(tmp_path):
    """F5: the noise of a SpikeEventSeries (events x channels x samples) was measured across consecutive
    events: waveform and baseline variability, several times the noise, so a far looser bound."""
    n, c, s, sigma = 300, 2, 32, 10.0
    t = np.arange(s)
    wave = -np.exp(-0.5 * ((t - s / 2) / 2.0) ** 2)
    amp = RNG.uniform(50, 400, (n, c, 1))
    base = RNG.normal(0, 150, (n, c, 1))  # slow signal under each event
    ev = (amp * wave + base + RNG.normal(0, sigma, (n, c, s))).astype(np.int16)
    src, out = tmp_path / "in.h5", tmp_path / "o.h5"
    series_file(src, {"sev": ("SpikeEventSeries", ev, None)})
    assert compress(src, out, "--ephys", "bounded", "--max-error-noise", 0.5) == 0
    p, comments = prov(out, "sev/data")
    nm = json.loads(p["noise_model"])
    assert 0.8 * sigma < nm["sigma"] < 1.25 * sigma, nm
    assert json.loads(p["options"]) == {"max_error": float(np.floor(0.5 * nm["sigma"]))}
    assert p["max_abs_error"] <= 0.5 * 1.25 * sigma
    assert np.isfinite(p["noise_rmse"]) and p["noise_rmse"] < 0.5  # was NaN ("rank > 2")
    assert "max_error=" in comments


def test_snippets_stored_samples_first_are_recognised_by_their_electrodes(tmp_path):
    """QA: snippets stored (events, samples, channels), which hdmf does not refuse, had the noise measured
    across channels (sigma 71 where the snippets' noise was 46): the electrodes region tells the axes."""
    n, c, s, sigma = 300, 4, 32, 10.0
    t = np.arange(s)
    wave = -np.exp(-0.5 * ((t - s / 2) / 2.0) ** 2)
    ev = (RNG.uniform(50, 400, (n, c, 1)) * wave + RNG.normal(0, 150, (n, 1, 1))  # a shared offset per event
          + RNG.normal(0, sigma, (n, c, s))).astype(np.int16)
    src = tmp_path / "in.h5"
    series_file(src, {"sev": ("SpikeEventSeries", np.ascontiguousarray(ev.transpose(0, 2, 1)), None)})
    with h5py.File(src, "r+") as f:
        f["sev"].create_dataset("electrodes", data=np.arange(c))
    assert compress(src, tmp_path / "o.h5", "--ephys", "bounded", "--max-error-noise", 1) == 0
    nm = json.loads(prov(tmp_path / "o.h5", "sev/data")[0]["noise_model"])
    assert "samples, channels" in nm["layout"] and len(nm["sigma_channels"]) == c
    assert 0.8 * sigma < nm["sigma"] < 1.25 * sigma, nm


def test_noise_estimates_use_finite_samples_only(tmp_path):
    """F8: one NaN sample made the noise estimate NaN (and the noise-unit RMSE inf)."""
    x = RNG.normal(0, 20, (30000, 2)).astype(np.float32)
    ref = metrics.estimate_noise_ephys(x, 15000.0)
    x[1000:1100] = np.nan
    x[5, 1] = np.inf
    got = metrics.estimate_noise_ephys(x, 15000.0)
    assert np.allclose(got, ref, rtol=0.05), (got, ref)
    m = movie(40, 48, 48).astype(np.float32)
    ref = metrics.estimate_noise_imaging(m)["sigma"]
    m[:, :4] = np.nan
    m[3, 10, 10] = np.inf
    est = metrics.estimate_noise_imaging(m)
    assert np.isfinite(est["sigma"]) and abs(est["sigma"] / ref - 1) < 0.1, (est, ref)
    src, out = tmp_path / "in.h5", tmp_path / "o.h5"
    series_file(src, {"es": ("ElectricalSeries", x, 15000.0)})
    assert compress(src, out, "--ephys", "bounded", "--max-error-noise", 0.5) == 0
    p, _ = prov(out, "es/data")
    assert np.isfinite(p["noise_sigma"]) and np.isfinite(p["noise_rmse"]) and p["noise_rmse"] < 0.5


def test_raw_chunks_are_explained_with_their_reason(tmp_path, capsys):
    src, out = tmp_path / "in.h5", tmp_path / "o.h5"
    series_file(src, {"v": ("ImageSeries", RNG.integers(0, 256, (16, 32, 32), dtype=np.uint8), 30.0)})
    assert compress(src, out) == 0
    text = capsys.readouterr().out
    assert "note: chunks stored raw: 1 x lossless coding was not smaller than the raw chunk" in text, text


def test_learned_with_a_bound_below_one_raw_unit_on_integers_is_refused_when_created(tmp_path):
    """QA 20: mode="learned", max_error=0.5 on integer data was accepted by Necoda, the numcodecs and the
    zarr v3 codecs, and then every chunk was stored raw (one log line each): a bound below one raw unit
    asks for exact values. Refused when the dataset or array is created (float data keep it); "auto" codes
    such chunks losslessly instead of storing them raw."""
    from necoda_filter import Necoda, chunk, modes
    from necoda_filter.codec import NecodaCodec

    m = (np.random.default_rng(1).poisson(5.0, (32, 32, 32)) * 100 + 90).astype(np.uint16)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        with pytest.raises(ValueError, match="asks for exact values"):
            f.create_dataset("d", data=m, chunks=(16, 32, 32), compression=Necoda(mode="learned", max_error=0.5))
        with pytest.raises(ValueError, match="asks for exact values"):
            f.create_dataset("e", data=m, chunks=(16, 32, 32), compression="necoda",
                             compression_opts={"mode": "learned", "max_error": 0})
        assert "d" not in f and "e" not in f
        f.create_dataset("g", data=m.astype(np.float32), chunks=(16, 32, 32),
                         compression=Necoda(mode="learned", max_error=0.5))  # floats: a bound below 1 is fine
        f.create_dataset("h", data=m, chunks=(16, 32, 32), compression=Necoda(mode="learned", max_error=1))
    with pytest.raises(ValueError, match="asks for exact values"):
        NecodaCodec(mode="learned", max_error=0.5).encode(m)
    buf = chunk.encode(m, "auto", max_error=0.5)
    assert chunk.info(buf).mode_id == modes.MODE_IDS["lossless"] and np.array_equal(chunk.decode(buf), m)
    # a noise-unit bound below the learned safeguard's margin: known only per chunk, still lossless, not raw
    buf = chunk.encode(m, "auto", max_error_noise=0.001)
    assert chunk.info(buf).mode_id == modes.MODE_IDS["lossless"] and np.array_equal(chunk.decode(buf), m)
    raw_reasons = []
    buf = chunk.encode(m, "learned", max_error_noise=0.001, on_raw=raw_reasons.append)  # asked for: raw, said
    assert chunk.info(buf).mode_id == modes.MODE_IDS["raw"] and "safeguard" in raw_reasons[0]
    zarr = pytest.importorskip("zarr")
    from necoda_filter.zarr3 import NecodaZarrCodec

    with pytest.raises(ValueError, match="asks for exact values"):
        zarr.create_array(str(tmp_path / "z.zarr"), shape=m.shape, chunks=(16, 32, 32), dtype=m.dtype,
                          serializer=NecodaZarrCodec(mode="learned", max_error=0.5), compressors=None)
    with pytest.raises(ValueError, match="asks for exact values"):  # sharded: zarr does not validate inner codecs
        zarr.create_array(str(tmp_path / "s.zarr"), shape=m.shape, chunks=(16, 32, 32), shards=(32, 32, 32),
                          dtype=m.dtype, serializer=NecodaZarrCodec(mode="learned", max_error=0.5), compressors=None)


def test_learned_on_a_2d_dataset_warns(tmp_path):
    """QA 20: mode="learned" on ephys (time x channels) was accepted without a word and coded each chunk as
    one image with the imaging model (max error 85 at noise sd 20): it warns now, and still writes."""
    from necoda_filter import Necoda

    a = np.random.default_rng(2).normal(0, 20, (512, 32)).astype(np.int16)
    with h5py.File(tmp_path / "e.h5", "w") as f:
        with pytest.warns(UserWarning, match="2-D dataset as one image"):
            f.create_dataset("e", data=a, chunks=(512, 32), compression=Necoda(mode="learned"))
        f.create_dataset("m", data=np.zeros((16, 32, 32), np.uint16), compression=Necoda(mode="learned"))
        assert f["e"].shape == a.shape
