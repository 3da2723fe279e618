"""CLI checks of the subcommands other than compress/decompress/info/evaluate (those are in
test_nwb_edge_cases.py): bench, simulate, train, demo --help, --version. Bad arguments must give a
one-line error and exit code 1 (never a traceback); outputs are written atomically and never over the input."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import necoda_filter
from necoda_filter import cli


def _err(capsys, argv):
    """Run ``necoda argv`` in-process; it must fail cleanly: exit code 1 and one 'error:' line."""
    rc = cli.main(argv)  # an uncaught exception (a traceback on the command line) fails the test here
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1, (rc, err)
    assert err and "error:" in err[-1] and "Traceback" not in "\n".join(err), err
    return err[-1]


def test_version_subprocess(tmp_path):
    r = subprocess.run([sys.executable, "-m", "necoda_filter.cli", "--version"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"necoda-filter {necoda_filter.__version__}"


@pytest.mark.parametrize("name,opts", [
    ("bench", ["--codecs", "--out", "--max-frames", "--chunk-frames", "--fs"]),
    ("simulate", ["--seed", "--force", "--frames", "--duration"]),
    ("train", ["--out", "--sims", "--minutes", "--steps", "--patch"]),
    ("demo", []),
])
def test_help_describes_options(name, opts, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: necoda " + name)
    for o in opts:
        assert o in out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ bench

@pytest.fixture
def tiny_npy(tmp_path):
    p = tmp_path / "tiny.npy"
    np.save(p, (np.random.default_rng(0).poisson(20, (16, 32, 32)) + 100).astype(np.uint16))
    return p


@pytest.mark.parametrize("extra", [
    ["--max-frames", "0"], ["--max-frames", "-3"],   # were accepted: 0 = all frames, -3 = silently drop the last 3
    ["--chunk-frames", "0"], ["--chunk-frames", "-4"],  # were exit 0 with every codec erroring
    ["--fs", "-1"], ["--fs", "nan"],
])
def test_bench_rejects_out_of_range(tiny_npy, tmp_path, extra, capsys):
    msg = _err(capsys, ["bench", str(tiny_npy), "--codecs", "zstd", "--no-plots", "--no-progress",
                        "--out", str(tmp_path / "b"), *extra])
    assert extra[0] in msg
    assert not (tmp_path / "b").exists()


def test_bench_raw_binary_bad_dtype_or_channels(tmp_path, capsys):
    raw = tmp_path / "r.bin"
    raw.write_bytes(b"\0" * 64)
    assert "--dtype" in _err(capsys, ["bench", str(raw), "--dtype", "foo", "--channels", "2", "--out",
                                      str(tmp_path / "b")])  # was TypeError traceback
    assert "--channels" in _err(capsys, ["bench", str(raw), "--dtype", "int16", "--channels", "0", "--out",
                                         str(tmp_path / "b")])  # was ZeroDivisionError traceback


def test_bench_bad_sim_parameter(tmp_path, capsys):
    msg = _err(capsys, ["bench", "sim:imaging:bogus=1", "--out", str(tmp_path / "b")])  # was TypeError traceback
    assert "bogus" in msg


def test_bench_missing_and_non_hdf5_input(tmp_path, capsys):
    _err(capsys, ["bench", str(tmp_path / "nope.npy")])
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"hello")
    _err(capsys, ["bench", f"{junk}:/x", "--out", str(tmp_path / "b")])
    _err(capsys, ["bench", "sim:foo"])


def test_bench_out_is_a_file(tiny_npy, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep")
    _err(capsys, ["bench", str(tiny_npy), "--codecs", "zstd", "--no-plots", "--no-progress", "--out", str(f)])
    assert f.read_text() == "keep"


def test_bench_never_overwrites_its_input(tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    src = out / "results.json"  # a raw-binary input that happens to sit where an output goes
    src.write_bytes(np.arange(64, dtype=np.int16).tobytes())
    before = src.read_bytes()
    _err(capsys, ["bench", str(src), "--dtype", "int16", "--channels", "2", "--codecs", "zstd", "--no-plots",
                  "--no-progress", "--out", str(out)])
    assert src.read_bytes() == before


def test_bench_tiny_numbers_plausible_and_outputs_atomic(tiny_npy, tmp_path, capsys):
    out = tmp_path / "b"
    rc = cli.main(["bench", str(tiny_npy), "--codecs", "zstd,necoda-lossless", "--fs", "30", "--no-plots",
                   "--no-progress", "--out", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]  # no temporary left over
    assert str(out / "results.json") in err
    rows = json.load(open(out / "results.json"))["rows"]
    ok = [r for r in rows if r.get("ratio") is not None]
    assert ok and any(r["family"] == "zstd" for r in ok) and any(r["family"].startswith("necoda") for r in ok)
    for r in ok:
        for k in ("ratio", "encode_s", "decode_s", "encode_mbps", "decode_mbps"):
            assert isinstance(r[k], (int, float)) and math.isfinite(r[k]) and r[k] > 0, (r["name"], k, r[k])
        if not r["lossy"]:
            assert r["max_abs"] == 0


# ------------------------------------------------------------------------------------------ simulate

SMALL = ["--frames", "4", "--height", "32", "--width", "32", "--cells", "2"]


def test_simulate_bad_dtype_and_fps(tmp_path, capsys):
    assert "--dtype" in _err(capsys, ["simulate", "imaging", str(tmp_path / "s.npz"), "--dtype", "foo", *SMALL])
    assert "--fps" in _err(capsys, ["simulate", "imaging", str(tmp_path / "s.npz"), "--fps", "-1", *SMALL])
    _err(capsys, ["simulate", "imaging", str(tmp_path / "s.txt"), *SMALL])
    _err(capsys, ["simulate", "ephys", str(tmp_path / "e.npy"), "--duration", "-1"])
    _err(capsys, ["simulate", "imaging", str(tmp_path), *SMALL])  # OUT is a folder
    assert list(tmp_path.iterdir()) == []


def test_simulate_writes_atomically_and_keeps_existing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.npy"
    assert cli.main(["simulate", "imaging", str(out), *SMALL]) == 0
    assert str(out) in capsys.readouterr().out
    first = np.load(out)
    assert first.shape == (4, 32, 32)
    _err(capsys, ["simulate", "imaging", str(out), *SMALL])  # exists without --force
    # a failure while writing with --force must leave the old file whole and no temporary behind
    def boom(file, arr, *a, **k):  # writes part of the file, then fails (disk full, Ctrl-C, ...)
        if hasattr(file, "write"):
            file.write(b"partial")
        else:
            with open(file, "wb") as fh:
                fh.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(np, "save", boom)
    _err(capsys, ["simulate", "imaging", str(out), "--force", "--seed", "1", *SMALL])
    monkeypatch.undo()
    assert np.array_equal(np.load(out), first)
    assert [p.name for p in tmp_path.iterdir()] == ["s.npy"]
    z = tmp_path / "sub" / "e.npz"
    assert cli.main(["simulate", "ephys", str(z), "--duration", "0.01", "--channels", "4"]) == 0
    with np.load(z) as f:
        assert f["data"].shape == (300, 4)


# ------------------------------------------------------------------------------------------ train

@pytest.mark.parametrize("extra,word", [
    (["--minutes", "-1"], "--minutes"),   # was: trained 0 steps and exported a model, exit 0
    (["--steps", "-1"], "--steps"),       # same
    (["--threads", "0"], "--threads"),    # was RuntimeError traceback
    (["--width", "0"], "--width"),        # was RuntimeError traceback
    (["--patch", "1,2"], "--patch"),      # was IndexError traceback
    (["--patch", "a,b,c"], "--patch"),
    (["--lambdas", "x"], "--lambdas"),
    (["--sims", "0"], "nothing to train"),  # was 'high <= 0'
    (["--simulator", "nosuch:fn"], "--simulator"),  # was ModuleNotFoundError traceback
    (["missing.npy"], "missing.npy"),
    (["--init", "missing.pt"], "missing.pt"),
])
def test_train_rejects_bad_arguments_before_writing(tmp_path, extra, word, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = _err(capsys, ["train", "--out", str(tmp_path / "m"), "--sims", "1", "--steps", "1", *extra])
    assert word in msg
    assert not (tmp_path / "m").exists()  # no empty model folder left behind


def test_train_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep")
    _err(capsys, ["train", "--out", str(f), "--sims", "1", "--steps", "1"])
    assert f.read_text() == "keep"


def test_train_without_torch_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "necoda_filter.train.train", None)  # import fails as without torch
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--sims", "1", "--steps", "1"]) == 1
    assert "needs the [train] extra" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_train_refuses_an_existing_model_folder_without_force(tmp_path, capsys):
    m = tmp_path / "m"
    m.mkdir()
    (m / "weights.pt").write_text("keep")
    msg = _err(capsys, ["train", "--out", str(m), "--sims", "1", "--steps", "1"])
    assert "--force" in msg
    assert (m / "weights.pt").read_text() == "keep"


def test_train_writes_the_package_atomically(tmp_path, monkeypatch):
    """A failing run leaves neither a package nor a temporary folder, and keeps the old package (--force);
    a run that finishes replaces it whole. (The trainer is faked: the CLI's file handling is under test.)"""
    import types

    m = tmp_path / "m"
    m.mkdir()
    (m / "weights.pt").write_text("old")
    (m / "stale.txt").write_text("from the old package")

    def failing(out, **kw):
        (out / "weights.pt").write_text("half")
        raise RuntimeError("disk full")

    def finishing(out, **kw):
        (out / "weights.pt").write_text("new")
        (out / "tables.json").write_text("{}")
        return "necoda-0000000000000000"

    fake = types.ModuleType("necoda_filter.train.train")
    fake.train = failing
    monkeypatch.setitem(sys.modules, "necoda_filter.train.train", fake)
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(["train", "--out", str(m), "--force", "--sims", "1", "--steps", "1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (m / "weights.pt").read_text() == "old"
    fake.train = finishing
    assert cli.main(["train", "--out", str(m), "--force", "--sims", "1", "--steps", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in m.iterdir()) == ["tables.json", "train_log.txt", "weights.pt"]
    assert (m / "weights.pt").read_text() == "new"
