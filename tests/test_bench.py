"""The benchmark harness: data loading, row fields, ratio arithmetic, lossless checks, skipped codecs,
ground-truth columns, output files and the CLI module. Tiny arrays and cheap codecs only."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from necoda_filter import anchors, bench, modes
from necoda_filter.anchors import Skipped
from necoda_filter.bench import BenchData


def tiny_movie(T=24, H=20, W=20, seed=0):
    """Two gaussian 'cells' with known traces on a baseline, Poisson-like noise; int16."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    fps = np.stack([np.exp(-((yy - 6) ** 2 + (xx - 6) ** 2) / 8.0),
                    np.exp(-((yy - 13) ** 2 + (xx - 14) ** 2) / 8.0)]).astype(np.float32)
    traces = (2.0 + 3.0 * rng.random((2, T)) ** 4).astype(np.float32)
    clean = 100.0 + 100.0 * (0.5 + np.einsum("nhw,nt->thw", fps, traces))
    movie = np.round(clean + rng.normal(0, 20, clean.shape)).astype(np.int16)
    return movie, clean.astype(np.float32), fps, traces


def tiny_ephys(T=3000, C=4, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 10, (T, C))
    for t in range(100, T - 40, 300):  # spikes on every channel
        x[t:t + 10] -= 120 * np.hanning(10)[:, None]
    return np.round(x + 2000).astype(np.int16)


class Identity:
    """Test anchor: stores the raw bytes (known size) plus ``pad`` extra bytes."""

    family = "test"
    lossy = False
    threads = 1
    settings: dict = {}

    def __init__(self, pad=0, name="identity"):
        self.pad, self.name = pad, name

    def encode(self, arr):
        self.shape, self.dtype = arr.shape, arr.dtype
        return arr.tobytes() + b"\0" * self.pad

    def decode(self, buf):
        n = len(buf) - self.pad
        return np.frombuffer(buf[:n], self.dtype).reshape(self.shape)


class Broken(Identity):
    def encode(self, arr):
        raise RuntimeError("boom")


class Lossy(Identity):
    """Adds +1 to every sample: a lossy 'codec' with known errors."""

    lossy = True

    def decode(self, buf):
        return (super().decode(buf).astype(np.int32) + 1).astype(self.dtype)


def _row(res, name):
    return next(r for r in res["rows"] if r["name"] == name)


@pytest.fixture
def imaging_data():
    movie, *_ = tiny_movie()
    return BenchData(movie, "imaging", "tiny", "test", 30.0)


def test_rows_fields_and_lossless(tmp_path, imaging_data):
    res = bench.run_bench(imaging_data, "zstd,necoda-lossless", chunk=8, out_dir=tmp_path, progress=False,
                          plots=False)
    names = [r["name"] for r in res["rows"]]
    assert {"zstd-3", "zstd-19", "necoda-lossless"} <= set(names)
    assert not any(n.startswith("necoda-bounded") or n.startswith("necoda-learned") for n in names)
    for r in res["rows"]:
        assert r["status"] == "ok", r
        for k in ("ratio", "compressed_bytes", "encode_mbps", "decode_mbps", "threads", "cpu_per_wall",
                  "max_abs", "rmse", "psnr", "rmse_noise", "roi_r_median", "roi_r_p05"):
            assert k in r, (r["name"], k)
        assert r["max_abs"] == 0 and r["rmse"] == 0 and r["psnr"] is None  # inf -> null in JSON
        assert r["ratio"] == pytest.approx(imaging_data.array.nbytes / r["compressed_bytes"])
        assert r["threads"] == 1
    d = res["data"]
    assert d["kind"] == "imaging" and d["shape"] == [24, 20, 20] and d["chunk"] == [8, 20, 20]
    assert d["raw_bytes"] == imaging_data.array.nbytes
    assert res["noise"]["sigma"] > 0
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["rows"] == res["rows"]
    table = (tmp_path / "results.md").read_text()
    assert "| codec | ratio |" in table and "necoda-lossless" in table


