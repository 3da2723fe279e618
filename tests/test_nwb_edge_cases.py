"""Edge cases of ``necoda compress`` / ``decompress`` / ``evaluate`` on adversarial but realistic files.

Regression tests (references and links resolve in OUT, linked data, odd series shapes and dtypes, CLI
path safety) and one test per bug found by QA: vlen-of-reference attributes/datasets (dimension
scales), NaN/inf in float data, stale provenance after decompress -> compress, tiny chunks for
SpikeEventSeries and low-rate ElectricalSeries, ``--only`` paths, relative external links with OUT in
another folder, SIGHUP, ``evaluate`` on mismatched files, a non-HDF5 input, big-endian series, errors
that name the unreadable dataset, OUT a folder, options no chosen mode uses, ``evaluate`` of one frame
and ``--report`` a file.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest

from necoda_filter import FILTER_ID, chunk, cli, nwb, provenance
from necoda_filter.commands import compress as compress_cmd
from necoda_filter.commands import decompress as decompress_cmd
from conftest import series_file

pynwb = pytest.importorskip("pynwb")


def run_cmd(module, *argv) -> int:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return module.run(p.parse_args([str(a) for a in argv]))


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ignore_necoda(path, name):
    return name.startswith(provenance.PREFIX)


def has_necoda(d: h5py.Dataset) -> bool:
    pl = d.id.get_create_plist()
    return FILTER_ID in [pl.get_filter(i)[0] for i in range(pl.get_nfilters())]


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    """A pynwb file with most series shapes/dtypes and every kind of NWB reference, compressed once."""
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.ecephys import ElectricalSeries, SpikeEventSeries
    from pynwb.image import ImageSeries
    from pynwb.ophys import OpticalChannel, TwoPhotonSeries

    d = tmp_path_factory.mktemp("rich")
    src, out = d / "in.nwb", d / "out.nwb"
    rng = np.random.default_rng(0)
    f = NWBFile(session_description="qa", identifier="qa", session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
    scope = f.create_device(name="scope")
    chan = OpticalChannel(name="g", description="g", emission_lambda=520.0)
    plane = f.create_imaging_plane(name="plane", optical_channel=chan, description="p", device=scope,
                                   excitation_lambda=920.0, imaging_rate=30.0, indicator="GCaMP", location="V1")
    mov = (rng.poisson(5, (40, 24, 20)) * 100).astype(np.int16)
    f.add_acquisition(TwoPhotonSeries(name="tps", data=mov, imaging_plane=plane, rate=30.0, unit="n.a."))
    f.add_acquisition(TwoPhotonSeries(name="tps_1frame", data=mov[:1], imaging_plane=plane, rate=30.0, unit="n.a."))
    f.add_acquisition(TwoPhotonSeries(name="tps_float", data=mov.astype(np.float32) * 0.37, imaging_plane=plane,
                                      rate=30.0, unit="n.a."))
    f.add_acquisition(TwoPhotonSeries(name="tps_gzip", data=H5DataIO(mov, compression="gzip", chunks=(10, 24, 20)),
                                      imaging_plane=plane, timestamps=np.arange(40) / 30.0, unit="n.a."))
    f.add_acquisition(TwoPhotonSeries(name="tps_ext", external_file=["movie.tif"], starting_frame=[0], format="external",
                                      imaging_plane=plane, timestamps=np.arange(5) / 30.0, unit="n.a."))
    f.add_acquisition(TwoPhotonSeries(name="tps_linked", data=f.acquisition["tps"], imaging_plane=plane, rate=30.0,
                                      unit="n.a."))
    f.add_acquisition(ImageSeries(name="color", data=rng.integers(0, 255, (12, 16, 16, 3)).astype(np.uint8), rate=10.0,
                                  unit="n.a."))
    probe = f.create_device(name="probe")
    grp = f.create_electrode_group(name="shank0", description="s", location="CA1", device=probe)
    for i in range(4):
        f.add_electrode(group=grp, location="CA1", x=0.0, y=float(i), z=0.0)
    x = np.cumsum(rng.normal(0, 8, (3000, 4)), axis=0).astype(np.int16)
    f.add_acquisition(ElectricalSeries(name="es", data=x, electrodes=f.create_electrode_table_region([0, 1, 2, 3], "all"),
                                       rate=30000.0))
    f.add_acquisition(ElectricalSeries(name="es_1ch", data=x[:, 0], electrodes=f.create_electrode_table_region([2], "one"),
                                       rate=30000.0))
    f.add_acquisition(ElectricalSeries(name="es_i32", data=x.astype(np.int32) * 1000,
                                       electrodes=f.create_electrode_table_region([0, 1, 2, 3], "all"), rate=30000.0))
    mod = f.create_processing_module("ecephys", "proc")
    mod.add(ElectricalSeries(name="lfp", data=x[::10, [1, 3]].astype(np.float64) * 0.1,
                             electrodes=f.create_electrode_table_region([1, 3], "two"), rate=3000.0))
    mod.add(SpikeEventSeries(name="spikes", data=rng.integers(-200, 200, (30, 4, 20)).astype(np.int16),
                             timestamps=np.sort(rng.uniform(0, 10, 30)),
                             electrodes=f.create_electrode_table_region([0, 1, 2, 3], "all")))
    f.add_unit(spike_times=[0.1, 0.2], electrodes=[0, 1], electrode_group=grp)
    f.add_unit(spike_times=[0.3], electrodes=[2], electrode_group=grp)
    f.add_acquisition(TimeSeries(name="other", data=np.arange(50.0), unit="m", rate=1.0))
    with NWBHDF5IO(str(src), "w") as io:
        io.write(f)
    assert run_cmd(compress_cmd, src, out, "--workers", 1, "--quiet") == 0
    return src, out, {"tps": mov, "es": x}


# --------------------------------------------------------------------------------------------------
# regression: what already works and matters
# --------------------------------------------------------------------------------------------------

def test_rich_pynwb_file_references_resolve_in_output(rich):
    src, out, data = rich
    assert nwb.structure_diff(src, out, ignore_attrs=ignore_necoda) == []
    with h5py.File(out, "r") as f:
        compressed = sorted(p for p in ("acquisition/tps", "acquisition/tps_1frame", "acquisition/tps_float",
                                        "acquisition/tps_gzip", "acquisition/color", "acquisition/es",
                                        "acquisition/es_1ch", "acquisition/es_i32", "processing/ecephys/lfp",
                                        "processing/ecephys/spikes") if has_necoda(f[p + "/data"]))
        assert len(compressed) == 10
        assert not has_necoda(f["acquisition/other/data"]) and f["acquisition/tps_ext/data"].shape == (0, 0, 0)
        # every object reference in OUT points into OUT
        el = f["processing/ecephys/lfp/electrodes"]
        assert f[el.attrs["table"]].file.filename == f.filename
        assert f[el.attrs["table"]].name == "/general/extracellular_ephys/electrodes"
        assert f[f.attrs[".specloc"]].name == "/specifications"
        assert f["acquisition/tps_linked"].get("data", getlink=True).path == "/acquisition/tps/data"
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(out), "r") as io:
        n = io.read()
        lfp = n.processing["ecephys"]["lfp"]
        assert lfp.electrodes.table is n.electrodes and list(lfp.electrodes.data[:]) == [1, 3]
        assert n.acquisition["es_1ch"].electrodes.data[:].tolist() == [2]
        assert n.units["electrodes"][0].index.tolist() == [0, 1]
        assert n.units["electrode_group"][1].name == "shank0"
        assert n.acquisition["tps_linked"].imaging_plane is n.acquisition["tps"].imaging_plane
        assert np.array_equal(n.acquisition["tps_linked"].data[:], data["tps"])
        assert np.array_equal(n.acquisition["tps_1frame"].data[:], data["tps"][:1])
        assert np.array_equal(n.acquisition["es"].data[:], data["es"])


def test_hard_linked_data_stays_one_compressed_dataset(tmp_path):
    rng = np.random.default_rng(1)
    m = rng.integers(0, 900, (30, 12, 10)).astype(np.uint16)
    src = tmp_path / "in.h5"
    series_file(src, {"a": ("TwoPhotonSeries", m, 30.0)})
    with h5py.File(src, "a") as f:
        f.create_group("b").attrs["neurodata_type"] = "TwoPhotonSeries"
        f["b/data"] = f["a/data"]                                 # hard link: one dataset, two series
        f["b/ref"] = np.array([f["a/data"].ref], dtype=h5py.ref_dtype)
    out = tmp_path / "out.h5"
    nwb.recompress_file(src, out, workers=1, progress=False)
    with h5py.File(out, "r") as f:
        assert f["a/data"] == f["b/data"] and has_necoda(f["a/data"])
        assert f[f["b/ref"][0]] == f["a/data"]
        assert np.array_equal(f["b/data"][...], m)


def test_other_datasets_keep_storage_values_and_attributes(tmp_path):
    """Non-series datasets of every kind keep dtype, values, chunking, filters, fill value, maxshape
    and attributes (array, string, empty, reference) exactly."""
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("ElectricalSeries", np.arange(3000, dtype=np.int16).reshape(1000, 3) % 97, 1000.0)})
    with h5py.File(src, "a") as f:
        t = f.create_dataset("tab", data=np.arange(10.0), chunks=(4,), maxshape=(None,), compression="gzip",
                             compression_opts=7, shuffle=True, fletcher32=True, fillvalue=-1.5)
        f.create_dataset("so", data=np.arange(100, dtype=np.int32), chunks=(10,), scaleoffset=0)
        f.create_dataset("scalar", data=np.float32(5))
        f.create_dataset("empty", data=h5py.Empty("<i4"))
        f.create_dataset("zero", shape=(0, 3), maxshape=(None, 3), dtype="<u2", chunks=(8, 3))
        f.create_dataset("vstr", data=["x", "yy", "zzzé"], dtype=h5py.string_dtype())
        f.create_dataset("fstr", data=np.array([b"ab", b"c"], dtype="S3"))
        f.create_dataset("comp", data=np.array([(1, 2.5, b"q")], dtype=[("a", ">i2"), ("b", "<f4"), ("c", "S2")]))
        f.create_dataset("refs", data=[t.ref, f["ts"].ref, h5py.Reference()], dtype=h5py.ref_dtype)
        f["ts/data"].attrs.create("arr", np.arange(6, dtype=">i4").reshape(2, 3))
        f["ts/data"].attrs.create("strs", ["a", "bé"], dtype=h5py.string_dtype())
        f["ts/data"].attrs["empty"] = h5py.Empty("f8")
        f["ts/data"].attrs["ref"] = t.ref
    out = tmp_path / "out.h5"
    nwb.recompress_file(src, out, workers=1, progress=False)
    assert nwb.structure_diff(src, out, ignore_attrs=ignore_necoda) == []
    with h5py.File(src, "r") as a, h5py.File(out, "r") as b:
        for name in ("tab", "so", "scalar", "empty", "zero", "vstr", "fstr", "comp", "refs"):
            da, db = a[name], b[name]
            for prop in ("dtype", "shape", "maxshape", "chunks", "compression", "compression_opts", "shuffle",
                         "fletcher32", "scaleoffset"):
                assert getattr(da, prop) == getattr(db, prop), (name, prop)
            assert da.id.get_create_plist().fill_value_defined() == db.id.get_create_plist().fill_value_defined()
            if da.shape and da.dtype.kind not in "O" and da.dtype.names is None:
                assert da[...].tobytes() == db[...].tobytes(), name
        assert b["tab"].fillvalue == -1.5
        assert [b[r].name if r else None for r in b["refs"][...]] == ["/tab", "/ts", None]
        assert b[b["ts/data"].attrs["ref"]] == b["tab"] and has_necoda(b["ts/data"])


def test_cli_path_safety(rich, tmp_path, capsys):
    src, out, _ = rich
    digest = sha256(src)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "link.nwb").symlink_to(src)
    other = os.path.relpath(src, tmp_path / "d")
    cwd = os.getcwd()
    os.chdir(tmp_path / "d")
    try:
        for dst in ("link.nwb", other, os.path.join("..", "d", other)):
            assert cli.main(["compress", str(src), dst, "--overwrite", "--quiet"]) == 1
            assert "same file" in capsys.readouterr().err
    finally:
        os.chdir(cwd)
    assert cli.main(["compress", str(src), str(tmp_path / "nodir" / "o.nwb"), "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["compress", str(tmp_path / "missing.nwb"), str(tmp_path / "o.nwb"), "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["decompress", str(out), str(src), "--quiet"]) == 1     # OUT exists: refused, untouched
    assert "--overwrite" in capsys.readouterr().err
    assert sha256(src) == digest
    assert not any(nwb.TMP_MARK in p.name for p in list(tmp_path.rglob("*")) + list(src.parent.iterdir()))


# --------------------------------------------------------------------------------------------------
# bugs
# --------------------------------------------------------------------------------------------------

def test_vlen_reference_attributes_and_dimension_scales_resolve(tmp_path):
    """Bug: variable-length sequences of object references (attributes and datasets; HDF5 dimension
    scales store DIMENSION_LIST this way) were copied with the input file's addresses: in OUT they
    pointed nowhere (or at the wrong object)."""
    src = tmp_path / "in.h5"
    m = np.arange(20 * 6 * 5, dtype=np.int16).reshape(20, 6, 5)
    series_file(src, {"ts": ("TwoPhotonSeries", m, None)}, tab=np.arange(10.0))
    vr = h5py.vlen_dtype(h5py.ref_dtype)
    with h5py.File(src, "a") as f:
        d, tab = f["ts/data"], f["tab"]
        val = np.empty(2, dtype=object)
        val[0] = np.array([tab.ref, f["ts"].ref], dtype=h5py.ref_dtype)
        val[1] = np.array([d.ref], dtype=h5py.ref_dtype)
        f.attrs.create("vlen_refs", val, dtype=vr)
        f.create_dataset("vlen_refs_ds", data=val, dtype=vr)
        t = f["ts"].create_dataset("t", data=np.arange(20.0))
        t.make_scale("time")
        d.dims[0].attach_scale(t)
    out = tmp_path / "out.h5"
    nwb.recompress_file(src, out, workers=1, progress=False)
    assert nwb.structure_diff(src, out, ignore_attrs=ignore_necoda) == []
    with h5py.File(out, "r") as f:
        for v in (f.attrs["vlen_refs"], f["vlen_refs_ds"][...]):
            assert [[f[r].name for r in row] for row in v] == [["/tab", "/ts"], ["/ts/data"]]
        d = f["ts/data"]
        assert has_necoda(d)
        assert [s.name for s in d.dims[0].values()] == ["/ts/t"]


def test_float_nan_inf_fidelity_and_lossless_verification(tmp_path, monkeypatch):
    """Bug: NaN in float data (motion-corrected borders, dropped samples) made the write-time
    statistics wrong — bounded data that differs by up to max_error was recorded as max_abs_error 0,
    data_range -inf, rmse NaN — and disabled the lossless round-trip check for the whole chunk."""
    rng = np.random.default_rng(2)
    m = (rng.poisson(5, (40, 16, 12)) * 1.5).astype(np.float32)
    m[:, :2] = np.nan
    m[3, 5, 5] = np.inf
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", m, 30.0)})
    out = tmp_path / "b.h5"
    nwb.recompress_file(src, out, nwb.Settings(imaging="bounded", max_error=0.5), workers=1, progress=False)
    with h5py.File(out, "r") as f:
        got = f["ts/data"][...]
        p = provenance.read(f["ts/data"])
    fin = np.isfinite(m)
    assert np.array_equal(np.isnan(got), np.isnan(m)) and got[3, 5, 5] == np.inf
    true_max = float(np.abs(got[fin].astype(np.float64) - m[fin]).max())
    assert 0 < true_max <= 0.5
    assert p["max_abs_error"] == pytest.approx(true_max)
    assert p["data_range"] == pytest.approx(float(m[fin].max() - m[fin].min()))
    assert np.isfinite(p["rmse"]) and 0 < p["rmse"] <= 0.5 and np.isfinite(p["psnr_db"])
    from necoda_filter.commands.evaluate import evaluate_files

    ev = evaluate_files(src, out, tmp_path / "rep", figures=False)["datasets"][0]
    assert ev["max_abs"] == p["max_abs_error"] and ev["data_range"] == p["data_range"]
    assert ev["rmse"] == pytest.approx(p["rmse"]) and not ev["source_mismatch"]

    # a lossless chunk that comes back with one finite sample changed must be refused, NaNs or not
    real_decode = chunk.decode

    def corrupt(buf, *a, **k):
        arr = np.array(real_decode(buf, *a, **k))
        arr.flat[np.flatnonzero(np.isfinite(arr))[0]] += 1
        return arr

    monkeypatch.setattr(chunk, "decode", corrupt)
    with pytest.raises(RuntimeError, match="round-trip"):
        nwb.recompress_file(src, tmp_path / "l.h5", workers=1, progress=False)
    assert not (tmp_path / "l.h5").exists()


def test_recompressing_a_decompressed_file_has_fresh_provenance(rich, tmp_path):
    """Bug: decompress -> compress kept the old ``necoda_decompressed_by`` attribute on the newly
    compressed dataset (and any other stale necoda_* attribute the new run does not write)."""
    src, out, data = rich
    plain, again = tmp_path / "plain.nwb", tmp_path / "again.nwb"
    assert run_cmd(decompress_cmd, out, plain, "--workers", 1, "--quiet") == 0
    with h5py.File(plain, "a") as f:  # as if an older version had written an extra field
        f["acquisition/tps/data"].attrs["necoda_old_field"] = 1
    assert run_cmd(compress_cmd, plain, again, "--workers", 1, "--quiet") == 0
    assert nwb.structure_diff(src, again, ignore_attrs=ignore_necoda) == []
    with h5py.File(again, "r") as f:
        d = f["acquisition/tps/data"]
        assert has_necoda(d) and np.array_equal(d[...], data["tps"])
        assert "necoda_decompressed_by" not in d.attrs and "necoda_old_field" not in d.attrs
        assert provenance.read(d)["source"] == "plain.nwb:/acquisition/tps/data"


def test_spike_events_and_low_rate_ephys_get_reasonable_chunks(tmp_path):
    """Bug: ephys chunks were 'one second' of rows even when a row is not a time sample
    (SpikeEventSeries: one event; the 'rate' came from sparse spike timestamps) or the rate is low:
    chunks of a few rows, each with its own header, made OUT larger than IN and compression slow."""
    rng = np.random.default_rng(3)
    n = 3000
    tmpl = np.sin(np.linspace(0, 3 * np.pi, 40)) * -200 * np.exp(-np.linspace(0, 3, 40))
    spikes = (tmpl * rng.uniform(0.5, 1.5, (n, 4, 1)) + rng.normal(0, 10, (n, 4, 40))).astype(np.int16)
    slow = np.cumsum(rng.normal(0, 8, (20000, 8)), axis=0).astype(np.int16)
    src = tmp_path / "in.h5"
    series_file(src, {"spikes": ("SpikeEventSeries", spikes, None), "slow": ("ElectricalSeries", slow, 2.0)},
                **{"spikes/timestamps": np.sort(rng.uniform(0, 1000, n))})
    out = tmp_path / "out.h5"
    reps = {r.path: r for r in nwb.recompress_file(src, out, workers=1, progress=False)}
    sp, sl = reps["/spikes/data"], reps["/slow/data"]
    assert sp.chunks == (n, 4, 40)                                  # 960 kB: one chunk (4 MB cap)
    assert sl.chunks[0] * 8 * 2 >= 16 << 10                         # >= 16 KiB per chunk
    assert sp.provenance["ratio"] > 1.5 and sl.provenance["ratio"] > 1.5
    assert os.path.getsize(out) < os.path.getsize(src)
    # the usual cases keep "about one second"
    assert nwb.plan_chunks("ephys", (100000, 32), 2, 30000.0) == (29952, 32)
    assert nwb.plan_chunks("ephys", (100000, 32), 2, 2.0)[0] == 256
    # imaging: frames; a (T, X) line scan gets rows as untimed ephys (64 rows coded ~25x slower)
    assert nwb.plan_chunks("imaging", (5000, 300, 200), 2) == (64, 300, 200)
    assert nwb.plan_chunks("imaging", (100000, 512), 2) == (4096, 512)
    assert nwb.plan_chunks("imaging", (100000,), 2) == (100000,)


def test_only_paths_are_resolved_and_checked(tmp_path, capsys):
    """Bug: ``--only acquisition/X/data`` (no leading slash), the series group's path or a soft link
    to the data matched nothing: nothing was recompressed and the message claimed there was no data;
    a path that names no series data was ignored silently."""
    rng = np.random.default_rng(4)
    m = rng.integers(0, 900, (20, 8, 8)).astype(np.uint16)
    x = rng.integers(-50, 50, (2000, 4)).astype(np.int16)
    src = tmp_path / "in.h5"
    series_file(src, {"a": ("TwoPhotonSeries", m, 30.0), "e": ("ElectricalSeries", x, 1000.0)},
                alias=h5py.SoftLink("/a/data"), other=np.arange(10))
    for i, only in enumerate(["a/data", "/a", "/a/", "/alias"]):
        out = tmp_path / f"o{i}.h5"
        assert cli.main(["compress", str(src), str(out), "--only", only, "--quiet"]) == 0
        with h5py.File(out, "r") as f:
            assert has_necoda(f["a/data"]) and f["e/data"].chunks is None, only
            assert np.array_equal(f["a/data"][...], m)
    capsys.readouterr()
    for bad in ("/nope", "/other"):
        out = tmp_path / "bad.h5"
        assert cli.main(["compress", str(src), str(out), "--only", bad, "--quiet"]) == 1
        assert bad in capsys.readouterr().err and not out.exists()


def test_relative_external_link_resolves_from_another_folder(tmp_path):
    """Bug: a relative ExternalLink (pynwb writes them relative to the file) was copied verbatim, so
    with OUT in another folder it no longer resolved; it is rewritten relative to OUT's folder."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with h5py.File(tmp_path / "a" / "raw.h5", "w") as f:
        f["x"] = np.arange(5)
    src = tmp_path / "a" / "main.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", np.zeros((4, 6, 6), np.int16), 30.0)},
                ext=h5py.ExternalLink("raw.h5", "/x"), gone=h5py.ExternalLink("missing.h5", "/x"),
                absl=h5py.ExternalLink(str(tmp_path / "a" / "raw.h5"), "/x"))
    for out in (tmp_path / "b" / "out.h5", tmp_path / "a" / "out.h5"):
        nwb.recompress_file(src, out, workers=1, progress=False)
        with h5py.File(out, "r") as f:
            assert f["ext"][...].tolist() == [0, 1, 2, 3, 4]
            assert f["absl"][...].tolist() == [0, 1, 2, 3, 4]
            assert f.get("gone", getlink=True).filename == "missing.h5"   # unresolvable: left as it was
            same_dir = out.parent == src.parent
            assert (f.get("ext", getlink=True).filename == "raw.h5") == same_dir


