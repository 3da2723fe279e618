"""How compress/decompress publish OUT, which datasets they take for series data, and their no-op cases
(QA round 13: q3 F2, q1 F7, q1 F11).

* publish: without --overwrite OUT is never replaced, also not a file that appears while the run writes
  (another program, a second run writing the same OUT) nor a dangling symbolic link; the one publish is
  shared with simulate/demo (``nwb.atomic.publish``);
* hard links: a series' data reached first by another name (a root-level alias) is still recompressed,
  written once under its series and linked at the alias;
* messages: ``--only`` on an ImageSeries whose frames are in external files says so; ``necoda decompress``
  of a file without necoda data refuses and writes nothing.
"""
from __future__ import annotations

import os
import threading

import h5py
import numpy as np
import pytest

from necoda_filter import FILTER_ID, cli, nwb, simulate_nwb
from necoda_filter.nwb import atomic, plan
from conftest import series_file


def has_necoda(d: h5py.Dataset) -> bool:
    pl = d.id.get_create_plist()
    return FILTER_ID in [pl.get_filter(i)[0] for i in range(pl.get_nfilters())]




def temps(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if nwb.TMP_MARK in p.name or ".tmp" in p.name)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", rng.integers(0, 900, (16, 12, 10)).astype(np.int16), 30.0)})
    comp = tmp_path / "comp.h5"
    nwb.recompress_file(src, comp, workers=1, progress=False)
    return src, comp


def _appear_while_writing(monkeypatch, out, content=b"my precious results"):
    """Make ``content`` appear at ``out`` once the run's temporary is complete (before it is published)."""
    real = nwb.rewrite._copy_userblock
    fired = []

    def copy_then_appear(src_path, dst_path, size):
        real(src_path, dst_path, size)
        assert nwb.TMP_MARK in os.path.basename(dst_path)  # the temporary exists, OUT not yet
        if fired:  # once (not in a run started by ``content``)
            return
        fired.append(dst_path)
        if isinstance(content, bytes):
            out.write_bytes(content)
        else:
            content()

    monkeypatch.setattr(nwb.rewrite, "_copy_userblock", copy_then_appear)


