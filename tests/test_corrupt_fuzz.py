"""Seeded corruption fuzzing of the chunk decoders (fast; the exhaustive runs are described in the commit).

Rule under test: a corrupt chunk raises a Python exception (``CorruptChunk`` from ``chunk.decode``, ``OSError``
from h5py), never a crash and never silent garbage: a mutated chunk either raises or decodes to exactly what
the intact chunk decodes to. Mutations: bit flips (every header bit plus a seeded sample of the payload),
truncations, appended garbage, zeroed / 0xFF ranges. A second set re-computes the checksums after damaging the
payload (a chunk whose damage the CRC cannot see) to reach the mode decoders and C kernels: they must raise
``CorruptChunk`` or return an array of the header's shape and dtype, never crash or leak another exception.
"""
import json
import struct
import zlib

import h5py
import numpy as np
import pytest

import necoda_filter
from necoda_filter import chunk, container, modes
from necoda_filter.codec import NecodaCodec
from necoda_filter.container import CorruptChunk
from necoda_filter.models.registry import ModelNotFound
from necoda_filter.modes.lossless import pack_sections, unpack_sections

from conftest import run_fresh


def _ephys(dtype, T=512, C=4, seed=0):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0, 20, (T, C)), axis=0) * 0.1 + rng.normal(0, 30, (T, C))
    return (x + (30000 if np.dtype(dtype).kind == "u" else 0)).astype(dtype)


