"""The NWB workflow: necoda compress / decompress / read (issue 6).

Small NWB files are built with pynwb in tmp_path. Checks: the copy keeps every other object, link,
attribute (type and value) and reference; the output reads in a fresh interpreter that only has
HDF5_PLUGIN_PATH; nwbinspector reports no errors; decompress is bit-exact and plugin-free; IN is never
overwritten; a killed run leaves IN unchanged and no OUT; direct-chunk writes equal the filter
pipeline's bytes; ``read`` equals h5py slicing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest

import necoda_filter
from necoda_filter import FILTER_ID, Necoda, modes, nwb, provenance
from necoda_filter.commands import compress as compress_cmd
from necoda_filter.commands import decompress as decompress_cmd
from necoda_filter.commands import evaluate as evaluate_cmd
from necoda_filter.reader import read

pynwb = pytest.importorskip("pynwb")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def make_nwb(path: Path, T=100, H=40, W=36, C=16, N=20000, seed=0, ephys_gzip=True, movie=None, x=None):
    """A small NWB file: TwoPhotonSeries (int16, uncompressed), ElectricalSeries (gzip), a plain
    TimeSeries and the electrodes table (object references, soft links)."""
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.ecephys import ElectricalSeries
    from pynwb.file import Subject
    from pynwb.ophys import OpticalChannel, TwoPhotonSeries

    rng = np.random.default_rng(seed)
    f = NWBFile(session_description="necoda workflow test", identifier=f"necoda-test-{seed}",
                session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc), experimenter=["Doe, Jane"],
                lab="lab", institution="institution", experiment_description="test",
                subject=Subject(subject_id="mouse1", species="Mus musculus", sex="F", age="P90D"))
    scope = f.create_device(name="scope", description="two-photon microscope")
    ch = OpticalChannel(name="green", description="green channel", emission_lambda=520.0)
    plane = f.create_imaging_plane(name="plane", optical_channel=ch, description="plane", device=scope,
                                   excitation_lambda=920.0, imaging_rate=30.0, indicator="GCaMP6f", location="V1")
    if movie is None:
        movie = (rng.poisson(5.0, (T, H, W)) * 100 + 90).astype(np.int16)
    f.add_acquisition(TwoPhotonSeries(name="TwoPhotonSeries", data=movie, imaging_plane=plane, rate=30.0,
                                      unit="n.a.", comments="original comment"))
    if x is None:
        x = np.cumsum(rng.normal(0, 8, (N, C)), axis=0).astype(np.int16) + rng.normal(0, 10, (N, C)).astype(np.int16)
    C = x.shape[1]
    probe = f.create_device(name="probe", description="silicon probe")
    grp = f.create_electrode_group(name="shank0", description="shank", location="CA1", device=probe)
    for i in range(C):
        f.add_electrode(group=grp, location="CA1", x=0.0, y=float(20 * i), z=0.0)
    region = f.create_electrode_table_region(list(range(C)), "all electrodes")
    data = H5DataIO(x, compression="gzip") if ephys_gzip else x
    f.add_acquisition(ElectricalSeries(name="ElectricalSeries", data=data, electrodes=region, rate=30000.0,
                                       conversion=2.34e-6))
    f.add_acquisition(TimeSeries(name="other", data=np.arange(50.0), unit="m", rate=1.0))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(f)
    return movie, x


def cli(module, *argv) -> int:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return module.run(p.parse_args([str(a) for a in argv]))


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for blk in iter(lambda: fh.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def necoda_datasets(path) -> list[str]:
    found = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks is not None:
                pl = obj.id.get_create_plist()
                if FILTER_ID in [pl.get_filter(i)[0] for i in range(pl.get_nfilters())]:
                    found.append("/" + name)
        f.visititems(visit)
    return found


def ignore_necoda(path, name):
    return name.startswith(provenance.PREFIX)


def env_plugin_only() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HDF5_PLUGIN", "PYTHONPATH"))}
    env["HDF5_PLUGIN_PATH"] = necoda_filter.PLUGIN_PATH
    return env


def mode_available(name) -> bool:
    try:
        modes.get(name)
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("nwb")
    src = d / "in.nwb"
    movie, x = make_nwb(src)
    out = d / "out.nwb"
    assert cli(compress_cmd, src, out, "--workers", 2, "--quiet") == 0
    return src, out, movie, x


# --------------------------------------------------------------------------------------------------
# compress
# --------------------------------------------------------------------------------------------------

def test_compress_keeps_everything_else_identical(small):
    src, out, movie, x = small
    assert sorted(necoda_datasets(out)) == ["/acquisition/ElectricalSeries/data", "/acquisition/TwoPhotonSeries/data"]
    diffs = nwb.structure_diff(src, out, ignore_attrs=ignore_necoda)
    assert diffs == []
    with h5py.File(out, "r") as f:
        # references re-pointed to the copied objects, soft links kept as links
        el = f["acquisition/ElectricalSeries/electrodes"]
        assert f[el.attrs["table"]].name == "/general/extracellular_ephys/electrodes"
        groups = f["general/extracellular_ephys/electrodes/group"][:]
        assert {f[r].name for r in groups} == {"/general/extracellular_ephys/shank0"}
        link = f["acquisition/TwoPhotonSeries"].get("imaging_plane", getlink=True)
        assert isinstance(link, h5py.SoftLink)
        # chunking as documented
        assert f["acquisition/TwoPhotonSeries/data"].chunks == (64, 40, 36)
        assert f["acquisition/ElectricalSeries/data"].chunks[1] == 16
        # the other TimeSeries is copied byte for byte with its storage
        assert f["acquisition/other/data"].chunks is None


def test_provenance_attributes(small):
    src, out, movie, x = small
    with h5py.File(out, "r") as f:
        p = provenance.read(f["acquisition/TwoPhotonSeries/data"])
        assert p["version"] == necoda_filter.__version__
        assert p["mode"] == "lossless" and p["lossy"] is False
        assert p["max_abs_error"] == 0.0 and p["rmse"] == 0.0 and p["psnr_db"] == float("inf")
        assert p["raw_bytes"] == movie.nbytes
        stored = sum(f["acquisition/TwoPhotonSeries/data"].id.get_chunk_info(i).size
                     for i in range(f["acquisition/TwoPhotonSeries/data"].id.get_num_chunks()))
        assert p["stored_bytes"] == stored
        assert p["ratio"] == pytest.approx(movie.nbytes / stored)
        assert p["data_range"] == float(movie.max() - movie.min())
        assert p["noise_sigma"] > 0 and p["noise_rmse"] == 0.0
        assert p["chunk_modes"] == {"lossless": 2}
        e = provenance.read(f["acquisition/ElectricalSeries/data"])
        assert e["kind"] == "ephys" and e["ratio"] > 1
        # lossless: NWB comments left as they were
        assert f["acquisition/TwoPhotonSeries"].attrs["comments"] == "original comment"
        assert provenance.read(f["acquisition/other/data"]) is None


def test_fresh_process_with_only_plugin_path_reads_output(small, tmp_path):
    src, out, movie, x = small
    np.save(tmp_path / "movie.npy", movie)
    np.save(tmp_path / "ephys.npy", x)
    script = textwrap.dedent(f"""
        import sys, numpy as np
        assert "necoda_filter" not in sys.modules
        from pynwb import NWBHDF5IO
        with NWBHDF5IO({str(out)!r}, "r") as io:
            nwbf = io.read()
            m = nwbf.acquisition["TwoPhotonSeries"].data[:]
            e = nwbf.acquisition["ElectricalSeries"].data[:]
        # (the plugin itself imports necoda_filter._bridge; this script never does)
        assert np.array_equal(m, np.load({str(tmp_path / 'movie.npy')!r}))
        assert np.array_equal(e, np.load({str(tmp_path / 'ephys.npy')!r}))
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", script], env=env_plugin_only(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_nwbinspector_reports_no_errors(small):
    nwbinspector = pytest.importorskip("nwbinspector")
    src, out, movie, x = small
    msgs = list(nwbinspector.inspect_nwbfile(nwbfile_path=str(out)))
    bad = [m for m in msgs if m.importance.name in ("CRITICAL", "PYNWB_VALIDATION", "ERROR")]
    assert bad == [], [(m.check_function_name, m.message) for m in bad]
    # and recompression adds no message of any level that the original file did not have
    before = {(m.check_function_name, m.location, m.message) for m in nwbinspector.inspect_nwbfile(nwbfile_path=str(src))}
    added = {(m.check_function_name, m.location, m.message) for m in msgs} - before
    assert added == set(), added


