"""numcodecs / zarr integration of the necoda codec: NecodaCodec (numcodecs, zarr v2 compressor or filter) and
NecodaZarrCodec (zarr v3 array->bytes codec, alone, before a compressor, or inside sharding_indexed)."""
import array
import json
import warnings

import numcodecs
import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from conftest import run_fresh  # noqa: E402
from necoda_filter import chunk, modes  # noqa: E402
from necoda_filter.codec import NecodaCodec  # noqa: E402
from necoda_filter.container import CorruptChunk  # noqa: E402
from necoda_filter.zarr3 import NecodaZarrCodec  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::RuntimeWarning")

needs_learned = pytest.mark.skipif(not modes.learned_available(), reason="learned mode not installed")


def _data(shape, dtype, seed=0):
    a = np.random.default_rng(seed).integers(0, 100, shape)
    return np.cumsum(a, axis=-1).astype(dtype) if len(shape) else a.astype(dtype)


def _movie(t=32, h=64, w=64):
    from necoda_filter.simulate import simulate_imaging

    return simulate_imaging(n_frames=t, height=h, width=w, n_cells=6, seed=3).movie


def _v3(path_or_store, a, chunks, *, shards=None, compressors=None, fill_value=0, **codec):
    return zarr.create_array(path_or_store, shape=a.shape, chunks=chunks, shards=shards, dtype=a.dtype,
                             serializer=NecodaZarrCodec(**codec), compressors=compressors, fill_value=fill_value,
                             zarr_format=3)


