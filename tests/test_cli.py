import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import necoda_filter
from necoda_filter import cli


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("demo", "info", "bench", "compress", "decompress"):
        assert name in out


def test_console_script_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "necoda_filter.cli", "--version"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0 and necoda_filter.__version__ in r.stdout


@pytest.mark.parametrize("name", [c[0] for c in cli.COMMANDS])
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0


def test_info_reports_mode_and_ratio(tmp_path, capsys):
    p = tmp_path / "i.h5"
    a = np.tile(np.arange(200, dtype=np.int16), (50, 1))
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=a, chunks=(10, 200), compression=necoda_filter.Necoda(mode="lossless"))
        f.create_dataset("plain", data=a, chunks=(10, 200), compression="gzip")
    assert cli.main(["info", str(p), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == ["/x"]
    r = rows[0]
    assert r["requested"] == {"mode": "lossless"} and r["chunk_modes"] == {"lossless": 5}
    assert r["ratio"] == pytest.approx(a.nbytes / r["stored_bytes"], rel=1e-3) and r["ratio"] > 2
    assert cli.main(["info", str(p), "--all"]) == 0
    out = capsys.readouterr().out
    assert "/plain" in out and "gzip" in out


def test_info_shows_the_quality_learned_chunks_were_coded_at(tmp_path, capsys):
    """Written straight through the filter (no provenance attributes): the level comes from the chunk
    headers, also when no quality was asked (the model's default)."""
    pytest.importorskip("onnxruntime")
    from necoda_filter.models import registry
    from necoda_filter.simulate import simulate_imaging

    m = simulate_imaging(n_frames=32, height=32, width=32, n_cells=3, seed=1).movie
    p = tmp_path / "q.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("d", data=m, chunks=(16, 32, 32), compression=necoda_filter.Necoda(mode="learned"))
        f.create_dataset("q2", data=m, chunks=(16, 32, 32), compression=necoda_filter.Necoda(mode="learned", quality=2))
    assert cli.main(["info", str(p), "--json"]) == 0
    rows = {r["path"]: r for r in json.loads(capsys.readouterr().out)}
    default = int(registry.get(rows["/d"]["models"][0]).tables["default_quality"])
    assert rows["/d"]["qualities"] == [default] and rows["/q2"]["qualities"] == [2]
    assert cli.main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert f"learned×2 (quality {default})" in out
    mid = rows["/d"]["models"][0]  # the id, with the name of the installed package it belongs to
    assert f"{registry.available()[mid].name} ({mid})" in out


def test_info_says_when_chunk_modes_come_from_a_sample(tmp_path, capsys):
    """"lossless×8" for a 30-chunk dataset read as "8 chunks": the sample is now named as one."""
    p = tmp_path / "s.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.arange(30000, dtype=np.int16).reshape(-1, 10), chunks=(100, 10),
                         compression=necoda_filter.Necoda(mode="lossless"))
    assert cli.main(["info", str(p)]) == 0
    assert "lossless×8 in 8 of 30 chunks sampled" in capsys.readouterr().out
    assert cli.main(["info", str(p), "--chunks", "0"]) == 0
    out = capsys.readouterr().out
    assert "lossless×30" in out and "sampled" not in out


def test_describe_names_lossy_data_written_without_provenance(tmp_path):
    """The sentence the nwbinspector check shows, for data written straight through the filter: the mode
    and quality come from the chunk headers, the bound from the filter's options, and lossy data without
    write-time figures says so."""
    from necoda_filter.commands.info import describe

    p = tmp_path / "d.h5"
    a = (np.arange(40 * 30 * 20) % 97).astype(np.uint16).reshape(40, 30, 20)
    with h5py.File(p, "w") as f:
        f.create_dataset("b", data=a, chunks=(20, 30, 20),
                         compression=necoda_filter.Necoda(mode="bounded", max_error=2))
        f.create_dataset("l", data=a, chunks=(20, 30, 20), compression=necoda_filter.Necoda(mode="lossless"))
        f.create_dataset("g", data=a, chunks=(20, 30, 20), compression="gzip")
    with h5py.File(p, "r") as f:
        b = describe(f["b"])
        # the bound it was written with, from the filter's own options (QA 20: the sentence left it out)
        assert "mode bounded (LOSSY; max_error=2.0)" in b and "no fidelity was recorded" in b and "necoda evaluate" in b
        assert describe(f["l"]).startswith("data is necoda-compressed with mode lossless, ratio ")
        assert describe(f["g"]) is None


def test_info_missing_file_is_an_error(capsys):
    assert cli.main(["info", "/nonexistent/file.nwb"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_demo_small(tmp_path):
    """`necoda demo` as the README runs it: the console script, from the source checkout's folder."""
    import shutil

    from conftest import REPO

    out = tmp_path / "demo.nwb"
    exe = shutil.which("necoda", path=os.path.dirname(sys.executable)) or shutil.which("necoda")
    cmd = [exe] if exe else [sys.executable, "-m", "necoda_filter.cli"]
    r = subprocess.run(cmd + ["demo", "--frames", "40", "--size", "48", "--seconds", "0.3", "--channels", "32",
                              "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "TwoPhotonSeries" in r.stdout and "ElectricalSeries" in r.stdout and "×" in r.stdout
    assert out.exists()
    # never overwrites
    r2 = subprocess.run([sys.executable, "-m", "necoda_filter.cli", "demo", "--out", str(out)],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r2.returncode == 1 and "exists" in r2.stderr


def test_info_shows_compress_provenance(tmp_path, capsys):
    from test_integration import _nwb_with_series, ephys_data, movie

    src, out = tmp_path / "in.nwb", tmp_path / "out.nwb"
    _nwb_with_series(src, movie(t=32, h=32, w=32), ephys_data(n=6000))
    assert cli.main(["compress", str(src), str(out), "--imaging", "bounded", "--max-error", "3", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["info", str(out), "--json"]) == 0
    rows = {r["path"].split("/")[-2]: r for r in json.loads(capsys.readouterr().out)}
    prov = rows["TwoPhotonSeries"]["provenance"]
    assert prov["mode"] == "bounded" and prov["max_abs_error"] <= 3
    assert rows["TwoPhotonSeries"]["chunk_modes"].keys() == {"bounded"}
    assert rows["ElectricalSeries"]["provenance"]["mode"] == "lossless"
    # the table shows the write-time fidelity per dataset; --provenance lists every stored attribute
    assert cli.main(["info", str(out)]) == 0
    lines = {ln.split("|")[1].strip().split("/")[-2]: ln for ln in capsys.readouterr().out.splitlines()
             if ln.startswith("| /")}
    imaging = lines["TwoPhotonSeries"].split("|")[-2]
    assert "LOSSY" in imaging and f"max abs error {prov['max_abs_error']:.4g}" in imaging and "PSNR" in imaging
    assert "bit-exact (checked)" in lines["ElectricalSeries"].split("|")[-2]
    assert cli.main(["info", str(out), "--provenance"]) == 0
    text = capsys.readouterr().out
    assert f"  source: {src.name}:" in text and "  noise_model: " in text


def test_info_fidelity_column_for_data_written_through_the_filter(tmp_path, capsys):
    """Lossy chunks written with h5py (no `necoda compress`, so no figures) say the fidelity is not
    recorded; lossless ones have nothing to report."""
    from necoda_filter import Necoda

    p = tmp_path / "f.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("b", data=np.arange(4096, dtype=np.int16).reshape(64, 64), chunks=(32, 64),
                         **Necoda("bounded", max_error=2))
        f.create_dataset("l", data=np.arange(4096, dtype=np.int16).reshape(64, 64), chunks=(32, 64),
                         **Necoda("lossless"))
    assert cli.main(["info", str(p)]) == 0
    rows = {ln.split("|")[1].strip(): ln.split("|")[-2].strip() for ln in capsys.readouterr().out.splitlines()
            if ln.startswith("| /")}
    assert rows["/b"].startswith("not recorded") and rows["/l"] == "-"


def test_output_cut_short_by_the_reader_is_not_an_error(tmp_path):
    """`necoda info FILE | head`: when the reader of the output goes away, the command stops quietly (it
    printed "necoda info: error: [Errno 32] Broken pipe", then Python's own flush error)."""
    from necoda_filter import Necoda

    p = tmp_path / "f.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("d", data=np.arange(4096, dtype=np.int16).reshape(64, 64), chunks=(32, 64),
                         **Necoda("lossless"))
    proc = subprocess.Popen([sys.executable, "-m", "necoda_filter.cli", "info", str(p)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # gone before it writes a line: every write meets a closed pipe
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err == b"", err.decode()


def test_info_partly_written_dataset_json_and_chunk_count(tmp_path, capsys):
    """QA: a dataset with 3 of its 30 chunks written showed 15× (raw bytes of the whole dataset over the
    stored bytes of three chunks; the real ratio was ~1.5); --json printed non-standard Infinity; --chunks -1
    was taken as "all"."""
    p = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    with h5py.File(p, "w") as f:
        d = f.create_dataset("s", shape=(3000, 10), dtype="int16", chunks=(100, 10),
                             compression=necoda_filter.Necoda(mode="lossless"))
        d[:300] = rng.integers(0, 1000, (300, 10))
        f.create_dataset("b", data=rng.integers(0, 1000, (300, 10)).astype(np.int16), chunks=(100, 10),
                         compression=necoda_filter.Necoda(mode="bounded", max_error=0))
        stored = d.id.get_storage_size()
    assert cli.main(["info", str(p)]) == 0
    assert "3 of 30 chunks written (ratio over those)" in capsys.readouterr().out
    assert cli.main(["info", str(p), "--json"]) == 0
    rows = {r["path"]: r for r in json.loads(capsys.readouterr().out, parse_constant=lambda c: 1 / 0)}
    assert rows["/s"]["ratio"] == pytest.approx(3 * 100 * 10 * 2 / stored, rel=1e-3)
    with pytest.raises(SystemExit):
        cli.main(["info", str(p), "--chunks", "-1"])
    assert "--chunks" in capsys.readouterr().err
    # a lossless `necoda compress` output records PSNR inf: standard JSON says "inf", as report.json does
    from necoda_filter.simulate import simulate_ephys
    from necoda_filter.simulate_nwb import write_nwb

    src, out = write_nwb(tmp_path / "e.nwb", ephys=simulate_ephys(duration_s=0.1, n_channels=4, seed=0)), tmp_path / "o.nwb"
    assert cli.main(["compress", str(src), str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["info", str(out), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out, parse_constant=lambda c: 1 / 0)
    assert row["provenance"]["psnr_db"] == "inf"


def test_info_all_gives_no_ratio_where_nothing_compresses(tmp_path, capsys):
    """QA 20: `necoda info --all` showed 0.5x for variable-length string columns and 0.992x for an
    unfiltered chunked dataset (its edge chunk's padding): a ratio only where a filter compresses."""
    p = tmp_path / "i.h5"
    a = np.arange(1000, dtype=np.int16).reshape(100, 10)
    with h5py.File(p, "w") as f:
        f.create_dataset("chunked", data=a, chunks=(30, 10))
        f.create_dataset("names", data=np.array(["a", "bb", "ccc"], dtype=object), dtype=h5py.string_dtype(),
                         chunks=(2,), maxshape=(None,))
        f.create_dataset("gz", data=a, chunks=(30, 10), compression="gzip")
    assert cli.main(["info", str(p), "--all", "--json"]) == 0
    rows = {r["path"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["/chunked"]["ratio"] is None and rows["/names"]["ratio"] is None
    assert rows["/gz"]["ratio"] > 1


def test_demo_takes_the_mode_flags_compress_takes():
    """QA 20: `necoda demo --imaging-mode` vs `necoda compress --imaging`; demo now takes both spellings."""
    a = cli.build_parser().parse_args(["demo", "--imaging", "lossless", "--ephys", "bounded"])
    b = cli.build_parser().parse_args(["demo", "--imaging-mode", "lossless", "--ephys-mode", "bounded"])
    assert (a.imaging_mode, a.ephys_mode) == (b.imaging_mode, b.ephys_mode) == ("lossless", "bounded")