def test_ratio_arithmetic_known_sizes(imaging_data):
    arr = imaging_data.array
    res = bench.run_bench(imaging_data, anchors=[Identity(0, "id"), Identity(arr.nbytes, "double"),
                                                 Identity(arr.nbytes // 4, "x1.25")], progress=False)
    assert _row(res, "id")["ratio"] == 1.0
    assert _row(res, "id")["compressed_bytes"] == arr.nbytes
    assert _row(res, "double")["ratio"] == 0.5
    assert _row(res, "x1.25")["ratio"] == pytest.approx(arr.nbytes / (arr.nbytes * 1.25))


def test_chunk_framing_counts_every_byte():
    arr = np.arange(10 * 3, dtype=np.int16).reshape(10, 3)
    a = anchors.zstd(3, chunk=4)
    buf = a.encode(arr)
    dtype, shape, chunk, parts = anchors.unpack_chunks(buf)
    assert (dtype, shape, chunk, len(parts)) == (arr.dtype, arr.shape, 4, 3)
    header = 16 + len(arr.dtype.str) + 8 * arr.ndim + 4 * len(parts)
    assert len(buf) == header + sum(map(len, parts))
    np.testing.assert_array_equal(a.decode(buf), arr)


def test_lossy_errors_and_failures_reported(imaging_data):
    res = bench.run_bench(imaging_data, anchors=[Lossy(0, "plus1"), Broken(0, "broken"),
                                                 Skipped("ghost", "ghost", "not installed")], progress=False)
    r = _row(res, "plus1")
    assert r["max_abs"] == 1 and r["rmse"] == pytest.approx(1.0)
    assert r["rmse_noise"] == pytest.approx(1.0 / res["noise"]["sigma"])
    assert _row(res, "broken")["status"] == "error" and "boom" in _row(res, "broken")["reason"]
    assert _row(res, "ghost") == {**_row(res, "ghost"), "status": "skipped", "reason": "not installed"}
    # a lossless anchor that is not lossless is flagged
    class Liar(Lossy):
        lossy = False
    res = bench.run_bench(imaging_data, anchors=[Liar(0, "liar")], progress=False)
    assert "NOT LOSSLESS" in _row(res, "liar")["notes"]


def test_missing_mode_and_wrong_kind_are_skipped(monkeypatch, imaging_data):
    monkeypatch.setitem(modes.MODE_TABLE, "ghost", (250, "necoda_filter.modes.ghost_mode_absent:MODE"))
    res = bench.run_bench(imaging_data, "necoda-ghost,flac,mtscomp", chunk=8, progress=False)
    st = {r["name"]: r for r in res["rows"]}
    assert st["necoda-ghost"]["status"] == "skipped"
    assert "ModuleNotFoundError" in st["necoda-ghost"]["reason"]
    assert st["flac"]["status"] == "skipped" and "ephys" in st["flac"]["reason"]
    assert st["mtscomp"]["status"] == "skipped"
    table = bench.format_table(res)
    assert "skipped: ModuleNotFoundError" in table


def test_unknown_family_is_an_error(imaging_data):
    with pytest.raises(ValueError, match="unknown codec"):
        bench.run_bench(imaging_data, "zstd,nonsense", progress=False)


def test_ground_truth_columns_and_reference_row(tmp_path):
    pytest.importorskip("pysz")
    movie, clean, fps, traces = tiny_movie(T=32)
    data = BenchData(movie, "imaging", "tiny-gt", "test", 30.0,
                     truth={"clean": clean, "footprints": fps, "traces": traces})
    res = bench.run_bench(data, "sz3,necoda-lossless", chunk=16, out_dir=tmp_path, progress=False)
    ref = res["rows"][0]
    assert ref["status"] == "reference" and ref["ratio"] == 1.0
    assert ref["true_r_median"] == pytest.approx(ref["true_r_median_orig"])
    lossy = [r for r in res["rows"] if r["status"] == "ok" and r["lossy"]]
    assert len(lossy) == 3
    for r in lossy:
        assert r["true_r_median"] is not None and -1 <= r["true_r_median"] <= 1
        assert r["rmse_clean"] is not None
        assert r["max_abs"] <= r["settings"]["abs_error"] + 1e-9  # SZ3's absolute bound holds
    assert res["data"]["ground_truth"] and "footprints" in res["data"]["roi_source"]
    assert "r vs truth" in bench.format_table(res)
    pytest.importorskip("matplotlib")
    assert (tmp_path / "rate_distortion.png").stat().st_size > 10_000


def test_ephys_fields():
    data = BenchData(tiny_ephys(), "ephys", "tiny-ephys", "test", 10000.0)
    res = bench.run_bench(data, "zstd,necoda-lossless", progress=False)
    assert res["data"]["chunk"] == [3000, 4]  # ~1 s chunks, capped at the recording length
    for r in res["rows"]:
        assert r["status"] == "ok"
        assert r["spike_f1"] == 1.0 and r["waveform_r_median"] == pytest.approx(1.0)
        assert r["max_abs"] == 0
    assert len(res["noise"]["sigma_per_channel"]) == 4


@pytest.mark.parametrize("family", ["flac", "mtscomp"])
def test_ephys_anchor_roundtrip(family):
    pytest.importorskip({"flac": "flac_numcodecs", "mtscomp": "mtscomp"}[family])
    x = tiny_ephys(T=2500)
    items = anchors.build_anchors("ephys", 1000, families=[family], fs=10000.0, dtype=x.dtype)
    for a in items:
        assert not isinstance(a, Skipped), a
        np.testing.assert_array_equal(a.decode(a.encode(x)), x)


@pytest.mark.parametrize("family", ["jpegxl", "jpeg2k", "h264"])
def test_imaging_anchor_roundtrip(family):
    pytest.importorskip({"jpegxl": "imagecodecs", "jpeg2k": "imagecodecs", "h264": "av"}[family])
    movie, *_ = tiny_movie(T=10)
    movie = movie - 300  # negative values: signed data must survive the unsigned offset
    items = anchors.build_anchors("imaging", 4, families=[family], dtype=movie.dtype)
    if isinstance(items[0], Skipped):
        pytest.skip(items[0].reason)
    a = items[0]
    dec = a.decode(a.encode(movie))
    assert dec.shape == movie.shape and dec.dtype == movie.dtype
    if not a.lossy:
        np.testing.assert_array_equal(dec, movie)
    else:
        assert np.abs(dec.astype(float) - movie).mean() < 0.2 * movie.std()


def test_load_data_formats(tmp_path):
    movie, *_ = tiny_movie(T=6)
    np.save(tmp_path / "m.npy", movie)
    d = bench.load_data(str(tmp_path / "m.npy"), max_frames=4)
    assert d.kind == "imaging" and d.array.shape == (4, 20, 20)
    np.savez(tmp_path / "two.npz", a=movie, b=movie[:2])
    with pytest.raises(ValueError, match="--key"):  # was a KeyError: its message printed in quotes
        bench.load_data(str(tmp_path / "two.npz"))
    assert bench.load_data(str(tmp_path / "two.npz"), key="b").array.shape == (2, 20, 20)
    x = tiny_ephys(T=100, C=3)
    x.tofile(tmp_path / "rec.bin")
    d = bench.load_data(str(tmp_path / "rec.bin"), dtype="int16", channels=3, fs=20000)
    assert d.kind == "ephys" and d.fs == 20000 and np.array_equal(d.array, x)
    with pytest.raises(ValueError, match="--dtype"):
        bench.load_data(str(tmp_path / "rec.bin"))
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "f.nwb", "w") as f:
        g = f.create_group("acquisition/TwoPhotonSeries")
        g.create_dataset("data", data=movie)
        g.create_dataset("starting_time", data=0.0).attrs["rate"] = 7.5
    d = bench.load_data(f"{tmp_path / 'f.nwb'}:/acquisition/TwoPhotonSeries/data")
    assert d.fs == 7.5 and np.array_equal(d.array, movie)


def test_parse_sim_and_codecs():
    assert bench._parse_sim("sim:ephys:duration_s=0.5,n_channels=8,lfp=false") == (
        "ephys", {"duration_s": 0.5, "n_channels": 8, "lfp": False})
    with pytest.raises(ValueError):
        bench._parse_sim("sim:video")
    assert bench.parse_codecs("all") == (None, None)
    assert bench.parse_codecs("zstd,necoda-lossless") == (["zstd", "necoda"], {"lossless"})
    assert bench.parse_codecs("necoda,necoda-bounded") == (["necoda"], None)


def test_cli_module(tmp_path, capsys):
    from necoda_filter.commands import bench as cmd
    movie, *_ = tiny_movie(T=10)
    np.save(tmp_path / "m.npy", movie)
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    args = p.parse_args([str(tmp_path / "m.npy"), "--codecs", "zstd", "--out", str(tmp_path / "out"),
                         "--no-plots", "--no-progress", "--chunk-frames", "4", "--fs", "15"])
    assert cmd.run(args) == 0
    out = capsys.readouterr().out
    assert "| zstd-3 (lossless) |" in out
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["data"]["chunk"] == [4, 20, 20] and res["data"]["fs"] == 15.0


def test_plot_with_lossless_rows_only_warns_nothing(tmp_path):
    """`necoda bench sim:imaging:... --codecs zstd` printed 'UserWarning: Tight layout not applied': with
    lossless rows only, the PSNR axis spanned just the 'lossless' line and the 'raw data vs clean' label
    sat far below it."""
    pytest.importorskip("matplotlib")
    movie, clean, fps, traces = tiny_movie(T=32)
    data = BenchData(movie, "imaging", "tiny-gt", "test", 30.0,
                     truth={"clean": clean, "footprints": fps, "traces": traces})
    res = bench.run_bench(data, "zstd", chunk=16, progress=False, plots=False)
    assert all(not r["lossy"] for r in res["rows"] if r["status"] == "ok")
    assert res["rows"][0]["psnr_clean"] is not None  # the reference line that was off the axis
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = bench.plot_results(res, tmp_path)
    assert paths[0].stat().st_size > 10_000


def test_custom_anchors_replace_the_built_in_ones(imaging_data):
    """As benchmarks/README.md says: anchors=[...] runs those objects only (``codecs`` is still checked
    for unknown names, but selects nothing); add build_anchors(...) to keep built-in ones."""
    res = bench.run_bench(imaging_data, "zstd,necoda-lossless", anchors=[Identity(0, "mine")], progress=False)
    assert [r["name"] for r in res["rows"] if r["status"] == "ok"] == ["mine"]
    both = anchors.build_anchors("imaging", 8, families=["zstd"], dtype=imaging_data.array.dtype)
    res = bench.run_bench(imaging_data, anchors=both + [Identity(0, "mine")], chunk=8, progress=False)
    assert {r["name"] for r in res["rows"] if r["status"] == "ok"} == {"zstd-3", "zstd-19", "mine"}


# ------------------------------------------------------------------------------------------ run_all.sh

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_all_sandbox(tmp_path):
    """benchmarks/run_all.sh copied into a throwaway repository (it writes its report next to itself, so
    the committed RESULTS.md is never at risk), with a fake PYTHON whose `-m necoda_filter.commands.bench`
    records its arguments and copies one small results.json to --out: the script's own logic runs for
    real, in seconds, not the >10-minute benches."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    script = repo / "benchmarks" / "run_all.sh"
    shutil.copy(REPO / "benchmarks" / "run_all.sh", script)
    (repo / "benchmarks" / "RESULTS.md").write_text("committed report\n")
    movie, *_ = tiny_movie()
    res = bench.run_bench(BenchData(movie, "imaging", "tiny", "test", 30.0), "zstd", chunk=8, progress=False,
                          plots=False)
    bench.write_outputs(res, tmp_path / "canned", plots=False)
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
if [[ "$1" == -m ]]; then
  echo "$*" >> {tmp_path}/bench_calls
  while [[ $# -gt 0 ]]; do [[ "$1" == --out ]] && out="$2"; shift; done
  mkdir -p "$out" && cp {tmp_path}/canned/results.json "$out"/
  exit 0
fi
exec {sys.executable} "$@"
""")
    fake.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    (data / "ophys_2p_cortex_300x200x200_int16.npz").write_bytes(b"")
    (data / "ephys_locust_tetrode_15khz_4ch_int16.raw").write_bytes(b"")

    def run(args=None, cwd=None, **env):
        e = {k: v for k, v in os.environ.items() if k not in ("SKIP_REAL", "SKIP_SIM", "REPLACE_RESULTS", "WORK")}
        e.update(PYTHON=str(fake), WORK=str(tmp_path / "work"), **env)
        (tmp_path / "bench_calls").unlink(missing_ok=True)
        r = subprocess.run(["bash", str(script), *(args or [str(data)])], capture_output=True, text=True, env=e,
                           timeout=120, cwd=cwd)
        calls = (tmp_path / "bench_calls").read_text().splitlines() if (tmp_path / "bench_calls").exists() else []
        return r, calls

    return repo / "benchmarks", tmp_path / "work", run


def test_run_all_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "run_all.sh")]).returncode == 0


