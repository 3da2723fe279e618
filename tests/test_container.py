"""The chunk container refuses every kind of bad input with a clear error."""
import struct
import zlib

import numpy as np
import pytest

from necoda_filter import chunk, container
from necoda_filter.constants import FORMAT_VERSION, ORDER_PARAM_SINCE
from necoda_filter.container import CorruptChunk


def good(shape=(4, 5), dtype="int16", mode="lossless"):
    rng = np.random.default_rng(0)
    a = (rng.normal(size=shape) * 30).astype(dtype)
    return a, chunk.encode(a, mode)


def test_header_is_self_describing():
    a, b = good((6, 7, 8), "uint16")
    h = chunk.info(b)
    assert h.version == 1 and h.shape == (6, 7, 8) and h.dtype == np.uint16  # the lowest that describes it
    assert h.payload_len == len(b) - h.header_len


def test_wrong_magic():
    _, b = good()
    with pytest.raises(CorruptChunk, match="not a necoda chunk"):
        chunk.decode(b"XXXX" + b[4:])


def test_unknown_version_refused():
    _, b = good()
    bad = bytearray(b)
    bad[4] = FORMAT_VERSION + 1
    with pytest.raises(CorruptChunk, match="format version"):
        chunk.decode(bytes(bad))


def test_fortran_order_needs_format_version_2():
    """An F-ordered chunk is written as version 2 (older readers refuse it instead of returning its bytes
    in the wrong order); the "_order" parameter in a version-1 chunk, or with another value, is corrupt."""
    f = np.asfortranarray(np.arange(6 * 7 * 8, dtype=np.uint16).reshape(6, 7, 8))
    b = chunk.encode(f, "lossless")
    h = chunk.info(b)
    assert h.version == 2 == ORDER_PARAM_SINCE and h.params["_order"] == "F" and h.shape == (6, 7, 8)
    d = chunk.decode(b)
    assert d.flags.f_contiguous and np.array_equal(d, f)
    out = np.zeros(f.size, np.uint16)
    chunk.decode(b, out=out)  # a flat buffer gets the chunk's bytes in its memory order
    assert out.tobytes() == f.tobytes(order="F")
    box = np.zeros((2, 3, 4), np.uint16)
    assert np.array_equal(chunk.decode_box(b, box, (1, 2, 3)), f[1:3, 2:5, 3:7])
    hh, payload = container.unpack(b)
    for params, version in (({**hh.params}, 1), ({**hh.params, "_order": "C"}, 2)):
        bad = container.pack(hh.mode_id, hh.dtype, hh.shape, bytes(payload), params, "", version)
        with pytest.raises(CorruptChunk, match="_order"):
            chunk.decode(bad)


@pytest.mark.parametrize("cut", [0, 3, 7, 9, 20])
def test_truncated_header(cut):
    _, b = good()
    with pytest.raises(CorruptChunk):
        chunk.decode(b[:cut])


def test_truncated_payload():
    _, b = good()
    with pytest.raises(CorruptChunk, match="payload length"):
        chunk.decode(b[:-5])


def test_flipped_payload_byte_fails_checksum():
    _, b = good()
    bad = bytearray(b)
    bad[-3] ^= 0x40
    with pytest.raises(CorruptChunk, match="checksum"):
        chunk.decode(bytes(bad))


def test_absurd_size_refused_before_allocation():
    head = container.MAGIC + struct.pack("<BBBB", FORMAT_VERSION, 0, 4, 3) + struct.pack("<3I", 2**31, 2**31, 2**31)
    head += struct.pack("<H", 0) + struct.pack("<B", 0) + struct.pack("<Q", 0)
    buf = head + struct.pack("<I", zlib.crc32(head))
    with pytest.raises(CorruptChunk, match="absurd"):
        chunk.decode(buf)


def test_payload_that_lies_about_shape_is_caught():
    # valid checksum, but the raw payload is one element short of the header's shape
    payload = np.arange(19, dtype="<i2").tobytes()
    buf = container.pack(0, np.int16, (4, 5), payload)
    with pytest.raises(CorruptChunk):
        chunk.decode(buf)


