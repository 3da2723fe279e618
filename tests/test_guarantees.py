"""Adversarial checks of the stated guarantees, through ``chunk.encode`` / ``chunk.decode``.

* lossless: bit-exact for every dtype, shape and layout; incompressible chunks stored raw at a small cost;
* bounded: every sample within ``max_error`` (exact rational arithmetic for floats), NaN/inf bit-exact;
* learned + ``max_error`` / ``max_error_noise``: the safeguard holds on adversarial movies (or the chunk is
  stored raw), and learned without a bound never fails;
* every encoder failure ends in a raw chunk inside the container that decodes exactly.

Seeded and small (the whole file runs in well under a minute on two cores)."""
from __future__ import annotations

import importlib.util
import logging
import warnings
from fractions import Fraction

import numpy as np
import pytest

from necoda_filter import chunk, modes, options

RAW, LOSSLESS, BOUNDED, LEARNED = 0, 1, 2, 3
INTS = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8"]
FLOATS = ["f2", "f4", "f8"]


@pytest.fixture(autouse=True)
def _quiet_fallback_log():
    logging.getLogger("necoda_filter").setLevel(logging.ERROR)
    yield
    logging.getLogger("necoda_filter").setLevel(logging.NOTSET)


def _roundtrip(a, mode, **kw):
    buf = chunk.encode(a, mode=mode, **kw)
    return chunk.info(buf).mode_id, chunk.decode(buf), buf


def _bits(a):
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.itemsize > 1 else a
    return a.reshape(-1).view(np.uint8)


def _int_err(a, d) -> int:
    """max |a - d| exactly (Python ints: no wrap-around for 64-bit types)."""
    a, d = np.asarray(a).reshape(-1), np.asarray(d).reshape(-1)
    return max((abs(int(x) - int(y)) for x, y in zip(a.tolist(), d.tolist())), default=0)


def _float_err_exact(a, d) -> Fraction:
    """max |a - d| over the finite samples of ``a``, in exact rational arithmetic."""
    worst = Fraction(0)
    for x, y in zip(np.asarray(a, np.float64).reshape(-1).tolist(), np.asarray(d, np.float64).reshape(-1).tolist()):
        if np.isfinite(x):
            if not np.isfinite(y):
                return Fraction(10) ** 400
            worst = max(worst, abs(Fraction(x) - Fraction(y)))
    return worst


def _nan_bits(dt) -> np.ndarray:
    """Signalling NaN, quiet NaN with a payload, negative NaN, all-ones-mantissa NaN of float dtype ``dt``."""
    fi = np.finfo(dt)
    nb, mant = np.dtype(dt).itemsize * 8, fi.nmant
    ut = np.dtype(f"u{np.dtype(dt).itemsize}")
    exp = ((1 << (nb - 1 - mant)) - 1) << mant
    return np.array([exp | 1, exp | (1 << (mant - 1)) | 5, (1 << (nb - 1)) | exp | 3, exp | ((1 << mant) - 1)],
                    ut).view(dt)


def _float_specials(dt) -> np.ndarray:
    fi = np.finfo(dt)
    vals = np.array([np.inf, -np.inf, 0.0, -0.0, fi.tiny, -fi.tiny, fi.max, -fi.max, fi.smallest_subnormal,
                     -fi.smallest_subnormal, 1.0, -1.5], dt)
    return np.concatenate([vals, _nan_bits(dt)])


# ============================================================================================== lossless
def _int_cases(dt, shape, rng):
    info = np.iinfo(dt)
    n = int(np.prod(shape))
    top, bottom = np.full(shape, info.max, dt), np.full(shape, info.min, dt)
    small = rng.integers(0, 5, size=shape).astype(dt)
    return {
        "random": rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True),
        "alternating_min_max": np.where(np.arange(n) % 2 == 0, bottom.reshape(-1), top.reshape(-1)).reshape(shape),
        "near_max": top - small,
        "near_min": bottom + small,
        "constant_max": top,
        "zeros": np.zeros(shape, dt),
    }