def test_lossy_recompression_is_stated_in_comments(tmp_path):
    if not mode_available("bounded"):
        pytest.skip("bounded mode not available yet")
    src = tmp_path / "in.nwb"
    movie, x = make_nwb(src, N=5000)
    out = tmp_path / "out.nwb"
    assert cli(compress_cmd, src, out, "--imaging", "bounded", "--max-error", 50, "--workers", 1, "--quiet") == 0
    with h5py.File(out, "r") as f:
        p = provenance.read(f["acquisition/TwoPhotonSeries/data"])
        assert p["mode"] == "bounded" and p["options"]["max_error"] == 50
        assert p["max_abs_error"] <= 50
        c = f["acquisition/TwoPhotonSeries"].attrs["comments"]
        assert c.startswith("original comment") and "LOSSILY" in c
        got = f["acquisition/TwoPhotonSeries/data"][:]
    assert np.abs(got.astype(np.int64) - movie).max() == p["max_abs_error"]


@pytest.mark.parametrize("quality", [None, 3])
def test_learned_provenance_names_the_quality_coded(tmp_path, quality):
    """The quality level is part of the provenance the issue asks for: with no --quality the options are
    empty, so the level the chunks were actually coded at (the model's default) is recorded on its own."""
    if not mode_available("learned"):
        pytest.skip("learned mode not available")
    from necoda_filter.models import registry

    src = tmp_path / "in.nwb"
    make_nwb(src, T=40, H=32, W=32, N=2000)
    out = tmp_path / "out.nwb"
    extra = [] if quality is None else ["--quality", quality]
    assert cli(compress_cmd, src, out, "--imaging", "learned", *extra, "--workers", 1, "--quiet") == 0
    with h5py.File(out, "r") as f:
        p = provenance.read(f["acquisition/TwoPhotonSeries/data"])
        expected = quality or int(registry.get(p["model_id"]).tables["default_quality"])
        assert p["quality"] == expected
        assert f"quality={expected}" in f["acquisition/TwoPhotonSeries"].attrs["comments"]
        assert "quality" not in provenance.read(f["acquisition/ElectricalSeries/data"])


def test_nwbinspector_shows_the_provenance_with_our_module(tmp_path):
    """``nwbinspector FILE --modules necoda_filter.inspector`` lists what necoda did to each series, as a
    suggestion (never an error): mode, quality and write-time fidelity of a lossy series, bit-exactness of a
    lossless one; a file without necoda data gets no such message. Run as the CLI in its own process (the
    check registers itself with nwbinspector for the rest of the process)."""
    pytest.importorskip("nwbinspector")
    if not mode_available("learned"):
        pytest.skip("learned mode not available")
    exe = Path(sys.executable).parent / "nwbinspector"
    if not exe.exists():
        pytest.skip("no nwbinspector command next to this Python")
    src = tmp_path / "in.nwb"
    make_nwb(src, T=40, H=32, W=32, N=2000)
    out = tmp_path / "out.nwb"
    assert cli(compress_cmd, src, out, "--imaging", "learned", "--quality", 4, "--workers", 1, "--quiet") == 0

    def ours(path):
        report = tmp_path / f"{path.stem}.json"
        subprocess.run([str(exe), str(path), "--modules", "necoda_filter.inspector", "--json-file-path",
                        str(report), "--overwrite"], check=True, capture_output=True, timeout=300)
        msgs = json.loads(report.read_text())["messages"]
        return {m["location"]: m for m in msgs if m["check_function_name"] == "check_necoda_compression"}

    got = ours(out)
    assert sorted(got) == ["/acquisition/ElectricalSeries", "/acquisition/TwoPhotonSeries"]
    assert all(m["importance"] == "BEST_PRACTICE_SUGGESTION" for m in got.values())
    img = got["/acquisition/TwoPhotonSeries"]["message"]
    assert "mode learned (LOSSY; quality 4, model imaging-v2.1 (necoda-" in img and "PSNR" in img and "noise sigma" in img
    assert "mode lossless" in got["/acquisition/ElectricalSeries"]["message"]
    assert "bit-exact" in got["/acquisition/ElectricalSeries"]["message"]
    assert ours(src) == {}