@pytest.mark.parametrize("skip,n_runs", [("SKIP_SIM", 2), ("SKIP_REAL", 3)])
def test_run_all_partial_run_keeps_the_committed_report(run_all_sandbox, skip, n_runs):
    """`SKIP_SIM=1 benchmarks/run_all.sh DATA` replaced the committed RESULTS.md (and plots/) with a
    report of the runs it did: a partial report goes to $WORK, and the script says where."""
    here, work, run = run_all_sandbox
    r, calls = run(**{skip: "1"})
    assert r.returncode == 0, r.stderr
    assert len(calls) == n_runs
    assert (here / "RESULTS.md").read_text() == "committed report\n" and not (here / "plots").exists()
    report = work / "RESULTS.md"
    assert f"{report}" in r.stderr and "partial run" in r.stderr
    assert f"Generated by `{skip}=1 benchmarks/run_all.sh`" in report.read_text()


def test_run_all_full_or_explicit_run_replaces_the_report(run_all_sandbox):
    here, work, run = run_all_sandbox
    r, calls = run(SKIP_SIM="1", REPLACE_RESULTS="1")  # asked for explicitly
    assert r.returncode == 0, r.stderr
    assert "Generated by `SKIP_SIM=1 benchmarks/run_all.sh`" in (here / "RESULTS.md").read_text()
    r, calls = run()  # a full run
    assert r.returncode == 0, r.stderr
    assert len(calls) == 5 and "Generated by `benchmarks/run_all.sh`" in (here / "RESULTS.md").read_text()
    imaging = [c for c in calls if "ophys" in c or "sim:imaging" in c]
    assert len(imaging) == 3 and all("--chunk-frames 128" in c for c in imaging)  # as the README says
    r, _ = run(SKIP_SIM="1", SKIP_REAL="1")
    assert r.returncode == 1 and "nothing to run" in r.stderr