def _movie(dtype, t=8, h=16, w=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(200, 400, (h, w)) + rng.poisson(30, (t, h, w))
    return x.astype(dtype)


def _imaging(t=16, h=24, w=24):
    from necoda_filter.simulate import simulate_imaging

    m = simulate_imaging(n_frames=16, height=64, width=64, n_cells=6, seed=1).movie
    return np.ascontiguousarray(m[:t, :h, :w])


def _floats(dtype):
    return (_ephys(np.int32) / 7).astype(dtype)


def _floats_with_exceptions():
    a = _floats(np.float64)
    a[5, 1], a[100, 2], a[200, 3] = np.nan, np.inf, -np.inf  # stored as exact exceptions
    return a


# name -> (array factory, mode, options, what the chunk must use: params that identify the coded path)
CASES = {
    "lossless-lpc-int16": (lambda: _ephys(np.int16), "lossless", {}, {"s": "lpc"}),
    "lossless-lpc-uint16": (lambda: _ephys(np.uint16), "lossless", {}, {"s": "lpc"}),
    "lossless-lpc-int32": (lambda: _ephys(np.int32), "lossless", {}, {"s": "lpc"}),
    "lossless-img-uint16": (lambda: _movie(np.uint16), "lossless", {}, {"s": "img"}),
    "lossless-img-int16": (lambda: _movie(np.int16) - 300, "lossless", {}, {"s": "img"}),
    "lossless-pc-float32": (lambda: _floats(np.float32), "lossless", {}, {"s": "pc"}),
    "lossless-pc-float64": (lambda: _floats(np.float64), "lossless", {}, {"s": "pc"}),
    "lossless-core-uint16": (lambda: np.pad(_movie(np.uint16, t=6, h=10), ((0, 2), (0, 6), (0, 0))), "lossless",
                             {}, {"_core": [6, 10, 16]}),
    "bounded-closed-loop-int16": (lambda: _ephys(np.int16), "bounded", {"max_error": 3}, {"t": 2}),
    "bounded-uniform-int16": (lambda: _ephys(np.int16), "bounded", {"max_error": 0}, {"t": 0}),
    "bounded-table-uint16": (_imaging, "bounded", {"max_error_noise": 1.0}, {"t": 1}),
    "bounded-lorenzo-uint16": (_imaging, "bounded", {"max_error": 2}, {"cl": "lor"}),
    "bounded-float32": (lambda: _floats(np.float32), "bounded", {"max_error": 0.5}, {"k": "f"}),
    "bounded-float64-exceptions": (_floats_with_exceptions, "bounded", {"max_error": 0.5}, {"k": "f"}),
    "raw-int16": (lambda: _ephys(np.int16, T=128), "raw", {}, {}),
    "raw-float64": (lambda: _floats(np.float64)[:128], "raw", {}, {}),
    "learned-uint16": (lambda: _imaging(16, 64, 64), "learned", {}, {}),
    "learned-safeguard-uint16": (lambda: _imaging(16, 64, 64), "learned", {"max_error": 20}, {"sg": None}),
}


_encoded = {}


def _chunk(name):
    if name not in _encoded:
        make, mode, opts, expect = CASES[name]
        if mode == "learned" and not modes.learned_available():
            pytest.skip("learned mode unavailable (ONNX Runtime or model missing)")
        a = make()
        buf = chunk.encode(a, mode=mode, **opts)
        h = container.parse_header(buf)
        assert modes.MODE_NAMES[h.mode_id] == mode, f"{name} was stored as {modes.MODE_NAMES[h.mode_id]}"
        for k, v in expect.items():  # the case really exercises the path it is named after
            assert k in h.params and (v is None or h.params[k] == v), (name, h.params)
        _encoded[name] = buf, chunk.decode(buf)
    return _encoded[name]


def _mutations(buf, seed, nflip):
    """Seeded mutations: (description, mutated bytes); no-op mutations are left out."""
    rng = np.random.default_rng(seed)
    hl = container.parse_header(buf).header_len
    n = len(buf)
    out = []
    bits = set(range(8 * hl)) | set(rng.choice(8 * n, size=min(nflip, 8 * n), replace=False).tolist())
    for b in sorted(bits):
        x = bytearray(buf)
        x[b // 8] ^= 1 << (b % 8)
        out.append((f"flip bit {b}", bytes(x)))
    for t in sorted(set(range(0, hl + 16)) | set(rng.integers(0, n, 40).tolist()) | {n - 1, n - 4}):
        out.append((f"truncate to {t}", buf[:t]))
    for k in (1, 3, 8, 100):
        out.append((f"append {k}", buf + bytes(rng.integers(0, 256, k, dtype=np.uint8))))
    for _ in range(30):
        a, ln = int(rng.integers(0, n)), int(rng.choice([1, 4, 16, 256]))
        for fill in (0, 255):
            x = bytearray(buf)
            x[a:a + ln] = bytes([fill]) * len(x[a:a + ln])
            out.append((f"fill [{a}:{a + ln}] with {fill}", bytes(x)))
    return [(d, m) for d, m in out if m != buf]


def _fix_checksums(x: bytearray) -> bytes:
    """Recompute the container CRC (and the learned payload's own CRC) of a damaged chunk."""
    h = container.parse_header(bytes(x))
    hl = h.header_len
    if h.mode_id == modes.MODE_IDS["learned"] and x[hl:hl + 2] == b"NL" and len(x) >= hl + 7:
        x[hl + 3:hl + 7] = struct.pack("<I", zlib.crc32(bytes(x[hl + 7:])))
    x[hl - 4:hl] = struct.pack("<I", zlib.crc32(bytes(x[hl:]), zlib.crc32(bytes(x[:hl - 4]))))
    return bytes(x)


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_chunk_raises_or_decodes_identically(name):
    buf, ref = _chunk(name)
    raised = 0
    for desc, bad in _mutations(buf, seed=len(name), nflip=600):
        try:
            got = chunk.decode(bad)
        except CorruptChunk:
            raised += 1
            continue
        # not detected: must then be exactly the intact chunk's data (anything else is silent garbage)
        assert got.dtype == ref.dtype and np.array_equal(got, ref, equal_nan=True), f"{name}: {desc} decoded to garbage"
    assert raised > 0


@pytest.mark.parametrize("name", list(CASES))
def test_damage_behind_the_checksum_raises_cleanly(name):
    """Payload damage with valid checksums reaches the mode decoders and the C kernels: they raise
    CorruptChunk or return an array of the header's shape and dtype, never crash or hang."""
    buf, ref = _chunk(name)
    hl = container.parse_header(buf).header_len
    rng = np.random.default_rng(len(name) + 1)
    n = len(buf)
    cuts = [(f"payload flip bit {b}", b) for b in rng.integers(8 * hl, 8 * n, 250).tolist()]
    outcomes = {"raised": 0, "decoded": 0}
    for desc, b in cuts + [(f"payload truncated to {t}", -t) for t in rng.integers(hl, n, 25).tolist()]:
        x = bytearray(buf)
        if b >= 0:
            x[b // 8] ^= 1 << (b % 8)
        else:
            x = x[:-b]
            x[hl - 12:hl - 4] = struct.pack("<Q", len(x) - hl)  # payload length consistent again
        bad = _fix_checksums(x)
        try:
            got = chunk.decode(bad)
        except CorruptChunk:
            outcomes["raised"] += 1
            continue
        outcomes["decoded"] += 1
        h = container.parse_header(bad)
        assert got.shape == h.shape and got.dtype == h.dtype, f"{name}: {desc} decoded to {got.shape} {got.dtype}"
    assert outcomes["raised"] > 0, outcomes


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_parameters_raise_corrupt_chunk(name):
    """A parameter block that lacks an entry, or a section table that lacks sections (valid checksum:
    a damaged or foreign encoder), is a corrupt chunk: CorruptChunk, not a KeyError / IndexError that
    escapes chunk.decode (those are LookupErrors, which decode used to let through untouched)."""
    buf, ref = _chunk(name)
    h, payload = container.unpack(buf)

    def check(what, params=None, payload_=None):
        bad = container.pack(h.mode_id, h.dtype, h.shape, bytes(payload if payload_ is None else payload_),
                             h.params if params is None else params, h.model_id)
        try:
            got = chunk.decode(bad)
        except CorruptChunk:
            return
        assert np.array_equal(got, ref, equal_nan=True), f"{name}: {what} decoded to different data"

    def drop(d, path):
        d = json.loads(json.dumps(d))
        x = d
        for k in path[:-1]:
            x = x[k]
        del x[path[-1]]
        return d

    def keys(d, pre=()):
        for k, v in d.items():
            yield pre + (k,)
            if isinstance(v, dict):
                yield from keys(v, pre + (k,))

    for path in keys(h.params):
        check(f"params without {'/'.join(path)}", params=drop(h.params, path))
    if modes.MODE_NAMES[h.mode_id] in ("lossless", "bounded") and h.params.get("s") != "pc":
        sections = unpack_sections(payload)
        for k in range(len(sections)):
            check(f"{k} of {len(sections)} sections", payload_=pack_sections(sections[:k]))


@pytest.mark.parametrize("name", ["bounded-float32", "bounded-closed-loop-int16", "bounded-uniform-int16"])
def test_bounded_payload_kind_must_match_the_dtype(name):
    """A bounded float payload under an integer dtype code (or an integer payload under a float one) is
    refused; the float branch used to cast its reconstruction to whatever integer type the header named."""
    buf, _ = _chunk(name)
    h, payload = container.unpack(buf)
    others = ["<i4", "<u4", "<i8", "<i2"] if h.dtype.kind == "f" else ["<f4", "<f8", "<f2"]
    for dt in others:
        bad = container.pack(h.mode_id, dt, h.shape, bytes(payload), h.params, h.model_id)
        with pytest.raises(CorruptChunk, match="bounded"):
            chunk.decode(bad)
    bad = container.pack(h.mode_id, h.dtype, h.shape, bytes(payload), {**h.params, "k": "x"}, h.model_id)
    with pytest.raises(CorruptChunk):
        chunk.decode(bad)


def test_missing_model_is_still_not_a_corrupt_chunk():
    """The narrowing above keeps a chunk that names a model not installed here a ModelNotFound."""
    buf, _ = _chunk("learned-uint16")
    h, payload = container.unpack(buf)
    bad = container.pack(h.mode_id, h.dtype, h.shape, bytes(payload), h.params, "necoda-00000000deadbeef")
    with pytest.raises(ModelNotFound, match="deadbeef"):
        chunk.decode(bad)


@pytest.mark.parametrize("mode", ["raw", "lossless"])
def test_decode_into_out_of_any_layout(mode):
    """chunk.decode(buf, out=...) fills ``out`` in C order whatever its memory layout; it used to decode into
    ``out.reshape(shape)``, which is a copy for e.g. a transposed or Fortran-ordered ``out`` of another shape,
    and returned ``out`` unwritten. A different size or dtype raises instead of broadcasting or casting."""
    a = _ephys(np.int16, T=64)
    buf = chunk.encode(a, mode=mode)
    for out in (np.zeros((64, 4), np.int16), np.zeros((64, 4), np.int16, order="F"), np.zeros(256, np.int16),
                np.zeros((4, 64), np.int16).T, np.zeros((4, 64), np.int16, order="F"), np.zeros((512,), np.int16)[::2],
                np.zeros((64, 4), np.int16).T):
        assert chunk.decode(buf, out=out) is out
        np.testing.assert_array_equal(out.reshape(-1) if out.ndim == 1 else np.reshape(out, -1), a.reshape(-1))
    for out in (np.zeros((2, 64, 4), np.int16), np.zeros((64, 8), np.int16), np.zeros((32, 4), np.int16)):
        with pytest.raises(ValueError):
            chunk.decode(buf, out=out)
    for dt in (np.uint16, np.int32, np.float32):
        with pytest.raises(TypeError):
            chunk.decode(buf, out=np.zeros((64, 4), dt))


def test_codec_decode_into_out():
    """NecodaCodec.decode(buf, out) fills contiguous ``out`` buffers (numcodecs convention: memory order)
    and refuses non-contiguous ones, which it used to leave unwritten (``out.reshape(-1)`` was a copy)."""
    a = _ephys(np.int16, T=64)
    c = NecodaCodec(mode="lossless")
    enc = c.encode(a)
    for out in (np.zeros((64, 4), np.int16), np.zeros(256, np.int16), np.zeros(512, np.uint8), bytearray(512),
                np.zeros((4, 64), np.int16, order="F")):
        c.decode(enc, out=out)
        np.testing.assert_array_equal(np.frombuffer(memoryview(out).cast("B"), np.int16) if isinstance(out, bytearray)
                                      else np.asarray(out).reshape(-1, order="A").view(np.int16), a.reshape(-1))
    for out in (np.zeros((128, 4), np.int16)[::2], np.zeros((64, 8), np.int16)[:, ::2], np.zeros(512, np.int16)[::2]):
        with pytest.raises(ValueError, match="contiguous"):
            c.decode(enc, out=out)
        assert not out.any()
    with pytest.raises(ValueError):
        c.decode(enc, out=np.zeros(100, np.int16))
    for bad in (enc[:-1], enc + b"\0", bytes([enc[0] ^ 1]) + enc[1:]):
        with pytest.raises(CorruptChunk):
            c.decode(bad)


# ------------------------------------------------------------------------------------------------ HDF5
H5_CASES = {
    "lossless": (lambda: _ephys(np.int16, T=1536), (512, 4), {"mode": "lossless"}),
    "bounded": (lambda: _floats(np.float64)[:384], (128, 4), {"mode": "bounded", "max_error": 0.5}),
    "raw": (lambda: _ephys(np.int32, T=384), (128, 4), {"mode": "raw"}),
    "learned": (lambda: np.concatenate([_imaging(16, 64, 64)] * 3), (16, 64, 64), {"mode": "learned"}),
}


def _h5_files(tmp_path):
    """Files whose second chunk is damaged on disk (in place) or rewritten damaged (truncated, extended)."""
    rng = np.random.default_rng(5)
    files = []
    for name, (make, chunks, opts) in H5_CASES.items():
        if opts["mode"] == "learned" and not modes.learned_available():
            continue
        base = tmp_path / f"{name}.h5"
        with h5py.File(base, "w") as f:
            d = f.create_dataset("x", data=make(), chunks=chunks, compression=necoda_filter.Necoda(**opts))
            info = d.id.get_chunk_info(1)
            stored = d.id.read_direct_chunk(info.chunk_offset)[1]
        with h5py.File(base, "r") as f:  # the decoded data (after the file is closed: not HDF5's chunk cache)
            np.save(tmp_path / f"{name}.npy", f["x"][()])
        for i in range(6):
            p = tmp_path / f"{name}-{i}.h5"
            p.write_bytes(base.read_bytes())
            if i < 4:  # on disk, in place: bit flips and overwritten ranges
                raw = bytearray(p.read_bytes())
                if i < 2:
                    bit = int(rng.integers(0, 8 * info.size))
                    raw[info.byte_offset + bit // 8] ^= 1 << (bit % 8)
                else:
                    a = info.byte_offset + int(rng.integers(0, info.size - 16))
                    raw[a:a + 16] = bytes([0 if i == 2 else 255]) * 16
                assert bytes(raw) != base.read_bytes()
                p.write_bytes(bytes(raw))
            else:
                bad = stored[: int(rng.integers(1, len(stored)))] if i == 4 else stored + b"\x00\x01"
                with h5py.File(p, "r+") as f:
                    f["x"].id.write_direct_chunk(info.chunk_offset, bad, filter_mask=0)
            files.append((str(p), str(tmp_path / f"{name}.npy"), list(info.chunk_offset), list(chunks)))
    return files


_H5_READER = """
    import json, sys
    import h5py, numpy as np
    if {register}:
        import necoda_filter  # in-process registration
    else:
        assert "necoda_filter" not in sys.modules
    for path, ref, c0, cs in json.loads({files!r}):
        ref = np.load(ref)
        box = tuple(slice(o, o + c) for o, c in zip(c0, cs))
        with h5py.File(path, "r") as f:
            d = f["x"]
            try:
                got = d[box]
                r = "identical" if np.array_equal(got, ref[box], equal_nan=True) else "GARBAGE"
            except OSError:
                r = "OSError"
            others = np.array_equal(d[:c0[0]], ref[:c0[0]], equal_nan=True)
        print("RESULT", json.dumps([path, r, bool(others)]), flush=True)
    print("CLEAN EXIT")
"""


@pytest.mark.parametrize("how", ["plugin-path-only", "in-process-registration"])
def test_h5py_reading_a_damaged_chunk_raises_oserror(tmp_path, how):
    """Damaged chunks on disk read back through h5py in a fresh process: OSError for the damaged chunk (no
    crash, no wrong data), the other chunks intact; through HDF5_PLUGIN_PATH alone and through the filter
    that ``import necoda_filter`` registers."""
    files = _h5_files(tmp_path)
    register = how == "in-process-registration"
    env = {} if register else {"HDF5_PLUGIN_PATH": necoda_filter.PLUGIN_PATH}
    r = run_fresh(_H5_READER.format(register=register, files=json.dumps(files)), env, timeout=300)
    assert r.returncode == 0 and "CLEAN EXIT" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    results = [json.loads(line[len("RESULT "):]) for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == len(files)
    bad = [(p, res, others) for p, res, others in results if res != "OSError" or not others]
    assert not bad, bad
