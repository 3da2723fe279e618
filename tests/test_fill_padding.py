"""Edge chunks padded with a fill value that is not 0 (QA finding F10).

HDF5 hands a filter full-size edge chunks padded with the dataset's fill value (zarr and numcodecs with the
array's fill value). Trailing hyperplanes that all hold one value are padding whatever that value is: the
mode codes only the core, and the padding comes back bit for bit (``_core`` / ``_pad``, container format
version 3 when the value is not 0). Before, only zero padding was recognised: with fill value 65535 the
learned network coded the step to the sentinel and smeared it into the real pixels (max error 19448 instead
of ~1100), and lossy modes gave back padding that was not the fill value (visible after a resize).
"""
import h5py
import numpy as np
import pytest

from necoda_filter import Necoda, NecodaCodec, chunk, container, modes, read
from necoda_filter.constants import FORMAT_VERSION, ORDER_PARAM_SINCE, PAD_PARAM_SINCE
from necoda_filter.container import CorruptChunk

SHAPE, CHUNKS, GROWN = (20, 40, 36), (8, 16, 16), (24, 48, 48)  # every chunk along the edges is partly padding
MODES = {"lossless": {}, "bounded": {"max_error": 2}, "learned": {}, "auto": {}}
# (dtype, fill value, modes): auto is learned for integer movies, lossless for float ones
INT_CASES = [(np.uint16, 0, list(MODES)), (np.uint16, 420, ["lossless", "bounded", "learned"]),
             (np.uint16, 65535, list(MODES)), (np.int16, -1, ["lossless", "bounded", "learned"]),
             (np.int16, -32768, ["bounded", "learned"])]
FLOAT_CASES = [(0.0, list(MODES)), (-0.0, ["lossless", "bounded", "learned"]),
               (np.nan, ["lossless", "bounded", "learned"]), (np.inf, list(MODES)), (-1.5, ["bounded", "learned"])]


def _learned_or_skip(mode):
    if mode in ("learned", "auto") and not modes.learned_available():
        pytest.skip("learned mode unavailable (ONNX Runtime or model missing)")


