"""Property tests for the lossless and bounded modes, through the chunk codec (necoda_filter.chunk)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from necoda_filter import chunk

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MOVIE = DATA / "ophys_2p_cortex_300x200x200_int16.npz"
EPHYS = DATA / "ephys_locust_tetrode_15khz_4ch_int16.raw"

INT_DTYPES = ["u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"]
FLOAT_DTYPES = ["f2", "f4", "f8"]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rt(arr, mode="lossless", **kw):
    buf = chunk.encode(arr, mode=mode, **kw)
    out = chunk.decode(buf)
    assert out.shape == arr.shape and out.dtype == arr.dtype
    return out, buf


def _exact(a, b):
    assert a.tobytes() == b.tobytes()


def _shapes(max_dims=4):
    return hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=9)


def _walk(dtype, shape, rng, step=3):
    """Correlated integer data (random walk) that exercises the predictive schemes."""
    info = np.iinfo(dtype)
    x = np.cumsum(rng.integers(-step, step + 1, size=shape), axis=0)
    mid = (int(info.min) + int(info.max)) // 2
    return np.clip(x + mid, info.min, info.max).astype(dtype)


# ---------------------------------------------------------------------------------------------- lossless
@FAST
@given(dt=st.sampled_from(INT_DTYPES + FLOAT_DTYPES), shape=_shapes(), data=st.data())
def test_lossless_exact_any_dtype_rank(dt, shape, data):
    arr = data.draw(hnp.arrays(np.dtype(dt), shape))
    out, _ = _rt(arr)
    _exact(out, arr)


@pytest.mark.parametrize("dt", INT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (1000,), (513, 3), (64, 1), (1030, 5), (5, 9, 11), (9, 12, 13),
                                   (6, 2, 10, 9), (40, 1, 1)])
def test_lossless_exact_correlated_and_extremes(dt, shape):
    rng = np.random.default_rng(hash((dt, shape)) % 2**32)
    info = np.iinfo(dt)
    walk = _walk(dt, shape, rng)
    out, buf = _rt(walk)
    _exact(out, walk)
    ext = rng.choice(np.array([info.min, info.max, 0], dtype=dt), size=shape)
    _exact(_rt(ext)[0], ext)
    const = np.full(shape, info.max, dtype=dt)
    out, buf = _rt(const)
    _exact(out, const)
    if const.size >= 1000:
        assert len(buf) < const.nbytes / 10
    noise = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    _exact(_rt(noise)[0], noise)  # random: stored raw by the container if nothing is gained


@pytest.mark.parametrize("dt", FLOAT_DTYPES)
def test_lossless_floats_bit_exact(dt):
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(size=(300, 7)), axis=0).astype(dt)
    x[3, 2], x[5, 1], x[7, 0], x[9, 3] = np.nan, np.inf, -np.inf, -0.0
    x.view(np.uint8)[-x.dtype.itemsize:] = 0xFF  # a NaN with a payload
    _exact(_rt(x)[0], x)


def test_lossless_ephys_and_imaging_schemes_used():
    rng = np.random.default_rng(2)
    t = np.arange(4000)
    common = 200 * np.sin(t / 7.0)
    eph = (common[:, None] * [1, 0.8, 0.6, 0.4] + rng.normal(0, 5, (4000, 4))).astype(np.int16)
    out, buf = _rt(eph)
    _exact(out, eph)
    assert chunk.info(buf).params["s"] == "lpc"
    mov = rng.poisson(np.linspace(1, 30, 24 * 24).reshape(24, 24), size=(40, 24, 24)).astype(np.uint16) * 50 + 90
    out, buf = _rt(mov)
    _exact(out, mov)
    assert chunk.info(buf).params["s"] == "img"


def test_lossless_big_range_int64():
    x = np.array([np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max] * 50, dtype=np.int64)
    _exact(_rt(x)[0], x)
    u = (np.arange(2000, dtype=np.uint64) * 3 + np.uint64(2**63 + 5)).reshape(1000, 2)
    _exact(_rt(u)[0], u)


# ---------------------------------------------------------------------------------------------- bounded
@FAST
@given(dt=st.sampled_from(INT_DTYPES), shape=_shapes(), E=st.integers(0, 300), data=st.data())
def test_bounded_int_never_exceeds(dt, shape, E, data):
    arr = data.draw(hnp.arrays(np.dtype(dt), shape))
    out, _ = _rt(arr, "bounded", max_error=E)
    assert np.all(np.abs(out.astype(object) - arr.astype(object)) <= E)


@pytest.mark.parametrize("dt", ["u1", "i2", "u2", "i4", "u8"])
@pytest.mark.parametrize("E", [0, 1, 3.7, 100])
def test_bounded_int_structured(dt, E):
    rng = np.random.default_rng(3)
    for shape in [(1,), (17,), (513, 3), (10, 13, 7), (3, 2, 5, 4)]:
        x = _walk(dt, shape, rng, step=20)
        out, buf = _rt(x, "bounded", max_error=E)
        assert np.abs(out.astype(np.float64) - x.astype(np.float64)).max() <= int(E)
        c = np.full(shape, np.iinfo(dt).max, dt)
        out, _ = _rt(c, "bounded", max_error=E)
        assert np.abs(out.astype(np.float64) - c.astype(np.float64)).max() <= int(E)


@FAST
@given(dt=st.sampled_from(["f4", "f8"]), shape=_shapes(), E=st.floats(1e-6, 1e3), data=st.data())
def test_bounded_float_never_exceeds_nonfinite_exact(dt, shape, E, data):
    width = int(dt[1]) * 8
    elems = st.floats(-1e6, 1e6, width=width) | st.sampled_from([np.nan, np.inf, -np.inf])
    arr = data.draw(hnp.arrays(np.dtype(dt), shape, elements=elems))
    out, _ = _rt(arr, "bounded", max_error=E)
    fin = np.isfinite(arr)
    assert np.all(np.abs(out[fin].astype(np.float64) - arr[fin].astype(np.float64)) <= E)
    _exact(out[~fin], arr[~fin])  # NaN / inf preserved bit for bit


def test_bounded_float_smooth_compresses():
    x = np.cumsum(np.random.default_rng(4).normal(size=(2000, 4)), axis=0).astype(np.float32)
    out, buf = _rt(x, "bounded", max_error=0.05)
    assert np.abs(out - x).max() <= 0.05
    assert x.nbytes / len(buf) > 3


def test_bounded_requires_a_bound():
    x = np.arange(100, dtype=np.int16)
    with pytest.raises(ValueError, match="needs max_error"):  # the caller's mistake: not a raw chunk
        chunk.encode(x, "bounded")


def _poisson_movie(T, gain, offset, rng, size=32):
    rate = np.exp(rng.normal(1.5, 1.0, (size, size)))  # photons per frame, wide brightness range
    photons = rng.poisson(rate, size=(T, size, size))
    return (photons * gain + offset + rng.normal(0, 3, (T, size, size))).round().astype(np.int16)


def _check_noise_bound(x, k, gain, offset):
    out, buf = _rt(x, "bounded", max_error_noise=k)
    p = chunk.info(buf).params
    err = np.abs(out.astype(np.float64) - x)
    assert err.max() <= p["emax"]
    # the per-level bound: never more than k * sqrt(gain * photons + floor) for the true noise model
    sigma_true = np.sqrt(gain * np.maximum(x - offset, 0) + 9.0)
    nm = p["nm"]
    floor = k * nm["s0"]
    assert np.all(err <= np.maximum(k * sigma_true * 1.3, floor) + 1)
    return p, x.nbytes / len(buf)


def test_noise_bound_poisson():
    rng = np.random.default_rng(5)
    x = _poisson_movie(100, 50.0, 100, rng)
    p, ratio = _check_noise_bound(x, 0.5, 50.0, 100)
    assert p["nm"]["fit"] == "ptc"
    assert 35 < p["nm"]["g"] < 65
    assert ratio > 3


@pytest.mark.parametrize("T,offset", [(20, 100), (100, -500), (3, 50), (2, -1000)])
def test_noise_bound_short_and_negative_offset(T, offset):
    rng = np.random.default_rng(T)
    x = _poisson_movie(T, 40.0, offset, rng)
    p, _ = _check_noise_bound(x, 0.5, 40.0, offset)
    assert p["nm"]["fit"] in ("ptc", "floor")
    if p["nm"]["fit"] == "floor":
        assert p["emax"] <= 0.5 * p["nm"]["s0"] + 1


def test_noise_bound_bad_fit_falls_back():
    # pure read noise, no signal dependence: the photon-transfer fit must not invent a large gain
    rng = np.random.default_rng(6)
    x = (rng.normal(1000, 10, (30, 32, 32))).round().astype(np.int16)
    out, buf = _rt(x, "bounded", max_error_noise=1.0)
    p = chunk.info(buf).params
    assert np.abs(out.astype(np.int64) - x).max() <= max(p["emax"], 13)
    assert p["emax"] <= 13


@pytest.mark.parametrize("rim", ["zero", "nan"])
def test_noise_bound_ignores_a_constant_rim(rim):
    """QA: a rim constant over the chunk (zeros or NaN left by registration, dead pixels) made the quietest
    bin's variance 0, so the noise floor s0 and every low-level bound were 0 (NaN: s0 NaN): a float movie
    with a 5-pixel NaN rim went from 11x to 3x with max error 0. The fit now uses the pixels that vary."""
    rng = np.random.default_rng(7)
    x = _poisson_movie(64, 50.0, 100, rng).astype(np.float32 if rim == "nan" else np.int16)
    clean_out, clean_buf = _rt(x, "bounded", max_error_noise=0.5)
    y = x.copy()
    y[:, :5] = np.nan if rim == "nan" else 0
    y[:, :, :5] = np.nan if rim == "nan" else 0
    out, buf = _rt(y, "bounded", max_error_noise=0.5)
    p, pc = chunk.info(buf).params, chunk.info(clean_buf).params
    assert np.isfinite(p["emax"]) and p["emax"] > 0.8 * pc["emax"]  # the same bound as without the rim
    if "nm" in p:  # integers: the noise floor (the bound of the darkest levels) as well
        assert p["nm"]["s0"] > 0.8 * pc["nm"]["s0"]
    live = (slice(None), slice(5, None), slice(5, None))
    assert np.abs(out[live].astype(np.float64) - y[live]).max() <= p["emax"]
    assert np.abs(out[live].astype(np.float64) - y[live]).max() > 0  # the bound is used, not collapsed to 0
    if rim == "nan":
        assert np.isnan(out[:, :5]).all() and np.isnan(out[:, :, :5]).all()
    assert len(clean_buf) < x.nbytes / 3 and len(buf) < 1.5 * len(clean_buf)


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.skipif(not EPHYS.exists(), reason="../shared/data is absent")
def test_real_ephys():
    x = np.fromfile(EPHYS, dtype="<i2").reshape(-1, 4)[:60000]
    out, buf = _rt(x)
    _exact(out, x)
    assert x.nbytes / len(buf) > 1.95
    out, buf = _rt(x, "bounded", max_error=10)
    assert np.abs(out.astype(np.int64) - x).max() <= 10


@pytest.mark.skipif(not MOVIE.exists(), reason="../shared/data is absent")
def test_real_movie():
    x = np.load(MOVIE)["data"][:60, :100, :100]
    out, buf = _rt(x)
    _exact(out, x)
    assert x.nbytes / len(buf) > 1.45
    out, buf = _rt(x, "bounded", max_error_noise=0.5)
    p = chunk.info(buf).params
    assert p["nm"]["fit"] == "ptc" and 70 < p["nm"]["g"] < 160
    assert np.abs(out.astype(np.int64) - x).max() <= p["emax"]
    out, buf = _rt(x[:20], "bounded", max_error_noise=0.5)  # 20-frame movie
    assert np.abs(out.astype(np.int64) - x[:20]).max() <= chunk.info(buf).params["emax"]


# ---------------------------------------------------------------------------------------------- closed loop
def _path(buf):
    """"closed" when the chunk took the closed-loop path (params t == 2), else "open"."""
    return "closed" if chunk.info(buf).params.get("t") == 2 else "open"


def _within(out, x, E):
    assert np.all(np.abs(out.astype(object) - x.astype(object)) <= int(E))


@pytest.mark.parametrize("dt", INT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (2,), (37,), (700,), (513, 3), (40, 1), (1, 40), (6, 9, 11), (3, 1, 5),
                                   (5, 4, 3, 2), (2, 3, 1, 7)])
@pytest.mark.parametrize("kind", ["random", "smooth", "constant", "extreme"])
def test_bounded_closed_loop_bound_holds(dt, shape, kind):
    rng = np.random.default_rng(abs(hash((dt, shape, kind))) % 2**32)
    info = np.iinfo(dt)
    if kind == "random":
        x = _walk(dt, shape, rng, step=1 << min(20, info.bits - 2))
        x.flat[rng.integers(x.size)] = info.max
    elif kind == "smooth":
        x = _walk(dt, shape, rng, step=3)
    elif kind == "constant":
        x = np.full(shape, info.min if dt.startswith("i") else info.max, dt)
    else:  # extreme: dtype min and max side by side (range 2**bits - 1, wider ones stay open loop)
        x = rng.choice(np.array([info.min, info.max, info.min + 1, info.max - 1], dtype=dt), size=shape)
    for E in (1, 2, 7, 300):
        out, buf = _rt(x, "bounded", max_error=E)
        _within(out, x, E)
        p = chunk.info(buf).params
        assert p.get("emax", 0) <= E  # (chunks too wide for the mode are stored raw, without params)


def test_bounded_closed_loop_and_open_loop_both_chosen():
    rng = np.random.default_rng(11)
    seen = set()
    # smooth ephys-like series at a large bound: closed loop; white noise at a small bound: open loop
    t = np.arange(8000)
    eph = (1000 * np.sin(t[:, None] / 50.0 + np.arange(4)) + rng.normal(0, 20, (8000, 4))).astype(np.int16)
    out, buf = _rt(eph, "bounded", max_error=40)
    _within(out, eph, 40)
    seen.add(_path(buf))
    assert _path(buf) == "closed"
    img = (np.linspace(0, 3000, 64 * 64).reshape(64, 64)[None] + rng.normal(0, 30, (16, 64, 64))).astype(np.uint16)
    out, buf = _rt(img, "bounded", max_error=200)
    _within(out, img, 200)
    assert _path(buf) == "closed"
    # photon-limited movie at a small bound: quantize first + the lossless imaging predictor wins
    lam = np.linspace(1, 200, 48 * 48).reshape(1, 48, 48).repeat(16, 0)
    mov = rng.poisson(lam).astype(np.uint16)
    out, buf = _rt(mov, "bounded", max_error=2)
    _within(out, mov, 2)
    seen.add(_path(buf))
    assert seen == {"open", "closed"}


@FAST
@given(dt=st.sampled_from(INT_DTYPES), shape=_shapes(), E=st.integers(1, 300), data=st.data())
def test_bounded_closed_loop_random_property(dt, shape, E, data):
    arr = data.draw(hnp.arrays(np.dtype(dt), shape,
                               elements=st.integers(int(np.iinfo(dt).min), int(np.iinfo(dt).max))))
    out, _ = _rt(arr, "bounded", max_error=E)
    _within(out, arr, E)


@pytest.mark.parametrize("k", [0.5, 1.0, 3.0])
def test_bounded_noise_closed_loop_bound(k):
    rng = np.random.default_rng(5)
    lam = np.linspace(5, 400, 48 * 48).reshape(48, 48)
    x = (rng.poisson(np.broadcast_to(lam, (32, 48, 48))) * 8 + 100).astype(np.uint16)
    out, buf = _rt(x, "bounded", max_error_noise=k)
    p = chunk.info(buf).params
    assert np.abs(out.astype(np.int64) - x).max() <= p["emax"]


def _closed_payload():
    rng = np.random.default_rng(2)
    t = np.arange(6000)
    x = (800 * np.sin(t[:, None] / 40.0 + np.arange(3)) + rng.normal(0, 10, (6000, 3))).astype(np.int16)
    buf = chunk.encode(x, mode="bounded", max_error=30)
    assert _path(buf) == "closed"
    return x, buf


def test_bounded_closed_loop_corrupt_raises():
    from necoda_filter.modes import bounded as BD
    from necoda_filter.modes.lossless import pack_sections, unpack_sections
    x, buf = _closed_payload()
    info = chunk.info(buf)
    h = chunk.decode(buf)
    _within(h, x, 30)
    # go below the container: the mode's decode with damaged sections / parameters
    enc = BD.MODE.encode(x, max_error=30)
    assert enc.params["t"] == 2
    secs = [bytes(s) for s in unpack_sections(enc.payload)]
    dec = lambda payload, params=enc.params, shape=x.shape: BD.MODE.decode(payload, shape, x.dtype, params, "")  # noqa: E731
    _within(dec(enc.payload), x, 30)
    bad = []
    bad.append((pack_sections(secs[:1]), enc.params))  # missing side streams
    bad.append((pack_sections([secs[0][: len(secs[0]) // 2], *secs[1:]]), enc.params))  # truncated indices
    bad.append((enc.payload, {**enc.params, "sh": [x.shape[0] - 1, x.shape[1]]}))  # layout mismatch
    bad.append((enc.payload, {**enc.params, "E": -1}))
    bad.append((enc.payload, {**enc.params, "p": 99}))
    bad.append((enc.payload, {**enc.params, "g": 0}))
    bad.append((enc.payload, {**enc.params, "cl": "nope"}))
    from necoda_filter.modes.lossless import pco
    huge = np.full(x.size, 30000, np.int16)  # indices beyond any valid reconstruction
    bad.append((pack_sections([pco(huge), *secs[1:]]), enc.params))
    bad.append((pack_sections([pco(np.zeros(x.size - 1, np.int16)), *secs[1:]]), enc.params))  # short
    for payload, params in bad:
        with pytest.raises(ValueError):
            dec(payload, params)
    # the same through the container: never garbage, never a crash
    assert info.params["t"] == 2
    raw = bytearray(buf)
    for pos in range(len(raw) - 1, len(raw) - 200, -17):
        r = bytearray(raw)
        r[pos] ^= 0x5A
        try:
            out = chunk.decode(bytes(r))
        except (ValueError, KeyError, TypeError, OverflowError, RuntimeError):
            continue
        assert out.shape == x.shape


def test_bounded_closed_loop_real_ephys():
    if not EPHYS.exists():
        pytest.skip("shared ephys recording not present")
    x = np.fromfile(EPHYS, dtype="<i2", count=15000 * 4).reshape(-1, 4)
    for E in (26, 106):
        out, buf = _rt(x, "bounded", max_error=E)
        _within(out, x, E)
        assert _path(buf) == "closed"
