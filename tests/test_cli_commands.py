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


def _nwb_like(path, extra_2d=0):
    """A small HDF5 file laid out like NWB: a TwoPhotonSeries (data 8 x 16 x 16, rate 7.5), a 1-D dataset
    and ``extra_2d`` further 2-D datasets."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        g = f.create_group("acquisition/TwoPhotonSeries")
        g.attrs["neurodata_type"] = "TwoPhotonSeries"
        g.create_dataset("data", data=(np.arange(8 * 16 * 16) % 97).astype(np.uint16).reshape(8, 16, 16))
        g.create_dataset("starting_time", data=0.0).attrs["rate"] = 7.5
        f.create_dataset("acquisition/timestamps_1d", data=np.arange(8.0))
        for i in range(extra_2d):
            f.create_dataset(f"processing/table{i}", data=np.zeros((3, 2)))
    return path


@pytest.mark.parametrize("extra", [[], ["--dtype", "int16", "--channels", "2"]])
def test_bench_hdf5_file_without_dataset_path_lists_datasets(tmp_path, extra, capsys):
    """An NWB file given without ':/path' was read as raw binary ('raw binary needs --dtype and
    --channels'; with them, its bytes benched as samples)."""
    nwb = _nwb_like(tmp_path / "real_raw.nwb", extra_2d=6)
    msg = _err(capsys, ["bench", str(nwb), "--codecs", "zstd", "--no-plots", "--no-progress",
                        "--out", str(tmp_path / "b"), *extra])
    assert "raw binary" not in msg
    assert "HDF5" in msg and f"{nwb}:/acquisition/TwoPhotonSeries/data" in msg  # the form to use
    assert "/acquisition/TwoPhotonSeries/data (8×16×16 uint16)" in msg          # candidates, series first
    assert "timestamps_1d" not in msg                                           # 1-D: not a recording
    assert msg.count("/processing/table") == 4 and "and 2 more" in msg          # a handful at most
    assert not (tmp_path / "b").exists()


def test_bench_hdf5_missing_dataset_plain_message(tmp_path, capsys):
    """Was: error: "Unable to synchronously open object (object 'nope' doesn't exist)" (a KeyError's
    str, quotes included, naming neither the file nor the path asked for)."""
    nwb = _nwb_like(tmp_path / "f.nwb")
    for path, words in (("/nope", ["has no dataset /nope"]),
                        ("/acquisition/nope/data", ["has no dataset /acquisition/nope/data"]),
                        ("/acquisition/TwoPhotonSeries", ["/acquisition/TwoPhotonSeries is a group, not a dataset"])):
        msg = _err(capsys, ["bench", f"{nwb}:{path}", "--codecs", "zstd", "--out", str(tmp_path / "b")])
        text = msg.split("error: ", 1)[1]
        assert '"' not in text and "'" not in text, msg
        assert str(nwb) in text and all(w in text for w in words), msg
        assert "/acquisition/TwoPhotonSeries/data" in text  # what is there instead
    # the dataset it names works, its rate read from the file
    out = tmp_path / "ok"
    assert cli.main(["bench", f"{nwb}:/acquisition/TwoPhotonSeries/data", "--codecs", "zstd", "--no-plots",
                     "--no-progress", "--out", str(out)]) == 0
    assert json.load(open(out / "results.json"))["data"]["fs"] == 7.5


def test_bench_npz_key_messages_without_quotes(tmp_path, capsys):
    np.savez(tmp_path / "two.npz", a=np.zeros((8, 4)), b=np.zeros((8, 4)))
    text = _err(capsys, ["bench", str(tmp_path / "two.npz")]).split("error: ", 1)[1]
    assert "two.npz" in text and "a, b" in text and "--key" in text and "'" not in text and '"' not in text
    text = _err(capsys, ["bench", str(tmp_path / "two.npz"), "--key", "nope"]).split("error: ", 1)[1]
    assert "nope" in text and "a, b" in text and "'" not in text and '"' not in text
    np.savez(tmp_path / "both.npz", movie=np.zeros((8, 4, 4)), data=np.zeros((8, 4)))  # two known keys
    assert "movie, data" in _err(capsys, ["bench", str(tmp_path / "both.npz")])


@pytest.mark.parametrize("kind,opts,key,shape", [
    ("imaging", ["--frames", "16", "--height", "32", "--width", "32", "--cells", "2"], "movie", [16, 32, 32]),
    ("ephys", ["--duration", "0.01", "--channels", "4"], "data", [300, 4]),
])
def test_bench_reads_necoda_simulate_npz_without_key(tmp_path, kind, opts, key, shape, capsys):
    """`necoda simulate imaging mov.npz` writes 'movie' next to its ground truth (clean, footprints, ...):
    bench needed --key movie for it."""
    npz = tmp_path / f"{kind}.npz"
    assert cli.main(["simulate", kind, str(npz), *opts]) == 0
    with np.load(npz) as z:
        assert key in z and len(z.files) > 1
    out = tmp_path / "b"
    assert cli.main(["bench", str(npz), "--codecs", "zstd", "--no-plots", "--no-progress", "--out", str(out)]) == 0
    res = json.load(open(out / "results.json"))
    assert res["data"]["kind"] == kind and res["data"]["shape"] == shape


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
    (tmp_path / "sub").mkdir()  # a missing folder is refused, as by every command (test_cli_messages.py)
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


@pytest.mark.parametrize("package", ["torch", "onnx"])
@pytest.mark.parametrize("how", ["not installed", "import blocked"])
def test_train_without_torch_says_so(tmp_path, capsys, monkeypatch, package, how):
    """Without the [train] extra: one error line naming it, exit code 1, nothing written. The earlier test
    blocked ``necoda_filter.train.train`` itself, which never fails to import (it imports torch inside
    train()), so it passed while the real command died with a ModuleNotFoundError traceback: here the
    package is missing the way it is without the extra (no spec found, and ``import torch`` fails)."""
    import importlib.util

    monkeypatch.setitem(sys.modules, package, None)  # `import torch` raises ModuleNotFoundError
    if how == "not installed":  # find_spec answers None, as for a package that is not there
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, **k: None if name == package else real(name, *a, **k))
    monkeypatch.chdir(tmp_path)
    msg = _err(capsys, ["train", "--out", str(tmp_path / "m"), "--sims", "1", "--steps", "1"])
    assert "[train] extra" in msg and 'pip install "necoda-filter[train]"' in msg and package in msg
    assert list(tmp_path.iterdir()) == []  # no model folder, no temporary