# ------------------------------------------------------------------------------ fresh process (entry points)
def test_fresh_process_reads_v2_v3_sharded_and_compressed_without_import(tmp_path):
    a = _data((21, 13, 10), "<i2")
    np.save(tmp_path / "a.npy", a)
    z = zarr.create_array(str(tmp_path / "v2.zarr"), shape=a.shape, chunks=(8, 5, 10), dtype=a.dtype,
                          compressors=NecodaCodec(mode="lossless"), zarr_format=2)
    z[:] = a
    _v3(str(tmp_path / "v3.zarr"), a, (8, 5, 4), compressors=[zarr.codecs.ZstdCodec()], mode="lossless")[:] = a
    _v3(str(tmp_path / "v3s.zarr"), a, (4, 5, 5), shards=(8, 10, 10), mode="bounded", max_error=0.0)[:] = a
    meta = json.loads((tmp_path / "v3s.zarr" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    assert meta["codecs"][0]["configuration"]["codecs"][0] == {
        "name": "necoda", "configuration": {"mode": "bounded", "max_error": 0.0}}
    r = run_fresh(f"""
        import sys, warnings, numpy as np, zarr
        warnings.simplefilter("ignore")
        a = np.load({str(tmp_path / 'a.npy')!r})
        for name in ("v2.zarr", "v3.zarr", "v3s.zarr"):
            assert "necoda_filter" not in sys.modules or name != "v2.zarr"
            z = zarr.open_array({str(tmp_path)!r} + "/" + name, mode="r")
            assert z.dtype == a.dtype, (name, z.dtype)
            assert np.array_equal(z[:], a), name
            assert np.array_equal(z[3:19, 2:12, 7], a[3:19, 2:12, 7]), name
        print("OK")
    """)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


# ------------------------------------------------------------------------------ configs
CONFIGS = [
    {"mode": "lossless"}, {"mode": "lossless", "level": 3}, {"mode": "bounded", "max_error": 1},
    {"mode": "bounded", "max_error_noise": 0.5}, {"mode": "raw"}, {"mode": "auto"}, {},
    pytest.param({"mode": "learned", "quality": 3}, marks=needs_learned),
    pytest.param({"mode": "learned", "quality": 4, "max_error": 2.5}, marks=needs_learned),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_config_json_round_trip_is_stable(cfg):
    a = _movie(16, 32, 32)
    c1 = numcodecs.get_codec({"id": "necoda", **cfg})
    conf = c1.get_config()
    c2 = numcodecs.get_codec(json.loads(json.dumps(conf)))
    assert isinstance(c2, NecodaCodec) and c2 == c1 and c2.get_config() == conf
    assert bytes(c1.encode(a)) == bytes(c2.encode(a))  # same config -> same bytes
    z1 = NecodaZarrCodec(**cfg)
    z2 = NecodaZarrCodec.from_dict(json.loads(json.dumps(z1.to_dict())))
    assert z2 == z1 and hash(z2) == hash(z1) and z2.to_dict() == z1.to_dict()
    # reprs are the constructor calls (numcodecs' check_repr; zarr prints the serializer in Array.info)
    assert eval(repr(c1)) == c1 and eval(repr(z1)) == z1, (repr(c1), repr(z1))


@pytest.mark.parametrize("opt, value", [
    ("max_error", "abc"), ("max_error", [1]), ("max_error", True), ("max_error", "0.5"),
    ("quality", "high"), ("quality", "3"), ("quality", True), ("level", [2]), ("max_error_noise", {"a": 1}),
])
def test_invalid_option_value_names_the_option(opt, value):
    mode = {"quality": "learned", "level": "lossless"}.get(opt, "bounded")
    with pytest.raises((TypeError, ValueError), match=f"necoda option {opt} "):
        numcodecs.get_codec({"id": "necoda", "mode": mode, opt: value})
    with pytest.raises((TypeError, ValueError), match=f"necoda option {opt} "):
        NecodaZarrCodec.from_dict({"name": "necoda", "configuration": {"mode": mode, opt: value}})


def test_unknown_option_and_mode_are_named():
    with pytest.raises(TypeError, match="maxerror"):
        numcodecs.get_codec({"id": "necoda", "mode": "bounded", "maxerror": 1})
    with pytest.raises(TypeError, match="maxerror"):
        NecodaZarrCodec.from_dict({"name": "necoda", "configuration": {"mode": "bounded", "maxerror": 1}})
    with pytest.raises(ValueError, match="zip"):
        numcodecs.get_codec({"id": "necoda", "mode": "zip"})


# ------------------------------------------------------------------------------ zarr v3
def test_zarr3_chunk_of_another_dtype_or_shape_is_an_error(tmp_path):
    path = tmp_path / "a.zarr"
    z = _v3(str(path), np.zeros((8, 5), "<u2"), (8, 5), mode="lossless")
    z[:] = 7
    chunk_file = path / "c" / "0" / "0"
    chunk_file.write_bytes(chunk.encode(np.full((8, 5), -1, "<i2"), "lossless"))
    with pytest.raises(CorruptChunk, match=r"int16.*uint16"):
        zarr.open_array(str(path), mode="r")[:]
    chunk_file.write_bytes(chunk.encode(np.full((8, 5), 2.5), "lossless"))
    with pytest.raises(CorruptChunk, match=r"float64.*uint16"):
        zarr.open_array(str(path), mode="r")[:]
    chunk_file.write_bytes(chunk.encode(np.arange(40, dtype="<u2").reshape(5, 8), "lossless"))
    with pytest.raises(CorruptChunk, match=r"\(5, 8\).*\(8, 5\)"):
        zarr.open_array(str(path), mode="r")[:]
    # byte order is not a mismatch: chunks hold little-endian samples, a big-endian array gets them cast
    zb = zarr.open_array(str(path), mode="r")
    chunk_file.write_bytes(chunk.encode(np.full((8, 5), 300, ">u2"), "lossless"))
    assert (zb[:] == 300).all()


@pytest.mark.parametrize("shards", [None, (4,)], ids=["plain", "sharded"])
@pytest.mark.parametrize("dtype", [bool, "c8", "M8[ns]"])
def test_zarr3_unsupported_dtype_refused_at_create(dtype, shards):
    # zarr's sharding_indexed does not validate its inner codecs: a sharded bool array was created and
    # every write failed later
    with pytest.raises(TypeError, match="necoda cannot compress dtype"):
        zarr.create_array(zarr.storage.MemoryStore(), shape=(8,), chunks=(2,), shards=shards, dtype=dtype,
                          serializer=NecodaZarrCodec(mode="lossless"), compressors=None)


@pytest.mark.parametrize("dtype", ["<u1", "i1", "<u2", ">i2", "<u4", ">i4", "<u8", ">i8", "<f2", ">f4", "<f8", ">f8"])
@pytest.mark.parametrize("layout", ["plain", "zstd", "sharded"])
def test_zarr3_dtypes_ranks_edges_regions(dtype, layout):
    kw = {"plain": {}, "zstd": {"compressors": [zarr.codecs.ZstdCodec()]}, "sharded": {"shards": None}}[layout]
    for shape, chunks in [((), ()), ((37,), (8,)), ((13, 11), (4, 5)), ((5, 9, 7), (2, 4, 3)),
                          ((3, 5, 6, 7), (2, 2, 4, 3))]:
        a = _data(shape, dtype)
        if "shards" in kw:
            if not shape:
                continue
            kw["shards"] = tuple(2 * c for c in chunks)
        z = _v3(zarr.storage.MemoryStore(), a, chunks, fill_value=3, mode="lossless", **kw)
        z[...] = a
        assert z.dtype == np.dtype(dtype) and np.array_equal(z[...], a)
        if a.ndim:
            region = tuple(slice(1, max(2, n - 1)) for n in shape)
            a[region] = 5
            z[region] = 5
            sub = tuple(slice(n // 3, n) for n in shape)
            assert np.array_equal(z[sub], a[sub])


# ------------------------------------------------------------------------------ zarr v2
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("where", ["compressor", "filter"])
def test_zarr2_orders_and_filter_position(order, where):
    a = _data((13, 11, 6), "<i4")
    kw = ({"compressors": NecodaCodec(mode="lossless")} if where == "compressor"
          else {"filters": [NecodaCodec(mode="lossless")], "compressors": numcodecs.Zstd()})
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=a.shape, chunks=(4, 5, 6), dtype=a.dtype, order=order,
                          zarr_format=2, **kw)
    z[:] = a
    assert np.array_equal(z[:], a)
    assert np.array_equal(z[2:11, 3:10, 1:5], a[2:11, 3:10, 1:5])


@needs_learned
def test_zarr2_fortran_order_codes_the_movie_in_its_own_axis_order():
    """zarr v2 order="F" hands the compressor Fortran-ordered chunks. They used to be coded as their
    C-ordered transpose, so the learned mode took the last axis (width) for time: 383x instead of 634x
    on a simulated movie. Now the chunk is coded as it is (container format version 2) and decodes to
    the same values as an order="C" array of the same data, at the same size."""
    a = _movie(64, 64, 64)
    zs = {}
    for order in ("C", "F"):
        zs[order] = zarr.create_array(zarr.storage.MemoryStore(), shape=a.shape, chunks=(32, 64, 64), dtype=a.dtype,
                                      order=order, zarr_format=2, compressors=NecodaCodec(mode="learned"))
        zs[order][:] = a
    assert np.array_equal(zs["F"][:], zs["C"][:]) and np.array_equal(zs["F"][5:40, 3, ::2], zs["C"][5:40, 3, ::2])
    stored = {k: z.nbytes_stored() for k, z in zs.items()}
    assert stored["F"] <= stored["C"] + 2 * 16, stored  # the "_order" parameter: 13 bytes per chunk
    c = NecodaCodec(mode="lossless")
    f = np.asfortranarray(_data((6, 5, 4), "<u2"))
    got = c.decode(c.encode(f))
    assert got.flags.f_contiguous and np.array_equal(got, f)  # the same bytes in memory, as numcodecs asks
    assert chunk.info(c.encode(f)).version == 2 and chunk.info(c.encode(np.ascontiguousarray(f))).version == 1


def test_zarr2_big_endian_is_refused_not_read_byte_swapped():
    a = _data((12, 10), ">u2")
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=a.shape, chunks=(4, 5), dtype=a.dtype,
                          compressors=NecodaCodec(mode="lossless"), zarr_format=2)
    with pytest.raises(TypeError, match="big-endian >u2"):
        z[:] = a
    with pytest.raises(TypeError, match="big-endian >f8"):
        NecodaCodec(mode="lossless").encode(np.ones(4, ">f8"))


# ------------------------------------------------------------------------------ learned / bounded through zarr
@needs_learned
def test_learned_and_bounded_through_zarr_equal_chunk_decode():
    a = _movie(32, 64, 64)
    import asyncio

    from zarr.core.buffer import default_buffer_prototype

    for fmt, kw, bound in [(3, {"serializer": NecodaZarrCodec(mode="learned", quality=4), "compressors": None}, None),
                           (2, {"compressors": NecodaCodec(mode="learned", quality=4)}, None),
                           (3, {"serializer": NecodaZarrCodec(mode="learned", max_error=3.0), "compressors": None}, 3),
                           (3, {"serializer": NecodaZarrCodec(mode="bounded", max_error=2.0),
                                "compressors": [zarr.codecs.ZstdCodec()]}, 2)]:
        store = zarr.storage.MemoryStore()
        z = zarr.create_array(store, shape=a.shape, chunks=(16, 64, 64), dtype=a.dtype, zarr_format=fmt, **kw)
        z[:] = a
        full = z[:]
        for i in range(2):
            key = f"c/{i}/0/0" if fmt == 3 else f"{i}.0.0"
            raw = asyncio.run(store.get(key, default_buffer_prototype())).to_bytes()
            if fmt == 3 and kw["compressors"]:
                raw = bytes(numcodecs.Zstd().decode(raw))
            assert np.array_equal(full[16 * i:16 * (i + 1)], chunk.decode(raw)), (fmt, kw)
        assert np.array_equal(z[20:30, 5:40, 7], full[20:30, 5:40, 7])
        if bound is not None:
            assert np.abs(full.astype(np.int64) - a).max() <= bound


# ------------------------------------------------------------------------------ decode(buf, out)
def test_decode_into_out_buffers_like_numcodecs():
    a = _data((12, 20), "<i2")
    outs = [lambda: bytearray(a.nbytes), lambda: memoryview(bytearray(a.nbytes)),
            lambda: np.zeros(a.nbytes // 4, "<f4"), lambda: np.zeros((20, 12), "<i2"),
            lambda: np.zeros((12, 20), "<i2", order="F"), lambda: memoryview(np.zeros(a.nbytes // 4, "<i4")),
            lambda: array.array("h", bytes(a.nbytes))]
    for codec in (numcodecs.Zstd(), NecodaCodec(mode="lossless"), NecodaCodec(mode="raw")):
        enc = codec.encode(a)
        for make in outs:
            out = make()
            codec.decode(enc, out=out)
            got = np.asarray(out) if isinstance(out, np.ndarray) else np.frombuffer(out, np.uint8)
            assert got.ravel(order="K").tobytes() == a.tobytes(), (codec, type(out))
        with pytest.raises(ValueError):
            codec.decode(enc, out=bytearray(a.nbytes - 2))


# ------------------------------------------------------------------------------ zarr v3: off the event loop
def test_zarr3_chunks_are_coded_concurrently_off_the_event_loop(monkeypatch):
    """zarr's own CPU-bound codecs (zstd, gzip, blosc) run in ``asyncio.to_thread``. A codec that codes on
    the event loop's thread stalls the loop: the chunks of one read or write are coded one after another
    and no store I/O runs meanwhile. Here each chunk takes 0.25 s (a sleep, which releases the GIL as the
    kernels and ONNX Runtime do): 6 chunks one after another take 1.5 s."""
    import time

    a = _data((12, 10), "<u2")
    z = _v3(zarr.storage.MemoryStore(), a, (2, 10), mode="lossless")
    real_encode, real_decode = chunk.encode, chunk.decode

    def slow(fn):
        def run(*args, **kwargs):
            time.sleep(0.25)
            return fn(*args, **kwargs)
        return run

    monkeypatch.setattr(chunk, "encode", slow(real_encode))
    monkeypatch.setattr(chunk, "decode", slow(real_decode))
    t = time.perf_counter()
    z[:] = a
    t_write = time.perf_counter() - t
    t = time.perf_counter()
    got = z[:]
    t_read = time.perf_counter() - t
    assert np.array_equal(got, a)
    assert t_write < 1.0 and t_read < 1.0, (t_write, t_read)


def test_decode_into_an_object_array_is_a_type_error_like_numcodecs():
    """numcodecs' own compliance check (``check_err_decode_object_buffer``): decoding into an object array
    raises TypeError. NecodaCodec filled it with Python ints converted sample by sample (same nbytes)."""
    a = np.arange(10, dtype="<i8")
    for codec in (numcodecs.Zstd(), NecodaCodec(mode="lossless"), NecodaCodec(mode="raw")):
        enc = codec.encode(a)
        with pytest.raises(TypeError):
            codec.decode(enc, out=np.empty(10, dtype=object))
        with pytest.raises(TypeError):
            codec.encode(np.array(["foo", "bar", "baz"], dtype=object))


def test_zarr2_byte_filter_before_bounded_mode_warns(tmp_path):
    """zarr v2 hands the compressor 1-D bytes after a byte-level filter: behind Shuffle, bounded mode's
    max_error=2 held for the shuffled bytes only (max error 514 on int16 samples). The codec cannot tell
    such bytes from real 1-D uint8 data, so it warns; without the filter the bound holds."""
    x = np.random.default_rng(0).normal(0, 300, (4096, 8)).astype(np.int16)
    codec = NecodaCodec(mode="bounded", max_error=2)
    a = zarr.create_array(tmp_path / "s.zarr", shape=x.shape, chunks=(1024, 8), dtype="int16",
                          filters=[numcodecs.Shuffle(elementsize=2)], compressors=codec, zarr_format=2)
    with pytest.warns(UserWarning, match="byte-level filter"):
        a[:] = x
    b = zarr.create_array(tmp_path / "b.zarr", shape=x.shape, chunks=(1024, 8), dtype="int16",
                          compressors=NecodaCodec(mode="bounded", max_error=2), zarr_format=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b[:] = x
    assert np.abs(b[:].astype(np.int32) - x).max() <= 2


# ------------------------------------------------------------------------------ necoda info on a zarr store
def test_info_lists_the_necoda_arrays_of_a_zarr_store(tmp_path, capsys):
    """`necoda info v3.zarr` said "is not an HDF5/NWB file": zarr stores (v2, v3, groups, shards) are
    described like HDF5 files, with the modes of a sample of chunk headers and the ratio stored."""
    from necoda_filter import cli

    a = _data((64, 20), np.int16)
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    v3 = g.create_array("v3", shape=a.shape, chunks=(16, 20), dtype=a.dtype, serializer=NecodaZarrCodec(mode="lossless"),
                        compressors=None)
    v3[:48] = a[:48]  # the last chunk is never written: fill value, no file
    sh = g.create_array("deep/sharded", shape=a.shape, chunks=(16, 20), shards=(32, 20), dtype=a.dtype,
                        serializer=NecodaZarrCodec(mode="bounded", max_error=2), compressors=None)
    sh[:] = a
    g.create_array("plain", shape=a.shape, chunks=(16, 20), dtype=a.dtype)[:] = a
    v2 = zarr.create_array(tmp_path / "v2.zarr", shape=a.shape, chunks=(8, 20), dtype=a.dtype, zarr_format=2,
                           compressors=numcodecs.get_codec({"id": "necoda", "mode": "lossless"}))
    v2[:] = a
    assert cli.main(["info", str(tmp_path / "g.zarr"), "--json"]) == 0
    rows = {r["path"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == ["/deep/sharded", "/v3"]
    assert rows["/v3"]["chunk_modes"] == {"lossless": 3} and rows["/v3"]["chunks_total"] == 4
    assert rows["/v3"]["requested"] == {"mode": "lossless"} and rows["/v3"]["ratio"] > 1
    assert rows["/deep/sharded"]["sharded"] and rows["/deep/sharded"]["requested"] == {"mode": "bounded",
                                                                                         "max_error": 2}
    assert cli.main(["info", str(tmp_path / "g.zarr"), "--all", "--json"]) == 0
    assert "/plain" in {r["path"] for r in json.loads(capsys.readouterr().out)}
    assert cli.main(["info", str(tmp_path / "v2.zarr")]) == 0
    assert "lossless×8 in 8 of 8" not in (out := capsys.readouterr().out) and "lossless×8" in out
    assert cli.main(["info", str(tmp_path)]) == 1  # a folder that is no zarr store
    assert "not an HDF5/NWB file or a zarr store" in capsys.readouterr().err


def test_info_reads_format_2_stores_zarr_3_cannot_open(tmp_path, capsys):
    """QA: `necoda info` on an NWB file in Zarr (hdmf-zarr writes zarr format 2) failed: zarr-python 3 refuses
    its object arrays' metadata ("Invalid type: 0. Expected a string."), and under zarr-python 2 the zarr 3
    API was missing. Format-2 stores are now read from their .zarray files and chunk files alone."""
    import os

    from necoda_filter import cli

    a = _data((64, 20), np.int16)
    g = zarr.open_group(tmp_path / "f.nwb.zarr", mode="w", zarr_format=2)
    d = g.create_array("acquisition/es/data", shape=a.shape, chunks=(16, 20), dtype=a.dtype,
                       compressors=numcodecs.get_codec({"id": "necoda", "mode": "lossless"}),
                       chunk_key_encoding={"name": "v2", "separator": "/"})
    d[:48] = a[:48]
    text = tmp_path / "f.nwb.zarr" / "general" / "session_description"  # as hdmf-zarr writes text: zarr 3 refuses it
    os.makedirs(text)
    (text / ".zarray").write_text(json.dumps({"chunks": [1], "compressor": None, "dtype": "|O", "fill_value": 0,
                                              "filters": [{"id": "json2", "encoding": "utf-8"}], "order": "C",
                                              "shape": [1], "zarr_format": 2}))
    with pytest.raises((TypeError, ValueError)):  # zarr-python 3 cannot open that array
        zarr.open_group(tmp_path / "f.nwb.zarr", mode="r")["general/session_description"]
    assert cli.main(["info", str(tmp_path / "f.nwb.zarr"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == ["/acquisition/es/data"]
    r = rows[0]
    assert r["chunk_modes"] == {"lossless": 3} and r["chunks_total"] == 4 and r["requested"] == {"mode": "lossless"}
    stored = sum(os.path.getsize(os.path.join(p, n)) for p, _, ns in os.walk(tmp_path / "f.nwb.zarr/acquisition/es/data")
                 for n in ns if not n.startswith("."))
    assert r["stored_bytes"] == stored and r["raw_bytes"] == a.nbytes
    assert cli.main(["info", str(tmp_path / "f.nwb.zarr"), "--all"]) == 0
    assert "/general/session_description" in capsys.readouterr().out


def test_info_with_codecs_after_necoda_does_not_call_chunks_damaged(tmp_path, capsys):
    """QA 15: with a bytes codec after necoda (zarr v3 Crc32c/Zstd after the serializer, zarr v2 Zstd after
    necoda as a filter) `necoda info` parsed the stored bytes as necoda chunks and called every healthy
    chunk UNREADABLE. Format 2: the later codecs are undone (numcodecs) and the headers sampled; format 3:
    the headers are said not to be sampled."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from necoda_filter import cli

    a = _data((64, 32), np.int16)
    for name, kw in {"v3_crc": dict(serializer=NecodaZarrCodec(mode="lossless"), compressors=Crc32cCodec()),
                     "v3_zstd": dict(serializer=NecodaZarrCodec(mode="lossless"), compressors=ZstdCodec()),
                     "v2_zstd": dict(filters=[NecodaCodec(mode="lossless")], compressors=numcodecs.Zstd(),
                                     zarr_format=2)}.items():
        z = zarr.create_array(tmp_path / f"{name}.zarr", shape=a.shape, chunks=(16, 32), dtype=a.dtype, **kw)
        z[...] = a
        assert cli.main(["info", str(tmp_path / f"{name}.zarr"), "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        assert not row.get("unreadable_chunk_headers"), name
        if name.startswith("v2"):
            assert row["chunk_modes"] == {"lossless": 4}
        else:
            assert "followed by" in row["headers_not_sampled"] and "chunk_modes" not in row
        assert cli.main(["info", str(tmp_path / f"{name}.zarr")]) == 0
        assert "UNREADABLE" not in capsys.readouterr().out


def test_unusable_arrays_and_options_are_refused_when_made(tmp_path):
    """QA 15: a variable-length string dtype got numpy's internal "DescrNewByteOrder" error; a 9-d zarr v3
    array was created and then no chunk could be written; options a mode does not use (quality for
    lossless) were stored silently. Each is now a clear error when the codec or array is made, while a stored
    configuration with such an option still opens (earlier releases wrote them)."""
    from necoda_filter.dtypes import UnsupportedDtype

    with pytest.raises(UnsupportedDtype, match="cannot compress dtype"):
        NecodaCodec(mode="lossless").encode(np.array(["a", "bb"], dtype=np.dtypes.StringDType()))
    with pytest.raises(ValueError, match="at most 8 dimensions"):
        zarr.create_array(tmp_path / "nd.zarr", shape=(2,) * 9, dtype="u2", serializer=NecodaZarrCodec(mode="lossless"),
                          compressors=None)
    z = zarr.create_array(tmp_path / "8d.zarr", shape=(2,) * 8, dtype="u2", serializer=NecodaZarrCodec(mode="lossless"),
                          compressors=None)
    z[...] = 3
    assert int(z[...].sum()) == 3 * 2**8
    for mode, kw, bad in [("lossless", dict(quality=9), "option quality does"), ("raw", dict(level=5, quality=3),
                          "options level, quality do"), ("learned", dict(level=3), "option level does")]:
        with pytest.raises(ValueError, match=f"necoda {bad} not apply to mode='{mode}'"):
            NecodaCodec(mode=mode, **kw)
        with pytest.raises(ValueError, match=f"necoda {bad} not apply"):
            NecodaZarrCodec(mode=mode, **kw)
    assert NecodaCodec(mode="auto", quality=2, level=3).get_config()["level"] == 3  # auto takes every option
    old = NecodaCodec.from_config({"id": "necoda", "mode": "lossless", "quality": 99})
    assert old.options == {"quality": 99}
    assert NecodaZarrCodec.from_dict({"name": "necoda", "configuration": {"mode": "lossless", "quality": 9}}).config


def test_missing_kernels_library_is_an_install_error_not_a_corrupt_chunk(monkeypatch):
    """QA 15: without the kernels library (a broken install) every learned or lossless chunk was reported as
    CorruptChunk ("payload could not be decoded"); it is KernelsUnavailable, as a missing model is
    ModelNotFound."""
    from necoda_filter import _kernels

    enc = NecodaCodec(mode="lossless").encode(_data((64, 8), np.int16))

    def missing():
        raise _kernels.KernelsUnavailable("libnecoda_kernels.so is missing")

    monkeypatch.setattr(_kernels, "lib", missing)
    with pytest.raises(_kernels.KernelsUnavailable):
        NecodaCodec().decode(enc)
