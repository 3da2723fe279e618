"""``necoda demo`` as a new user meets it: every bad argument is refused before any simulation with a
message that says what to do; --out is a new .nwb file (or an existing folder to put necoda_demo.nwb in)
and never overwrites; the output says when the file is temporary and explains the table's columns.
(test_cli.py::test_demo_small runs it through the console script.)"""
import os

import pytest

from necoda_filter import cli, modes
from necoda_filter.commands import demo

SMALL = ["--frames", "20", "--size", "32", "--seconds", "0.1", "--channels", "8"]


def _err(capsys, argv) -> str:
    rc = cli.main(["demo", *argv])
    cap = capsys.readouterr()
    assert rc == 1, (rc, cap)
    assert "simulating" not in cap.out and "Traceback" not in cap.err
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("necoda demo: error: "), lines
    return lines[0]


@pytest.mark.parametrize("opt", ["--imaging-mode", "--ephys-mode"])
def test_unknown_mode_is_refused_listing_the_modes(opt, capsys, no_simulation):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", opt, "foo"])
    assert e.value.code == 2
    cap = capsys.readouterr()
    assert "simulating" not in cap.out
    assert opt in cap.err and "'foo'" in cap.err
    for m in modes.MODE_CHOICES:  # the mode registry, not a second list (ephys: all but the movies' learned)
        assert (repr(m) in cap.err) == (opt == "--imaging-mode" or m != "learned")


def test_ephys_mode_learned_is_refused(capsys, no_simulation):
    """Bug: `--ephys-mode learned` was accepted although the learned mode is for movies only (`necoda
    compress` offers lossless|bounded for ephys)."""
    assert demo.ephys_mode_choices() == tuple(m for m in modes.MODE_CHOICES if m != "learned")
    assert {"auto", "raw", "lossless", "bounded"} <= set(demo.ephys_mode_choices())
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--ephys-mode", "learned"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--ephys-mode" in err and "invalid choice: 'learned'" in err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--ephys-mode {" + ",".join(demo.ephys_mode_choices()) + "}" in out


