"""Acceptance 1 (issue 2): bit-exact round trips over dtypes x ranks x chunk shapes x edge chunks,
through the chunk codec, the HDF5 filter, and the numcodecs codec."""
import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import necoda_filter
from necoda_filter import NecodaCodec, chunk

DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"]


def sample(rng, shape, dtype, kind):
    dt = np.dtype(dtype)
    if kind == "constant":
        return np.full(shape, 7, dtype=dt)
    if kind == "random":
        return rng.integers(0, 256, size=int(np.prod(shape)) * dt.itemsize, dtype=np.uint8).view(dt).reshape(shape)
    if kind == "extreme" and dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.choice(np.array([info.min, info.max, 0], dtype=dt), size=shape)
    # smooth signal + noise, like real recordings
    x = np.cumsum(rng.normal(size=shape), axis=0) * 20 + rng.normal(size=shape) * 3
    if dt.kind == "u":
        x = x - x.min()
    if dt.kind in "iu":
        info = np.iinfo(dt)
        x = np.clip(x, info.min, info.max)
    return x.astype(dt)


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, dtype=st.sampled_from(DTYPES), kind=st.sampled_from(["smooth", "constant", "random", "extreme"]),
       seed=st.integers(0, 2**16))
def test_chunk_codec_bit_exact(shape, dtype, kind, seed):
    a = sample(np.random.default_rng(seed), shape, dtype, kind)
    assert same(chunk.decode(chunk.encode(a, "lossless")), a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,chunks", [
    ((37,), (10,)),                    # rank 1, edge chunk
    ((23, 7), (8, 7)),                 # ephys-like, edge chunk in time
    ((13, 11, 9), (5, 4, 9)),          # imaging, edge chunks in 2 dims
    ((5, 6, 7, 3), (2, 4, 3, 3)),      # rank 4
    ((1, 1), (1, 1)),
])
@pytest.mark.parametrize("kind", ["smooth", "constant", "random"])
def test_hdf5_filter_bit_exact(tmp_path, dtype, shape, chunks, kind):
    a = sample(np.random.default_rng(3), shape, dtype, kind)
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=a, chunks=chunks, compression=necoda_filter.Necoda(mode="lossless"))
    with h5py.File(p, "r") as f:
        d = f["x"]
        assert d.id.get_create_plist().get_filter(0)[0] == necoda_filter.FILTER_ID
        assert same(d[()], a)
        # a partial selection across chunk borders
        sl = tuple(slice(1, None, 2) for _ in shape)
        assert same(d[sl], a[sl])


def test_big_endian_dataset(tmp_path):
    a = (np.arange(600).reshape(20, 30) * 37).astype(">i4")
    with h5py.File(tmp_path / "be.h5", "w") as f:
        f.create_dataset("x", data=a, chunks=(7, 30), compression=necoda_filter.Necoda(mode="lossless"))
    with h5py.File(tmp_path / "be.h5") as f:
        assert f["x"].dtype == np.dtype(">i4")
        np.testing.assert_array_equal(f["x"][()], a)


@pytest.mark.parametrize("how", ["object", "mapping", "string", "string+opts"])
def test_ways_to_ask_for_the_filter(tmp_path, how):
    a = np.arange(3000, dtype=np.uint16).reshape(30, 100)
    kw = {"object": dict(compression=necoda_filter.Necoda(mode="lossless")),
          "mapping": dict(**necoda_filter.Necoda(mode="lossless")),
          "string": dict(compression="necoda"),
          "string+opts": dict(compression="necoda", compression_opts={"mode": "lossless"})}[how]
    with h5py.File(tmp_path / "w.h5", "w") as f:
        d = f.create_dataset("x", data=a, chunks=(10, 100), **kw)
        flags, = [d.id.get_create_plist().get_filter(i)[1] for i in range(d.id.get_create_plist().get_nfilters())]
        assert flags & h5py.h5z.FLAG_OPTIONAL == 0  # mandatory: never silently stored raw
        assert d.id.get_storage_size() < a.nbytes
    with h5py.File(tmp_path / "w.h5") as f:
        np.testing.assert_array_equal(f["x"][()], a)


def test_invalid_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown necoda mode"):
        necoda_filter.Necoda(mode="zip")
    with pytest.raises(TypeError, match="maxerror"):
        necoda_filter.NecodaCodec(mode="lossless", maxerror=3)
    with pytest.raises(ValueError, match="exact"):
        necoda_filter.Necoda(mode="lossless", max_error=1)
    with pytest.raises(ValueError, match="finite"):
        necoda_filter.Necoda(mode="bounded", max_error=float("nan"))
    with pytest.raises(ValueError, match="1..12"):  # pcodec's levels: 13 was silently coded as 12
        necoda_filter.NecodaCodec(mode="lossless", level=13)


def test_string_dtype_refused_at_create(tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        with pytest.raises(Exception):
            f.create_dataset("s", data=np.array([b"ab", b"cd"]), chunks=(1,), compression=necoda_filter.Necoda())


@pytest.mark.parametrize("dtype", DTYPES)
def test_numcodecs_codec(dtype):
    a = sample(np.random.default_rng(4), (16, 9, 5), dtype, "smooth")
    c = NecodaCodec(mode="lossless")
    enc = c.encode(a)
    assert same(c.decode(enc), a)
    out = np.empty_like(a)
    c.decode(enc, out=out)
    assert same(out, a)
    c2 = type(c).from_config(c.get_config())
    assert c2.get_config() == c.get_config() == {"id": "necoda", "mode": "lossless"}


def test_require_necoda(tmp_path):
    with h5py.File(tmp_path / "r.h5", "w") as f:
        necoda_filter.require_necoda(f.create_dataset("a", data=np.arange(10), chunks=(5,), compression="necoda"))
        with pytest.raises(necoda_filter.FilterUnavailable, match="without the necoda filter"):
            necoda_filter.require_necoda(f.create_dataset("b", data=np.arange(10), chunks=(5,), compression="gzip"))


def test_auto_mode_choice():
    from necoda_filter import modes

    assert modes.resolve("auto", (20000, 384), np.int16) == "lossless"
    assert modes.resolve("auto", (64, 8, 8), np.uint16) == "lossless"       # too small to be a movie
    assert modes.resolve("auto", (64, 64, 64), np.float32) == "lossless"    # floats stay exact
    expected = "learned" if modes.learned_available() else "lossless"
    assert modes.resolve("auto", (64, 128, 128), np.uint16) == expected
    assert modes.resolve("lossless", (64, 128, 128), np.uint16) == "lossless"