@pytest.mark.parametrize("dt", INTS)
def test_lossless_integers_bit_exact_at_limits_any_shape_and_layout(dt):
    rng = np.random.default_rng(100 + INTS.index(dt))
    for shape in [(1,), (7,), (1000,), (1, 1), (50, 1), (1, 50), (100, 3), (33, 2, 5), (8, 16, 16), (4, 1, 1, 70)]:
        for name, a in _int_cases(dt, shape, rng).items():
            variants = {"c": a, "be": a.astype(a.dtype.newbyteorder(">")), "strided": np.repeat(a, 2, axis=0)[::2]}
            if a.ndim >= 2:
                variants["transposed"] = a.T
            for vname, v in variants.items():
                mode, d, buf = _roundtrip(v, "lossless")
                assert mode in (RAW, LOSSLESS)
                assert d.shape == v.shape and d.dtype == np.dtype(dt).newbyteorder("<"), (shape, name, vname)
                assert np.array_equal(_bits(d), _bits(v)), (dt, shape, name, vname)
                assert len(buf) <= v.nbytes + 200, (dt, shape, name, vname)


@pytest.mark.parametrize("dt", FLOATS)
def test_lossless_floats_bit_exact_nan_payloads_signed_zero_denormals(dt):
    rng = np.random.default_rng(200 + FLOATS.index(dt))
    sp = _float_specials(dt)
    ut = np.dtype(f"u{np.dtype(dt).itemsize}")
    cases = [sp, sp[:1], np.resize(sp, (3, sp.size)).T, np.array(-0.0, dt),
             np.array([np.finfo(dt).smallest_subnormal], dt),
             rng.integers(0, np.iinfo(ut).max, size=(200, 3), dtype=ut, endpoint=True).view(dt),
             rng.integers(0, np.iinfo(ut).max, size=(2, 3, 4, 5), dtype=ut, endpoint=True).view(dt),
             rng.normal(size=500).astype(dt), np.full((30, 30), np.nan, dt), np.full((30, 30), 3.25, dt)]
    for i, a in enumerate(cases):
        for v in (a, a.astype(a.dtype.newbyteorder(">")), a.T):
            mode, d, _ = _roundtrip(v, "lossless")
            assert mode in (RAW, LOSSLESS)
            assert np.array_equal(_bits(d), _bits(v.reshape(d.shape))), (dt, i)


def test_lossless_keeps_negative_zero_in_trailing_planes():
    rng = np.random.default_rng(250)
    for dt in FLOATS:
        for a in (np.concatenate([rng.normal(size=1000), np.full(1000, -0.0)]).astype(dt),
                  np.concatenate([rng.normal(size=(300, 4)), np.full((300, 4), -0.0)]).astype(dt)):
            mode, d, _ = _roundtrip(a, "lossless")
            assert np.array_equal(_bits(d), _bits(a)), (dt, a.shape, mode)


@pytest.mark.parametrize("dt", INTS + FLOATS)
def test_lossless_incompressible_chunk_is_stored_raw_at_small_cost(dt):
    rng = np.random.default_rng(300)
    ut = np.dtype(f"u{np.dtype(dt).itemsize}")
    for shape in [(4096,), (512, 8), (8, 32, 32)]:
        a = rng.integers(0, np.iinfo(ut).max, size=shape, dtype=ut, endpoint=True).view(dt)
        mode, d, buf = _roundtrip(a, "lossless")
        assert mode == RAW  # noise does not beat raw size: stored raw inside the container
        assert np.array_equal(_bits(d), _bits(a))
        assert len(buf) <= a.nbytes + 64