def test_help_lists_the_modes_and_out_is_a_file(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "{" + ",".join(modes.MODE_CHOICES) + "}" in out
    assert "--out FILE.nwb" in out and "existing folder" in out and "never overwritten" in out


@pytest.mark.parametrize("argv,words", [
    (["--imaging-mode", "bounded"], ["--imaging-mode bounded needs", "--max-error", "--max-error-noise"]),
    (["--ephys-mode", "bounded"], ["--ephys-mode bounded needs"]),
    (["--max-error", "3"], ["bounded and learned modes only"]),
    (["--imaging-mode", "learned", "--max-error", "-1"], ["--imaging-mode learned", "max_error"]),
    # bugs: these ended as `raw | 1×` after a stderr line; refused up front as by `necoda compress`
    (["--imaging-mode", "learned", "--max-error", "0.5"], ["--imaging-mode learned", "at least one raw unit"]),
    (["--imaging-mode", "learned", "--max-error-noise", "0"], ["--imaging-mode learned", "at least one raw unit"]),
    (["--imaging-mode", "learned", "--ephys-mode", "bounded", "--max-error", "0.9"], ["at least one raw unit"]),
])
def test_bad_mode_options_are_refused_before_work(argv, words, capsys, no_simulation):
    msg = _err(capsys, argv)
    for w in words:
        assert w in msg


@pytest.mark.parametrize("argv,what", [(["--frames", "0"], "--frames"), (["--seconds", "nan"], "--seconds"),
                                       (["--seconds", "-1"], "--seconds"), (["--channels", "0"], "--channels")])
def test_bad_sizes_are_argument_errors(argv, what, capsys, no_simulation):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", *argv])
    assert e.value.code == 2 and what in capsys.readouterr().err


def test_out_without_nwb_extension_is_refused(tmp_path, capsys, no_simulation):
    out = tmp_path / "demo_out"
    msg = _err(capsys, ["--out", str(out)])
    assert ".nwb" in msg and f"{out}.nwb" in msg
    assert not out.exists() and not os.listdir(tmp_path)


def test_out_never_overwrites(tmp_path, capsys, no_simulation):
    f = tmp_path / "have.nwb"
    f.write_bytes(b"mine")
    assert "exists" in _err(capsys, ["--out", str(f)]) and f.read_bytes() == b"mine"
    d = tmp_path / "folder"
    d.mkdir()
    (d / demo.DEMO_NAME).write_bytes(b"mine too")
    msg = _err(capsys, ["--out", str(d)])
    assert str(d / demo.DEMO_NAME) in msg and "exists" in msg
    assert (d / demo.DEMO_NAME).read_bytes() == b"mine too"


def test_out_in_a_missing_folder_is_refused(tmp_path, capsys, no_simulation):
    assert "does not exist" in _err(capsys, ["--out", str(tmp_path / "nodir" / "x.nwb")])
    assert "no such folder" in _err(capsys, ["--out", str(tmp_path / "nodir") + os.sep])
    assert not (tmp_path / "nodir").exists()


def test_out_existing_folder_gets_the_demo_file_and_a_legend(tmp_path, capsys):
    """A small run into an existing folder: the file lands there as necoda_demo.nwb; sizes are readable
    (kB, not 0.00 MB) and the columns are explained."""
    assert cli.main(["demo", *SMALL, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    path = tmp_path / demo.DEMO_NAME
    assert path.is_file() and f"kept {path}" in out
    assert "temporary" not in out
    table = [ln for ln in out.splitlines() if ln.startswith("| ") and "Series" in ln]
    assert len(table) == 2
    for ln in table:
        stored = ln.split("|")[5].strip()
        assert stored.split()[-1] in ("B", "kB", "MB", "GB") and float(stored.split()[0]) > 0, ln
    for words in ("raw units", "ROI r:", "vs truth:", "spike F1:", "waveform r:"):
        assert words in out


def test_temporary_file_is_announced_and_deleted(capsys):
    assert cli.main(["demo", *SMALL, "--imaging-mode", "lossless"]) == 0
    out = capsys.readouterr().out
    wrote = next(ln for ln in out.splitlines() if ln.startswith("wrote "))
    path = wrote.split()[1]
    assert "temporary" in out and "--out FILE.nwb" in out and "deleted the temporary folder" in out
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    assert "0 (exact)" in out and "LOSSY" not in out  # lossless both: no lossy note


def _note(text: str) -> str:
    return " ".join(text.split())


def test_learned_note_says_about_the_noise_only_when_it_is_so():
    """Bug: the note said the learned mode "removes shot noise, so the decoded movie differs from the original
    by about the noise" also with --max-error 5 (RMSE 2.57 vs the original, noise RMSE ~280)."""
    import argparse
    noise = {"rmse": 282.0, "max_abs": 2054.0}
    fid = {"roi_r_median": 0.95}

    def note(mode="learned", max_error=None, max_error_noise=None, rmse=295.0, max_abs=2181.0, clean=91.0):
        args = argparse.Namespace(imaging_mode=mode, max_error=max_error, max_error_noise=max_error_noise)
        return _note(demo._learned_note("TwoPhotonSeries", args, {"rmse": rmse, "max_abs": max_abs}, noise,
                                        {"rmse": clean}, fid))
    plain = note()  # no bound: the network drops the noise
    assert "removes shot noise" in plain and "by about the noise" in plain and "RMSE 295" in plain
    assert "is closer to the noise-free one (RMSE 91)" in plain and "ROI r 0.950" in plain
    bound = note(max_error=5, rmse=2.57, max_abs=4, clean=282.0)
    assert "about the noise" not in bound and "removes shot noise" not in bound
    assert "--max-error 5 kept every sample within 5 raw units" in bound and "RMSE 2.57" in bound
    assert "close to the original, noise included" in bound and "about as much as the original" in bound
    assert "did NOT keep" in note(max_error=5, rmse=2.57, max_abs=6, clean=282.0)
    sigma = note(max_error_noise=0.5, rmse=75.9, max_abs=133, clean=292.0)
    assert "--max-error-noise 0.5" in sigma and "about the noise" not in sigma
    assert "more than the noise" in note(rmse=900.0, max_abs=5000, clean=800.0)
    assert "--max-error" not in note(mode="auto", max_error=5)  # auto takes no bound in the demo


def test_learned_with_a_bound_in_a_file_named_in_capitals(tmp_path, capsys):
    """The whole demo with `--imaging-mode learned --max-error 5 --out X.NWB`: no pynwb warning about the
    temporary's name (it was `.X.<pid>.tmp.NWB`), and the note tells what the bound did."""
    import warnings
    if not modes.learned_available():
        pytest.skip("the learned mode is not available here")
    out = tmp_path / "X.NWB"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["demo", *SMALL, "--imaging-mode", "learned", "--max-error", "5", "--out", str(out)]) == 0
    assert [str(w.message) for w in caught if "end in" in str(w.message)] == []
    text = _note(capsys.readouterr().out)
    assert "--max-error 5 kept every sample within 5 raw units" in text
    assert "by about the noise" not in text and "removes shot noise" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["X.NWB"]


def test_out_appearing_during_the_demo_is_not_overwritten(tmp_path, capsys, monkeypatch):
    """--out is checked before any work, but a file created there while the demo writes is not replaced
    either (write_nwb publishes without overwriting); the temporaries and the temporary folder are removed."""
    import tempfile

    import pynwb
    out = tmp_path / "d.nwb"
    orig = pynwb.NWBHDF5IO.write

    def write(self, *a, **k):
        orig(self, *a, **k)
        out.write_bytes(b"mine")
    monkeypatch.setattr(pynwb.NWBHDF5IO, "write", write)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    msg = _err_after_work(capsys, ["--imaging-mode", "lossless", "--out", str(out)])
    assert str(out) in msg and "exists" in msg
    assert out.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.nwb", "scratch"] and list(scratch.iterdir()) == []


def _err_after_work(capsys, argv) -> str:
    rc = cli.main(["demo", *SMALL, *argv])
    cap = capsys.readouterr()
    assert rc == 1 and "Traceback" not in cap.err, (rc, cap)
    return cap.err.strip().splitlines()[-1]


SIGNAL_CHILD = r"""
import sys, time
import pynwb
orig = pynwb.NWBHDF5IO.write
def slow(*a, **k):
    orig(*a, **k)
    print("written", flush=True)   # the NWB temporary is complete but not yet published
    time.sleep(120)
pynwb.NWBHDF5IO.write = slow
from necoda_filter.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("keep", [True, False])
def test_sigterm_during_the_demo_leaves_nothing(keep, tmp_path):
    """Bug: SIGTERM during the write left the NWB temporary (`.big.14942.tmp.nwb`) and the demo's
    /tmp/necoda-demo-* folder. It now ends like `necoda compress`: exit 143, nothing left."""
    import signal
    import subprocess
    import sys
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = [*SMALL, "--imaging-mode", "lossless"] + (["--out", str(tmp_path / "d.nwb")] if keep else [])
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_CHILD, "demo", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        for line in proc.stdout:
            if line.strip() == "written":
                break
        assert proc.poll() is None, proc.stderr.read()
        assert list(scratch.iterdir())  # the demo's temporary folder exists now
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert list(scratch.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["scratch"]