def test_virtual_dataset_with_a_relative_source_resolves_from_another_folder(tmp_path, monkeypatch):
    """QA: a virtual dataset whose source file is named relative to IN (stitched acquisitions, converters
    that build VDS over per-trial files) was copied verbatim, and in OUT written to another folder it read
    back as its fill value, silently. Its source names are re-based like external links'; same-file and
    absolute sources stay as they are. (A VDS that is a series' data is read and compressed.)"""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with h5py.File(tmp_path / "a" / "src.h5", "w") as f:
        f["trace"] = np.arange(10, dtype="f8") + 1
    src = tmp_path / "a" / "main.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", np.zeros((4, 6, 6), np.int16), 30.0)})
    with h5py.File(src, "r+") as f:
        f["local"] = np.arange(10, dtype="f8") * 2
        lay = h5py.VirtualLayout(shape=(20,), dtype="f8")
        lay[:10] = h5py.VirtualSource("src.h5", "trace", shape=(10,))
        lay[10:] = h5py.VirtualSource(".", "local", shape=(10,))  # the same file
        d = f.create_virtual_dataset("vds", lay, fillvalue=-1)
        d.attrs["note"] = "kept"
    want = np.concatenate([np.arange(10) + 1, np.arange(10) * 2]).astype("f8")
    monkeypatch.chdir(tmp_path)  # HDF5 also tries the current folder: make that another one
    for out in (tmp_path / "b" / "out.h5", tmp_path / "a" / "out.h5"):
        nwb.recompress_file(src, out, workers=1, progress=False)
        with h5py.File(out, "r") as f:
            v = f["vds"]
            assert v.is_virtual and v.fillvalue == -1 and v.attrs["note"] == "kept"
            assert v[...].tolist() == want.tolist(), out
            names = [m.file_name for m in v.virtual_sources()]
            assert names == (["src.h5", "."] if out.parent == src.parent else ["../a/src.h5", "."])