@pytest.mark.parametrize("hard_links", [True, False])
@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_a_file_appearing_at_out_during_the_run_is_not_replaced(files, tmp_path, monkeypatch, capsys, command,
                                                                hard_links):
    """Bug (q3 F2): the run ended with an unconditional os.replace(tmp, OUT), so a file created at OUT
    while it ran (another program, or a second run writing the same OUT) was silently replaced, rc 0."""
    src, comp = files
    inp = src if command == "compress" else comp
    out = tmp_path / "out.h5"
    if not hard_links:  # e.g. FAT/exFAT or some network volumes: an exclusive create of OUT, then a rename
        def no_link(*a, **k):
            raise PermissionError(1, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    _appear_while_writing(monkeypatch, out)
    assert cli.main([command, str(inp), str(out), "--workers", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{out} exists" in err and "appeared while" in err and "not kept" in err, err
    assert "Traceback" not in err and nwb.TMP_MARK not in err
    assert out.read_bytes() == b"my precious results"
    assert temps(tmp_path) == []
    # --overwrite replaces it
    assert cli.main([command, str(inp), str(out), "--workers", "1", "--quiet", "--overwrite"]) == 0
    assert h5py.is_hdf5(out) and temps(tmp_path) == []
    with h5py.File(out, "r") as f:
        assert has_necoda(f["ts/data"]) == (command == "compress")


def test_a_dangling_symbolic_link_at_out_counts_as_existing(files, tmp_path, capsys):
    """Bug (q3 F2, related): check_paths used Path.exists(), False for a dangling link, so it was replaced
    without --overwrite."""
    src, comp = files
    target = tmp_path / "elsewhere" / "t.h5"
    out = tmp_path / "dang.h5"
    out.symlink_to(target)
    for command, inp in (("compress", src), ("decompress", comp)):
        assert cli.main([command, str(inp), str(out), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"output {out} exists" in err and "symbolic link" in err and "--overwrite" in err, err
        assert out.is_symlink() and not target.parent.exists()
    assert cli.main(["compress", str(src), str(out), "--quiet", "--overwrite"]) == 0  # replaces the link itself
    assert not out.is_symlink() and h5py.is_hdf5(out) and not target.parent.exists()
    assert temps(tmp_path) == []


def test_two_runs_writing_the_same_out_keep_one_and_the_other_fails(files, tmp_path, monkeypatch):
    """Two runs of one process (threads) writing the same OUT: each has its own temporary; the one that
    finishes first publishes OUT, the other fails without replacing it and leaves no temporary."""
    src, comp = files
    out = tmp_path / "out.h5"
    inner = {}

    def second_run():  # runs (to the end) while the first run's temporary is complete but unpublished
        def go():
            try:
                nwb.decompress_file(comp, out, workers=1, progress=False)
                inner["rc"] = 0
            except Exception as e:  # noqa: BLE001
                inner["rc"] = e
        t = threading.Thread(target=go)
        t.start()
        t.join()

    _appear_while_writing(monkeypatch, out, second_run)
    with pytest.raises(FileExistsError, match="appeared while"):
        nwb.recompress_file(src, out, workers=1, progress=False)
    assert inner["rc"] == 0
    with h5py.File(out, "r") as f:  # the decompressed copy (the second run's), not the compressed one
        assert not has_necoda(f["ts/data"])
    assert temps(tmp_path) == []


def test_publish_is_one_implementation(tmp_path):
    """simulate/demo and compress/decompress publish with the same function."""
    assert simulate_nwb.publish is atomic.publish
    tmp, out = tmp_path / "t", tmp_path / "o"
    tmp.write_bytes(b"new")
    out.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="not kept"):
        atomic.publish(tmp, out)
    assert out.read_bytes() == b"old" and tmp.exists()   # the caller removes its temporary
    atomic.publish(tmp, out, overwrite=True)
    assert out.read_bytes() == b"new" and not tmp.exists()


# --------------------------------------------------------------------------------------------------
# series data with several names (hard links)
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def aliased(tmp_path):
    """An ElectricalSeries at 1 kHz and a TwoPhotonSeries, each data also hard-linked under a name that the
    copy reaches first (a root-level alias, and one in a group sorting before /acquisition)."""
    rng = np.random.default_rng(4)
    x = rng.integers(-300, 300, (5000, 4)).astype(np.int16)
    m = rng.integers(0, 900, (12, 10, 8)).astype(np.uint16)
    src = tmp_path / "hl.h5"
    series_file(src, {"acquisition/ElectricalSeries": ("ElectricalSeries", x, 1000.0),
                      "acquisition/TwoPhotonSeries": ("TwoPhotonSeries", m, 30.0)})
    with h5py.File(src, "a") as f:
        f["0_root_alias"] = f["acquisition/ElectricalSeries/data"]
        f["aa/movie_alias"] = f["acquisition/TwoPhotonSeries/data"]
        f["aa/ref"] = np.array([f["0_root_alias"].ref], dtype=h5py.ref_dtype)
    return src, x, m


def test_series_data_reached_first_by_another_name_is_recompressed_once(aliased, tmp_path):
    """Bug (q1 F7): target_kind judged a dataset by the name it was opened by, and the copy reached the
    data through the alias first, so the series was copied uncompressed."""
    src, x, m = aliased
    with h5py.File(src, "r") as f:
        assert nwb.target_kind(f["0_root_alias"]) == "ephys"
        assert nwb.target_kind(f["aa/movie_alias"]) == "imaging"
        assert nwb.series_group(f["0_root_alias"]).name == "/acquisition/ElectricalSeries"
        assert nwb.series_data(f["0_root_alias"]).name == "/acquisition/ElectricalSeries/data"
        assert nwb.target_kind(f["acquisition/ElectricalSeries/starting_time"]) is None
    out = tmp_path / "out.h5"
    reps = nwb.recompress_file(src, out, workers=1, progress=False)
    assert sorted(r.path for r in reps) == ["/acquisition/ElectricalSeries/data", "/acquisition/TwoPhotonSeries/data"]
    es = next(r for r in reps if r.kind == "ephys")
    assert es.chunks[0] == plan.plan_chunks("ephys", x.shape, 2, 1000.0)[0]  # the series' own rate, not 30 kHz
    with h5py.File(out, "r") as f:
        d, t = f["acquisition/ElectricalSeries/data"], f["acquisition/TwoPhotonSeries/data"]
        assert has_necoda(d) and has_necoda(t)
        assert f["0_root_alias"] == d and f["aa/movie_alias"] == t     # one object each, linked
        assert h5py.h5o.get_info(d.id).rc == 2
        assert f[f["aa/ref"][0]] == d
        assert np.array_equal(d[...], x) and np.array_equal(t[...], m)
        assert "[necoda]" not in str(f.attrs.get("comments", ""))    # nothing written on the root group
    assert nwb.structure_diff(src, out, ignore_attrs=lambda p, n: n.startswith("necoda_")) == []


def test_an_alias_in_a_creation_ordered_group_keeps_its_place(tmp_path):
    """The alias is linked after the walk; a group that keeps link creation order still lists its members
    in the source's order."""
    x = np.arange(4000 * 2, dtype=np.int16).reshape(4000, 2)
    src = tmp_path / "to.h5"
    with h5py.File(src, "w") as f:
        r = f.create_group("r", track_order=True)
        r["first"] = x                                   # the data, created before its series
        r["soft"] = h5py.SoftLink("/nowhere")
        r["zlast"] = 1
        g = r.create_group("es")
        g.attrs["neurodata_type"] = "ElectricalSeries"
        g["data"] = r["first"]
        r["b_after"] = 2
    out = tmp_path / "out.h5"
    (rep,) = nwb.recompress_file(src, out, workers=1, progress=False)
    assert rep.path == "/r/es/data"
    with h5py.File(out, "r") as f:
        assert list(f["r"]) == ["first", "soft", "zlast", "es", "b_after"]
        assert f["r/first"] == f["r/es/data"] and has_necoda(f["r/first"])
        assert np.array_equal(f["r/first"][...], x)
    assert nwb.structure_diff(src, out, ignore_attrs=lambda p, n: n.startswith("necoda_")) == []


def test_only_accepts_a_series_whose_data_has_another_name_first(aliased, tmp_path, capsys):
    src, x, _ = aliased
    out = tmp_path / "o.h5"
    assert cli.main(["compress", str(src), str(out), "--only", "/acquisition/ElectricalSeries", "--ephys", "bounded",
                     "--max-error", "2", "--workers", "1", "--quiet"]) == 0, capsys.readouterr().err
    with h5py.File(out, "r") as f:
        assert has_necoda(f["0_root_alias"]) and not has_necoda(f["acquisition/TwoPhotonSeries/data"])
        assert np.abs(f["0_root_alias"][...].astype(int) - x).max() <= 2


# --------------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------------

def test_decompress_of_a_file_without_necoda_data_refuses_and_writes_nothing(files, tmp_path, capsys):
    """Bug (q1 F11): rc 0 and "wrote x: 0 dataset(s) decompressed", a full copy made for nothing."""
    src, _ = files
    out = tmp_path / "x.h5"
    assert cli.main(["decompress", str(src), str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no necoda-compressed dataset" in err and "nothing to decompress" in err and "not written" in err, err
    assert not out.exists() and temps(tmp_path) == []
    with pytest.raises(ValueError, match="nothing to decompress"):
        nwb.decompress_file(src, out, progress=False)
    assert not out.exists()


def test_why_a_series_is_not_recompressed(tmp_path):
    """q1 F11: an ImageSeries whose frames are in external files (data (0,0,0)) is a series: the reason it
    is not recompressed is that its data is empty, not that it is no series' data."""
    src = tmp_path / "ext.h5"
    with h5py.File(src, "w") as f:
        g = f.create_group("acquisition/behavior_video")
        g.attrs["neurodata_type"] = "ImageSeries"
        g.create_dataset("data", shape=(0, 0, 0), dtype="u1")
        g.create_dataset("external_file", data=[b"video.avi"])
        h = f.create_group("acquisition/empty")
        h.attrs["neurodata_type"] = "ElectricalSeries"
        h.create_dataset("data", shape=(0, 4), dtype="i2")
        f.create_dataset("other", data=np.arange(3))
    with h5py.File(src, "r") as f:
        why = nwb.not_target_reason(f["acquisition/behavior_video"])
        assert "ImageSeries /acquisition/behavior_video is empty" in why and "external_file" in why
        assert nwb.not_target_reason(f["acquisition/behavior_video/data"]) == why
        assert "is empty" in nwb.not_target_reason(f["acquisition/empty/data"])
        assert nwb.not_target_reason(f["other"]) is None
