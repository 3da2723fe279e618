"""Acceptance 2-4 (issue 2): reading without importing necoda_filter, corrupt chunks, numcodecs/zarr
entry points, pynwb/hdmf writing. Each 'fresh' check runs in a new interpreter."""
import json
import sys

import h5py
import numpy as np
import pytest

import necoda_filter
from conftest import run_fresh

PLUGIN_ENV = {"HDF5_PLUGIN_PATH": necoda_filter.PLUGIN_PATH}


def movie(t=40, h=24, w=20, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(200, 400, size=(h, w))
    return (base + rng.poisson(30, size=(t, h, w))).astype(np.uint16)


def test_plugin_library_is_where_plugin_path_says():
    import os

    assert os.path.exists(os.path.join(necoda_filter.PLUGIN_PATH, "libh5necoda.so"))
    assert 256 <= necoda_filter.FILTER_ID <= 511


def test_shim_links_neither_hdf5_nor_python():
    import os
    import subprocess

    out = subprocess.run(["ldd", os.path.join(necoda_filter.PLUGIN_PATH, "libh5necoda.so")],
                         capture_output=True, text=True).stdout
    assert "hdf5" not in out and "python" not in out, out


def test_fresh_process_reads_with_only_plugin_path(tmp_path):
    a = movie()
    p = tmp_path / "m.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("m", data=a, chunks=(16, 24, 20), compression=necoda_filter.Necoda(mode="lossless"))
    np.save(tmp_path / "m.npy", a)
    r = run_fresh(f"""
        import sys, h5py, numpy as np
        assert "necoda_filter" not in sys.modules
        with h5py.File({str(p)!r}) as f:
            got = f["m"][()]
        assert np.array_equal(got, np.load({str(tmp_path / 'm.npy')!r})), "data differ"
        print("OK")
    """, PLUGIN_ENV)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_fresh_process_writes_into_an_existing_dataset_with_only_plugin_path(tmp_path):
    """HDF5 loads a plugin when a dataset is read or created with its filter, not when chunks of an existing
    dataset are written: a fresh process that opens a file "r+" and writes before any read gets "required
    filter 311 is not registered" (and nothing is written). The README's remedy, asking HDF5 whether the
    filter is available (``h5py.h5z.filter_avail(311)``), loads it; the write then goes through the filter."""
    a = movie()
    p = tmp_path / "m.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("m", data=a, chunks=(16, 24, 20), compression=necoda_filter.Necoda(mode="lossless"))
    r = run_fresh(f"""
        import sys, h5py, numpy as np
        assert h5py.h5z.filter_avail({necoda_filter.FILTER_ID})
        with h5py.File({str(p)!r}, "r+") as f:
            f["m"][0:16] = 7
        assert "necoda_filter" in sys.modules  # loaded by the plugin, not by this code
        with h5py.File({str(p)!r}) as f:
            print("OK", int(f["m"][0:16].min()), int(f["m"][0:16].max()), f["m"].id.get_storage_size())
    """, PLUGIN_ENV)
    assert r.returncode == 0 and "OK 7 7" in r.stdout, r.stdout + r.stderr
    with h5py.File(p) as f:
        assert np.array_equal(f["m"][16:], a[16:]) and (f["m"][0:16] == 7).all()
        assert f["m"].id.get_storage_size() < a.nbytes  # the written chunk was compressed, not raw


def test_fresh_process_without_plugin_path_cannot_read(tmp_path):
    p = tmp_path / "m.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("m", data=movie(), chunks=(16, 24, 20), compression="necoda")
    r = run_fresh(f"""
        import h5py
        with h5py.File({str(p)!r}) as f:
            try:
                f["m"][()]
            except OSError as e:
                print("REFUSED", e)
    """)
    assert r.returncode == 0 and "REFUSED" in r.stdout, r.stdout + r.stderr


def test_plugin_in_a_python_without_necoda_filter_says_what_to_install(tmp_path):
    """HDF5_PLUGIN_PATH set in an environment where necoda_filter is not installed (e.g. a separate
    environment for the dandi client): h5py only said "filter returned failure during read". The shim
    now says on stderr, once, that necoda_filter cannot be imported and what to do; the read still raises
    OSError and the file stays usable."""
    p = tmp_path / "m.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("m", data=movie(), chunks=(16, 24, 20), compression=necoda_filter.Necoda(mode="lossless"))
    r = run_fresh(f"""
        import sys

        class NoNecoda:  # as if necoda-filter were not installed in this environment
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "necoda_filter":
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, NoNecoda())
        import h5py
        with h5py.File({str(p)!r}) as f:
            for _ in range(2):
                try:
                    f["m"][()]
                except OSError as e:
                    print("REFUSED", e)
            print("attrs ok", dict(f["m"].attrs) == {{}})
    """, PLUGIN_ENV)
    assert r.returncode == 0 and r.stdout.count("REFUSED") == 2 and "attrs ok True" in r.stdout, r.stdout + r.stderr
    assert r.stderr.count("cannot import the necoda_filter") == 1, r.stderr
    assert "pip install necoda-filter" in r.stderr and "necoda decompress" in r.stderr, r.stderr
    assert "No module named 'necoda_filter" in r.stderr, r.stderr


def test_corrupt_chunk_raises_and_others_read(tmp_path):
    a = movie(t=48)
    p = tmp_path / "c.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("m", data=a, chunks=(16, 24, 20), compression="necoda", compression_opts={"mode": "lossless"})
        good = d.id.read_direct_chunk((16, 0, 0))[1]
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        d.id.write_direct_chunk((16, 0, 0), bytes(bad), filter_mask=0)
    np.save(tmp_path / "m.npy", a)
    r = run_fresh(f"""
        import h5py, numpy as np
        a = np.load({str(tmp_path / 'm.npy')!r})
        with h5py.File({str(p)!r}) as f:
            d = f["m"]
            try:
                d[16:32]
                print("NO ERROR")
            except OSError as e:
                print("RAISED", type(e).__name__)
            assert np.array_equal(d[:16], a[:16]) and np.array_equal(d[32:], a[32:])
            try:
                d[()]
            except OSError:
                print("RAISED AGAIN")
        print("CLEAN EXIT")
    """, PLUGIN_ENV)
    assert r.returncode == 0, r.stderr
    assert "RAISED OSError" in r.stdout and "RAISED AGAIN" in r.stdout and "CLEAN EXIT" in r.stdout
    assert "checksum mismatch" in r.stderr  # the chunk's problem is named (logged by the bridge)


def test_numcodecs_entry_point_without_import():
    r = run_fresh("""
        import sys, numcodecs, numpy as np
        c = numcodecs.get_codec({"id": "necoda", "mode": "lossless"})
        assert "necoda_filter" in type(c).__module__
        a = (np.arange(1000) % 37).astype("int16").reshape(100, 10)
        assert np.array_equal(c.decode(c.encode(a)), a)
        print("OK", type(c).__name__)
    """)
    assert r.returncode == 0 and "OK NecodaCodec" in r.stdout, r.stderr


def test_zarr_v2_and_v3_round_trip_in_fresh_process(tmp_path):
    zarr = pytest.importorskip("zarr")
    from necoda_filter.zarr3 import NecodaZarrCodec

    a = movie(t=30, h=16, w=16)
    z2 = zarr.create_array(str(tmp_path / "v2.zarr"), shape=a.shape, chunks=(10, 16, 16), dtype=a.dtype,
                           compressors=necoda_filter.NecodaCodec(mode="lossless"), zarr_format=2)
    z2[:] = a
    z3 = zarr.create_array(str(tmp_path / "v3.zarr"), shape=a.shape, chunks=(10, 16, 8), dtype=a.dtype,
                           serializer=NecodaZarrCodec(mode="lossless"), compressors=None, zarr_format=3)
    z3[:] = a
    np.save(tmp_path / "a.npy", a)
    meta = json.loads((tmp_path / "v3.zarr" / "zarr.json").read_text())
    assert any(c["name"] == "necoda" for c in meta["codecs"])
    r = run_fresh(f"""
        import sys, zarr, numpy as np, warnings
        warnings.simplefilter("ignore")
        a = np.load({str(tmp_path / 'a.npy')!r})
        for name in ("v2.zarr", "v3.zarr"):
            z = zarr.open_array({str(tmp_path)!r} + "/" + name, mode="r")
            assert np.array_equal(z[:], a), name
            assert np.array_equal(z[3:17, 2:9, 5], a[3:17, 2:9, 5]), name
        print("OK")
    """)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def _nwb_with_series(path, imaging, ephys, **io_kwargs):
    from datetime import datetime, timezone

    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries
    from pynwb.file import Subject
    from pynwb.ophys import OpticalChannel, TwoPhotonSeries

    nwb = NWBFile(session_description="necoda test", identifier="necoda-test",
                  session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc),
                  subject=Subject(subject_id="m1", species="Mus musculus", sex="U", age="P90D"))
    dev = nwb.create_device(name="scope")
    ch = OpticalChannel(name="green", description="GCaMP", emission_lambda=520.0)
    plane = nwb.create_imaging_plane(name="plane", optical_channel=ch, description="L2/3", device=dev,
                                     excitation_lambda=920.0, indicator="GCaMP6s", location="V1", imaging_rate=30.0)
    nwb.add_acquisition(TwoPhotonSeries(name="TwoPhotonSeries", imaging_plane=plane, rate=30.0, unit="n.a.",
                                        data=H5DataIO(imaging, chunks=(16,) + imaging.shape[1:], **io_kwargs)))
    group = nwb.create_electrode_group(name="shank", description="tetrode", location="AL", device=dev)
    for _ in range(ephys.shape[1]):
        nwb.add_electrode(group=group, location="AL")
    region = nwb.create_electrode_table_region(list(range(ephys.shape[1])), "all")
    nwb.add_acquisition(ElectricalSeries(name="ElectricalSeries", electrodes=region, rate=15000.0,
                                         conversion=1.95e-7, data=H5DataIO(ephys, chunks=(4096, ephys.shape[1]), **io_kwargs)))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def ephys_data(n=20000, c=4, seed=1):
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.normal(size=(n, c)), axis=0) * 3 + rng.normal(size=(n, c)) * 10).astype(np.int16)


