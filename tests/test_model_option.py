"""Choosing the learned model through every writing API: ``Necoda(model=...)`` (h5py), the cd_values layout
2 that stores the model id (written only when a model is named; layout 1, the default model, is still
written otherwise, read, appended to, and kept by set_local), the numcodecs and zarr v3 codecs' ``model``
config key, and ``necoda compress --model``.

The "custom" model is the built-in default package copied to a temporary folder with one key added to its
tables.json: the same network, another content id (the registry hashes encoder, decoder, tables and the
optional context graph), never on the search path unless a test puts it there. No torch is needed.
"""
import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import necoda_filter
from conftest import run_fresh
from necoda_filter import FILTER_ID, Necoda, chunk, options
from necoda_filter.constants import CD_LAYOUT_VERSION, CD_MODEL_SLOT, CD_USER_SLOTS, CD_USER_SLOTS_V1
from necoda_filter.models import registry

pytest.importorskip("onnxruntime")
if not necoda_filter.modes.learned_available():
    pytest.skip("the learned mode is not available", allow_module_level=True)

PLUGIN_ENV = {"HDF5_PLUGIN_PATH": necoda_filter.PLUGIN_PATH}
NOT_INSTALLED = "necoda-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_model_path(monkeypatch):
    """Tests (and the fresh processes they start) see only the built-in models unless they say otherwise."""
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


def _copy_model(dst, **table_changes):
    src = registry.BUILTIN_DIR / registry.DEFAULT_NAME
    shutil.copytree(src, dst)
    tables = json.loads((dst / "tables.json").read_text())
    tables.update(table_changes)
    (dst / "tables.json").write_text(json.dumps(tables, indent=1))
    return dst, registry.model_id_of_dir(dst)


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    """(folder, id) of a model that only this test module knows."""
    folder, mid = _copy_model(tmp_path_factory.mktemp("models") / "custom-v1", note="test copy of the default")
    assert mid != registry.default().id and registry.is_model_id(mid)
    return folder, mid