def test_benchmarks_readme_matches_the_code():
    """benchmarks/README.md claimed 64-frame chunks for the runs (run_all.sh passes --chunk-frames 128),
    and learned qualities 1–4 (bench runs every level of the default model)."""
    readme = " ".join((REPO / "benchmarks" / "README.md").read_text().split())
    script = (REPO / "benchmarks" / "run_all.sh").read_text()
    assert set(re.findall(r"--chunk-frames (\d+)", script)) == {"128"}
    assert "--chunk-frames 128" in readme
    assert f"default {bench.DEFAULT_IMAGING_CHUNK} frames" in readme
    assert "imaging 64 frames × full frame" not in readme
    q = anchors.learned_qualities()
    assert f"`quality` = {q[0]}–{q[-1]}" in readme and "`quality` = 1, 2, 3, 4 " not in readme
    assert "replaces the built-in" in readme


def test_run_all_takes_data_paths_relative_to_where_it_is_started(run_all_sandbox, tmp_path):
    """The script changes to the repository root before it used its DATA argument, so `run_all.sh data`
    from another folder looked for the data under the repository."""
    here, work, run = run_all_sandbox
    r, calls = run(args=["data"], cwd=tmp_path, SKIP_SIM="1")  # the folder, relative
    assert r.returncode == 0, r.stderr
    assert len(calls) == 2 and all(str(tmp_path / "data") in c for c in calls)
    r, calls = run(args=["data/ophys_2p_cortex_300x200x200_int16.npz", "data/ephys_locust_tetrode_15khz_4ch_int16.raw"],
                   cwd=tmp_path, SKIP_SIM="1")  # the two files
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "data" / "ophys_2p_cortex_300x200x200_int16.npz") in calls[0]
    assert str(tmp_path / "data" / "ephys_locust_tetrode_15khz_4ch_int16.raw") in calls[1]