SLOW_SCRIPT = """
import argparse, sys, time
from necoda_filter import nwb
from necoda_filter.commands import compress
real = nwb.recompress._encode_chunk
def slow(*a, **k):
    time.sleep(0.1)
    return real(*a, **k)
nwb.recompress._encode_chunk = slow
p = argparse.ArgumentParser(); compress.add_arguments(p)
sys.exit(compress.run(p.parse_args(sys.argv[1:])))
"""


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_hangup_or_interrupt_leaves_no_temporary(tmp_path, sig):
    """Bug: SIGHUP (terminal or ssh session closed) killed the run without removing its temporary
    (possibly many GB) next to OUT; it is now cleaned like SIGTERM/Ctrl-C (but a nohup'ed run still
    ignores SIGHUP)."""
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", np.zeros((64 * 60, 8, 8), np.int16), 30.0)})
    digest = sha256(src)
    out = tmp_path / "out.h5"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SCRIPT, str(src), str(out), "--workers", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 60 and proc.poll() is None:
        if any(nwb.TMP_MARK in p.name for p in tmp_path.iterdir()):
            break
        time.sleep(0.02)
    time.sleep(0.5)
    assert proc.poll() is None, "compress finished before it could be signalled"
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not out.exists() and sha256(src) == digest
    assert [p.name for p in tmp_path.iterdir() if nwb.TMP_MARK in p.name] == []

    # nohup: SIGHUP ignored before start -> the run is not stopped by it
    if sig == signal.SIGHUP:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_SCRIPT, str(src), str(out), "--workers", "1", "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
        t0 = time.time()
        while time.time() - t0 < 60 and not any(nwb.TMP_MARK in p.name for p in tmp_path.iterdir()):
            time.sleep(0.02)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert proc.poll() is None, "a nohup'ed run must survive SIGHUP"
        proc.terminate()
        proc.communicate(timeout=60)
        assert not out.exists() and [p.name for p in tmp_path.iterdir() if nwb.TMP_MARK in p.name] == []


