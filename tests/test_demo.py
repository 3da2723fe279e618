"""``necoda demo`` as a new user meets it: every bad argument is refused before any simulation with a
message that says what to do; --out is a new .nwb file (or an existing folder to put necoda_demo.nwb in)
and never overwrites; the output says when the file is temporary and explains the table's columns.
(test_cli.py::test_demo_small runs it through the console script.)"""
import os

import pytest

from necoda_filter import cli, modes, simulate
from necoda_filter.commands import demo

SMALL = ["--frames", "20", "--size", "32", "--seconds", "0.1", "--channels", "8"]


@pytest.fixture
def no_simulation(monkeypatch):
    """Argument errors must come before any work: simulating fails the test."""
    def boom(*a, **k):
        raise AssertionError("the demo simulated data before rejecting its arguments")
    monkeypatch.setattr(simulate, "simulate_imaging", boom)
    monkeypatch.setattr(simulate, "simulate_ephys", boom)


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
    for m in modes.MODE_CHOICES:  # the mode registry, not a second list
        assert repr(m) in cap.err


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