def test_lossless_ephys_with_and_without_dc_offsets():
    rng = np.random.default_rng(400)
    T, C = 5000, 16
    ep = (np.cumsum(rng.normal(0, 20, (T, C)), axis=0) * 0.1 + rng.normal(0, 10, (T, C))).astype(np.int16)
    dc = (ep.astype(np.int32) + np.arange(C) * 1500 - 10000).clip(-32768, 32767).astype(np.int16)
    sat = (ep.astype(np.int32) * 400).clip(-32768, 32767).astype(np.int16)
    for a in (ep, dc, sat, np.asfortranarray(dc), dc.astype(">i2")):
        mode, d, buf = _roundtrip(a, "lossless")
        assert np.array_equal(d, a)
        assert len(buf) <= a.nbytes + 64
    mode, _, buf = _roundtrip(dc, "lossless")
    assert mode == LOSSLESS and len(buf) < dc.nbytes / 2


# =============================================================================================== bounded
@pytest.mark.parametrize("dt", INTS)
def test_bounded_integers_never_exceed_max_error_at_limits(dt):
    rng = np.random.default_rng(500 + INTS.index(dt))
    for shape in [(1,), (5,), (300,), (64, 3), (8, 16, 16), (2, 3, 4, 5)]:
        for name, a in _int_cases(dt, shape, rng).items():
            for E in [0, 0.5, 1, 2, 7, 1000, 2 ** 40, 1e30]:
                mode, d, _ = _roundtrip(a, "bounded", max_error=E)
                assert mode in (RAW, BOUNDED)
                assert _int_err(a, d) <= E, (dt, shape, name, E)


@pytest.mark.parametrize("dt", ["u8", "i8"])
def test_bounded_64bit_near_the_limits_is_coded_not_stored_raw(dt):
    """Small-range uint64 data above 2**63: the closed-loop LPC fit offset the values in int64 and raised
    OverflowError, so the chunk silently fell back to raw."""
    info = np.iinfo(dt)
    rng = np.random.default_rng(600)
    for shape in [(300,), (64, 3)]:
        a = np.full(shape, info.max, dt) - rng.integers(0, 50, size=shape).astype(dt)
        for E in [1, 7]:
            mode, d, _ = _roundtrip(a, "bounded", max_error=E)
            assert mode == BOUNDED, (dt, shape, E)
            assert _int_err(a, d) <= E


@pytest.mark.parametrize("dt", FLOATS)
def test_bounded_floats_exact_bound_and_nonfinite_bit_exact(dt):
    rng = np.random.default_rng(700 + FLOATS.index(dt))
    fi = np.finfo(dt)
    big = 1e6 if dt != "f2" else 1000.0
    cases = {
        "normal": rng.normal(0, 10, (200, 3)).astype(dt),
        "offset": (big + rng.normal(0, 1, 300)).astype(dt),  # max_error below the float spacing
        "specials": np.tile(_float_specials(dt), 5),
        "tiny": (rng.normal(0, 1, 300) * float(fi.smallest_subnormal) * 10).astype(dt),
        "maxes": np.array([fi.max, -fi.max] * 30, dt),
        "all_nan": np.full(50, np.nan, dt),
        "one": np.array([3.3], dt),
    }
    for name, a in cases.items():
        fin = np.isfinite(a)
        for E in [0, 1e-30, 1e-3, 0.1, 1, 1e30]:
            for v in (a, a.astype(a.dtype.newbyteorder(">"))):
                mode, d, _ = _roundtrip(v, "bounded", max_error=E)
                assert mode in (RAW, BOUNDED)
                assert np.array_equal(_bits(d[~fin]), _bits(a[~fin])), (dt, name, E)  # NaN payloads, inf
                assert _float_err_exact(a, d) <= Fraction(E), (dt, name, E)


def test_bounded_floats_half_step_boundaries_exact():
    """Samples on and next to the quantizer's half-step boundaries, checked in rational arithmetic."""
    rng = np.random.default_rng(800)
    for trial in range(60):
        dt = FLOATS[trial % 3]
        E = float(rng.uniform(0.01, 3)) if trial % 2 else float(10.0 ** rng.uniform(-8, 2))
        lo = float(rng.choice([0.0, -E * rng.uniform(0, 3), -1e-30]))
        k = rng.integers(-3, 6, 200)
        jitter = rng.choice([0, 1, -1], 200) * np.abs(rng.normal(0, 1, 200)) * 10.0 ** rng.integers(-45, -5, 200)
        a = np.concatenate([[lo], lo + (k + 0.5) * 2 * E + jitter]).astype(dt)
        _, d, _ = _roundtrip(a, "bounded", max_error=E)
        assert _float_err_exact(a, d) <= Fraction(E), (dt, E)