def test_evaluate_mismatched_files_is_an_error(rich, tmp_path, capsys):
    """Bug: ``evaluate`` with swapped arguments or files that do not belong together exited 0 with an
    empty report (and left a report folder behind when a file was not HDF5); data of another recording
    with the same shapes was evaluated without a word."""
    src, out, data = rich
    rep = tmp_path / "rep"
    assert cli.main(["evaluate", str(out), str(src), "--report", str(rep), "--no-figures"]) == 1   # swapped
    err = capsys.readouterr().err
    assert "no necoda-compressed dataset" in err and "swapped" in err
    other = tmp_path / "other.h5"
    series_file(other, {"x": ("TwoPhotonSeries", np.zeros((5, 5, 5), np.int16), None)})
    assert cli.main(["evaluate", str(other), str(out), "--report", str(rep), "--no-figures"]) == 1
    assert "counterpart" in capsys.readouterr().err
    junk = tmp_path / "junk.nwb"
    junk.write_bytes(b"not hdf5")
    assert cli.main(["evaluate", str(junk), str(out), "--report", str(rep), "--no-figures"]) == 1
    err = capsys.readouterr().err
    assert "junk.nwb" in err and "not an HDF5" in err
    assert not rep.exists()
    # same shapes, different recording: evaluated, but the mismatch with the write-time record is stated
    wrong = tmp_path / "wrong.nwb"
    with h5py.File(src, "r") as f, h5py.File(wrong, "w") as g:
        g.create_group("acquisition/tps").create_dataset("data", data=f["acquisition/tps/data"][...][::-1])
    assert cli.main(["evaluate", str(wrong), str(out), "--report", str(rep), "--no-figures"]) == 0
    assert "not the file" in capsys.readouterr().err