def test_garbage_payload_with_valid_checksum_raises():
    buf = container.pack(1, np.int16, (4, 5), b"\x01\x02garbage-not-pcodec")
    with pytest.raises(CorruptChunk):
        chunk.decode(buf)


def test_random_bytes_never_crash():
    rng = np.random.default_rng(1)
    _, b = good()
    for i in range(300):
        bad = bytearray(b)
        for _ in range(rng.integers(1, 4)):
            bad[rng.integers(0, len(bad))] = rng.integers(0, 256)
        if bytes(bad) == b:
            continue
        with pytest.raises(CorruptChunk):
            chunk.decode(bytes(bad))


def test_unsupported_dtype_is_a_clear_error():
    with pytest.raises(TypeError, match="cannot compress dtype"):
        chunk.encode(np.zeros(4, dtype=complex), "lossless")


def test_failing_mode_stores_raw(monkeypatch):
    from necoda_filter import modes

    m = modes.get("lossless")

    def boom(*a, **k):
        raise RuntimeError("encoder cannot handle this")

    monkeypatch.setattr(m, "encode", boom)
    a = np.arange(100, dtype=np.int32)
    b = chunk.encode(a, "lossless")
    assert chunk.info(b).mode_id == modes.MODE_IDS["raw"]
    np.testing.assert_array_equal(chunk.decode(b), a)


def test_incompressible_lossless_stored_raw():
    a = np.random.default_rng(2).integers(0, 256, size=4096, dtype=np.uint8)
    b = chunk.encode(a, "lossless")
    assert chunk.info(b).mode_id == 0
    assert len(b) < a.nbytes + 64
    np.testing.assert_array_equal(chunk.decode(b), a)


@pytest.mark.parametrize("mode,opts", [("lossless", {}), ("bounded", {"max_error": 3}),
                                       ("bounded", {"max_error_noise": 0.5})])
def test_zero_padded_edge_chunk_is_coded_without_its_padding(mode, opts):
    """HDF5 pads edge chunks with zeros: the padding is excluded from coding and restored exactly."""
    rng = np.random.default_rng(5)
    a = np.zeros((16, 20, 12), dtype=np.uint16)
    a[:9, :, :7] = 300 + rng.poisson(20, size=(9, 20, 7)) * 5
    b = chunk.encode(a, mode, **opts)
    h = chunk.info(b)
    assert h.shape == a.shape and h.params[chunk.CORE_KEY] == [9, 20, 7]
    d = chunk.decode(b)
    assert d.shape == a.shape and not d[9:].any() and not d[:, :, 7:].any()
    err = np.abs(d.astype(np.int64) - a).max()
    assert err <= (opts.get("max_error", 0) if "max_error_noise" not in opts else h.params["emax"])
    # the same core coded alone gives the same stored bound as the padded chunk
    if "max_error_noise" in opts:
        alone = chunk.info(chunk.encode(np.ascontiguousarray(a[:9, :, :7]), mode, **opts))
        assert alone.params["emax"] == h.params["emax"]


def test_bad_core_shape_refused():
    a = np.zeros((4, 4), dtype=np.int16)
    a[:2, :2] = 5
    b = chunk.encode(a, "lossless")
    h = chunk.info(b)
    params = dict(h.params)
    params[chunk.CORE_KEY] = [9, 9]
    payload = bytes(memoryview(b)[h.header_len:])
    bad = container.pack(h.mode_id, h.dtype, h.shape, payload, params)
    with pytest.raises(CorruptChunk, match="core"):
        chunk.decode(bad)


def test_encode_tells_why_a_chunk_is_stored_raw():
    """`necoda compress` names the reason a chunk fell back to raw: chunk.encode hands it to ``on_raw``."""
    why = []
    x = np.zeros((16, 32, 32), np.float32)
    x[0, 0, 0] = np.nan
    assert chunk.info(chunk.encode(x, "learned", on_raw=why.append)).mode_id == 0
    assert why == ["ValueError: learned mode cannot code NaN/inf"]
    why.clear()
    chunk.encode(np.arange(64, dtype=np.int16).reshape(8, 8), "lossless", on_raw=why.append)
    assert why == []
