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
    out, buf = _rt(x, "bounded")  # the mode raises; the container stores the chunk raw (exact)
    _exact(out, x)
    assert chunk.info(buf).mode_id == 0


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