def _movie(dtype, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(200, 900, shape[1:]) + rng.poisson(40, shape)
    if np.dtype(dtype).kind == "f":
        return (x / 7).astype(dtype)
    return x.astype(dtype)


def _bits(a):
    a = np.asarray(a)
    return a.view(f"{a.dtype.str[0]}u{a.dtype.itemsize}")


def _bits_of(value, dtype):
    return int(_bits(np.array([value], dtype=np.dtype(dtype).newbyteorder("<")))[0])


def _write(f, name, data, fill, **kw):
    """``data`` into a chunked dataset of ``fill``, then grown to whole chunks: the part of every edge chunk
    that lay outside the dataset — what HDF5 padded with the fill value — becomes visible."""
    d = f.create_dataset(name, data=data, chunks=CHUNKS, maxshape=(None,) * data.ndim, fillvalue=fill, **kw)
    d.resize(GROWN)
    return d


def _inside():
    return tuple(slice(0, n) for n in SHAPE)


def _check_file(tmp_path, dtype, fill, mode):
    """Padding bit for bit as an uncompressed dataset written the same way shows it; data as coded with
    fill value 0 (the fill value does not change what the mode codes); chunk headers name the padding."""
    opts = MODES[mode]
    data = _movie(dtype)
    zero = np.zeros((), dtype)[()]
    with h5py.File(tmp_path / "f.h5", "w") as f:
        _write(f, "plain", data, fill)
        _write(f, "necoda", data, fill, compression=Necoda(mode=mode, **opts))
        _write(f, "necoda0", data, zero, compression=Necoda(mode=mode, **opts))
    # read back from a new session: the chunk cache of the writing one holds the chunks as they were given
    with h5py.File(tmp_path / "f.h5", "r") as f:
        ref, nec, nec0 = f["plain"], f["necoda"], f["necoda0"]
        r, got, got0 = ref[...], nec[...], nec0[...]
        pad = np.ones(GROWN, bool)
        pad[_inside()] = False
        assert np.array_equal(_bits(got)[pad], _bits(r)[pad]), f"padding is not the fill value {fill!r}"
        assert np.array_equal(_bits(r)[pad], np.full(pad.sum(), _bits_of(fill, dtype), _bits(r).dtype))
        inside = _inside()
        # the mode coded the same core whatever the fill value (bit for bit: the coders are deterministic)
        assert np.array_equal(_bits(got[inside]), _bits(got0[inside])), \
            f"fill value {fill!r} changed the decoded data: max diff " \
            f"{np.nanmax(np.abs(got[inside].astype(float) - got0[inside].astype(float)))}"
        if mode == "lossless":
            assert np.array_equal(_bits(got), _bits(r))
        elif mode == "bounded":
            assert np.abs(got[inside].astype(float) - data.astype(float)).max() <= opts["max_error"]
        # the stored chunks: a corner chunk is padded along every axis, an inner one not at all
        hdr = chunk.info(nec.id.read_direct_chunk((16, 32, 32))[1])
        if hdr.mode_id != modes.MODE_IDS["raw"]:
            assert hdr.params[chunk.CORE_KEY] == [4, 8, 4]
            if _bits_of(fill, dtype):
                assert hdr.version == PAD_PARAM_SINCE and hdr.params[chunk.PAD_KEY] == _bits_of(fill, dtype)
            else:
                assert hdr.version == 1 and chunk.PAD_KEY not in hdr.params
        inner = chunk.info(nec.id.read_direct_chunk((0, 0, 0))[1])
        assert inner.version == 1 and chunk.CORE_KEY not in inner.params and chunk.PAD_KEY not in inner.params
        # the batched reader (chunk.decode / decode_box) sees what h5py sees: whole, boxes in the padding,
        # boxes across the core's edge, strided selections
        sels = [Ellipsis, (slice(20, 24), slice(40, 48), slice(36, 48)), (slice(4, 24), slice(30, 48), slice(30, 48)),
                (slice(17, 23), slice(33, 47), slice(35, 37)), (slice(None, None, 3), slice(1, None, 5), slice(None)),
                (23, 47), (slice(None), [3, 39, 41, 47], 40)]
        for ex in ("serial", "thread"):
            for sel in sels:
                assert np.array_equal(_bits(read(nec, sel, executor=ex, workers=2)), _bits(got[sel])), (ex, sel)
        # numcodecs over the same padded chunks HDF5 handed the filter (the uncompressed dataset's chunks)
        codec = NecodaCodec(mode=mode, **opts)
        for off in ((16, 32, 32), (16, 0, 0), (0, 32, 16), (0, 16, 32)):
            raw = np.frombuffer(ref.id.read_direct_chunk(off)[1], dtype=ref.dtype).reshape(CHUNKS)
            dec = np.asarray(codec.decode(codec.encode(raw.copy()))).reshape(CHUNKS)
            box = tuple(slice(o, o + c) for o, c in zip(off, CHUNKS))
            assert np.array_equal(_bits(dec), _bits(got[box])), off


@pytest.mark.parametrize("dtype,fill,mode", [(dt, v, m) for dt, v, ms in INT_CASES for m in ms],
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_integer_fill_values(tmp_path, dtype, fill, mode):
    _learned_or_skip(mode)
    _check_file(tmp_path, dtype, fill, mode)


@pytest.mark.parametrize("fill,mode", [(v, m) for v, ms in FLOAT_CASES for m in ms], ids=str)
def test_float_fill_values(tmp_path, fill, mode):
    _learned_or_skip(mode)
    _check_file(tmp_path, np.float32, fill, mode)


def test_learned_edge_error_does_not_depend_on_the_fill_value(tmp_path):
    """The QA repro: a movie in learned mode, chunks (32, 64, 64), dataset (32, 72, 70). Max error in the edge
    chunks was 1092/1193 with fill 0 and 19448 with fill 65535."""
    _learned_or_skip("learned")
    from necoda_filter.simulate import simulate_imaging

    m = simulate_imaging(n_frames=32, height=80, width=80, n_cells=8, seed=2).movie.astype("<u2")[:, :72, :70]
    errs = {}
    with h5py.File(tmp_path / "lf.h5", "w") as f:
        for fill in (0, 420, 65535):
            f.create_dataset(f"x{fill}", data=m, chunks=(32, 64, 64), compression=Necoda(mode="learned"),
                             fillvalue=fill)
    with h5py.File(tmp_path / "lf.h5", "r") as f:
        for fill in (0, 420, 65535):
            e = np.abs(f[f"x{fill}"][...].astype(int) - m)
            errs[fill] = (e[:, 64:, :].max(), e[:, :, 64:].max())
    assert errs[420] == errs[65535] == errs[0], errs
    assert max(errs[65535]) < 3000, errs


def test_early_allocation_fill_value(tmp_path):
    """Early allocation: chunks of a dataset with fill value 1234 are written (and padded) before any data; a
    region then written as constant 7 came back as values up to 424 from the learned mode."""
    _learned_or_skip("learned")
    from necoda_filter.constants import FILTER_ID

    exp = np.full((20, 40, 40), 1234, np.uint16)
    exp[:8] = 7
    with h5py.File(tmp_path / "early.h5", "w") as f:
        for mode in ("learned", "auto"):
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk((8, 16, 16))
            dcpl.set_filter(FILTER_ID, 0, tuple(Necoda(mode=mode).filter_options))
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_value(np.array(1234, "<u2"))
            h5py.h5d.create(f.id, mode.encode(), h5py.h5t.STD_U16LE, h5py.h5s.create_simple((20, 40, 40)), dcpl=dcpl)
            f[mode][0:8] = 7
    with h5py.File(tmp_path / "early.h5", "r") as f:
        for mode in ("learned", "auto"):
            assert np.array_equal(f[mode][...], exp), mode
            assert np.array_equal(read(f[mode], executor="serial"), exp), mode


def test_process_reader(tmp_path):
    """The process-pool reader decodes padded chunks into shared memory (chunk.decode_box)."""
    data = _movie(np.uint16)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        _write(f, "plain", data, 65535)
        _write(f, "nec", data, 65535, compression=Necoda(mode="bounded", max_error=1))
    with h5py.File(tmp_path / "p.h5", "r") as f:
        ref, nec = f["plain"][...], f["nec"]
        got = nec[...]
        assert np.array_equal(got[20:], ref[20:]) and np.array_equal(got[:, 40:], ref[:, 40:])
        for sel in (Ellipsis, (slice(4, 24), slice(30, 48), slice(30, 48))):
            assert np.array_equal(read(nec, sel, executor="process", workers=2), got[sel])


def test_zarr3_fill_value(tmp_path):
    """zarr v3 pads edge chunks with the array's fill value: stored with ``_pad``, read as with fill value 0."""
    zarr = pytest.importorskip("zarr", minversion="3")
    from necoda_filter.zarr3 import NecodaZarrCodec

    data = _movie(np.uint16)
    out = {}
    for fill in (0, 65535):
        path = tmp_path / f"z{fill}.zarr"
        z = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNKS, dtype=data.dtype, fill_value=fill,
                              serializer=NecodaZarrCodec(mode="bounded", max_error=2), compressors=None)
        z[...] = data
        out[fill] = z[...]
        h = chunk.info((path / "c" / "2" / "2" / "2").read_bytes())
        assert h.params[chunk.CORE_KEY] == [4, 8, 4]
        assert h.params.get(chunk.PAD_KEY) == (fill or None) and h.version == (3 if fill else 1)
        assert np.array_equal(chunk.decode((path / "c" / "2" / "2" / "2").read_bytes())[4:], np.full((4, 16, 16), fill))
    assert np.array_equal(out[0], out[65535])


# ------------------------------------------------------------------------------------- container level

def _padded(dtype=np.uint16, fill=65535, shape=(12, 20, 20), core=(8, 13, 11)):
    a = np.empty(shape, dtype)
    _bits(a)[...] = _bits_of(fill, dtype)
    a[tuple(slice(0, c) for c in core)] = _movie(dtype, core, seed=1)
    return a


@pytest.mark.parametrize("mode", list(MODES))
def test_padding_other_than_zero_is_format_version_3(mode):
    _learned_or_skip(mode)
    a = _padded()
    b = chunk.encode(a, mode, **MODES[mode])
    h = chunk.info(b)
    assert h.version == PAD_PARAM_SINCE <= FORMAT_VERSION
    assert h.params[chunk.CORE_KEY] == [8, 13, 11] and h.params[chunk.PAD_KEY] == 65535
    d = chunk.decode(b)
    for pad in (np.s_[8:], np.s_[:, 13:], np.s_[..., 11:]):
        assert np.array_equal(d[pad], a[pad])
    # zero padding: version 1 as before, no _pad
    z = _padded(fill=0)
    hz = chunk.info(chunk.encode(z, mode, **MODES[mode]))
    assert hz.version == 1 and hz.params[chunk.CORE_KEY] == [8, 13, 11] and chunk.PAD_KEY not in hz.params


def test_learned_latents_do_not_depend_on_the_fill_value():
    """What the network codes (its integer latents) is the same for fill values 0 and 65535."""
    _learned_or_skip("learned")
    L = modes.get("learned")
    lat = []
    for fill in (0, 65535):
        b = chunk.encode(_padded(fill=fill, shape=(16, 32, 32), core=(11, 24, 20)), "learned")
        h, payload, m, params, core, pad = chunk._open(b)
        assert core == (11, 24, 20) and pad == fill and chunk.PAD_KEY not in params and chunk.CORE_KEY not in params
        lat.append(L.latents(payload, core, params, h.model_id))
    assert len(lat[0]) == len(lat[1]) and all(np.array_equal(x, y) for x, y in zip(*lat))


def test_ordinary_chunks_are_written_as_before():
    """Chunks without padding other than 0 keep their bytes: the container around the mode's own output, with
    the lowest version that describes it (1; 2 for F order) — and a short run of one value at the end of
    real data (a 1-D chunk) is no padding."""
    rng = np.random.default_rng(3)
    ephys = (np.cumsum(rng.normal(0, 20, 3000)) + rng.normal(0, 30, 3000)).astype(np.int16)
    ephys[-40:] = 5  # a run of equal samples shorter than MIN_PAD_SAMPLES
    cases = [(ephys, None), (_movie(np.uint16, (8, 16, 16)), None), (_padded(fill=0), [8, 13, 11]),
             (_movie(np.float32, (8, 16, 16)), None)]
    for a, core in cases:
        for mode in ("lossless", "bounded"):
            opts = MODES[mode]
            b = chunk.encode(a, mode, **opts)
            m = modes.get(mode)
            enc = m.encode(np.ascontiguousarray(a[tuple(slice(0, c) for c in core)]) if core else a, **opts)
            params = {**enc.params, **({chunk.CORE_KEY: core} if core else {})}
            want = container.pack(m.mode_id, a.dtype, a.shape, enc.payload, params, enc.model_id, 1)
            assert b == want, (a.shape, mode)
    f = chunk.encode(np.asfortranarray(_movie(np.uint16, (8, 16, 16))), "lossless")
    assert chunk.info(f).version == ORDER_PARAM_SINCE and chunk.PAD_KEY not in chunk.info(f).params


def test_fortran_order_with_padding():
    a = np.asfortranarray(_padded(fill=-1, dtype=np.int16))
    b = chunk.encode(a, "bounded", max_error=1)
    h = chunk.info(b)
    assert h.version == 3 and h.params[chunk.ORDER_KEY] == "F" and h.params[chunk.PAD_KEY] == 0xFFFF
    d = chunk.decode(b)
    assert d.flags.f_contiguous and np.array_equal(d[8:], a[8:]) and np.abs(d.astype(int) - a).max() <= 1


@pytest.mark.parametrize("fill,dtype", [(np.nan, np.float32), (-0.0, np.float64), (-1, np.int64),
                                        (2**64 - 1, np.uint64), (255, np.uint8), (np.float16(np.nan), np.float16)])
def test_padding_bits_round_trip(fill, dtype):
    a = _padded(dtype=dtype, fill=fill)
    for mode, opts in (("lossless", {}), ("bounded", {"max_error": 1})):
        b = chunk.encode(a, mode, **opts)
        h = chunk.info(b)
        if h.mode_id == modes.MODE_IDS["raw"]:
            continue
        assert h.params[chunk.PAD_KEY] == _bits_of(fill, dtype) and h.version == 3
        d = chunk.decode(b)
        pad = np.ones(a.shape, bool)
        pad[:8, :13, :11] = False
        assert np.array_equal(_bits(d)[pad], _bits(a)[pad]), (mode, dtype)


def test_decode_box_and_out():
    """Boxes inside the core, across its edge, and only in the padding; decode into a strided ``out``."""
    a = _padded()
    b = chunk.encode(a, "lossless")
    for start, shape in (((0, 0, 0), (12, 20, 20)), ((2, 3, 4), (4, 5, 6)), ((6, 10, 9), (6, 10, 11)),
                         ((8, 0, 0), (4, 20, 20)), ((0, 13, 11), (12, 7, 9)), ((11, 19, 19), (1, 1, 1))):
        big = np.zeros((2 * shape[0], shape[1], shape[2] + 3), np.uint16)
        out = big[::2, :, 1:-2]  # not contiguous
        chunk.decode_box(b, out, start)
        box = tuple(slice(s, s + n) for s, n in zip(start, shape))
        assert np.array_equal(out, a[box]), (start, shape)
    out = np.zeros((24, 20, 20), np.uint16)[::2]
    chunk.decode(b, out=out)
    assert np.array_equal(out, a)


def test_older_readers_refuse_padding_other_than_zero(monkeypatch):
    """A version-2 reader would give back zeros in the padding: it refuses the chunk instead."""
    b = chunk.encode(_padded(), "lossless")
    monkeypatch.setattr(container, "FORMAT_VERSION", 2)
    with pytest.raises(CorruptChunk, match="format version 3 is not supported"):
        chunk.decode(b)
    # chunks with zero padding stay readable by it
    assert chunk.info(chunk.encode(_padded(fill=0), "lossless")).version == 1


@pytest.mark.parametrize("what,edit", [
    ("in a version-2 chunk", lambda p: (p, 2)),
    ("in a version-1 chunk", lambda p: (p, 1)),
    ("without a core", lambda p: ({k: v for k, v in p.items() if k != chunk.CORE_KEY}, 3)),
    ("zero", lambda p: ({**p, chunk.PAD_KEY: 0}, 3)),
    ("negative", lambda p: ({**p, chunk.PAD_KEY: -1}, 3)),
    ("too wide", lambda p: ({**p, chunk.PAD_KEY: 65536}, 3)),
    ("a bool", lambda p: ({**p, chunk.PAD_KEY: True}, 3)),
    ("a float", lambda p: ({**p, chunk.PAD_KEY: 65535.0}, 3)),
    ("a string", lambda p: ({**p, chunk.PAD_KEY: "65535"}, 3)),
])
def test_invalid_padding_parameter_is_corrupt(what, edit):
    b = chunk.encode(_padded(), "lossless")
    h, payload = container.unpack(b)
    params, version = edit(dict(h.params))
    bad = container.pack(h.mode_id, h.dtype, h.shape, bytes(payload), params, h.model_id, version)
    with pytest.raises(CorruptChunk):
        chunk.decode(bad)
    with pytest.raises(CorruptChunk):
        chunk.decode_box(bad, np.zeros((2, 2, 2), np.uint16), (10, 18, 18))


def test_damaged_padded_chunk_raises_or_decodes_identically():
    """Bit flips in the header of a chunk with ``_pad`` (its value, its version byte): CorruptChunk, or the
    same data — never other padding."""
    a = _padded()
    b = chunk.encode(a, "lossless")
    ref = chunk.decode(b)
    hl = container.parse_header(b).header_len
    raised = 0
    for bit in range(8 * hl):
        x = bytearray(b)
        x[bit // 8] ^= 1 << (bit % 8)
        try:
            got = chunk.decode(bytes(x))
        except CorruptChunk:
            raised += 1
            continue
        assert np.array_equal(got, ref), f"flip bit {bit} decoded to other data"
    assert raised > 0


def test_one_dimensional_padding_needs_min_pad_samples():
    """1-D (ephys) chunks: a trailing run of one value is padding from MIN_PAD_SAMPLES samples on; shorter,
    the chunk is written as before (zero padding: any length, as in format versions 1 and 2)."""
    rng = np.random.default_rng(5)
    x = (rng.normal(0, 40, 1000)).astype(np.int16)
    for run, fill, want in ((chunk.MIN_PAD_SAMPLES - 1, -1, None), (chunk.MIN_PAD_SAMPLES, -1, 0xFFFF),
                            (300, -1, 0xFFFF), (3, 0, 0)):
        a = x.copy()
        a[-run:] = fill
        a[-run - 1] = 7  # the run is exactly ``run`` long
        b = chunk.encode(a, "bounded", max_error=1)
        h = chunk.info(b)
        if want is None:
            assert chunk.CORE_KEY not in h.params and h.version == 1
        else:
            assert h.params[chunk.CORE_KEY] == [1000 - run] and h.params.get(chunk.PAD_KEY, 0) == want
            assert h.version == (3 if want else 1)
            assert np.array_equal(chunk.decode(b)[-run:], a[-run:])
    # (T, C) chunks: padding along time is C samples per hyperplane
    e = rng.normal(0, 40, (500, 4)).astype(np.int16)
    e[480:] = -1
    h = chunk.info(chunk.encode(e, "lossless"))
    assert h.params[chunk.CORE_KEY] == [480, 4] and h.params[chunk.PAD_KEY] == 0xFFFF