def test_nwbinspector_flags_spike_snippets_coded_with_the_imaging_model(tmp_path):
    """QA 20: a SpikeEventSeries written with compression="necoda" is coded with the learned imaging model
    (the filter picks by shape: events x channels x samples looks like a movie), max error ~10 sigma.
    The inspector module flags ephys coded that way as a best-practice violation; lossless ephys is not."""
    pytest.importorskip("nwbinspector")
    if not mode_available("learned"):
        pytest.skip("learned mode not available")
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import SpikeEventSeries

    from necoda_filter import Necoda
    from necoda_filter.inspector import check_necoda_ephys_not_learned

    rng = np.random.default_rng(6)
    snippets = (rng.normal(0, 15, (64, 16, 40)) * 3).astype(np.int16)
    f = NWBFile(session_description="s", identifier="spk", session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
    dev = f.create_device(name="probe")
    grp = f.create_electrode_group(name="g", description="g", location="CA1", device=dev)
    for _ in range(16):
        f.add_electrode(group=grp, location="CA1")
    region = f.create_electrode_table_region(list(range(16)), "all")
    for name, io in (("auto", H5DataIO(snippets, chunks=(32, 16, 40), compression="necoda")),
                     ("lossless", H5DataIO(snippets, chunks=(32, 16, 40), allow_plugin_filters=True,
                                           **Necoda(mode="lossless")))):
        f.add_acquisition(SpikeEventSeries(name=name, data=io, timestamps=np.arange(64) / 100.0, electrodes=region))
    path = tmp_path / "spk.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(f)
    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        msg = check_necoda_ephys_not_learned(nwb.acquisition["auto"])
        assert msg is not None and "SpikeEventSeries data is coded with necoda's learned mode" in msg.message
        assert check_necoda_ephys_not_learned(nwb.acquisition["lossless"]) is None


def test_recompressing_decoded_lossy_data_keeps_it_marked_lossy(tmp_path):
    """learned -> lossless recompression, and learned -> decompress -> compress, write lossless records of
    data that went through a lossy run: the earlier record travels in ``necoda_history``, and the
    description nwbinspector shows names the lossy run (the new record alone said lossless)."""
    if not mode_available("learned"):
        pytest.skip("learned mode not available")
    from necoda_filter.commands.info import describe

    src = tmp_path / "in.nwb"
    make_nwb(src, T=40, H=32, W=32, N=2000)
    lossy = tmp_path / "l.nwb"
    assert cli(compress_cmd, src, lossy, "--imaging", "learned", "--workers", 1, "--quiet") == 0
    again = tmp_path / "l2.nwb"
    assert cli(compress_cmd, lossy, again, "--workers", 1, "--quiet") == 0
    plain = tmp_path / "plain.nwb"
    assert cli(decompress_cmd, lossy, plain, "--workers", 1, "--quiet") == 0
    via_plain = tmp_path / "l3.nwb"
    assert cli(compress_cmd, plain, via_plain, "--workers", 1, "--quiet") == 0
    with h5py.File(lossy) as f:
        first = provenance.read(f["acquisition/TwoPhotonSeries/data"])
    for path, n_hist in ((again, 1), (via_plain, 1)):
        with h5py.File(path) as f:
            d = f["acquisition/TwoPhotonSeries/data"]
            p = provenance.read(d)
            assert p["mode"] == "lossless" and p["lossy"] is False
            assert len(p["history"]) == n_hist
            h = p["history"][0]
            assert h["lossy"] is True and h["mode"] == "learned" and h["psnr_db"] == first["psnr_db"]
            assert ("decompressed_by" in h) == (path == via_plain)
            text = describe(d)
            assert "LOSSILY compressed before (mode learned, quality" in text, text
            e = provenance.read(f["acquisition/ElectricalSeries/data"])  # lossless all along: no lossy past
            assert not provenance.earlier_lossy(e) and "before" not in describe(f["acquisition/ElectricalSeries/data"])


def test_data_coded_lossily_through_the_filter_stays_marked_lossy_in_copies(tmp_path):
    """QA 20: a movie written with compression="necoda" (auto: the lossy learned mode) has no necoda record;
    `necoda compress` (lossless) then called the copy "lossless, bit-exact (checked)" and `necoda
    decompress` kept nothing at all, so lossy, denoised data could reach DANDI labelled bit-exact. Copies
    now carry a record read from the chunk headers (modes, model, quality) and say so in the comments."""
    if not mode_available("learned"):
        pytest.skip("learned mode not available")
    from hdmf.backends.hdf5 import H5DataIO

    from necoda_filter.commands.info import describe

    m = (np.random.default_rng(3).poisson(5.0, (40, 32, 32)) * 100 + 90).astype(np.int16)
    src, packed, plain, again = (tmp_path / n for n in ("w.nwb", "l.nwb", "plain.nwb", "l3.nwb"))
    make_nwb(src, N=2000, movie=H5DataIO(m, chunks=(20, 32, 32), compression="necoda"))
    with h5py.File(src) as f:
        d = f["acquisition/TwoPhotonSeries/data"]
        rec = provenance.filter_written(d)
        assert provenance.read(d) is None and rec["lossy"] is True and rec["mode"] == "learned"
        assert rec["chunk_modes"] == {"learned": 2} and rec["model_id"].startswith("necoda-")
        assert provenance.filter_written(f["acquisition/ElectricalSeries/data"]) is None  # gzip, not necoda
    assert cli(compress_cmd, src, packed, "--workers", 1, "--quiet") == 0
    assert cli(decompress_cmd, src, plain, "--workers", 1, "--quiet") == 0
    assert cli(compress_cmd, plain, again, "--workers", 1, "--quiet") == 0
    for path in (packed, plain, again):
        with h5py.File(path) as f:
            g = f["acquisition/TwoPhotonSeries"]
            p = provenance.read(g["data"])
            text, comments = describe(g["data"]), str(g.attrs["comments"])
            assert "original comment" in comments
            assert comments.count("LOSSILY compressed through the HDF5 filter (mode learned") == 1, comments
            if path == plain:
                assert p["lossy"] is True and p["decompressed_by"] and "holds LOSSILY compressed data" in text
            else:
                assert p["mode"] == "lossless" and p["lossy"] is False
                assert [h["lossy"] for h in p["history"]] == [True] and p["history"][0]["mode"] == "learned"
                assert "LOSSILY compressed before (mode learned, quality" in text, text
            e = f["acquisition/ElectricalSeries/data"]
            assert not provenance.earlier_lossy(provenance.read(e) or {}) and "LOSSILY" not in (describe(e) or "")


def test_lossy_after_lossy_and_decoded_copies_say_so(tmp_path, capsys):
    """QA: learned -> learned showed only the last run's error (1836 where the acquired data was 5654 away):
    the earlier lossy run is now named whenever there is one; a `necoda decompress` copy of lossy data was
    "no necoda-compressed datasets" in info and silent in nwbinspector, and is now listed as a decoded copy."""
    if not mode_available("learned"):
        pytest.skip("learned mode not available")
    from necoda_filter.commands import info as info_cmd
    from necoda_filter.commands.info import describe

    src, l1, l2, plain = (tmp_path / n for n in ("in.nwb", "l1.nwb", "l2.nwb", "plain.nwb"))
    make_nwb(src, T=40, H=32, W=32, N=2000)
    assert cli(compress_cmd, src, l1, "--imaging", "learned", "--workers", 1, "--quiet") == 0
    assert cli(compress_cmd, l1, l2, "--imaging", "learned", "--workers", 1, "--quiet") == 0
    assert cli(decompress_cmd, l2, plain, "--workers", 1, "--quiet") == 0
    with h5py.File(l1) as f:
        first = provenance.read(f["acquisition/TwoPhotonSeries/data"])
    with h5py.File(l2) as f:
        text = describe(f["acquisition/TwoPhotonSeries/data"])
    assert "LOSSILY compressed before" in text and f"{first['max_abs_error']:.4g}" in text, text
    with h5py.File(plain) as f:
        text = describe(f["acquisition/TwoPhotonSeries/data"])
        assert text.startswith("data was decoded from necoda compression") and text.count("mode learned") == 2
        assert describe(f["acquisition/ElectricalSeries/data"]) == (
            f"data was decoded from necoda compression by {provenance.read(f['acquisition/ElectricalSeries/data'])['decompressed_by']}; "
            "it was compressed losslessly (bit-exact).")
    capsys.readouterr()
    assert cli(info_cmd, l2) == 0
    assert "LOSSY before: mode learned" in capsys.readouterr().out
    assert cli(info_cmd, plain) == 0
    out = capsys.readouterr().out
    assert "decoded copy: it holds LOSSILY" in out and "no necoda-compressed" not in out


def test_info_table_names_unreadable_chunk_headers(tmp_path, capsys):
    """QA: a chunk whose header could not be read was left out of the table's chunk count without a word."""
    from necoda_filter.commands import info as info_cmd

    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("x", data=np.arange(4096, dtype=np.int16).reshape(1024, 4), chunks=(256, 4),
                             compression=Necoda(mode="lossless"))
        d.id.write_direct_chunk((256, 0), b"\0" * 64)  # a damaged chunk
    assert cli(info_cmd, p, "--chunks", 0) == 0
    out = capsys.readouterr().out
    assert "lossless×3; 1 chunk header(s) UNREADABLE" in out


def test_info_reads_chunk_headers_behind_a_checksum_or_deflate(tmp_path):
    """QA: with fletcher32 or gzip after necoda no chunk header could be parsed, and a learned (lossy) movie
    was described as "mode ? (lossless)". The later filters are undone before reading headers; when no
    header can be read, the mode the filter asks for decides."""
    from necoda_filter.commands.info import dataset_info, describe

    movie = np.random.default_rng(0).poisson(200, size=(16, 32, 32)).astype(np.uint16)
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("fletcher", data=movie, chunks=(16, 32, 32), compression=Necoda(mode="bounded",
                         max_error=2), fletcher32=True)
        f.create_dataset("deflate", data=movie[:, :, :16], chunks=(16, 32, 16), compression=Necoda(mode="bounded",
                         max_error=2))
        plist = f["deflate"].id.get_create_plist()
    with h5py.File(p, "a") as f:  # deflate after necoda: through the low-level API (h5py allows one compressor)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((16, 32, 16))
        fid, flags, cd, _ = plist.get_filter(0)
        dcpl.set_filter(fid, flags, cd)
        dcpl.set_deflate(4)
        sid = h5py.h5s.create_simple(movie[:, :, :16].shape)
        dsid = h5py.h5d.create(f.id, b"gz", h5py.h5t.NATIVE_UINT16, sid, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(movie[:, :, :16]))
    with h5py.File(p, "r") as f:
        for name in ("fletcher", "gz"):
            row = dataset_info(f[name], max_chunks=0)
            assert row["chunk_modes"] == {"bounded": 1} and "unreadable_chunk_headers" not in row, (name, row)
            assert "(LOSSY" in describe(f[name])
        with pytest.MonkeyPatch.context() as mp:  # no header readable: the requested mode decides
            from necoda_filter.commands import info as info_mod
            mp.setattr(info_mod, "_undo_later_filters", lambda *a: b"garbage")
            assert "(LOSSY" in describe(f["fletcher"]) and "mode bounded" in describe(f["fletcher"])


def test_comment_appending_keeps_existing_text(tmp_path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        g = f.create_group("ts")
        g.attrs["comments"] = "no comments"
        h = f.create_group("ts2")
        h.attrs.create("comments", "keep me", dtype=h5py.string_dtype("ascii"))
        prov = {"version": "x", "mode": "bounded", "options": {"max_error": 2.0}, "max_abs_error": 2.0,
                "psnr_db": 50.0, "noise_rmse": 0.3, "ratio": 9.0}
        text = provenance.comment_text(prov, "/ts/data")
        provenance.append_comment(g, text)
        provenance.append_comment(h, text)
        provenance.append_comment(h, text)  # idempotent
        assert g.attrs["comments"] == text
        assert h.attrs["comments"] == "keep me\n" + text
        assert h5py.check_string_dtype(h.attrs.get_id("comments").dtype).encoding == "ascii"
        a = f.create_group("ts3")  # QA: an array of strings became the text "['a' 'b']"
        a.attrs["comments"] = np.array(["first line", "second"], dtype=h5py.string_dtype())
        provenance.append_comment(a, text)
        assert a.attrs["comments"] == "first line\nsecond\n" + text


# --------------------------------------------------------------------------------------------------
# decompress
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gzip", [None, 4])
def test_decompress_bit_exact_and_plugin_free(small, tmp_path, gzip):
    src, out, movie, x = small
    plain = tmp_path / "plain.nwb"
    args = [out, plain, "--workers", 2, "--quiet"] + (["--gzip", gzip] if gzip is not None else [])
    assert cli(decompress_cmd, *args) == 0
    assert necoda_datasets(plain) == []
    assert nwb.structure_diff(src, plain, ignore_attrs=ignore_necoda) == []
    with h5py.File(plain, "r") as f:
        d = f["acquisition/TwoPhotonSeries/data"]
        assert d.compression == ("gzip" if gzip is not None else None)
        assert provenance.read(d)["decompressed_by"].startswith("necoda-filter")
    # readable by HDF5 with no way to find the plugin
    env = env_plugin_only()
    env["HDF5_PLUGIN_PATH"] = str(tmp_path / "no-plugins-here")
    script = textwrap.dedent(f"""
        import h5py, numpy as np, sys
        with h5py.File({str(plain)!r}, "r") as f:
            s = int(f["acquisition/TwoPhotonSeries/data"][:].astype(np.int64).sum())
            s += int(f["acquisition/ElectricalSeries/data"][:].astype(np.int64).sum())
        print(s)
    """)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == int(movie.astype(np.int64).sum() + x.astype(np.int64).sum())


def test_decompress_gzip_chunks_equal_hdf5_deflate(small, tmp_path):
    """Direct-chunk gzip bytes are what HDF5's own deflate filter writes."""
    src, out, movie, x = small
    plain = tmp_path / "plain.nwb"
    assert cli(decompress_cmd, out, plain, "--gzip", "6", "--workers", 1, "--quiet") == 0
    with h5py.File(plain, "r") as f, h5py.File(tmp_path / "ref.h5", "w") as g:
        d = f["acquisition/TwoPhotonSeries/data"]
        r = g.create_dataset("d", data=movie, chunks=d.chunks, compression="gzip", compression_opts=6)
        for i in range(d.id.get_num_chunks()):
            off = d.id.get_chunk_info(i).chunk_offset
            assert d.id.read_direct_chunk(off) == r.id.read_direct_chunk(off)


# --------------------------------------------------------------------------------------------------
# safety: overwrite refusal, atomic output, kills
# --------------------------------------------------------------------------------------------------

def test_refuses_to_overwrite_input(small, tmp_path):
    src, out, movie, x = small
    digest = sha256(src)
    with pytest.raises(ValueError, match="input"):
        cli(compress_cmd, src, src, "--overwrite", "--quiet")
    link = tmp_path / "hard.nwb"
    os.link(src, link)
    with pytest.raises(ValueError, match="input"):
        cli(compress_cmd, src, link, "--overwrite", "--quiet")
    sym = tmp_path / "sym.nwb"
    sym.symlink_to(src)
    with pytest.raises(ValueError, match="input"):
        cli(decompress_cmd, src, sym, "--overwrite", "--quiet")
    assert sha256(src) == digest
    existing = tmp_path / "exists.nwb"
    existing.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        cli(compress_cmd, src, existing, "--quiet")
    assert existing.read_bytes() == b"keep"
    assert cli(compress_cmd, src, existing, "--overwrite", "--workers", 1, "--quiet") == 0
    assert h5py.is_hdf5(existing)
    assert [p.name for p in tmp_path.iterdir() if nwb.TMP_MARK in p.name] == []


def test_failed_run_leaves_no_output(tmp_path, monkeypatch):
    src = tmp_path / "in.nwb"
    make_nwb(src, N=3000)
    out = tmp_path / "out.nwb"

    def boom(*a, **k):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(nwb.recompress, "_encode_chunk", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        cli(compress_cmd, src, out, "--workers", 1, "--quiet")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if nwb.TMP_MARK in p.name] == []


KILL_SCRIPT = """
import argparse, sys
from necoda_filter.commands import compress
p = argparse.ArgumentParser(); compress.add_arguments(p)
sys.exit(compress.run(p.parse_args(sys.argv[1:])))
"""


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def big_in(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    src = d / "in.nwb"
    make_nwb(src, T=960, H=128, W=128, N=2000)
    return src


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_midway_leaves_input_and_no_output(big_in, tmp_path, sig):
    src = big_in
    digest = sha256(src)
    out = tmp_path / "out.nwb"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(src), str(out), "--workers", "2", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tmp = None
    t0 = time.time()
    while time.time() - t0 < 60 and proc.poll() is None:  # wait until it has written chunk data
        cands = [p for p in tmp_path.iterdir() if nwb.TMP_MARK in p.name]
        if cands and cands[0].stat().st_size > (3 << 19):
            tmp = cands[0]
            break
        time.sleep(0.02)
    assert tmp is not None and proc.poll() is None, "compress finished before it could be killed"
    assert tmp.name == f".out.nwb{nwb.TMP_MARK}{proc.pid}"
    workers = children(proc.pid)
    assert len(workers) == 2
    proc.send_signal(sig)
    proc.wait(timeout=60)
    t0 = time.time()
    while time.time() - t0 < 10 and any(alive(w) for w in workers):  # workers exit with their parent
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "worker processes outlived the killed command"
    assert proc.returncode != 0
    assert not out.exists()
    assert sha256(src) == digest
    left = [p for p in tmp_path.iterdir() if nwb.TMP_MARK in p.name]
    if sig == signal.SIGTERM:
        assert left == []  # cleaned up by the handler
    else:
        assert left == [tmp]  # SIGKILL cannot be caught: the stale temp is removed by the next run
        assert nwb.clean_stale_temps(out) == [tmp]
        assert not tmp.exists()


# --------------------------------------------------------------------------------------------------
# direct-chunk path == filter path
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,shape,dtype,fill", [
    ("imaging", (150, 37, 29), "uint16", 0),
    ("imaging", (70, 600, 20), "int16", 7),        # tiled (600 > 512): edge tiles and edge frames
    ("ephys", (5100, 24), "int16", -3),
    ("ephys", (3100, 5), ">i2", 0),                 # big-endian file type
])
@pytest.mark.parametrize("mode", ["lossless", "auto", "bounded"])
@pytest.mark.parametrize("workers", [1, 2])  # chunks read in this process / handed over in shared memory
def test_direct_chunk_bytes_equal_filter_pipeline(tmp_path, kind, shape, dtype, fill, mode, workers):
    if not mode_available(mode if mode != "auto" else "lossless"):
        pytest.skip(f"{mode} mode not available yet")
    rng = np.random.default_rng(3)
    data = (rng.poisson(30, shape) * 4 - 20).astype(dtype)
    settings = nwb.Settings(imaging=mode, ephys=mode, max_error=3.0 if mode == "bounded" else None)
    if mode == "auto":
        settings = nwb.Settings(imaging="lossless", ephys="lossless")
    fs = 1000.0 if kind == "ephys" else 30.0
    with h5py.File(tmp_path / "src.h5", "w") as f:
        g = f.create_group("ts")
        g.attrs["neurodata_type"] = "TwoPhotonSeries" if kind == "imaging" else "ElectricalSeries"
        g.create_dataset("starting_time", data=0.0).attrs["rate"] = fs
        g.create_dataset("data", data=data, fillvalue=np.array(fill, dtype=dtype))
    out = tmp_path / "out.h5"
    nwb.recompress_file(tmp_path / "src.h5", out, settings, workers=workers, progress=False)
    with h5py.File(out, "r") as f, h5py.File(tmp_path / "ref.h5", "w") as g:
        d = f["ts/data"]
        chunks = nwb.plan_chunks(kind, shape, np.dtype(dtype).itemsize, fs)
        assert d.chunks == chunks
        assert any(s % c for s, c in zip(shape, chunks)), "test needs edge chunks"
        ref = g.create_dataset("d", shape=shape, dtype=dtype, chunks=chunks, fillvalue=np.array(fill, dtype=dtype),
                               compression=Necoda(mode=settings.imaging if kind == "imaging" else settings.ephys,
                                                  **({"max_error": 3.0} if mode == "bounded" else {})))
        ref[...] = data
        assert d.id.get_create_plist().get_filter_by_id(FILTER_ID)[1] == \
            ref.id.get_create_plist().get_filter_by_id(FILTER_ID)[1]
        n = d.id.get_num_chunks()
        assert n == ref.id.get_num_chunks() > 1
        for i in range(n):
            off = d.id.get_chunk_info(i).chunk_offset
            assert d.id.read_direct_chunk(off) == ref.id.read_direct_chunk(off), off
        if mode != "bounded":
            assert np.array_equal(d[...], data)


# --------------------------------------------------------------------------------------------------
# read
# --------------------------------------------------------------------------------------------------

SELECTIONS = [
    np.s_[...], np.s_[3], np.s_[-1], np.s_[3:41:3, ::4, 5], np.s_[-1, 2:, ::7], np.s_[[0, 5, 9, 33], :, 1:28],
    np.s_[2:40, [0, 9, 10, 36], ::3], np.s_[10:10], np.s_[..., 3], np.s_[np.arange(50) % 3 == 0, 1:36:5],
    np.s_[49, 36, 28], np.s_[7:9], np.s_[:, :, -1], np.s_[1::17, 9:11, 6:8],
]


@pytest.mark.parametrize("executor", ["process", "thread", "serial", "auto"])
def test_read_equals_slicing(tmp_path, executor):
    rng = np.random.default_rng(1)
    a = (rng.poisson(20, (50, 37, 29)) * 3).astype(np.uint16)
    with h5py.File(tmp_path / "r.h5", "w") as f:
        d = f.create_dataset("d", data=a, chunks=(8, 10, 7), compression=Necoda(mode="lossless"))
        e = f.create_dataset("e", shape=a.shape, dtype=">i4", chunks=(8, 10, 7), fillvalue=-3,
                             compression=Necoda(mode="lossless"))
        e[0:20] = a[0:20]  # the other chunks stay unallocated: fill value
        from necoda_filter import reader

        assert not reader._mostly_gil_free(d.id.read_direct_chunk((0, 0, 0)))  # lossless: processes
        plain = f.create_dataset("p", data=a, chunks=(8, 10, 7), compression="gzip")
        for ds in (d, e, plain):
            for s in SELECTIONS:
                ref = ds[s]
                got = read(ds, s, executor=executor, workers=2)
                assert got.dtype == ref.dtype and got.shape == ref.shape, (ds.name, s)
                assert np.array_equal(got, ref), (ds.name, s)
        with pytest.raises((ValueError, TypeError, IndexError)):
            read(d, np.s_[::-1])
        with pytest.raises((ValueError, TypeError, IndexError)):
            read(d, np.s_[60])


@pytest.mark.parametrize("executor", ["process", "thread", "serial"])
def test_read_learned_equals_slicing(tmp_path, executor):
    """Parallel workers decode with single-threaded ONNX sessions; values still equal h5py's."""
    pytest.importorskip("onnxruntime")
    from necoda_filter.simulate import simulate_imaging

    m = simulate_imaging(n_frames=48, height=48, width=40, n_cells=8, seed=5).movie
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f.create_dataset("d", data=m, chunks=(16, 48, 40), compression=Necoda(mode="learned", quality=3))
        f.create_dataset("e", data=m[:45, :43, :37], chunks=(16, 32, 24), compression=Necoda(mode="learned"))
        f.create_dataset("g", data=m, chunks=(48, 48, 40), compression=Necoda(mode="learned", quality=3))
        # frames of 160 x 144: tiles large enough to crop in space and time; float32 shows any last bit
        big = np.tile(m, (1, 4, 4))[:, :160, :144].astype(np.float32)
        f.create_dataset("h", data=big, chunks=(48, 160, 144), compression=Necoda(mode="learned", quality=3))
    with h5py.File(tmp_path / "l.h5", "r") as f:  # reopened: HDF5's chunk cache would hold the written data
        d, e = f["d"], f["e"]
        for ds in (d, e, f["g"], f["h"]):  # e: partial edge chunks; g, h: a few latent frames are cropped
            for s in (np.s_[...], np.s_[3:47:5, 7:40, ::3], np.s_[5:41, 3:40, 2:35], np.s_[17],
                      np.s_[:, 10:19, 4:15], np.s_[20:23], np.s_[:, 30], np.s_[2:40, -9:, 100:]):
                ref = ds[s]  # a region, a few frames, a row, a corner: cropped latents for h
                ref = ds[s]
                got = read(ds, s, executor=executor, workers=2)
                assert np.array_equal(got, ref), (ds.name, s)
        assert not np.array_equal(d[...], m)  # lossy: the check above compares decoded values
        from necoda_filter import reader

        assert reader._mostly_gil_free(d.id.read_direct_chunk((0, 0, 0)))  # "auto" decodes these in threads


def test_read_thread_pool_is_kept_and_released(tmp_path):
    """executor="thread" reuses its decoder threads between reads (their ONNX buffers stay warm);
    shutdown_pool / runtime.clear_cache release them, and the next read starts a new pool."""
    from necoda_filter import reader
    from necoda_filter.models import runtime

    rng = np.random.default_rng(4)
    a = rng.poisson(30, (64, 20, 16)).astype(np.uint16)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("d", data=a, chunks=(8, 20, 16), compression=Necoda(mode="lossless"))
    with h5py.File(tmp_path / "t.h5", "r") as f:
        reader.shutdown_pool()
        assert np.array_equal(read(f["d"], executor="thread", workers=2), a)
        pool = reader._tpool
        assert pool is not None
        assert np.array_equal(read(f["d"], np.s_[3:50:3], executor="thread", workers=2), a[3:50:3])
        assert reader._tpool is pool
        runtime.clear_cache()
        assert reader._tpool is None
        assert np.array_equal(read(f["d"], executor="thread", workers=2), a)
        assert reader._tpool is not None and reader._tpool is not pool


def test_read_on_compressed_nwb(small):
    src, out, movie, x = small
    with h5py.File(out, "r") as f:
        assert np.array_equal(read(f["acquisition/TwoPhotonSeries/data"]), movie)
        assert np.array_equal(read(f["acquisition/ElectricalSeries/data"], np.s_[100:19000:7, 3]), x[100:19000:7, 3])
        assert np.array_equal(read(f["acquisition/other/data"]), np.arange(50.0))


def test_fast_dataset_through_pynwb(small):
    """necoda_filter.fast(series.data): the array-like a pynwb user slices instead of the h5py dataset,
    read through read() with the same values."""
    from pynwb import NWBHDF5IO

    import necoda_filter

    src, out, movie, x = small
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        ds = nwb.acquisition["TwoPhotonSeries"].data
        d = necoda_filter.fast(ds)
        assert (d.shape, d.dtype, len(d), d.ndim, d.chunks) == (ds.shape, ds.dtype, len(ds), ds.ndim, ds.chunks)
        for sel in (np.s_[...], np.s_[:, 3:9, 2:7], np.s_[5], np.s_[2:30:3, -4:]):
            assert np.array_equal(d[sel], ds[sel]), sel
        assert np.array_equal(np.asarray(d), movie) and np.asarray(d, dtype=np.float32).dtype == np.float32
        e = necoda_filter.fast(nwb.acquisition["ElectricalSeries"].data, executor="serial")
        assert np.array_equal(e[100:19000:7, 3], x[100:19000:7, 3])



# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------

def test_evaluate_report(tmp_path, lossy=True):
    from necoda_filter.simulate import simulate_ephys, simulate_imaging

    if lossy and not mode_available("bounded"):
        pytest.skip("bounded mode not available yet")
    sim = simulate_imaging(n_frames=200, height=64, width=64, n_cells=12, seed=2)
    eph = simulate_ephys(duration_s=2.0, n_channels=32, n_units=6, seed=2)
    src = tmp_path / "in.nwb"
    make_nwb(src, movie=sim.movie, x=eph.data)
    out = tmp_path / "out.nwb"
    extra = ["--imaging", "bounded", "--ephys", "bounded", "--max-error-noise", "0.5"] if lossy else []
    assert cli(compress_cmd, src, out, "--workers", 1, "--quiet", *extra) == 0
    rep = tmp_path / "report"
    assert cli(evaluate_cmd, src, out, "--report", rep) == 0
    res = json.loads((rep / "report.json").read_text())
    by = {d["path"]: d for d in res["datasets"]}
    assert set(by) == {"/acquisition/TwoPhotonSeries/data", "/acquisition/ElectricalSeries/data"}
    im, ep = by["/acquisition/TwoPhotonSeries/data"], by["/acquisition/ElectricalSeries/data"]
    with h5py.File(out, "r") as f:
        dec = f["acquisition/TwoPhotonSeries/data"][:]
        prov = provenance.read(f["acquisition/TwoPhotonSeries/data"])
    err = np.abs(dec.astype(np.int64) - sim.movie)
    assert im["max_abs"] == err.max() == prov["max_abs_error"]  # evaluate and write-time provenance agree
    assert im["rmse"] == pytest.approx(np.sqrt(np.mean(err.astype(np.float64) ** 2)))
    assert im["n_rois"] > 0 and ep["n_spikes"] > 0
    if lossy:
        assert 0 < im["max_abs"] and im["roi_r_median"] > 0.9 and ep["spike_f1"] > 0.8
        assert im["ratio"] > 1.5
    else:
        assert im["max_abs"] == 0 and ep["max_abs"] == 0
        assert im["roi_r_median"] == pytest.approx(1.0) and ep["spike_f1"] == 1.0
    for name in ("acquisition__TwoPhotonSeries__data_frames.png", "acquisition__TwoPhotonSeries__data_roi_traces.png",
                 "acquisition__ElectricalSeries__data_snippet.png"):
        assert (rep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert name in (rep / "report.md").read_text()


def test_misaligned_chunked_source(tmp_path, monkeypatch):
    """A gzip-chunked source whose chunks straddle our chunk rows (read through a chunk cache), and
    the per-chunk read path for rows larger than SLAB_MAX."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 3000, (150, 600, 20)).astype(np.int16)
    with h5py.File(tmp_path / "src.h5", "w") as f:
        g = f.create_group("ts")
        g.attrs["neurodata_type"] = "TwoPhotonSeries"
        g.create_dataset("data", data=data, chunks=(50, 100, 20), compression="gzip")
    real, paths = nwb.recompress._with_chunk_cache, []

    def spy(src, chunks, per_chunk):
        paths.append(per_chunk)
        return real(src, chunks, per_chunk)

    monkeypatch.setattr(nwb.recompress, "_with_chunk_cache", spy)
    for slab_max, per_chunk in ((nwb.recompress.SLAB_MAX, False), (1 << 16, True)):
        monkeypatch.setattr(nwb.recompress, "SLAB_MAX", slab_max)
        out = tmp_path / f"out{slab_max}.h5"
        paths.clear()
        nwb.recompress_file(tmp_path / "src.h5", out, workers=1, progress=False)
        assert paths == [per_chunk]  # the read path this round is meant to exercise
        with h5py.File(out, "r") as f:
            assert f["ts/data"].chunks == (64, 300, 20)
            assert np.array_equal(f["ts/data"][...], data)


def test_copy_keeps_links_types_references_and_userblock(tmp_path):
    """Hard/soft/external links, committed datatypes, compound data with references, region
    references, empty and fixed-length string attributes, creation-order groups and the userblock."""
    src = tmp_path / "src.h5"
    rng = np.random.default_rng(0)
    movie = rng.integers(0, 1000, (70, 20, 20)).astype(np.uint16)
    with h5py.File(src, "w", userblock_size=512, track_order=True) as f:
        ts = f.create_group("acq/ts", track_order=True)
        ts.attrs["neurodata_type"] = "TwoPhotonSeries"
        ts.attrs.create("comments", "c", dtype=h5py.string_dtype("ascii"))
        d = ts.create_dataset("data", data=movie)
        d.attrs["unit"] = "n.a."
        d.attrs["fixed"] = np.bytes_("abc")
        d.attrs["empty"] = h5py.Empty("f4")
        d.attrs["selfref"] = d.ref
        f["acq/hard_alias"] = d                       # a second hard link to the recompressed dataset
        f["acq/soft"] = h5py.SoftLink("/acq/ts/data")
        f["acq/ext"] = h5py.ExternalLink("other.h5", "/x")
        f["named_type"] = np.dtype([("a", "<i4"), ("b", "<f8")])
        tab = f.create_dataset("table", data=np.arange(10.0))
        cdt = np.dtype([("idx", "<i4"), ("ts", h5py.ref_dtype)])
        comp = f.create_dataset("compound", shape=(2,), dtype=cdt)
        comp[0] = (1, ts.ref)
        comp[1] = (2, tab.ref)
        f.create_dataset("region", data=[tab.regionref[2:5]], dtype=h5py.regionref_dtype)
        f.attrs["root_ref"] = tab.ref
        for k in ("z", "a", "m"):
            ts.create_group(k)
    with open(src, "r+b") as fh:
        fh.write(b"USERBLOCK-CONTENT")
    out = tmp_path / "out.h5"
    nwb.recompress_file(src, out, workers=1, progress=False)
    assert nwb.structure_diff(src, out, ignore_attrs=ignore_necoda) == []
    with h5py.File(out, "r") as f:
        d = f["acq/ts/data"]
        assert FILTER_ID in [d.id.get_create_plist().get_filter(i)[0] for i in range(d.id.get_create_plist().get_nfilters())]
        assert f["acq/hard_alias"] == d                   # still one object, not a copy
        assert f[d.attrs["selfref"]] == d
        assert list(f["acq/ts"]) == ["data", "z", "a", "m"]  # creation order kept
        assert f[f["compound"][1]["ts"]].name == "/table"
        assert np.array_equal(f["table"][f["region"][0]], [2.0, 3.0, 4.0])
        assert isinstance(f["named_type"], h5py.Datatype)
        assert np.array_equal(d[...], movie)
    assert open(out, "rb").read(17) == b"USERBLOCK-CONTENT"


@pytest.mark.parametrize("gzip", [None, 1])
def test_decompress_sparse_and_shuffled_necoda_datasets(tmp_path, gzip):
    """Unallocated chunks stay unallocated (fill value), and a pipeline of shuffle + necoda goes through
    HDF5's own pipeline; any necoda dataset is decompressed, not only NWB series."""
    a = np.arange(40 * 30, dtype=np.int32).reshape(40, 30)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        d = f.create_dataset("sparse", shape=(40, 30), dtype="i4", chunks=(8, 16), fillvalue=-7,
                             compression=Necoda(mode="lossless"))
        d[0:8] = a[0:8]
        d[33:40, 20:] = a[33:40, 20:]
        f.create_dataset("shuffled", data=a, chunks=(8, 16), shuffle=True, compression=Necoda(mode="lossless"))
        expect_sparse = d[...]
    out = tmp_path / "out.h5"
    assert sorted(nwb.decompress_file(tmp_path / "in.h5", out, gzip_level=gzip, workers=2, progress=False)) == \
        ["/shuffled", "/sparse"]
    assert necoda_datasets(out) == []
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["sparse"][...], expect_sparse)
        assert f["sparse"].id.get_num_chunks() == 3 and f["sparse"].fillvalue == -7
        assert np.array_equal(f["shuffled"][...], a)


@pytest.mark.parametrize("executor", ["process", "thread", "serial"])
def test_read_corrupt_chunk_raises_its_own_error(tmp_path, executor):
    """A corrupt chunk makes read() raise CorruptChunk naming the problem, with every executor (the
    process pool's shared-memory cleanup must not replace it with a BufferError)."""
    from necoda_filter import container

    rng = np.random.default_rng(2)
    a = rng.poisson(30, (64, 20, 16)).astype(np.uint16)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        d = f.create_dataset("d", data=a, chunks=(8, 20, 16), compression=Necoda(mode="lossless"))
        bad = bytearray(d.id.read_direct_chunk((24, 0, 0))[1])
        bad[len(bad) // 2] ^= 0xFF
        d.id.write_direct_chunk((24, 0, 0), bytes(bad), filter_mask=0)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        with pytest.raises(container.CorruptChunk, match="checksum|corrupt|could not be decoded"):
            read(f["d"], executor=executor, workers=2)
        assert np.array_equal(read(f["d"], np.s_[32:], executor=executor, workers=2), a[32:])


def test_filter_written_record_when_other_filters_follow_necoda(tmp_path):
    """Review: with a checksum or deflate after necoda the chunk headers are not stored as such, and such a
    dataset got no record at all (copies again called it bit-exact). The record then holds the mode the
    filter's options ask for ("auto": what it picks for the chunks); a dataset outside a TimeSeries gets
    no comment (only TimeSeries have one)."""
    from necoda_filter import Necoda

    m = (np.random.default_rng(4).poisson(5.0, (32, 32, 32)) * 100 + 90).astype(np.uint16)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("l", data=m, chunks=(16, 32, 32), compression=Necoda(mode="learned"), fletcher32=True)
        f.create_dataset("a", data=m, chunks=(16, 32, 32), compression="necoda", fletcher32=True)
        f.create_dataset("z", data=m, chunks=(16, 32, 32), compression=Necoda(mode="lossless"), fletcher32=True)
        f.create_dataset("b", data=m, chunks=(16, 32, 32), compression=Necoda(mode="bounded", max_error=2),
                         fletcher32=True)
    with h5py.File(tmp_path / "f.h5") as f:
        got = {k: provenance.filter_written(f[k]) for k in "lazb"}
    assert {k: (r["mode"], r["lossy"]) for k, r in got.items()} == {
        "l": ("learned", True), "a": ("learned", True), "z": ("lossless", False), "b": ("bounded", True)}
    assert got["b"]["options"] == {"max_error": 2.0} and "not read" in got["b"]["source"]
    assert cli(decompress_cmd, tmp_path / "f.h5", tmp_path / "p.h5", "--workers", 1, "--quiet") == 0
    with h5py.File(tmp_path / "p.h5") as f:
        assert provenance.read(f["l"])["lossy"] is True and provenance.read(f["z"])["lossy"] is False
        assert "comments" not in f.attrs  # the root group is no TimeSeries


def test_describe_names_the_model_once(tmp_path):
    """Review: a dataset written with a model named in its options said "model=necoda-..., model ..."."""
    from necoda_filter import Necoda
    from necoda_filter.commands.info import describe
    from necoda_filter.models import registry

    m = (np.random.default_rng(5).poisson(5.0, (16, 32, 32)) * 100 + 90).astype(np.uint16)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("d", data=m, chunks=(16, 32, 32), compression=Necoda(mode="learned", model=registry.default().id))
    with h5py.File(tmp_path / "d.h5") as f:
        text = describe(f["d"])
    assert text.count("model") == 1 and "model=" not in text, text