def movie(t=16, h=32, w=32, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(200, 400, size=(h, w))
    return (base + rng.poisson(30, size=(t, h, w))).astype(np.uint16)


def _cd(dset):
    return tuple(dset.id.get_create_plist().get_filter_by_id(FILTER_ID)[1])


def _header(dset, offset):
    return chunk.info(dset.id.read_direct_chunk(offset)[1])


# ------------------------------------------------------------------------------------------- the filter object

def test_necoda_model_is_resolved_and_stored_as_its_id(custom):
    folder, mid = custom
    f = Necoda(mode="learned", model=folder)  # a Path or a str
    assert f.options["model"] == mid and repr(f) == f"Necoda(mode='learned', model={mid!r})"
    cd = f.filter_options
    assert len(cd) == CD_USER_SLOTS and cd[0] == CD_LAYOUT_VERSION == 2
    assert (cd[CD_MODEL_SLOT + 1] << 32 | cd[CD_MODEL_SLOT]) == int(mid[len("necoda-"):], 16)  # low word first
    assert Necoda(mode="auto", model=str(folder)).options["model"] == mid
    assert Necoda(mode="learned", model=mid).options["model"] == mid  # known here once named as a folder
    default = registry.default().id
    named = Necoda(mode="learned", model=registry.DEFAULT_NAME)  # named: pinned, whatever a later default
    assert named.options["model"] == default and named.filter_options[0] == 2
    # no model: layout 1, the lowest layout that describes the options (older releases read such files)
    for plain in (Necoda(), Necoda(mode="learned", quality=3), Necoda(mode="lossless")):
        assert len(plain.filter_options) == CD_USER_SLOTS_V1 and plain.filter_options[0] == 1


def test_bad_model_names_are_refused_naming_them(custom, tmp_path):
    folder, _ = custom
    with pytest.raises(LookupError, match="'no-such-model' not found.*imaging-v2.1"):
        Necoda(mode="learned", model="no-such-model")
    with pytest.raises(LookupError, match=f"'{NOT_INSTALLED}' is not installed.*NECODA_MODEL_PATH"):
        Necoda(mode="learned", model=NOT_INSTALLED)
    with pytest.raises(LookupError, match="not found"):
        Necoda(mode="learned", model=str(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "encoder.onnx").unlink()
    with pytest.raises(LookupError, match="not a complete model package"):
        Necoda(mode="learned", model=broken)
    for mode in ("lossless", "bounded", "raw"):
        with pytest.raises(ValueError, match="applies to mode 'learned' or 'auto' only"):
            Necoda(mode=mode, model=folder, **({"max_error": 2} if mode == "bounded" else {}))
    with pytest.raises(TypeError, match="model must be"):
        Necoda(mode="learned", model=3)


def test_quality_is_checked_against_the_chosen_model(tmp_path):
    folder, mid = _copy_model(tmp_path / "five-levels", n_quality=5)
    assert Necoda(mode="learned", quality=7).options["quality"] == 7  # the default model has 9 levels
    with pytest.raises(ValueError, match=f"quality must be 1..5 \\(levels of model five-levels \\({mid}\\)\\)"):
        Necoda(mode="learned", quality=7, model=folder)
    assert Necoda(mode="learned", quality=5, model=folder).options == {"quality": 5, "model": mid}


# ------------------------------------------------------------------------------------------------ cd_values

def test_cd_values_round_trip_in_both_layouts(custom):
    _, mid = custom
    cd2 = options.to_cd_values("learned", quality=3, max_error=2.5, model=mid)
    assert options.user_options(cd2) == ("learned", {"quality": 3, "max_error": 2.5, "model": mid})
    assert options.user_options(options.to_cd_values("auto")) == ("auto", {})
    # layout 1: 8 user slots, no model; set_local's slots follow at slot 8
    cd1 = options.to_cd_values("learned", quality=3, max_error=2.5)
    assert cd1 == (1,) + cd2[1:CD_USER_SLOTS_V1]
    assert options.user_options(cd1) == ("learned", {"quality": 3, "max_error": 2.5})
    # a layout-2 tuple with the model slots 0, 0 (not written by Necoda, but valid) means the default model
    assert options.user_options(cd2[:CD_MODEL_SLOT] + (0, 0)) == ("learned", {"quality": 3, "max_error": 2.5})
    appended = (0, 2, 0, 0, 3, 16, 32, 24)  # uint16, little-endian, rank 3, chunk (16, 32, 24)
    for cd in (cd1 + appended, cd2 + appended):
        assert options.chunk_layout(cd) == (np.dtype("<u2"), (16, 32, 24))
    assert options.user_options(cd1 + appended)[1] == {"quality": 3, "max_error": 2.5}  # slots 8, 9 not a model
    assert options.user_options(cd2 + appended)[1]["model"] == mid
    assert options.model_from_words(*options.model_words(mid)) == mid
    assert options.model_words(None) == (0, 0) and options.model_from_words(0, 0) is None
    with pytest.raises(ValueError, match="layout version 3 is not supported"):
        options.user_options((3,) + cd2[1:])
    with pytest.raises(ValueError, match="too short"):
        options.user_options(cd2[:CD_USER_SLOTS_V1])  # layout 2 cut to layout 1's length
    with pytest.raises(ValueError, match="uses no model"):
        options.user_options((2, 1) + cd2[2:])  # lossless naming a model


def test_set_local_keeps_the_layout_it_is_given(tmp_path, custom):
    """set_local appends its slots after the user slots of the layout in slot 0: a layout-1 user tuple (what
    Necoda writes without a model, an older release's filter_options) stays layout 1, the default model;
    whole cd_values copied from another dataset (set_local's slots included: from slot 8 in layout 1, slot
    10 in layout 2) are cut to their user slots first, never read as a model id or appended twice."""
    folder, mid = custom
    x = movie()
    v1 = options.to_cd_values("bounded", max_error=3)
    v2 = options.to_cd_values("learned", model=mid)
    appended = (0, 2, 0, 0, 3, 16, 32, 32)  # uint16, little-endian, chunk (16, 32, 32)
    cases = {"v1": (v1, v1), "v1_whole": (v1 + appended, v1), "v2": (v2, v2), "v2_whole": (v2 + appended, v2),
             "v2_default": (v2[:CD_MODEL_SLOT] + (0, 0), v2[:CD_MODEL_SLOT] + (0, 0))}
    with h5py.File(tmp_path / "u.h5", "w") as f:
        for name, (given, _) in cases.items():
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk((16, 32, 32))
            dcpl.set_filter(FILTER_ID, 0, given)
            dsid = h5py.h5d.create(f.id, name.encode(), h5py.h5t.NATIVE_UINT16, h5py.h5s.create_simple(x.shape),
                                   dcpl=dcpl)
            dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, x)
        f.create_dataset("opts", data=x, chunks=(16, 32, 32), compression="necoda", compression_opts=v1)
        cases["opts"] = (v1, v1)
        bad = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        bad.set_chunk((16, 32, 32))
        bad.set_filter(FILTER_ID, 0, (3,) + v2[1:])
        with pytest.raises(ValueError):  # an unknown layout: set_local refuses, no dataset
            h5py.h5d.create(f.id, b"bad", h5py.h5t.NATIVE_UINT16, h5py.h5s.create_simple(x.shape), dcpl=bad)
    with h5py.File(tmp_path / "u.h5", "r") as f:
        assert "bad" not in f
        for name, (_, user) in cases.items():
            assert _cd(f[name]) == user + appended, name
        assert np.abs(f["v1"][:].astype(int) - x).max() <= 3
        assert _header(f["v2"], (0, 0, 0)).model_id == mid
        assert _header(f["v2_default"], (0, 0, 0)).model_id == registry.default().id


def _create_layout1_dataset(path, shape, chunks, cd_user_v1, maxshape):
    """A dataset whose stored cd_values are layout 1, as necoda-filter wrote them before layout 2 (8 user
    slots, set_local's slots from slot 8, the filter mandatory). Today's set_local would upgrade them, so a
    fresh process that does not import necoda_filter registers a stand-in filter 311 without set_local (a
    ctypes H5Z_class2_t whose filter function copies the bytes) and creates the dataset with it."""
    appended = (0, 2, 0, 0, len(chunks), *chunks)  # uint16, little-endian
    r = run_fresh(f"""
        import ctypes, h5py, sys
        assert "necoda_filter" not in sys.modules
        FILTER = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_uint, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint),
                                  ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_void_p))

        class H5ZClass2(ctypes.Structure):
            _fields_ = [("version", ctypes.c_int), ("id", ctypes.c_int), ("encoder_present", ctypes.c_uint),
                        ("decoder_present", ctypes.c_uint), ("name", ctypes.c_char_p), ("can_apply", ctypes.c_void_p),
                        ("set_local", ctypes.c_void_p), ("filter", FILTER)]

        same = FILTER(lambda flags, n, cd, nbytes, size, buf: nbytes)
        cls = H5ZClass2(1, {FILTER_ID}, 1, 1, b"stand-in", None, None, same)
        hdf5 = ctypes.CDLL(h5py.h5z.__file__)  # dlsym searches its dependencies: h5py's libhdf5
        assert hdf5.H5Zregister(ctypes.byref(cls)) >= 0
        with h5py.File({str(path)!r}, "w") as f:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk({tuple(chunks)!r})
            dcpl.set_filter({FILTER_ID}, 0, {tuple(cd_user_v1) + appended!r})  # mandatory
            maxshape = tuple(h5py.h5s.UNLIMITED if m is None else m for m in {tuple(maxshape)!r})
            space = h5py.h5s.create_simple({tuple(shape)!r}, maxshape)
            h5py.h5d.create(f.id, b"m", h5py.h5t.STD_U16LE, space, dcpl=dcpl)
        print("OK")
    """)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    return tuple(cd_user_v1) + appended


def test_layout1_file_is_read_and_appended_to(tmp_path):
    p = tmp_path / "old.h5"
    x = movie(t=32)
    v1_user = (1,) + options.to_cd_values("lossless")[1:CD_USER_SLOTS_V1]
    stored = _create_layout1_dataset(p, (16, 32, 32), (16, 32, 32), v1_user, (None, 32, 32))
    with h5py.File(p, "r+") as f:
        d = f["m"]
        assert _cd(d) == stored and d.id.get_create_plist().get_filter_by_id(FILTER_ID)[0] & 1 == 0  # mandatory
        d[:] = x[:16]  # the dataset's first chunk, written by today's filter with layout-1 cd_values
        d.resize((32, 32, 32))
        d[16:] = x[16:]  # appended
    with h5py.File(p, "r") as f:
        d = f["m"]
        assert _cd(d) == stored  # appends never rewrite cd_values
        for off in ((0, 0, 0), (16, 0, 0)):
            h = _header(d, off)
            assert necoda_filter.modes.MODE_NAMES[h.mode_id] == "lossless" and h.model_id == ""
    r = run_fresh(f"""
        import h5py, numpy as np
        with h5py.File({str(p)!r}, "r") as f:
            print("SUM", int(f["m"][:].astype(np.int64).sum()))
    """, PLUGIN_ENV)
    assert r.returncode == 0 and f"SUM {int(x.astype(np.int64).sum())}" in r.stdout, r.stdout + r.stderr


def test_layout1_learned_file_appends_with_the_default_model(tmp_path):
    p = tmp_path / "old-learned.h5"
    v1_user = (1,) + options.to_cd_values("learned", quality=4)[1:CD_USER_SLOTS_V1]
    _create_layout1_dataset(p, (16, 32, 32), (16, 32, 32), v1_user, (None, 32, 32))
    x = movie(t=32)
    with h5py.File(p, "r+") as f:
        f["m"].resize((32, 32, 32))
        f["m"][:] = x
    with h5py.File(p, "r") as f:
        for off in ((0, 0, 0), (16, 0, 0)):
            h = _header(f["m"], off)
            assert necoda_filter.modes.MODE_NAMES[h.mode_id] == "learned" and h.params["q"] == 4
            assert h.model_id == registry.default().id


# ----------------------------------------------------------------------------------------- h5py, fresh readers

def _write_custom(path, folder, x):
    with h5py.File(path, "w") as f:
        f.create_dataset("m", data=x, chunks=(16, 32, 32), maxshape=(None, 32, 32),
                         compression=Necoda(mode="learned", model=folder, quality=5))
    with h5py.File(path, "r") as f:  # decoded here (in the open file, the chunk cache held the data written)
        return f["m"][:]


def test_h5py_write_with_a_model_folder_and_read_back_in_fresh_processes(custom, tmp_path):
    folder, mid = custom
    p = tmp_path / "custom.h5"
    x = movie(t=32)
    got = _write_custom(p, folder, x)  # this process's filter uses the folder: no NECODA_MODEL_PATH
    with h5py.File(p, "r") as f:
        d = f["m"]
        assert options.user_options(_cd(d)) == ("learned", {"quality": 5, "model": mid})
        for off in ((0, 0, 0), (16, 0, 0)):
            h = _header(d, off)
            assert necoda_filter.modes.MODE_NAMES[h.mode_id] == "learned" and h.model_id == mid
    code = f"""
        import h5py, numpy as np
        with h5py.File({str(p)!r}, "r") as f:
            try:
                a = f["m"][:]
            except OSError as e:
                print("READ FAILED", e)
            else:
                np.save({str(tmp_path / "read.npy")!r}, a)
                print("READ OK")
    """
    r = run_fresh(code, PLUGIN_ENV)  # without the model: a clear error naming the id, never garbage
    assert r.returncode == 0 and "READ FAILED" in r.stdout, r.stdout + r.stderr
    assert f"necoda model '{mid}' is not installed" in r.stderr and "NECODA_MODEL_PATH" in r.stderr, r.stderr
    r = run_fresh(code, {**PLUGIN_ENV, registry.ENV_VAR: str(folder)})
    assert r.returncode == 0 and "READ OK" in r.stdout, r.stdout + r.stderr
    assert np.array_equal(np.load(tmp_path / "read.npy"), got)
    r = run_fresh(code, {**PLUGIN_ENV, registry.ENV_VAR: str(folder.parent)})  # a folder of packages
    assert r.returncode == 0 and "READ OK" in r.stdout, r.stdout + r.stderr


def test_appending_without_the_model_fails_naming_it_and_with_it_uses_it(custom, tmp_path):
    """The dataset's cd_values name the model: a process that lacks it cannot write chunks (an error naming
    the id and NECODA_MODEL_PATH; the filter is mandatory, nothing is stored raw); with the folder on
    NECODA_MODEL_PATH the appended chunk is coded with that model."""
    folder, mid = custom
    p = tmp_path / "append.h5"
    _write_custom(p, folder, movie(t=16))
    code = f"""
        import h5py, numpy as np
        import necoda_filter
        with h5py.File({str(p)!r}, "r+", rdcc_nbytes=0) as f:  # no chunk cache: the write itself runs the filter
            d = f["m"]
            d.resize((32, 32, 32))
            try:
                d[16:32] = np.full((16, 32, 32), 300, np.uint16)
            except OSError as e:
                print("WRITE FAILED", e)
                d.resize((16, 32, 32))
            else:
                print("WRITE OK")
    """
    r = run_fresh(code)
    assert r.returncode == 0 and "WRITE FAILED" in r.stdout, r.stdout + r.stderr
    assert f"necoda model '{mid}'" in r.stderr and "NECODA_MODEL_PATH" in r.stderr, r.stderr
    with h5py.File(p, "r") as f:
        assert f["m"].shape == (16, 32, 32) and f["m"].id.get_num_chunks() == 1
    r = run_fresh(code, {registry.ENV_VAR: str(folder)})
    assert r.returncode == 0 and "WRITE OK" in r.stdout, r.stdout + r.stderr
    with h5py.File(p, "r") as f:
        h = _header(f["m"], (16, 0, 0))
        assert necoda_filter.modes.MODE_NAMES[h.mode_id] == "learned" and h.model_id == mid and h.params["q"] == 5
        assert np.abs(f["m"][16:].astype(int) - 300).max() < 300


def test_bridge_refuses_to_write_with_a_model_it_lacks():
    """What the shim's encoder does with cd_values naming a model that is not installed: an error naming it
    (chunk.encode alone would have stored the chunk raw, as for a chunk the mode cannot code)."""
    from necoda_filter import _bridge

    cd = [CD_LAYOUT_VERSION, *options.to_cd_values("learned")[1:], *options.model_words(NOT_INSTALLED)]
    assert len(cd) == CD_USER_SLOTS
    cd += [0, 2, 0, 0, 3, 16, 32, 32]
    with pytest.raises(LookupError, match=f"{NOT_INSTALLED}.*NECODA_MODEL_PATH"):
        _bridge.encode(tuple(cd), memoryview(movie().tobytes()))
    cd[1] = 255  # auto: a movie chunk would use the model; a chunk too small for the learned mode does not
    with pytest.raises(LookupError, match=NOT_INSTALLED):
        _bridge.encode(tuple(cd), memoryview(movie().tobytes()))
    small = cd[:CD_USER_SLOTS] + [0, 2, 0, 0, 2, 16, 4]
    enc = _bridge.encode(tuple(small), memoryview(np.arange(64, dtype=np.uint16).tobytes()))
    assert necoda_filter.modes.MODE_NAMES[chunk.info(enc).mode_id] == "lossless"


# ------------------------------------------------------------------------------------------- numcodecs, zarr

def test_numcodecs_model_config_round_trip(custom):
    import numcodecs

    from necoda_filter import NecodaCodec

    folder, mid = custom
    c = NecodaCodec(mode="learned", model=folder, quality=4)
    cfg = c.get_config()
    assert cfg == {"id": "necoda", "mode": "learned", "quality": 4, "model": mid}
    assert json.loads(json.dumps(cfg)) == cfg
    c2 = numcodecs.get_codec(dict(cfg))
    assert c2.get_config() == cfg and NecodaCodec.from_config(cfg).get_config() == cfg
    x = movie()
    enc = c2.encode(x)
    assert chunk.info(enc).model_id == mid
    assert c2.decode(enc).shape == x.shape
    # a stored config naming a model not installed here opens; coding a learned chunk then fails, naming it
    c3 = NecodaCodec.from_config({"id": "necoda", "mode": "learned", "model": NOT_INSTALLED})
    with pytest.raises(LookupError, match=f"{NOT_INSTALLED}.*NECODA_MODEL_PATH"):
        c3.encode(x)
    with pytest.raises(LookupError, match="'nope' not found"):
        NecodaCodec.from_config({"id": "necoda", "mode": "learned", "model": "nope"})
    with pytest.raises(LookupError, match=NOT_INSTALLED):
        NecodaCodec(mode="learned", model=NOT_INSTALLED)  # made by hand: resolved now


def test_zarr3_model_config_round_trip(custom, tmp_path):
    zarr = pytest.importorskip("zarr", minversion="3")
    from necoda_filter.zarr3 import NecodaZarrCodec

    folder, mid = custom
    c = NecodaZarrCodec(mode="learned", model=str(folder))
    assert c.to_dict() == {"name": "necoda", "configuration": {"mode": "learned", "model": mid}}
    assert NecodaZarrCodec.from_dict(c.to_dict()) == c
    x = movie()
    a = zarr.create_array(tmp_path / "v3.zarr", shape=x.shape, chunks=x.shape, dtype="uint16", serializer=c,
                          compressors=None)
    a[:] = x
    meta = json.loads((tmp_path / "v3.zarr" / "zarr.json").read_text())
    assert meta["codecs"][0]["configuration"]["model"] == mid
    b = zarr.open_array(tmp_path / "v3.zarr", mode="r")
    assert b[:].shape == x.shape
    chunk_file = next(p for p in (tmp_path / "v3.zarr").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert chunk.info(chunk_file.read_bytes()).model_id == mid
    lacking = NecodaZarrCodec.from_dict({"name": "necoda",
                                         "configuration": {"mode": "learned", "model": NOT_INSTALLED}})
    with pytest.raises(LookupError, match=NOT_INSTALLED):
        lacking._encode_sync(type("A", (), {"as_numpy_array": lambda self: x})(), None)


# ------------------------------------------------------------------------------------------ necoda compress

@pytest.fixture(scope="module")
def small_nwb(tmp_path_factory):
    p = tmp_path_factory.mktemp("nwb") / "sim.nwb"
    r = subprocess.run([sys.executable, "-m", "necoda_filter.cli", "simulate", "imaging", str(p), "--frames", "80",
                        "--height", "32", "--width", "32", "--cells", "4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return p


def _necoda(*args, env=None):
    import os

    e = {k: v for k, v in os.environ.items() if k != registry.ENV_VAR}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "necoda_filter.cli", *map(str, args)], capture_output=True,
                          text=True, env=e)


def test_compress_with_model_records_it_and_later_appends_use_it(custom, small_nwb, tmp_path):
    folder, mid = custom
    out = tmp_path / "c.nwb"
    r = _necoda("compress", small_nwb, out, "--imaging", "learned", "--model", folder, "--workers", "2",
                "--quiet")
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        d = f["acquisition/TwoPhotonSeries/data"]
        assert options.user_options(_cd(d)) == ("learned", {"model": mid})
        assert _header(d, (0, 0, 0)).model_id == mid and _header(d, (64, 0, 0)).model_id == mid
        assert d.attrs["necoda_model_id"] == mid
    r = _necoda("info", out)
    assert r.returncode == 0 and mid in r.stdout, r.stdout + r.stderr
    r = _necoda("info", out, env={registry.ENV_VAR: str(folder)})
    assert f"custom-v1 ({mid})" in r.stdout, r.stdout  # named by its folder where it is installed
    # a later write through h5py uses the model the cd_values name (this process knows the folder)
    Necoda(mode="learned", model=folder)
    with h5py.File(out, "r+", rdcc_nbytes=0) as f:
        d = f["acquisition/TwoPhotonSeries/data"]
        d[0:64] = d[0:64]
        assert _header(d, (0, 0, 0)).model_id == mid


def test_compress_workers_get_the_model_folder_also_when_spawned(custom, small_nwb, tmp_path, monkeypatch):
    """The worker processes may be spawned (no fork): they receive the model's folder, not only its id, so a
    model given as a folder off NECODA_MODEL_PATH resolves there too."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from necoda_filter import reader
    from necoda_filter.nwb import Settings, recompress_file

    monkeypatch.setattr(reader, "_new_process_pool",
                        lambda n: ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")))
    folder, mid = custom
    out = tmp_path / "spawned.nwb"
    reports = recompress_file(small_nwb, out, Settings(imaging="learned", model=str(folder)), workers=2,
                              progress=False)
    assert [r.provenance["model_id"] for r in reports] == [mid]
    assert reports[0].provenance["chunk_modes"] == {"learned": 2}
    assert "model" not in reports[0].provenance["options"]  # recorded once, as model_id


def test_compress_model_option_is_checked_up_front(small_nwb, tmp_path, custom):
    folder, _ = custom
    out = tmp_path / "x.nwb"
    r = _necoda("compress", small_nwb, out, "--model", folder)  # --imaging lossless (the default)
    assert r.returncode == 1 and "--model applies to --imaging learned only" in r.stderr, r.stderr
    r = _necoda("compress", small_nwb, out, "--imaging", "bounded", "--max-error", "2", "--model", folder)
    assert r.returncode == 1 and "--model applies to --imaging learned only" in r.stderr, r.stderr
    r = _necoda("compress", small_nwb, out, "--imaging", "learned", "--model", "no-such-model")
    assert r.returncode == 1 and "--model: necoda model 'no-such-model' not found" in r.stderr, r.stderr
    r = _necoda("compress", small_nwb, out, "--imaging", "learned", "--model", NOT_INSTALLED)
    assert r.returncode == 1 and NOT_INSTALLED in r.stderr and "NECODA_MODEL_PATH" in r.stderr, r.stderr
    assert not out.exists()
    r = _necoda("compress", "--help")
    assert "--model NAME|ID|FOLDER" in r.stdout


def test_chunks_flushed_during_shutdown_of_a_layout2_dataset_are_stored_raw(custom, tmp_path):
    """The C shim's raw container (chunks HDF5 flushes when the interpreter is shutting down) finds the dtype
    and chunk shape after the user slots of the dataset's layout: 10 in layout 2 (a named model), not 8."""
    folder, _ = custom
    p = tmp_path / "late.h5"
    r = run_fresh(f"""
        import atexit
        import numpy as np
        import h5py
        import necoda_filter
        from necoda_filter import exitflush
        atexit.unregister(exitflush.flush_open_files)
        f = h5py.File({str(p)!r}, "w")
        a = (np.arange(32 * 32 * 32) % 1000).astype("<u2").reshape(32, 32, 32)
        d = f.create_dataset("m", data=a, chunks=(16, 32, 32),
                             **necoda_filter.Necoda(mode="learned", model={str(folder)!r}))
    """)  # the dataset stays open: its chunks are flushed during interpreter shutdown
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stored raw in the necoda container" in r.stderr, r.stderr
    a = (np.arange(32 * 32 * 32) % 1000).astype("<u2").reshape(32, 32, 32)
    with h5py.File(p, "r") as f:
        d = f["m"]
        assert _cd(d)[0] == 2 and d.id.get_num_chunks() == 2
        h = _header(d, (16, 0, 0))
        assert h.mode_id == 0 and h.shape == (16, 32, 32)
        assert np.array_equal(d[()], a)


def test_commands_reading_a_file_whose_model_is_missing_name_it(custom, small_nwb, tmp_path):
    """QA: decompress and evaluate of a file coded with a model that is not installed ended in tracebacks
    (ModelNotFound is a LookupError, which the CLI did not catch); bench said only "filter returned failure"."""
    folder, mid = custom
    out = tmp_path / "c.nwb"
    assert _necoda("compress", small_nwb, out, "--imaging", "learned", "--model", folder, "--quiet").returncode == 0
    for cmd in (["decompress", out, tmp_path / "d.nwb", "--quiet"],
                ["evaluate", small_nwb, out, "--no-figures", "--report", tmp_path / "rep"],
                ["bench", f"{out}:/acquisition/TwoPhotonSeries/data", "--codecs", "zstd", "--no-plots",
                 "--no-progress", "--out", tmp_path / "bo"]):
        r = _necoda(*cmd)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (cmd, r.stderr)
        assert mid in r.stderr and registry.ENV_VAR in r.stderr, (cmd, r.stderr)
    assert not (tmp_path / "d.nwb").exists()


def test_a_folder_named_like_a_builtin_model_is_never_silently_replaced_by_it(tmp_path, monkeypatch):
    """QA: a trained package in ./imaging-v2.1 given as "imaging-v2.1", "./imaging-v2.1" or "imaging-v2.1/"
    loaded the built-in model of that name. Path-like names are folders; a bare name that is both is refused."""
    monkeypatch.chdir(tmp_path)
    name = registry.DEFAULT_NAME
    _, mid = _copy_model(tmp_path / name, note="mine")
    assert Necoda(mode="learned", model=f"./{name}").options["model"] == mid
    assert Necoda(mode="learned", model=f"{name}/").options["model"] == mid
    with pytest.raises(registry.ModelNotFound, match="names both the built-in model and the folder"):
        Necoda(mode="learned", model=name)
    shutil.rmtree(tmp_path / name)
    shutil.copytree(registry.BUILTIN_DIR / name, tmp_path / name)  # the same model: no ambiguity
    assert Necoda(mode="learned", model=name).options["model"] == registry.default().id


def test_broken_packages_are_named_with_what_is_wrong(tmp_path):
    """QA: a split package without decoder_context.onnx was "not found ... give a package folder" although
    the folder was given; a tables.json that is not JSON gave a bare JSONDecodeError."""
    folder, _ = _copy_model(tmp_path / "m", note="broken")
    (folder / "decoder_context.onnx").unlink()
    with pytest.raises(registry.ModelNotFound, match="decoder_context.onnx is missing"):
        Necoda(mode="learned", model=folder)
    (folder / "tables.json").write_text("{not json")
    with pytest.raises(registry.ModelNotFound, match="tables.json is not valid JSON"):
        Necoda(mode="learned", model=folder)


def test_missing_model_message_says_a_changed_package_has_another_id():
    with pytest.raises(registry.ModelNotFound, match="changed or retrained in place"):
        registry.get("necoda-0123456789abcdef")