def test_bounded_empty_float_chunk_decodes():
    """An empty float chunk coded by the bounded mode decoded to a CorruptChunk (the empty index stream
    came back as int64 instead of the int32 it was written as)."""
    for dt in FLOATS:
        for shape in [(0,), (0, 5), (3, 0, 4)]:
            a = np.zeros(shape, dt)
            for kw in ({"max_error": 1}, {"max_error": 0}, {"max_error_noise": 1}):
                d = chunk.decode(chunk.encode(a, mode="bounded", **kw))
                assert d.shape == shape and d.dtype == np.dtype(dt)


@pytest.mark.parametrize("dt", ["u1", "i2", "u2", "i4", "u8", "f4", "f8"])
def test_bounded_noise_units_constant_and_enormous_noise(dt):
    rng = np.random.default_rng(900)
    info = np.iinfo(dt) if dt[0] in "iu" else None
    const = np.full((16, 8, 8), 100, dt)
    huge = (rng.integers(0, 2 ** 60, (16, 8, 8), dtype=np.uint64).astype(dt) if dt == "u8" else
            rng.integers(info.min, info.max, (16, 8, 8), endpoint=True).astype(dt) if info else
            rng.normal(0, 1e30, (16, 8, 8)).astype(dt))
    for k in [0.0, 0.5, 3.0]:
        mode, d, _ = _roundtrip(const, "bounded", max_error_noise=k)
        assert mode == BOUNDED and np.array_equal(d, const)  # noise estimate 0: exact
        for extra in ({}, {"max_error": 2}):
            buf = chunk.encode(huge, mode="bounded", max_error_noise=k, **extra)
            h, d = chunk.info(buf), chunk.decode(buf)
            err = _int_err(huge, d) if info else float(_float_err_exact(huge, d))
            if h.mode_id == BOUNDED:
                assert err <= h.params["emax"]
            if extra:
                assert err <= 2


@pytest.mark.parametrize("bad", [{"max_error": -1}, {"max_error": float("nan")}, {"max_error": float("inf")},
                                 {"max_error_noise": -1}, {"max_error_noise": float("nan")}, {}])
def test_bounded_invalid_bound_is_a_clear_value_error(bad):
    a = np.arange(300, dtype=np.int16)
    with pytest.raises(ValueError, match="max_error"):
        modes.get("bounded").encode(a, **bad)
    with pytest.raises(ValueError, match="max_error"):
        options.check_options("bounded", bad)


@pytest.mark.parametrize("mode", ["bounded", "learned"])
@pytest.mark.parametrize("bad", [{"max_error": -1}, {"max_error": float("nan")}, {"max_error": float("inf")},
                                 {"max_error_noise": -0.5}, {"max_error_noise": float("nan")}])
def test_chunk_encode_rejects_invalid_bound(mode, bad):
    """A bad bound is an error naming it, never a chunk stored raw (the caller asked for a guarantee)."""
    a = np.arange(16 * 32 * 32, dtype=np.int16).reshape(16, 32, 32)
    with pytest.raises(ValueError, match=next(iter(bad))):
        chunk.encode(a, mode=mode, **bad)


def test_chunk_encode_bounded_needs_a_bound():
    with pytest.raises(ValueError, match="max_error"):
        chunk.encode(np.arange(300, dtype=np.int16), mode="bounded")


# =============================================================================================== learned
needs_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")