@pytest.mark.parametrize("how", ["string", "mapping"])
def test_pynwb_round_trip_in_fresh_process(tmp_path, how):
    import warnings

    a, e = movie(), ephys_data()
    kw = (dict(compression="necoda") if how == "string"
          else dict(**necoda_filter.Necoda(mode="lossless"), allow_plugin_filters=True))
    p = tmp_path / f"{how}.nwb"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _nwb_with_series(p, a, e, **kw)
    with h5py.File(p) as f:
        for k in ("TwoPhotonSeries", "ElectricalSeries"):
            d = f["acquisition"][k]["data"]
            assert d.id.get_create_plist().get_filter(0)[0] == necoda_filter.FILTER_ID
            assert d.id.get_storage_size() < d.nbytes
    from necoda_filter.commands.info import file_info

    modes_ = {row["path"].split("/")[-2]: row["chunk_modes"] for row in file_info(p)}
    # compression="necoda" means mode "auto": learned for imaging-shaped data, lossless for ephys
    assert modes_["TwoPhotonSeries"] == ({"learned": 3} if how == "string" else {"lossless": 3})
    assert modes_["ElectricalSeries"] == {"lossless": 5}
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "e.npy", e)
    r = run_fresh(f"""
        import sys, numpy as np
        from pynwb import NWBHDF5IO
        a = np.load({str(tmp_path / 'a.npy')!r})
        with NWBHDF5IO({str(p)!r}, "r") as io:
            nwb = io.read()
            got = nwb.acquisition["TwoPhotonSeries"].data[:]
            assert got.shape == a.shape and got.dtype == a.dtype
            if {how!r} == "string":  # lossy: the static image survives, the noise need not
                mean_err = np.abs(got.mean(0) - a.mean(0).astype(float)).mean()
                assert mean_err < a.std(), mean_err
            else:
                assert np.array_equal(got, a)
            assert np.array_equal(nwb.acquisition["ElectricalSeries"].data[:], np.load({str(tmp_path / 'e.npy')!r}))
        assert "torch" not in sys.modules
        print("OK")
    """, PLUGIN_ENV)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_nwbinspector_reads_without_errors(tmp_path):
    pytest.importorskip("nwbinspector")
    import warnings

    p = tmp_path / "insp.nwb"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _nwb_with_series(p, movie(), ephys_data(), compression="necoda")
    r = run_fresh(f"""
        from nwbinspector import inspect_nwbfile, Importance
        msgs = list(inspect_nwbfile(nwbfile_path={str(p)!r}))
        bad = [m for m in msgs if m.importance in (Importance.ERROR, Importance.CRITICAL, Importance.PYNWB_VALIDATION)]
        for m in msgs:
            print(m.importance.name, m.check_function_name, m.message[:120])
        print("BAD", len(bad))
    """, PLUGIN_ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "BAD 0" in r.stdout, r.stdout
    assert "filter" not in r.stdout.lower() or "necoda" not in r.stdout.lower(), r.stdout


def test_h5py_version_guard_patch_is_active():
    from h5py._hl import filters as hf

    assert "necoda" in hf.encode and getattr(hf.fill_dcpl, "_necoda", False)
    assert hf.get_filter_name(necoda_filter.FILTER_ID) == "necoda"


def test_non_python_host_fails_cleanly(tmp_path):
    """A C program linked to h5py's libhdf5 (no Python in the process) reading a necoda dataset through
    HDF5_PLUGIN_PATH: the read fails with our message; the program does not crash."""
    import glob
    import os
    import shutil
    import subprocess
    from pathlib import Path

    cc = shutil.which("cc") or shutil.which("gcc")
    libs = glob.glob(os.path.join(os.path.dirname(h5py.__file__), os.pardir, "h5py.libs", "libhdf5-*.so*"))
    if not cc or not libs:
        pytest.skip("needs a C compiler and h5py's bundled libhdf5")
    lib = os.path.realpath(libs[0])
    exe = tmp_path / "host"
    src = Path(__file__).parent / "data" / "nopython_host.c"
    subprocess.run([cc, str(src), "-o", str(exe), lib, f"-Wl,-rpath,{os.path.dirname(lib)}"], check=True)
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("m", data=np.arange(1000, dtype="u2").reshape(10, 100), chunks=(5, 100), compression="necoda")
    r = subprocess.run([str(exe), str(p), "m"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **PLUGIN_ENV})
    assert r.returncode == 0, r.stderr
    assert "READ rc=-1" in r.stdout and "CLEAN EXIT" in r.stdout
    assert "no Python interpreter" in r.stderr


def test_chunk_from_another_dataset_is_refused(tmp_path):
    """A valid necoda chunk of the wrong shape or type, written into a dataset, raises on read."""
    p = tmp_path / "swap.h5"
    with h5py.File(p, "w") as f:
        a = f.create_dataset("a", data=np.arange(100, dtype="u2"), chunks=(10,), compression="necoda")
        b = f.create_dataset("b", data=np.arange(100, dtype="f4"), chunks=(20,), compression="necoda")
        a.id.write_direct_chunk((0,), b.id.read_direct_chunk((0,))[1], filter_mask=0)
        with pytest.raises(OSError):
            a[:10]
        np.testing.assert_array_equal(a[10:], np.arange(10, 100))


@pytest.mark.parametrize("dtype", [">u2", ">i4", ">f8", "i1", "<f4"])
def test_filter_decodes_every_layout_through_h5py(tmp_path, dtype):
    """The filter decodes straight into the buffer it hands HDF5: big-endian file types, partial edge
    chunks (coded as their zero-free core), raw-fallback chunks and all-zero chunks all read back exactly."""
    rng = np.random.default_rng(3)
    a = (rng.poisson(40, (37, 11, 9)) - (20 if np.dtype(dtype).kind != "u" else 0)).astype(dtype)
    a[30:] = 0  # the last frames' chunk is all zeros, the one before has a zero tail
    p = tmp_path / "layouts.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("lossless", data=a, chunks=(8, 8, 8), compression=necoda_filter.Necoda(mode="lossless"))
        f.create_dataset("bounded", data=a, chunks=(8, 8, 8), compression=necoda_filter.Necoda(mode="bounded",
                                                                                                max_error=2))
        if np.dtype(dtype).kind == "f":
            nan = a.copy()
            nan[3, 2, 1] = np.nan  # the learned encoder refuses NaN: that chunk is stored raw in a container
            f.create_dataset("raw_fallback", data=nan, chunks=(8, 11, 9),
                             compression=necoda_filter.Necoda(mode="learned"))
    with h5py.File(p, "r") as f:
        assert f["lossless"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(f["lossless"][...], a)
        assert np.abs(f["bounded"][...].astype(np.float64) - a.astype(np.float64)).max() <= 2
        assert (f["bounded"][30:] == 0).all()
        if "raw_fallback" in f:
            got = f["raw_fallback"][0:8]
            np.testing.assert_array_equal(got, nan[0:8])  # NaN included: raw chunk, exact


def test_decoded_chunk_buffers_ask_for_huge_pages_over_their_aligned_part():
    """decode_owned advises MADV_HUGEPAGE over the 2 MiB-aligned part of large buffers only."""
    from necoda_filter import _bridge

    calls = []

    class Lib:
        def madvise(self, addr, n, advice):
            calls.append((addr, n, advice))
            return 0

    M = _bridge.HUGE
    _bridge._advise_huge(Lib(), 3 * M + 16, 32 << 20)
    if sys.platform.startswith("linux"):
        assert calls == [(4 * M, 15 * M, _bridge.MADV_HUGEPAGE)]
    else:
        assert calls == []
    calls.clear()
    _bridge._advise_huge(Lib(), 3 * M + 16, 1 << 20)  # small: left alone
    assert calls == []
    _bridge._advise_huge(Lib(), 16, _bridge.HUGE_MIN_BYTES)  # 4 MiB from 16: one aligned 2 MiB inside
    if sys.platform.startswith("linux"):
        assert calls == [(M, M, _bridge.MADV_HUGEPAGE)]


def test_shim_defaults_for_the_bare_filter_id_are_those_of_necoda(tmp_path):
    """HDF5 code that adds filter 311 with no cd_values (any tool using only HDF5_PLUGIN_PATH) gets the
    options of ``Necoda()``: mode auto and no bound (were max_error=0: every movie chunk stored raw)."""
    p = tmp_path / "bare.h5"
    m = movie(t=32, h=32, w=32)
    np.save(tmp_path / "m.npy", m)
    r = run_fresh(f"""
        import h5py, numpy as np
        m = np.load({str(tmp_path / "m.npy")!r})
        with h5py.File({str(p)!r}, "w") as f:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk(m.shape)
            dcpl.set_filter({necoda_filter.FILTER_ID}, h5py.h5z.FLAG_OPTIONAL, ())
            sid = h5py.h5s.create_simple(m.shape)
            dsid = h5py.h5d.create(f.id, b"m", h5py.h5t.NATIVE_UINT16, sid, dcpl=dcpl)
            dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, m)
            cd = dsid.get_create_plist().get_filter_by_id({necoda_filter.FILTER_ID})[1]
            print(list(cd))
    """, PLUGIN_ENV)
    assert r.returncode == 0, r.stderr
    cd = json.loads(r.stdout.strip().splitlines()[-1])
    assert tuple(cd[:8]) == necoda_filter.options.to_cd_values("auto")
    with h5py.File(p, "r") as f:
        ds = f["m"]
        info = necoda_filter.chunk.info(ds.id.read_direct_chunk((0, 0, 0))[1])
        assert necoda_filter.modes.MODE_NAMES[info.mode_id] == "learned"  # "auto" on a movie; not raw


def test_filters_that_change_the_bytes_before_necoda_are_refused(tmp_path):
    """h5py puts scaleoffset and shuffle before the compression filter. After scaleoffset necoda got a
    smaller buffer and every chunk written was unreadable; after shuffle a bounded chunk broke its bound
    (max error 767 for max_error=2). Such pipelines are refused when the dataset is created, through h5py
    and hdmf's arguments (a clear ValueError) and through a hand-made property list (the shim's set_local);
    the exact modes take shuffled bytes bit for bit, and fletcher32 (after necoda) keeps working."""
    from necoda_filter import FILTER_ID, Necoda

    rng = np.random.default_rng(0)
    x = (rng.normal(0, 300, (4096, 8))).astype(np.int16)
    bounded = Necoda(mode="bounded", max_error=2)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        for kw in (dict(compression=bounded, shuffle=True),
                   dict(compression="necoda", compression_opts={"mode": "bounded", "max_error": 2}, shuffle=True),
                   dict(compression="necoda", shuffle=True)):  # mode "auto": lossy for movies
            with pytest.raises(ValueError, match="shuffle=True regroups the bytes"):
                f.create_dataset("s", data=x, chunks=(1024, 8), **kw)
        with pytest.raises(ValueError, match="scaleoffset"):
            f.create_dataset("o", data=x, chunks=(1024, 8), compression=Necoda(mode="lossless"), scaleoffset=0)
        assert "s" not in f and "o" not in f
        with pytest.warns(UserWarning, match="shuffle=True before necoda mode 'lossless': still bit-exact"):
            f.create_dataset("ls", data=x, chunks=(1024, 8), compression=Necoda(mode="lossless"), shuffle=True)
        f.create_dataset("bf", data=x, chunks=(1024, 8), compression=bounded, fletcher32=True)
        for filters, cd in (([("shuffle",)], bounded.filter_options),
                            ([("scaleoffset", h5py.h5z.SO_INT, 0)], Necoda(mode="lossless").filter_options),
                            ([("deflate", 4)], Necoda(mode="lossless").filter_options)):
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk((1024, 8))
            for name, *args in filters:
                getattr(dcpl, f"set_{name}")(*args)
            dcpl.set_filter(FILTER_ID, 0, cd)
            space = h5py.h5s.create_simple(x.shape)
            with pytest.raises(ValueError, match="before necoda"):  # set_local refuses: no dataset
                h5py.h5d.create(f.id, b"low", h5py.h5t.NATIVE_INT16, space, dcpl=dcpl)
            assert "low" not in f
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert np.array_equal(f["ls"][:], x)
        assert np.abs(f["bf"][:].astype(np.int32) - x).max() <= 2


def test_bridge_refuses_a_chunk_buffer_of_the_wrong_size():
    """What the shim's encoder does when a filter before it changed the chunk's size: an error (the write
    fails) instead of a flat chunk that no read could turn back into the dataset's chunk."""
    from necoda_filter import Necoda, _bridge

    cd = Necoda(mode="lossless").filter_options + (0, 2, 1, 0, 2, 16, 4)  # int16 (16, 4) chunk, little-endian
    good = np.arange(64, dtype=np.int16).tobytes()
    assert necoda_filter.chunk.decode(_bridge.encode(cd, memoryview(good))).shape == (16, 4)
    with pytest.raises(ValueError, match="HDF5 handed necoda 100 bytes for a \\(16, 4\\) int16 chunk"):
        _bridge.encode(cd, memoryview(good[:100]))


@pytest.mark.parametrize("how", ["import", "plugin_path"])
def test_file_left_open_at_exit_keeps_its_chunks(tmp_path, how):
    """A script that writes a necoda dataset and exits without closing the file: HDF5 flushed the cached
    chunks during interpreter shutdown, when the filter could no longer run Python, and they were lost
    (the dataset read back as zeros). The atexit flush (necoda_filter/exitflush.py) writes them first,
    compressed; with HDF5_PLUGIN_PATH alone the filter's set_local imports the package to register it."""
    p = tmp_path / "open.h5"
    a = movie(t=40)
    make = (f"compression=necoda_filter.Necoda(mode='lossless')" if how == "import"
            else f"compression={necoda_filter.FILTER_ID}")
    r = run_fresh(f"""
        import numpy as np
        import h5py
        {"import necoda_filter" if how == "import" else ""}
        f = h5py.File({str(p)!r}, "w")
        rng = np.random.default_rng(0)
        base = rng.integers(200, 400, size=(24, 20))
        a = (base + rng.poisson(30, size=(40, 24, 20))).astype(np.uint16)
        d = f.create_dataset("m", data=a, chunks=(16, 24, 20), {make})  # kept open: its chunks stay cached
        d2 = h5py.File({str(p)!r} + ".2", "w").create_dataset("m", data=a, chunks=(16, 24, 20), {make})
        ro = h5py.File({str(p)!r}, "r")  # a second, read-only handle on the same file
        print("exiting with the file open")
    """, PLUGIN_ENV if how == "plugin_path" else None)
    assert r.returncode == 0 and "exiting" in r.stdout, r.stdout + r.stderr
    assert "no Python interpreter" not in r.stderr and "stored raw" not in r.stderr, r.stderr
    ref = tmp_path / "closed.h5"  # the same write, file closed: what the filter writes (auto mode may be lossy)
    with h5py.File(ref, "w") as f:
        f.create_dataset("m", data=a, chunks=(16, 24, 20), **(necoda_filter.Necoda(mode="lossless")
                                                              if how == "import" else
                                                              {"compression": necoda_filter.FILTER_ID}))
    with h5py.File(p, "r") as f, h5py.File(ref, "r") as g:
        d = f["m"]
        assert d.id.get_num_chunks() == 3
        head = d.id.read_direct_chunk((0, 0, 0))[1]
        assert head[:4] == b"NCDA" and head[5] != 0  # compressed by the flush, not stored raw at shutdown
        assert np.array_equal(d[()], g["m"][()]) and d[()].any()
        if how == "import":
            assert np.array_equal(d[()], a)
    with h5py.File(str(p) + ".2", "r") as f, h5py.File(ref, "r") as g:  # open through its dataset only
        assert f["m"].id.read_direct_chunk((0, 0, 0))[1][5] != 0 and np.array_equal(f["m"][()], g["m"][()])


def test_exit_flush_flushes_writable_files_only(tmp_path):
    from necoda_filter import exitflush

    p, q = tmp_path / "w.h5", tmp_path / "r.h5"
    with h5py.File(q, "w") as f:
        f["x"] = 1
    with h5py.File(p, "w") as f, h5py.File(q, "r"):
        f.create_dataset("m", data=movie(), chunks=(16, 24, 20), **necoda_filter.Necoda(mode="lossless"))
        assert exitflush.flush_open_files() == 1
    assert exitflush.flush_open_files() == 0  # none open
    # a file kept open by its dataset alone (no file object left)
    d = h5py.File(p, "a").create_dataset("n", data=movie(), chunks=(16, 24, 20),
                                         **necoda_filter.Necoda(mode="lossless"))
    assert exitflush.flush_open_files() == 1
    d.file.close()


@pytest.mark.parametrize("dtype", ["<u2", ">i2", "<f4"])
def test_chunks_flushed_during_shutdown_are_stored_raw_in_the_container(tmp_path, dtype):
    """When HDF5 flushes chunks after the atexit flush (here: the handler is unregistered, as if the file
    had been written after it ran), the interpreter is shutting down and the Python codecs cannot run. The
    filter used to fail those writes and the chunks were lost; the C shim now stores them raw in the necoda
    container (what the raw mode writes: every reader decodes it, big-endian file types included)."""
    p = tmp_path / "late.h5"
    r = run_fresh(f"""
        import atexit
        import numpy as np
        import h5py
        import necoda_filter
        from necoda_filter import exitflush
        atexit.unregister(exitflush.flush_open_files)
        f = h5py.File({str(p)!r}, "w")
        a = (np.arange(40 * 24 * 20) % 1000 - 300).astype({dtype!r}).reshape(40, 24, 20)
        d = f.create_dataset("m", data=a, chunks=(16, 24, 20), **necoda_filter.Necoda(mode="lossless"))
    """)  # the dataset stays open (``d``): closing it would flush its chunk cache there and then
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stored raw in the necoda container" in r.stderr, r.stderr
    a = (np.arange(40 * 24 * 20) % 1000 - 300).astype(dtype).reshape(40, 24, 20)
    with h5py.File(p, "r") as f:
        d = f["m"]
        assert d.id.get_num_chunks() == 3
        head = d.id.read_direct_chunk((16, 0, 0))[1]
        assert head[:4] == b"NCDA" and head[5] == 0  # mode 0: raw
        assert d.dtype == np.dtype(dtype) and np.array_equal(d[()], a)
        assert necoda_filter.container.parse_header(head).shape == (16, 24, 20)


def test_exit_flush_in_a_forked_child_leaves_the_parents_files_alone(tmp_path):
    """A forked child that exits normally runs the atexit flush; the files it inherited are the parent's
    (flushing its copy of their cache from the child would write behind the parent's back)."""
    import os

    from necoda_filter import exitflush

    with h5py.File(tmp_path / "parent.h5", "w") as f:
        f.create_dataset("m", data=movie(), chunks=(16, 24, 20), **necoda_filter.Necoda(mode="lossless"))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report what the flush did, then leave at once
            try:
                os.write(w, str(exitflush.flush_open_files()).encode())
            finally:
                os._exit(0)
        import select
        import signal

        os.close(w)
        ready = select.select([r], [], [], 60)[0]
        got = os.read(r, 100).decode() if ready else "timeout"
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        assert got == "0"
        assert exitflush.flush_open_files() == 1  # the parent flushes its own file