def test_evaluate_without_matplotlib_says_so_before_any_work(rich, tmp_path, capsys, monkeypatch):
    """Bug: in an environment without matplotlib, ``evaluate`` died with a ModuleNotFoundError traceback
    after the metrics of the first dataset. It now names the missing package and the way out first."""
    src, out, _ = rich
    rep = tmp_path / "rep"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import blocked, as if not installed
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep)]) == 1
    err = capsys.readouterr().err
    assert "matplotlib" in err and "--no-figures" in err and "Traceback" not in err
    assert not rep.exists()
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep), "--no-figures"]) == 0
    assert (rep / "report.md").is_file() and not list(rep.glob("*.png"))


def test_evaluate_against_a_decoded_copy_or_itself_says_so(tmp_path, capsys):
    """Bugs: ``evaluate`` with a ``necoda decompress`` copy of a lossy file as ORIGINAL reported max error 0
    and PSNR inf without a word (the check only caught errors above the recorded one); the same file twice
    ran and reported nothing wrong."""
    src, out, plain, rep = tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "plain.h5", tmp_path / "rep"
    rng = np.random.default_rng(1)
    series_file(src, {"ts": ("TwoPhotonSeries", rng.integers(0, 4000, (16, 20, 20)).astype(np.int16), 30.0)})
    assert cli.main(["compress", str(src), str(out), "--imaging", "bounded", "--max-error", "40", "--quiet"]) == 0
    assert cli.main(["decompress", str(out), str(plain), "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(plain), str(out), "--report", str(rep), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert "holds decoded data (it was written by necoda decompress)" in err
    assert "decoded data" in (rep / "report.md").read_text()
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep), "--no-figures"]) == 0
    assert "warning" not in capsys.readouterr().err  # the real original: nothing to warn about
    assert cli.main(["evaluate", str(out), str(out), "--report", str(rep), "--no-figures"]) == 1
    assert "same file" in capsys.readouterr().err