def _install_trainer(monkeypatch, train):
    """Replace the trainer by ``train(out, **kw)`` (the CLI's handling is under test; torch not needed)."""
    import types

    fake = types.ModuleType("necoda_filter.train.train")
    fake.train = train
    monkeypatch.setitem(sys.modules, "necoda_filter.train.train", fake)
    monkeypatch.setattr("necoda_filter.commands.train._require_train_extra", lambda: None)
    return fake


def _fake_trainer(monkeypatch):
    """A trainer that records its kwargs and writes a stub package; returns the recorded kwargs."""
    seen = {}

    def fake_train(out, **kw):
        seen.update(kw)
        (out / "weights.pt").write_text("w")
        return "necoda-0000000000000000"

    _install_trainer(monkeypatch, fake_train)
    return seen


def test_train_reads_hdf5_recordings_in_bench_form(tmp_path, capsys, monkeypatch):
    """`necoda train` took only file.h5::dataset while `necoda bench` takes file.h5:/dataset: both work
    now (passed on in the trainer's file.h5::dataset form), and a missing dataset is named up front."""
    nwb = _nwb_like(tmp_path / "rec.nwb")
    np.save(tmp_path / "m.npy", np.zeros((40, 16, 16), np.uint16))
    seen = _fake_trainer(monkeypatch)
    assert cli.main(["train", f"{nwb}:/acquisition/TwoPhotonSeries/data", f"{nwb}::acquisition/TwoPhotonSeries/data",
                     str(tmp_path / "m.npy"), "--out", str(tmp_path / "m"), "--sims", "1", "--steps", "1"]) == 0
    assert seen["recordings"] == [f"{nwb}::acquisition/TwoPhotonSeries/data"] * 2 + [str(tmp_path / "m.npy")]
    capsys.readouterr()
    for spec, words in ((f"{nwb}:/acquisition/nope", ["has no dataset /acquisition/nope", str(nwb)]),
                        (f"{nwb}::nope", ["has no dataset /nope"]),
                        (f"{tmp_path / 'missing.nwb'}:/acquisition/X/data",
                         [f"no such file: {tmp_path / 'missing.nwb'}"]),
                        (f"{tmp_path / 'm.npy'}:/x", ["not an HDF5 file"])):
        msg = _err(capsys, ["train", spec, "--out", str(tmp_path / "m2"), "--sims", "1", "--steps", "1"])
        assert all(w in msg for w in words), (spec, msg)
    assert not (tmp_path / "m2").exists()
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "file.h5:/path/to/dataset" in help_text and "file.h5::path/to/dataset" in help_text


