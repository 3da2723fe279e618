"""QA round 13 (F7, F8): the CLI's error messages name the real problem (a folder or a zarr store is not
'missing', a bad sim: parameter is named, a permission error names the file, a locked file gets the
HDF5_USE_FILE_LOCKING hint everywhere), output problems are found before any work, and the commands agree
with each other: every command that writes refuses a missing output folder (never creates one), suffixes
are checked in any letter case, --help shows the defaults, `decompress --gzip` works in any position."""
import os
import re
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from pathlib import Path

from necoda_filter import Necoda, cli

REPO = Path(__file__).resolve().parents[1]


def _err(capsys, argv):
    """``necoda argv`` in-process must fail cleanly: exit 1, one 'error:' line (returned), no traceback."""
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1, (rc, err)
    assert err and "error:" in err[-1] and "Traceback" not in "\n".join(err), err
    return err[-1]


@pytest.fixture
def h5(tmp_path):
    """A small HDF5 file with a lossless necoda dataset /data (T x H x W)."""
    p = tmp_path / "in.h5"
    movie = (np.random.default_rng(0).poisson(20, (16, 16, 16)) + 100).astype(np.uint16)
    with h5py.File(p, "w") as f:
        f.create_dataset("data", data=movie, chunks=(8, 16, 16), compression=Necoda(mode="lossless"))
    return p