def test_input_that_is_not_hdf5(tmp_path, capsys):
    junk = tmp_path / "junk.nwb"
    junk.write_bytes(b"hello")
    for cmd in (["compress", str(junk), str(tmp_path / "o.nwb")], ["decompress", str(junk), str(tmp_path / "o.nwb")],
                ["info", str(junk)], ["compress", str(tmp_path), str(tmp_path / "o.nwb")]):
        assert cli.main(cmd + ["--quiet"] if cmd[0] != "info" else cmd) == 1
        err = capsys.readouterr().err
        assert "not an HDF5" in err or "not a file" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.nwb"]


def test_big_endian_series_are_recompressed_and_decompressed(tmp_path):
    """Bug: a big-endian series (h5py/MATLAB files written on big-endian hosts, or with an explicit '>i2')
    aborted the whole run with "lossless chunk did not round-trip exactly": the check compared the
    original's file-order bytes with the decoded (native-order) bytes of the same values. (And
    ``structure_diff`` called float data with NaN "values differ" from an exact copy of itself.)"""
    rng = np.random.default_rng(5)
    m = rng.integers(0, 900, (20, 12, 10)).astype(">i2")
    x = rng.normal(0, 1, (3000, 3)).astype(">f4")
    x[5, 1] = np.nan
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", m, 30.0), "es": ("ElectricalSeries", x, 30000.0)})
    out, plain = tmp_path / "out.h5", tmp_path / "plain.h5"
    assert cli.main(["compress", str(src), str(out), "--workers", "1", "--quiet"]) == 0
    assert nwb.structure_diff(src, out, ignore_attrs=ignore_necoda) == []   # same dtype (byte order) and values
    with h5py.File(out, "r") as f:
        assert has_necoda(f["ts/data"]) and has_necoda(f["es/data"])
        assert provenance.read(f["ts/data"])["max_abs_error"] == 0
    assert cli.main(["decompress", str(out), str(plain), "--workers", "1", "--quiet"]) == 0
    assert nwb.structure_diff(src, plain, ignore_attrs=ignore_necoda) == []
    reps = nwb.recompress_file(src, tmp_path / "b.h5", nwb.Settings(imaging="bounded", max_error=2), workers=1,
                               progress=False, only=["/ts"])
    with h5py.File(tmp_path / "b.h5", "r") as f:
        err = np.abs(f["ts/data"][...].astype(np.int32) - m.astype(np.int32)).max()
    assert 0 < err <= 2 and reps[0].provenance["max_abs_error"] == err