def test_trainer_loads_an_hdf5_dataset_recording(tmp_path):
    pytest.importorskip("h5py")
    from necoda_filter.train.data import load_recording

    nwb = _nwb_like(tmp_path / "rec.nwb")
    assert load_recording(f"{nwb}::acquisition/TwoPhotonSeries/data").shape == (8, 16, 16)


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

    m = tmp_path / "m"
    m.mkdir()
    (m / "weights.pt").write_text("old")
    (m / "tables.json").write_text("{}")  # a model package: what --force may replace
    (m / "stale.txt").write_text("from the old package")

    def failing(out, **kw):
        (out / "weights.pt").write_text("half")
        raise RuntimeError("disk full")

    def finishing(out, **kw):
        (out / "weights.pt").write_text("new")
        (out / "tables.json").write_text("{}")
        return "necoda-0000000000000000"

    fake = _install_trainer(monkeypatch, failing)
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(["train", "--out", str(m), "--force", "--sims", "1", "--steps", "1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (m / "weights.pt").read_text() == "old"
    fake.train = finishing
    assert cli.main(["train", "--out", str(m), "--force", "--sims", "1", "--steps", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in m.iterdir()) == ["tables.json", "train_log.txt", "weights.pt"]
    assert (m / "weights.pt").read_text() == "new"


def test_training_batches_from_a_recording_without_rois():
    """QA: `necoda train RECORDING` always failed ("cannot reshape array of size 0 into shape (0,newaxis)"):
    a recording's chunks have no soma masks, and the mask filter reshaped an empty stack with -1."""
    import numpy as np

    from necoda_filter.simulate import simulate_imaging
    from necoda_filter.train.data import chunks_of, sample_batch
    from necoda_filter.train.train import BASELINE  # numpy only: torch is imported inside train()

    movie = simulate_imaging(n_frames=64, height=64, width=64, n_cells=4, seed=0).movie
    chunks = chunks_of(movie, None, BASELINE, chunk_frames=64)  # a recording: no clean movie, no footprints
    assert chunks and chunks[0].rois is None
    x, y, q, masks = sample_batch(chunks, np.random.default_rng(0), patch=(32, 64, 64))
    assert x.shape[:2] == (4, 2) and y.shape[1] == 1 and [m.shape[0] for m in masks] == [0, 0, 0, 0]


def test_train_force_replaces_only_an_earlier_model_package(tmp_path, capsys, monkeypatch):
    """QA: `necoda train --out . --force` renamed the current folder away and deleted it with its data;
    --force would also have deleted a folder holding the recording being trained on."""
    seen = _fake_trainer(monkeypatch)
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    np.save(data / "rec.npy", np.zeros((40, 16, 16), np.uint16))
    args = ["--sims", "1", "--steps", "1", "--force"]
    assert "not a model package" in _err(capsys, ["train", "--out", str(data), *args])
    monkeypatch.chdir(data)
    (data / "tables.json").write_text("{}")  # even a package is not replaced while the command runs in it
    assert "current folder" in _err(capsys, ["train", "--out", ".", *args])
    assert "current folder" in _err(capsys, ["train", "--out", str(tmp_path), *args])
    monkeypatch.chdir(tmp_path)
    assert "holds the recording" in _err(capsys, ["train", str(data / "rec.npy"), "--out", str(data), *args])
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt", "rec.npy", "tables.json"] and not seen


TERM_TRAIN = r"""
import sys, time, types
fake = types.ModuleType("necoda_filter.train.train")
def train(out, **kw):
    (out / "weights.pt").write_text("half")
    print("training", flush=True)
    time.sleep(60)
fake.train = train
sys.modules["necoda_filter.train.train"] = fake
import necoda_filter.commands.train as t
t._require_train_extra = lambda: None
from necoda_filter import cli
sys.exit(cli.main(["train", "--out", sys.argv[1], "--sims", "1", "--steps", "1"]))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_train_stopped_by_a_signal_leaves_no_temporary_folder(tmp_path, sig):
    """QA: SIGTERM/SIGHUP during `necoda train` left `.OUT.necoda-tmp-PID/` behind, and no later run removed
    it. The signals now end the run through its clean-up; a killed run's folder goes at the next run."""
    import signal
    import subprocess

    out = tmp_path / "m"
    p = subprocess.Popen([sys.executable, "-c", TERM_TRAIN, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:  # the log's first line comes before
            if line.strip() == "training":
                break
        p.send_signal(getattr(signal, sig))
        assert p.wait(timeout=30) != 0
    finally:
        p.kill()
    assert sorted(x.name for x in tmp_path.iterdir()) == []


def test_stale_temporary_folders_of_dead_runs_are_removed(tmp_path, monkeypatch):
    seen = _fake_trainer(monkeypatch)  # noqa: F841
    dead = tmp_path / ".m.necoda-tmp-999999999"  # no such process
    dead.mkdir()
    (dead / "weights.pt").write_text("from a killed run")
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--sims", "1", "--steps", "1"]) == 0
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m"]