@pytest.fixture
def store(tmp_path):
    """A folder that looks like a zarr v3 store (what the commands look at: its zarr.json)."""
    s = tmp_path / "store.zarr"
    s.mkdir()
    (s / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    return s


# ------------------------------------------------------------------ F7: what the input is

def test_evaluate_names_a_folder_and_a_zarr_store(tmp_path, h5, store, capsys):
    folder = tmp_path / "dir.nwb"
    folder.mkdir()
    msg = _err(capsys, ["evaluate", folder, h5, "--no-figures"])
    assert "is a folder" in msg and "does not exist" not in msg  # was "dir.nwb does not exist"
    msg = _err(capsys, ["evaluate", store, h5, "--no-figures"])
    assert "is a zarr store" in msg and "HDF5/NWB" in msg
    msg = _err(capsys, ["evaluate", h5, store, "--no-figures"])
    assert "store.zarr is a zarr store" in msg
    assert "does not exist" in _err(capsys, ["evaluate", tmp_path / "missing.nwb", h5, "--no-figures"])


def test_train_names_a_folder_recording(tmp_path, capsys):
    folder = tmp_path / "dir.nwb"
    folder.mkdir()
    msg = _err(capsys, ["train", folder, "--steps", "1", "--out", tmp_path / "tr"])
    assert "is a folder" in msg and "no such file" not in msg  # was "no such file: dir.nwb"
    assert not (tmp_path / "tr").exists()


def test_bench_names_a_folder_and_a_zarr_store(tmp_path, store, capsys):
    folder = tmp_path / "dir.nwb"
    folder.mkdir()
    msg = _err(capsys, ["bench", folder, "--codecs", "zstd", "--no-plots", "--out", tmp_path / "b"])
    assert "is a folder" in msg and "needs --dtype" not in msg  # was "raw binary needs --dtype and --channels"
    msg = _err(capsys, ["bench", store, "--codecs", "zstd", "--no-plots", "--out", tmp_path / "b"])
    assert "zarr store" in msg and "not supported" in msg


@pytest.mark.parametrize("spec,words", [
    ("sim:imaging:n_frames=abc", ["n_frames", "abc"]),   # was "invalid literal for int() with base 10: 'abc'"
    ("sim:ephys:n_channels=x4", ["n_channels", "x4"]),
    ("sim:imaging:n_frames=2.5", ["n_frames", "2.5", "whole number"]),
    ("sim:imaging:bogus=1", ["bogus"]),
])
def test_bench_sim_parameter_is_named(spec, words, tmp_path, capsys):
    msg = _err(capsys, ["bench", spec, "--codecs", "zstd", "--no-plots", "--out", tmp_path / "b"])
    for w in words:
        assert w in msg, msg
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ F7: permission denied, locks

def test_error_message_permission_denied_names_the_file(tmp_path):
    f = tmp_path / "unread.nwb"
    f.write_bytes(b"x")
    raw = OSError(13, "Unable to determine if file is accessible as hdf5 (unable to open file: name = "
                      f"'{f}', errno = 13, error message = 'Permission denied', flags = 0, o_flags = 0)")
    assert cli.error_message(raw) == f"cannot open {f}: permission denied"
    # what nwb.open_input makes of it (the raw text after its own words)
    wrapped = OSError(f"cannot open {f}: [Errno 13] Unable to synchronously open file (unable to open file: "
                      f"name = '{f}', errno = 13, error message = 'Permission denied', flags = 0, o_flags = 0)")
    assert cli.error_message(wrapped) == f"cannot open {f}: permission denied"
    # a new output: the hidden temporary is named as OUT
    new = PermissionError(13, "Permission denied", str(tmp_path / ".out.nwb.necoda-tmp-123"))
    msg = cli.error_message(new, tmp_path / "out.nwb")
    assert msg.startswith(f"cannot write {tmp_path / 'out.nwb'}") and "permission denied" in msg
    # messages written for people are left alone
    assert cli.error_message(PermissionError("cannot write x: folder y is not writable")) == \
        "cannot write x: folder y is not writable"


def _without_dac_override():
    """A command prefix under which file permission bits apply (we may be root), or None."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", "true"], capture_output=True)
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"] if probe.returncode == 0 else None


@pytest.mark.parametrize("argv", [
    ["info", "{f}"],
    ["compress", "{f}", "{tmp}/out.nwb"],
    ["evaluate", "{f}", "{f2}", "--no-figures"],
    ["bench", "{f}:/data", "--codecs", "zstd", "--no-plots", "--out", "{tmp}/b"],
])
def test_unreadable_input_is_one_line_naming_it(argv, tmp_path, h5):
    prefix = _without_dac_override()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here")
    f = tmp_path / "unread.nwb"
    shutil.copy(h5, f)
    f2 = tmp_path / "other.nwb"
    shutil.copy(h5, f2)
    os.chmod(f, 0)
    args = [a.format(f=f, f2=f2, tmp=tmp_path) for a in argv]
    r = subprocess.run(prefix + [sys.executable, "-m", "necoda_filter.cli", *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(f) in lines[-1] and "permission denied" in lines[-1] and "errno" not in lines[-1], lines


@pytest.fixture
def locked(tmp_path, h5):
    """``h5`` held open for writing by another process (HDF5's file lock)."""
    proc = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'a'); "
                             "print('ready', flush=True); time.sleep(60)", str(h5)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        try:
            h5py.File(h5, "r").close()
        except OSError:
            yield h5
        else:
            pytest.skip("HDF5 file locking is off here")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("argv", [
    ["info", "{f}"],
    ["bench", "{f}:/data", "--codecs", "zstd", "--no-plots", "--out", "{tmp}/b"],
    ["bench", "{f}", "--codecs", "zstd", "--no-plots", "--out", "{tmp}/b"],
    ["compress", "{f}", "{tmp}/o.nwb", "--quiet"],
])
def test_locked_input_gets_the_file_locking_hint(argv, locked, tmp_path, capsys):
    msg = _err(capsys, [a.format(f=locked, tmp=tmp_path) for a in argv])
    assert f"cannot open {locked}" in msg and "HDF5_USE_FILE_LOCKING=FALSE" in msg, msg
    assert "writing" not in msg.split("(")[0], msg  # "close it there" in the hint is no failed close
    assert "[Errno" not in msg


# ------------------------------------------------------------------ F7: bench checks before the work

def test_bench_output_and_codecs_are_checked_before_loading(tmp_path, capsys, no_simulation):
    in_the_way = tmp_path / "file"
    in_the_way.write_bytes(b"mine")
    msg = _err(capsys, ["bench", "sim:imaging", "--codecs", "zstd", "--no-plots", "--out", in_the_way / "b"])
    assert "is not a folder" in msg
    msg = _err(capsys, ["bench", "sim:imaging", "--codecs", "zstd", "--no-plots", "--out", tmp_path / "no" / "b"])
    assert "does not exist" in msg and not (tmp_path / "no").exists()
    msg = _err(capsys, ["bench", "sim:imaging", "--codecs", "zstd,nope", "--no-plots", "--out", tmp_path / "b"])
    assert "--codecs" in msg and "'nope'" in msg
    assert "necoda-foo" in _err(capsys, ["bench", "sim:imaging", "--codecs", "necoda-foo", "--no-plots",
                                         "--out", tmp_path / "b"])
    assert not (tmp_path / "b").exists()


def test_bench_unwritable_out_is_found_before_the_benchmark(tmp_path):
    prefix = _without_dac_override()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    r = subprocess.run(prefix + [sys.executable, "-m", "necoda_filter.cli", "bench",
                                 "sim:imaging:n_frames=16,height=16,width=16,n_cells=2", "--codecs", "zstd",
                                 "--no-plots", "--no-progress", "--out", str(ro / "b")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and "not writable" in r.stderr, r.stderr
    assert "imaging (16, 16, 16)" not in r.stderr  # nothing was loaded or run


# ------------------------------------------------------------------ F8: one rule for output folders

@pytest.mark.parametrize("argv", [
    ["simulate", "imaging", "{new}/x.npy", "--frames", "16", "--height", "16", "--width", "16"],
    ["simulate", "ephys", "{new}/sub/x.nwb", "--duration", "0.01", "--channels", "4"],
    ["demo", "--out", "{new}/x.nwb"],
    ["compress", "{h5}", "{new}/x.nwb"],
    ["decompress", "{h5}", "{new}/x.nwb"],
    ["evaluate", "{h5}", "{h5c}", "--report", "{new}/rep"],
    ["bench", "sim:imaging", "--codecs", "zstd", "--out", "{new}/b"],
    ["train", "--steps", "1", "--out", "{new}/tr"],
])
def test_every_writer_refuses_a_missing_output_folder(argv, tmp_path, h5, capsys, no_simulation):
    """simulate created missing folders (a typo made a folder tree), compress/decompress/demo refused: now
    every command that writes refuses, before any work, and creates nothing."""
    new = tmp_path / "nodir"
    h5c = tmp_path / "copy.h5"
    shutil.copy(h5, h5c)
    msg = _err(capsys, [a.format(new=new, h5=h5, h5c=h5c) for a in argv])
    assert "does not exist" in msg and "nodir" in msg, msg
    assert not new.exists()


@pytest.mark.parametrize("name,option", [("simulate", "OUT"), ("compress", "OUT.nwb"), ("decompress", "OUT.nwb"),
                                         ("demo", "--out"), ("evaluate", "--report"), ("bench", "--out"),
                                         ("train", "--out")])
def test_help_states_the_output_folder_rule(name, option, capsys):
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "missing folders are not created" in out, (name, out)


@pytest.mark.parametrize("name", ["x.NWB", "x.Npy", "x.NPZ"])
def test_simulate_accepts_suffixes_in_any_case(name, tmp_path, capsys):
    out = tmp_path / name
    assert cli.main(["simulate", "imaging", str(out), "--frames", "16", "--height", "16", "--width", "16",
                     "--cells", "2"]) == 0
    if name.lower().endswith(".nwb"):
        assert h5py.is_hdf5(out)
    elif name.lower().endswith(".npy"):
        assert np.load(out).shape == (16, 16, 16)
    else:
        with np.load(out) as z:
            assert z["movie"].shape == (16, 16, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left


@pytest.mark.parametrize("name,expected", [
    ("simulate", ["--frames FRAMES movie frames (default 500)", "(default 128)", "(default 40)", "(default 30)",
                  "(default 2)", "(default 384)", "(default 30000)", "random seed (default 0)", "(default 2p)",
                  "(default 2.34)"]),
    ("evaluate", ["(default 500)", "(default 5)", "(default 256)"]),
    ("train", ["random seed (default 0)", "(default 24)", "learning rate (default 0.002)"]),
    ("decompress", ["default 4", "CPUs available"]),
])
def test_help_shows_defaults(name, expected, capsys):
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for e in expected:
        assert e in out, (e, out)


def test_every_simulate_option_has_help():
    import argparse

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("simulate", "train", "evaluate", "decompress"):
        bare = [a.option_strings for a in sub.choices[name]._actions if a.option_strings and not a.help]
        assert not bare, (name, bare)


# ------------------------------------------------------------------ F8: decompress --gzip anywhere

@pytest.mark.parametrize("argv,level", [
    (["--gzip", "{i}", "{o}"], 4),                 # was "argument --gzip: invalid int value: 'IN'"
    (["{i}", "--gzip", "{o}"], 4),
    (["{i}", "{o}", "--gzip"], 4),                 # as in the README
    (["{i}", "{o}", "--gzip", "6"], 6),            # as in test_nwb_workflow
    (["--gzip", "2", "{i}", "{o}"], 2),
    (["--gzip", "--quiet", "{i}", "{o}"], 4),
])
def test_decompress_gzip_in_any_position(argv, level, tmp_path, h5, capsys):
    out = tmp_path / "plain.h5"
    assert cli.main(["decompress", *[a.format(i=h5, o=out) for a in argv], "--workers", "1", "--quiet"]) == 0
    with h5py.File(out, "r") as f:
        assert f["data"].compression == "gzip" and f["data"].compression_opts == level


def test_decompress_gzip_bad_level(tmp_path, h5, capsys):
    assert "0..9" in _err(capsys, ["decompress", h5, tmp_path / "o.h5", "--gzip", "11"])


def test_decompress_normalize_argv_leaves_other_words():
    from necoda_filter.commands.decompress import normalize_argv

    assert normalize_argv(["a", "b", "--gzip", "7"]) == ["a", "b", "--gzip", "7"]
    assert normalize_argv(["--gzip", "a", "b"]) == ["--gzip=4", "a", "b"]
    assert normalize_argv(["a", "--", "--gzip", "b"]) == ["a", "--", "--gzip", "b"]


# ------------------------------------------------------------------ F8: README's ephys chunking

def test_readme_ephys_chunking_matches_compress():
    from necoda_filter.nwb.plan import plan_chunks

    text = " ".join((REPO / "README.md").read_text().split())
    m = re.search(r"384 int16 channels at 30 kHz: (\d+) samples, ([\d.]+) s", text)
    assert m, "README states the chunk compress writes for 384 channels"
    rows = plan_chunks("ephys", (10 * 30000, 384), 2, 30000.0)[0]
    assert int(m.group(1)) == rows and float(m.group(2)) == round(rows / 30000, 2)
    assert "at most 4 MB" in text and rows * 384 * 2 <= 4 << 20


# ------------------------------------------------------------------ F7: train's log names --out

def test_train_log_names_out_not_the_temporary(tmp_path, capsys, monkeypatch):
    """The trainer logs "exported ... to <folder it writes>", which is the hidden temporary: the log line
    (stdout and train_log.txt) names --out instead."""
    import types

    def fake_train(out, log, **kw):
        (out / "tables.json").write_text("{}")
        log(f"exported necoda-0000000000000000 to {out} after 1 steps")
        return "necoda-0000000000000000"

    fake = types.ModuleType("necoda_filter.train.train")
    fake.train = fake_train
    monkeypatch.setitem(sys.modules, "necoda_filter.train.train", fake)
    monkeypatch.setattr("necoda_filter.commands.train._require_train_extra", lambda: None)
    out = tmp_path / "m"
    assert cli.main(["train", "--out", str(out), "--sims", "1", "--steps", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"to {out} after 1 steps" in printed and "necoda-tmp" not in printed, printed
    assert f"to {out} after 1 steps" in (out / "train_log.txt").read_text()


def test_a_dead_worker_process_is_one_line(tmp_path, h5, capsys, monkeypatch):
    """QA 15: a worker process killed mid-run (the OOM killer, a signal) ended compress/decompress with a
    BrokenProcessPool traceback; it is one line saying what happened (the clean-up was already right)."""
    from concurrent.futures.process import BrokenProcessPool

    from necoda_filter.commands import compress

    def died(args):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(compress, "run", died)
    assert cli.main(["compress", str(h5), str(tmp_path / "out.h5")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("necoda compress: error: a worker process died") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["enum", "bool"])
def test_compress_says_why_series_data_was_not_recompressed(tmp_path, kind, capsys):
    """QA 15: an ElectricalSeries stored as an HDF5 enum (numpy sees int16) was planned for the filter, which
    refused it: a traceback. It is copied as it is, and compress says why, as for a bool movie (which it
    had reported as "no ... data found")."""
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        g = f.create_group("s")
        g.attrs["neurodata_type"] = "ElectricalSeries"
        g.create_dataset("starting_time", data=0.0).attrs["rate"] = 1000.0
        if kind == "enum":
            dt = h5py.enum_dtype({"LOW": 0, "HIGH": 1}, basetype="i2")
            g.create_dataset("data", data=np.zeros((100, 4), "i2"), dtype=dt)
        else:
            g.create_dataset("data", data=np.zeros((100, 4), bool))
    out = tmp_path / "out.h5"
    assert cli.main(["compress", str(src), str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "no series data in" in said and ("enum type" if kind == "enum" else "dtype bool") in said
    with h5py.File(out, "r") as f:
        assert f["s/data"].dtype == (h5py.enum_dtype({"LOW": 0, "HIGH": 1}, basetype="i2") if kind == "enum" else bool)
        assert not f["s/data"].compression


def test_compress_names_series_it_copied_next_to_ones_it_recompressed(tmp_path, capsys):
    """QA 16: the reason a series was left as it was (an enum movie) was given only when no series at all
    was recompressed."""
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        for name, typ, data, dt in [("e", "ElectricalSeries", np.arange(4000, dtype="i2").reshape(1000, 4), None),
                                    ("m", "TwoPhotonSeries", np.zeros((20, 16, 16), "u1"),
                                     h5py.enum_dtype({"OFF": 0, "ON": 1}, basetype="u1"))]:
            g = f.create_group(name)
            g.attrs["neurodata_type"] = typ
            g.create_dataset("starting_time", data=0.0).attrs["rate"] = 1000.0
            g.create_dataset("data", data=data, dtype=dt)
    assert cli.main(["compress", str(src), str(tmp_path / "out.h5"), "--quiet", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "/e/data: ephys" in out and "copied as it was: the data of the TwoPhotonSeries /m has an HDF5 enum" in out


def test_stored_filter_values_with_options_their_mode_ignores_are_accepted_again(tmp_path):
    """QA 16: options a mode does not use are refused when a filter is made (Necoda(mode="lossless",
    quality=3)), but filter values an earlier release stored with them, given back as compression_opts
    (copying a dataset's settings), are accepted as stored."""
    from necoda_filter import FILTER_ID, options

    with pytest.raises(ValueError, match="option quality does not apply"):
        Necoda(mode="lossless", quality=3)
    cd = list(options.to_cd_values("lossless"))
    cd[options.OPTION_SLOTS["quality"][0]] = 3  # what an earlier release wrote for Necoda(mode="lossless", quality=3)
    assert options.user_options(cd) == ("lossless", {"quality": 3})
    a = np.arange(64 * 8, dtype="i2").reshape(64, 8)
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.create_dataset("d", data=a, chunks=(32, 8), compression=FILTER_ID, compression_opts=tuple(cd))
        # QA 17: a level above 12 (taken as 12 before it was refused) is accepted as stored, too
        cd[options.OPTION_SLOTS["level"][0]] = 13
        f.create_dataset("d13", data=a, chunks=(32, 8), compression=FILTER_ID, compression_opts=tuple(cd))
    with h5py.File(tmp_path / "old.h5", "r") as f:
        assert np.array_equal(f["d"][...], a) and np.array_equal(f["d13"][...], a)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE write failures")
@pytest.mark.parametrize("mib", [5, 7, 8])
def test_a_write_that_fails_midway_ends_in_one_line_not_a_crash(tmp_path, mib):
    """A file that can no longer grow (a full disk; here a file-size limit: EFBIG) while `necoda simulate`
    writes its NWB file made HDF5 2.0 crash in its own shutdown (SIGSEGV, after the error was printed)
    for some sizes, and h5py printed dozens of lines of tracebacks freeing the objects of the failed
    file. The command now says one line and exits 1 (or succeeds if the file fits), leaving no file."""
    import resource

    limit = mib << 20
    r = subprocess.run([sys.executable, "-m", "necoda_filter.cli", "simulate", "imaging", str(tmp_path / "x.nwb"),
                        "--frames", "200", "--height", "128", "--width", "128"], capture_output=True, text=True,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert r.stderr.splitlines() == [f"necoda simulate: error: writing {tmp_path / 'x.nwb'} failed: File too large"]
    assert list(tmp_path.iterdir()) == []


def test_held_dealloc_errors_are_printed_when_the_command_succeeds(capsys):
    """What h5py prints freeing objects of a file HDF5 failed to write is held back while the command runs
    (dropped if it fails, as its error says it all) and printed when it ends otherwise: never lost."""
    ours = RuntimeError("Can't decrement id ref count (file write failed: errno = 28)")
    with cli._HeldDeallocErrors() as held:
        sys.excepthook(RuntimeError, ours, None)
        sys.unraisablehook(type("U", (), {"exc_type": RuntimeError, "exc_value": ours, "exc_traceback": None,
                                          "object": "h5py._objects.ObjectID.__dealloc__", "err_msg": None})())
        sys.excepthook(ValueError, ValueError("not ours"), None)  # anything else passes straight through
        assert "not ours" in capsys.readouterr().err and len(held.held) == 2
    err = capsys.readouterr().err
    assert err.count("decrement id ref count") == 2 and "Exception ignored in: 'h5py._objects" in err
    assert (sys.excepthook, sys.unraisablehook) == held.prev  # the hooks are restored


def test_compress_names_temporaries_other_interrupted_runs_left(tmp_path, capsys):
    """A killed run leaves its hidden temporary, which only a run for the same OUT removes: one for another
    name left it for good (gigabytes, unseen). compress and decompress now name such leftovers in OUT's
    folder, without removing them (on a shared folder a process id says nothing of another machine's run)."""
    from conftest import series_file

    movie = np.random.default_rng(9).integers(0, 3000, (40, 24, 24)).astype(np.uint16)
    series_file(tmp_path / "in.h5", {"ts": ("TwoPhotonSeries", movie, 30.0)})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".other.nwb.necoda-tmp-{int(dead.stdout)}"
    left.write_bytes(b"x" * 1000)
    mine = tmp_path / f".third.nwb.necoda-tmp-{os.getpid()}-7"  # a live process's: not named
    mine.write_bytes(b"y")
    assert cli.main(["compress", str(tmp_path / "in.h5"), str(tmp_path / "out.nwb"), "--quiet", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert f"{left.name} (1e-06 GB)" in err and mine.name not in err and left.exists()
    assert cli.main(["decompress", str(tmp_path / "out.nwb"), str(tmp_path / "plain.nwb"), "--quiet",
                     "--workers", "1"]) == 0
    assert left.name in capsys.readouterr().err
    left.unlink()
    assert cli.main(["decompress", str(tmp_path / "out.nwb"), str(tmp_path / "plain2.nwb"), "--quiet",
                     "--workers", "1"]) == 0
    assert "interrupted runs" not in capsys.readouterr().err