def _overwrite_in_chunk(path, dataset, index, offset, junk: bytes) -> None:
    """Overwrite bytes ``offset`` onwards of stored chunk ``index`` of ``dataset`` in the file at ``path``."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(index)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + offset:info.byte_offset + offset + len(junk)] = junk
    path.write_bytes(bytes(raw))


def test_unreadable_data_names_the_dataset(tmp_path, capsys):
    """Bug: a corrupt chunk in IN (a crashed acquisition, a bad disk) stopped compress/decompress with
    HDF5's bare "Can't synchronously read data (filter returned failure during read)" or the decoder's
    reason, without saying which of the file's many series could not be read."""
    rng = np.random.default_rng(6)
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        g = f.create_group("acquisition/tps")
        g.attrs["neurodata_type"] = "TwoPhotonSeries"
        g.create_dataset("data", data=rng.integers(0, 900, (40, 20, 18)).astype("u2"), chunks=(10, 20, 18),
                         compression="gzip")
    _overwrite_in_chunk(src, "acquisition/tps/data", 2, 10, b"\xff" * 30)
    assert cli.main(["compress", str(src), str(tmp_path / "o.h5"), "--workers", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "/acquisition/tps/data" in err and "in.h5" in err and "Traceback" not in err
    # a corrupt necoda chunk, decompressed
    good = tmp_path / "good.h5"
    series_file(good, {"ts": ("TwoPhotonSeries", rng.integers(0, 900, (20, 12, 10)).astype("u2"), 30.0)})
    comp = tmp_path / "comp.h5"
    nwb.recompress_file(good, comp, workers=1, progress=False)
    _overwrite_in_chunk(comp, "ts/data", 0, 60, b"\x13" * 30)
    assert cli.main(["decompress", str(comp), str(tmp_path / "d.h5"), "--workers", "1", "--quiet"]) == 1
    assert "comp.h5:/ts/data" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comp.h5", "good.h5", "in.h5"]


def test_output_that_is_a_folder_or_inside_a_file(tmp_path, capsys):
    """Bug: OUT naming an existing folder was answered "exists (use --overwrite to replace it)", and
    --overwrite then said it is a directory; OUT inside a regular file gave HDF5's error about a
    temporary file the user never named."""
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", np.zeros((4, 6, 6), np.int16), 30.0)})
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_bytes(b"x")
    for cmd in ("compress", "decompress"):
        assert cli.main([cmd, str(src), str(tmp_path / "folder"), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "is a directory" in err and "--overwrite" not in err
        assert cli.main([cmd, str(src), str(tmp_path / "afile" / "o.h5"), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "afile is not a folder" in err and nwb.TMP_MARK not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder", "in.h5"]
    assert list((tmp_path / "folder").iterdir()) == []


@pytest.mark.parametrize("argv,word", [
    (["--max-error", "2"], "--max-error"),                                       # lossless everywhere: ignored
    (["--max-error-noise", "0.5"], "--max-error-noise"),
    (["--imaging", "bounded", "--max-error", "1", "--quality", "3"], "--quality"),  # quality: learned only
    (["--quality", "3"], "--quality"),
    (["--imaging", "learned", "--ephys", "bounded", "--max-error", "1", "--level", "5"], "--level"),
])
def test_options_no_chosen_mode_uses_are_refused(tmp_path, capsys, argv, word):
    """Bug: an option that none of the chosen modes uses (``--max-error 2`` with the default lossless
    modes, ``--quality`` without ``--imaging learned``) was silently ignored: the user believed the file
    was compressed with a bound or a quality level it was never coded with."""
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", np.zeros((4, 6, 6), np.int16), 30.0)})
    out = tmp_path / "o.h5"
    assert cli.main(["compress", str(src), str(out), "--quiet", *argv]) == 1
    err = capsys.readouterr().err
    assert f"error: {word} applies to" in err
    assert not out.exists()


@pytest.mark.parametrize("argv,words", [
    (["--imaging", "bounded"], ["--max-error E", "--max-error-noise K"]),  # was in Python terms (max_error=)
    (["--ephys", "bounded"], ["--max-error E", "--max-error-noise K"]),
    (["--imaging", "learned", "--max-error-noise", "0"], ["--imaging lossless"]),  # was: every chunk stored raw
    (["--imaging", "learned", "--max-error", "0.5"], ["at least one raw unit"]),
    (["--level", "13"], ["--level", "1..12"]),                                 # pcodec's levels; 13 was taken as 12
    (["--level", "0"], ["--level", "1..12"]),
])
def test_options_that_cannot_work_are_refused_in_command_line_terms(tmp_path, capsys, argv, words):
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", np.zeros((4, 6, 6), np.int16), 30.0)})
    out = tmp_path / "o.h5"
    assert cli.main(["compress", str(src), str(out), "--quiet", *argv]) == 1
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "max_error=" not in err, err
    assert not out.exists()


def test_evaluate_single_frame_and_report_path_that_is_a_file(tmp_path, capsys):
    """Bugs: a one-frame TwoPhotonSeries (a reference image) got "RMSE (noise σ) inf" from evaluate (no
    noise estimate from one frame, while compress records n/a for it); ``--report`` naming an existing
    file failed with a bare "[Errno 17] File exists"."""
    rng = np.random.default_rng(7)
    src = tmp_path / "in.h5"
    series_file(src, {"ref": ("TwoPhotonSeries", rng.integers(0, 900, (1, 20, 18)).astype("u2"), 30.0)})
    out = tmp_path / "out.h5"
    reps = nwb.recompress_file(src, out, nwb.Settings(imaging="bounded", max_error=3), workers=1, progress=False)
    assert np.isnan(reps[0].provenance["noise_rmse"]) and reps[0].provenance["max_abs_error"] > 0
    from necoda_filter.commands.evaluate import evaluate_files

    ev = evaluate_files(src, out, tmp_path / "rep", figures=False)["datasets"][0]
    assert ev["max_abs"] == reps[0].provenance["max_abs_error"]
    assert np.isnan(ev["rmse_noise"])
    (tmp_path / "rep.txt").write_text("keep")
    assert cli.main(["evaluate", str(src), str(out), "--report", str(tmp_path / "rep.txt"), "--no-figures"]) == 1
    err = capsys.readouterr().err
    assert "rep.txt" in err and "not a folder" in err
    assert (tmp_path / "rep.txt").read_text() == "keep"


def test_input_locked_by_a_writer_is_named(tmp_path, capsys):
    """Bug: IN still open for writing elsewhere (the acquisition, a notebook with NWBHDF5IO(..., "a"))
    failed with HDF5's bare "[Errno 11] Unable to synchronously open file (unable to lock file ...)":
    neither which file (compress and evaluate open two) nor what to do."""
    if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
        pytest.skip("file locking is disabled in this process")
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", np.zeros((4, 6, 6), np.int16), 30.0)})
    out = tmp_path / "out.h5"
    nwb.recompress_file(src, out, workers=1, progress=False)
    env = {k: v for k, v in os.environ.items() if k != "HDF5_USE_FILE_LOCKING"}
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'a'); "
                               "print('open', flush=True); sys.stdin.read()", str(src)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "open"
        for cmd in (["compress", str(src), str(tmp_path / "o2.h5"), "--quiet"],
                    ["decompress", str(src), str(tmp_path / "o2.h5"), "--quiet"],
                    ["evaluate", str(src), str(out), "--no-figures", "--report", str(tmp_path / "rep")]):
            assert cli.main(cmd) == 1
            err = capsys.readouterr().err
            assert f"cannot open {src}" in err and "open for writing" in err, err
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5", "out.h5"]


@pytest.mark.parametrize("opt,val", [("--window-frames", "-5"), ("--window-frames", "0"), ("--window-seconds", "-1"),
                                     ("--window-seconds", "nan"), ("--window-mb", "nan"), ("--window-mb", "0")])
def test_evaluate_rejects_bad_windows(rich, tmp_path, capsys, opt, val):
    """Bug: ``--window-frames -5`` evaluated ROI fidelity on all frames but the last five (``o[:-5]``) and
    recorded window_rows -5; NaN for --window-seconds/--window-mb failed with "cannot convert float NaN
    to integer"."""
    src, out, _ = rich
    rep = tmp_path / "rep"
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep), "--no-figures", opt, val]) == 1
    err = capsys.readouterr().err
    assert f"error: {opt} must be" in err
    assert not rep.exists()


@pytest.mark.parametrize("command", ["compress", "decompress"])
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_workers_must_be_a_positive_count(tmp_path, capsys, command, value):
    """Bug: ``--workers 0`` or ``-2`` was taken as 1 without a word."""
    with pytest.raises(SystemExit) as e:
        cli.main([command, str(tmp_path / "in.nwb"), str(tmp_path / "out.nwb"), "--workers", value])
    assert e.value.code == 2
    assert "--workers" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