def _learned_check(a, **kw):
    """Encode with the learned mode and a bound; the bound must hold (raw fallback allowed)."""
    buf = chunk.encode(a, mode="learned", **kw)
    h, d = chunk.info(buf), chunk.decode(buf)
    assert d.shape == a.shape and d.dtype == a.dtype
    assert h.mode_id in (RAW, LEARNED)
    if h.mode_id == RAW:
        assert np.array_equal(_bits(d), _bits(a))
    lim = kw.get("max_error")
    if "max_error_noise" in kw and h.mode_id == LEARNED:
        me = h.params["sg"]["me"]
        lim = me if lim is None else min(lim, me)
    if a.dtype.kind in "iu":
        err = _int_err(a, d)
    else:
        err = float(np.max(np.abs(d.astype(np.float64) - a.astype(np.float64)))) if a.size else 0.0
    if lim is not None:
        assert err <= lim, (a.dtype, a.shape, kw, h.mode_id, err, lim)
    return h.mode_id, err


def _movie(dt, shape, kind, rng):
    info = np.iinfo(dt) if np.dtype(dt).kind in "iu" else None
    hi = float(info.max) if info else float(np.finfo(dt).max) * 0.99
    lo = float(info.min) if info else -hi
    m = {
        "poisson": rng.poisson(rng.uniform(5, 60, shape[-2:]), shape) * 3.0 + 100,
        "constant": np.full(shape, 1234.0),
        "saturated": np.full(shape, hi),
        "noise": rng.uniform(lo, hi, shape) if info else rng.uniform(lo / 2, hi / 2, shape),
        "alternating": np.where(np.indices(shape).sum(0) % 2, hi, lo),
        "negative": rng.poisson(20, shape) * 3.0 - 1000,
    }
    if kind == "hot_pixel":
        a = np.zeros(shape)
        a[(0,) * (len(shape) - 2) + (shape[-2] // 2, shape[-1] // 2)] = hi
    else:
        a = m[kind]
    if info is None:
        return a.astype(dt)
    if np.dtype(dt).itemsize < 8:
        return np.clip(np.round(a), lo, hi).astype(dt)
    # 64-bit: exact limits (float(info.max) rounds up past them)
    out = np.clip(np.round(a), lo, float(np.nextafter(hi, 0))).astype(dt)
    out[a >= hi] = info.max
    out[a <= lo] = info.min
    return out


KINDS = ["poisson", "constant", "saturated", "hot_pixel", "noise", "alternating", "negative"]


@needs_ort
@pytest.mark.parametrize("dt", ["u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"])
def test_learned_safeguard_holds_on_adversarial_movies(dt):
    """Before the fix: int32/uint32 residuals were cut to int32 (errors ~2**32), 64-bit reconstructions
    wrapped (float(int64 max) cast overflows; float64 clip rounds), float movies whose reconstruction was
    NaN/inf decoded to NaN, and float16/32 residual and output rounding pushed errors past max_error."""
    rng = np.random.default_rng(1000 + len(dt) + ord(dt[0]) + int(dt[1]))
    for shape in [(8, 16, 16), (9, 17, 33), (16, 24)]:
        for kind in KINDS:
            a = _movie(dt, shape, kind, rng)
            for kw in ({"max_error": 3}, {"max_error": 2, "max_error_noise": 0.5}, {"max_error_noise": 1.0}):
                _learned_check(a, **kw)
            if dt[0] == "f":
                for E in (0.1, 1e-3):
                    _learned_check(a, max_error=E)


@needs_ort
def test_learned_safeguard_float_rounding_regressions():
    """Exact cases that broke the bound: float32 (9, 17, 33) movie at max_error=1e-3 (error 1.007e-3: the
    float32 residual and the final rounding each add up to half a float32 step), float16 movie at 0.1
    (error 0.125)."""
    rng = np.random.default_rng(11)
    for dt, E in (("f4", 1e-3), ("f2", 0.1), ("f2", 0.05)):
        for shape in [(8, 16, 16), (9, 17, 33)]:
            a = (rng.poisson(rng.uniform(5, 60, shape[-2:]), shape) * 3.0 + 100).astype(dt)
            mode, _ = _learned_check(a, max_error=E)
            assert mode == LEARNED  # the fix keeps these in the learned mode


@needs_ort
@pytest.mark.parametrize("dt", ["i4", "u4"])
def test_learned_safeguard_wide_int32_residual_kept_in_learned_mode(dt):
    rng = np.random.default_rng(12)
    info = np.iinfo(dt)
    a = rng.integers(info.min, info.max, (8, 16, 16), dtype=dt, endpoint=True)
    # full-range 32-bit values: the bound must leave room for the decoder's float32 drift elsewhere
    # (2**31 * SAFEGUARD_DRIFT = 2048 units), so a bound of 3 is stored raw (exact) ...
    mode, err = _learned_check(a, max_error=3)
    assert mode == RAW and err == 0
    # ... and a wider one stays learned, its residual (beyond the int32 range) kept exactly
    mode, err = _learned_check(a, max_error=5000)
    assert mode == LEARNED and err <= 5000


@needs_ort
def test_learned_small_shapes_and_single_frame_with_bound():
    rng = np.random.default_rng(13)
    for dt in ("u1", "i2", "u2", "f4"):
        for shape in [(8, 16, 16), (9, 17, 33), (1, 33, 17), (40, 40), (2, 3, 8, 16)]:
            a = _movie(dt, shape, "poisson", rng)
            mode, err = _learned_check(a, max_error=2)
            assert mode == LEARNED, (dt, shape)


@needs_ort
def test_learned_without_bound_never_fails_on_odd_input():
    """Before the fix a movie saturated at the top of int64/uint64 decoded to INT64_MIN / 0 (the float64
    clip bound float(iinfo.max) rounds up to 2**63 / 2**64 and the cast overflows)."""
    rng = np.random.default_rng(14)
    for dt in ["u1", "i2", "u4", "i8", "u8", "f2", "f4", "f8"]:
        info = np.iinfo(dt) if dt[0] in "iu" else np.finfo(dt)
        for shape in [(8, 16, 16), (9, 17, 33), (1, 1), (300, 1), (2, 3, 8, 16)]:
            for a in (np.full(shape, info.max, dt), np.full(shape, info.min, dt), _movie(dt, shape, "poisson", rng)):
                buf = chunk.encode(a, mode="learned")
                with warnings.catch_warnings():
                    warnings.simplefilter("error", RuntimeWarning)  # no undefined float->int casts
                    d = chunk.decode(buf)
                assert d.shape == a.shape and d.dtype == a.dtype
                if chunk.info(buf).mode_id == LEARNED and dt[0] in "iu" and a.min() == info.max:
                    # saturated at the top decodes near the top, not wrapped to the bottom
                    assert int(d.min()) > int(info.max) // 2, (dt, shape)
    # inputs the learned mode cannot code: stored raw inside the container, exactly
    for a in (np.arange(100, dtype=np.uint16), np.full((8, 16, 16), np.nan, np.float32),
              np.where(np.arange(8 * 256).reshape(8, 16, 16) % 7, 1.0, np.inf).astype(np.float32)):
        buf = chunk.encode(a, mode="learned")
        assert chunk.info(buf).mode_id == RAW
        assert np.array_equal(_bits(chunk.decode(buf)), _bits(a))


# ========================================================================================= failure paths
def _exact_raw(a, mode, **kw):
    buf = chunk.encode(a, mode=mode, **kw)
    assert chunk.info(buf).mode_id == RAW, mode
    d = chunk.decode(buf)
    assert d.shape == (a.shape or (1,)) and np.array_equal(_bits(d), _bits(a))


@pytest.mark.parametrize("mode,kw", [("lossless", {}), ("bounded", {"max_error": 2}), ("learned", {}),
                                     ("learned", {"max_error": 2}), ("auto", {})])
@pytest.mark.parametrize("exc", [RuntimeError, MemoryError, ValueError, OverflowError, ZeroDivisionError])
def test_any_encoder_exception_stores_the_chunk_raw(monkeypatch, mode, kw, exc):
    rng = np.random.default_rng(15)
    a = rng.poisson(50, (8, 16, 16)).astype(np.uint16)

    def boom(*args, **kwargs):
        raise exc("forced failure")

    for name in ("lossless", "bounded", "learned"):  # whichever mode "auto" picks for each shape
        monkeypatch.setattr(modes.get(name), "encode", boom)
    _exact_raw(a, mode, **kw)
    _exact_raw(a[:, :5, :7].astype(">u2"), mode, **kw)  # odd shape, big endian
    _exact_raw(np.array(7, np.uint16), mode, **kw)  # 0-d: one element


@needs_ort
def test_failures_inside_the_learned_pipeline_store_raw(monkeypatch):
    from necoda_filter.models import runtime

    rng = np.random.default_rng(16)
    a = rng.poisson(50, (8, 16, 16)).astype(np.uint16)
    bounded = modes.get("bounded")
    real_bounded_encode = bounded.encode

    def boom(*args, **kwargs):
        raise RuntimeError("forced failure")

    with monkeypatch.context() as mp:  # ONNX Runtime fails
        mp.setattr(runtime, "run", boom)
        _exact_raw(a, "learned")
        _exact_raw(a, "learned", max_error=2)
    with monkeypatch.context() as mp:  # the safeguard's bounded coder fails
        mp.setattr(bounded, "encode", boom)
        _exact_raw(a, "learned", max_error=2)
    with monkeypatch.context() as mp:  # the safeguard's residual comes back wrong: caught before storing
        def off_by_ten(arr, **kw):
            enc = real_bounded_encode(arr, **kw)
            p = dict(enc.params)
            p["lo"] = str(int(p["lo"]) + 10) if p.get("k") == "i" else p["lo"]
            return type(enc)(enc.payload, p, enc.model_id)

        mp.setattr(bounded, "encode", off_by_ten)
        _exact_raw(a, "learned", max_error=2)
    # a model that does not exist
    _exact_raw(a, "learned", model="necoda-0000000000000000")


def test_lossless_payload_not_smaller_than_raw_is_stored_raw(monkeypatch):
    a = np.arange(1000, dtype=np.int32)
    m = modes.get("lossless")
    real = m.encode
    monkeypatch.setattr(m, "encode", lambda arr, **kw: type(real(arr))(b"\0" * (arr.nbytes + 1), {"s": "pc"}))
    _exact_raw(a, "lossless")



@needs_ort
@pytest.mark.parametrize("dt, offset, expect_extra", [("u2", 1000, 0), ("u2", 60000, 0), ("i4", 5_000_000, 4)])
def test_learned_safeguard_margin_grows_with_the_values(dt, offset, expect_extra):
    """The residual bound keeps room for decoders elsewhere rounding differently: one raw unit, plus
    floor(max|x| * SAFEGUARD_DRIFT) for large integers (none for 16-bit data)."""
    from necoda_filter.modes import learned

    rng = np.random.default_rng(7)
    a = (offset + rng.poisson(20.0, (16, 32, 32)) * 8).astype(dt)
    buf = chunk.encode(a, mode="learned", max_error=40)
    h = chunk.info(buf)
    assert h.mode_id == LEARNED
    extra = int(np.floor(float(np.abs(a).max()) * learned.SAFEGUARD_DRIFT))
    assert extra == expect_extra
    assert h.params["sg"]["eff"] == 40 - 1 - extra
    assert _int_err(a, chunk.decode(buf)) <= 40


def test_cuda_sessions_get_deterministic_full_precision_options():
    """TF32 and the timing-based cuDNN algorithm search would make GPU-decoded values drift between
    machines and runs; the CPU provider takes no options."""
    from necoda_filter.models import runtime

    cfg = runtime.provider_config(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cfg[0] == ("CUDAExecutionProvider", {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"})
    assert cfg[1] == "CPUExecutionProvider"
    assert runtime.provider_config(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
