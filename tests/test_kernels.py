"""The C kernels (libnecoda_kernels.so, necoda_filter._kernels) against small numpy references.

The references spell out the integer definitions directly (int64 numpy arithmetic, ``>>`` is a floor
shift); inputs cover type extremes, one sample, one channel, odd sizes and every predictor order path.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from necoda_filter import _kernels as K

INT_DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8"]
WIDE = [np.int16, np.int32, np.int64]


def _data(rng, dt, shape, span=None):
    """Integers of dtype dt, within a span < 2**32 (the kernels' contract), placed at both type extremes."""
    info = np.iinfo(dt)
    full = int(info.max) - int(info.min)
    span = min(full, (1 << 32) - 1) if span is None else min(span, full)
    base = [int(info.min), int(info.max) - span][int(rng.integers(2))]
    v = rng.integers(0, span, size=shape, endpoint=True, dtype=np.uint64).astype(object) + base
    v.flat[0] = base  # the extremes are present
    v.flat[-1] = base + span
    return np.array(v.tolist(), dtype=dt).reshape(shape)


def _off(x, lo):
    """x - lo as int64 (exact: the span is < 2**32)."""
    return np.array((x.astype(object) - lo).tolist(), dtype=np.int64).reshape(x.shape)


def _blocks(T, L):
    nb = max(1, -(-T // L))
    L = -(-T // nb)
    return nb, L


def _block_starts(T, nb, L):
    pad = nb * L - T
    return [0] + [b * L - pad for b in range(1, nb)], pad


# ---------------------------------------------------------------------------------------------- references
def ref_lpc_e(xc, Q, shift, nb, L):
    """Per-channel LPC residual, xc: (T, C) int64 centred values; returns (C, T)."""
    T, C = xc.shape
    p = Q.shape[1]
    e = np.empty((C, T), np.int64)
    starts, _ = _block_starts(T, nb, L)
    for b, t0 in enumerate(starts):
        t1 = starts[b + 1] if b + 1 < len(starts) else T
        xb = xc[t0:t1].T
        acc = np.zeros_like(xb)
        for i in range(p):
            acc[:, i + 1:] += Q[:, i:i + 1] * xb[:, :xb.shape[1] - i - 1]
        e[:, t0:t1] = xb - ((acc + (1 << (shift - 1))) >> shift)
    return e


def ref_xch(e, W, shift):
    C, T = e.shape
    f = e.copy()
    for c in range(1, C):
        acc = np.zeros(T, np.int64)
        for k in range(min(W.shape[1], c)):
            acc += W[c, k] * e[c - 1 - k]
        if W[c, :c].any():
            f[c] = e[c] - ((acc + (1 << (shift - 1))) >> shift)
    return f


def ref_lpc_decode(r, mu, lo, Q, B, shift, nb, L, dtype):
    C, T = r.shape
    p = Q.shape[1]
    e = r.astype(np.int64)
    for c in range(1, C):
        acc = np.zeros(T, np.int64)
        for k in range(min(B.shape[1], c)):
            acc += B[c, k] * e[c - 1 - k]
        e[c] += (acc + (1 << (shift - 1))) >> shift
    x = e.copy()
    starts, _ = _block_starts(T, nb, L)
    for b, t0 in enumerate(starts):
        t1 = starts[b + 1] if b + 1 < len(starts) else T
        for t in range(t0, t1):
            acc = np.zeros(C, np.int64)
            for i in range(p):
                if t - 1 - i >= t0:
                    acc += Q[:, i] * x[:, t - 1 - i]
            x[:, t] += (acc + (1 << (shift - 1))) >> shift
    v = (x + mu[:, None]).T.astype(object) + lo
    bits = 8 * np.dtype(dtype).itemsize
    return np.array([[int(a) % (1 << bits) for a in row] for row in v], dtype=np.uint64).astype(
        np.dtype(dtype).str.replace("i", "u")).view(dtype)


def box3(d):
    P = np.pad(d, [(0, 0)] * (d.ndim - 2) + [(1, 1), (1, 1)])
    h = P[..., :, :-2] + P[..., :, 1:-1] + P[..., :, 2:]
    return h[..., :-2, :] + h[..., 1:-1, :] + h[..., 2:, :]


def ref_img_r(d, coef, shift):
    """Imaging residuals of d (T, H, W) int64 (deviation from the mean)."""
    c0, c1, c2 = (int(c) for c in coef)
    S = box3(d)
    pred = np.zeros_like(d)
    pred[1:] = c2 * d[:-1] + c0 * S[:-1]
    pred[2:] += c1 * S[:-2]
    pred = (pred + (1 << (shift - 1))) >> shift
    return d - pred


def ref_img_decode(r, coef, shift):
    c0, c1, c2 = (int(c) for c in coef)
    d = r.astype(np.int64)
    half = 1 << (shift - 1)
    for t in range(1, d.shape[0]):
        acc = c2 * d[t - 1] + c0 * box3(d[t - 1])
        if t > 1:
            acc += c1 * box3(d[t - 2])
        d[t] += (acc + half) >> shift
    return d


def _wrap(v, dtype):
    """Python ints -> dtype by their low bytes."""
    dt = np.dtype(dtype)
    bits = 8 * dt.itemsize
    u = np.array([int(a) % (1 << bits) for a in np.asarray(v, dtype=object).ravel()], dtype=np.uint64)
    return u.astype(f"u{dt.itemsize}").view(dt).reshape(np.shape(v))


# ---------------------------------------------------------------------------------------------- stats
@pytest.mark.parametrize("dt", INT_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (7, 1), (513, 3), (33, 300)])
def test_stats(dt, shape):
    rng = np.random.default_rng(len(shape) + shape[0])
    x = _data(rng, dt, shape)
    sums, lo, hi = K.stats(x)
    assert (lo, hi) == (int(x.min()), int(x.max()))
    want = [sum(int(v) for v in x[:, k]) % (1 << 64) for k in range(shape[1])]
    assert [int(s) for s in sums] == want
    off = K.offset_sums(sums, shape[0], lo)
    assert off.tolist() == [int(v) for v in _off(x, lo).sum(axis=0)]


# ---------------------------------------------------------------------------------------------- LPC
@pytest.mark.parametrize("dt", INT_DTYPES)
@pytest.mark.parametrize("T,C,p,L", [(1, 1, 0, 512), (1, 3, 2, 512), (2, 1, 1, 1), (37, 1, 3, 8), (513, 3, 2, 512),
                                     (1030, 5, 8, 512), (300, 4, 9, 64), (200, 2, 64, 100), (97, 4, 5, 13)])
def test_lpc_encode_decode_equal_reference(dt, T, C, p, L):
    rng = np.random.default_rng(T * 31 + C * 7 + p)
    span = 200 if np.dtype(dt).itemsize == 1 else None
    x = _data(rng, dt, (T, C), span)
    _, lo, hi = K.stats(x)
    xo = _off(x, lo)
    mu = np.round(xo.mean(axis=0)).astype(np.int64)
    Q = rng.integers(-(1 << 15) + 1, 1 << 15, size=(C, p))
    if p:
        Q[0, 0] = (1 << 15) - 1
    W = rng.integers(-(1 << 15) + 1, 1 << 15, size=(C, 3)) * (rng.random((C, 3)) < 0.7)
    nb, L = _blocks(T, L)
    shift = 12
    e = ref_lpc_e(xo - mu, Q, shift, nb, L)
    f = ref_xch(e, W, shift)
    rows = np.unique(rng.integers(0, T, size=min(T, 50)))
    np.testing.assert_array_equal(K.lpc_rows(x, lo, mu, Q, shift, nb, L, rows), e[:, rows])
    np.testing.assert_array_equal(K.lpc_rows(x, lo, mu, Q, shift, nb, L, np.arange(T)), e)
    sums, out, rng_ = K.lpc_encode(x, lo, mu, Q, W, shift, nb, L, np.int64, want_sums=True)
    np.testing.assert_array_equal(out, f)
    assert rng_ == (min(0, int(f.min())), max(0, int(f.max())))
    np.testing.assert_array_equal(sums[:, 0], np.abs(e).sum(axis=1))
    np.testing.assert_array_equal(sums[:, 1], np.abs(f).sum(axis=1))
    for wt in (np.int16, np.int32):
        _, o2, _ = K.lpc_encode(x, lo, mu, Q, W, shift, nb, L, wt)
        np.testing.assert_array_equal(o2, f.astype(wt))  # low bytes
    # decode: inverts exactly, into any integer dtype of the data
    back = np.empty_like(x)
    K.lpc_decode(f, mu, lo, Q, W, shift, nb, L, back)
    np.testing.assert_array_equal(back, x)
    # and equals the reference on arbitrary residuals and output types
    r = rng.integers(-3000, 3000, size=(C, T)).astype(rng.choice(WIDE))
    for odt in ("u1", "i2", "u4", "i8", "u8"):
        out = np.empty((T, C), odt)
        K.lpc_decode(r, mu, lo, Q, W, shift, nb, L, out)
        np.testing.assert_array_equal(out, ref_lpc_decode(r, mu, lo, Q, W, shift, nb, L, odt))


def test_lpc_argument_checks():
    x = np.zeros((10, 2), np.int16)
    mu = np.zeros(2, np.int64)
    with pytest.raises(ValueError):
        K.lpc_encode(x, 0, mu, np.zeros((2, 1)), np.zeros((2, 3)), 12, 1, 5)  # blocks do not cover T
    with pytest.raises(ValueError):
        K.lpc_rows(x, 0, mu, np.zeros((2, 1)), 12, 1, 10, [10])
    with pytest.raises(TypeError):
        K.lpc_decode(np.zeros((2, 10), np.float32), mu, 0, np.zeros((2, 1)), np.zeros((2, 3)), 12, 1, 10,
                     np.empty((10, 2), np.int16))
    with pytest.raises(ValueError):
        K.lpc_decode(np.zeros((2, 10), np.int16), mu, 0, np.zeros((2, 1)), np.zeros((2, 3)), 12, 1, 10,
                     np.empty((9, 2), np.int16))


# ---------------------------------------------------------------------------------------------- imaging
@pytest.mark.parametrize("dt", ["i2", "u2", "i4", "u4", "i8", "u8"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 5), (5, 4, 1), (9, 12, 13), (4, 1, 1), (6, 7, 3)])
@pytest.mark.parametrize("wide", [False, True])
def test_img_residual_decode_equal_reference(dt, shape, wide):
    rng = np.random.default_rng(sum(shape) + wide)
    T, H, W = shape
    span = 3000 if not wide else None
    x = _data(rng, dt, shape, span)
    _, lo, hi = K.stats(x.reshape(T, -1))
    xo = _off(x, lo)
    m = np.round(xo.reshape(T, -1).mean(axis=0)).astype(np.int64)
    d = xo - m.reshape(H, W)
    shift = int(rng.integers(4, 13))
    lim = 1 << 20 if wide else 1 << 6
    coef = rng.integers(-lim, lim, size=3)
    r = ref_img_r(d, coef, shift)
    ncls = int(rng.integers(1, 5))
    cls = rng.integers(0, ncls, size=H * W)
    order = np.argsort(cls, kind="stable")
    want = np.concatenate([r.reshape(T, -1)[:, order[cls[order] == k]].ravel() for k in range(ncls)])
    buf, rr = K.img_residual(x, lo, m, coef, shift, wide, cls, ncls, np.int64)
    np.testing.assert_array_equal(buf, want)
    assert rr == (min(0, int(want.min())), max(0, int(want.max())))
    buf16, _ = K.img_residual(x, lo, m, coef, shift, wide, cls, ncls, np.int16)
    np.testing.assert_array_equal(buf16, want.astype(np.int16))
    counts = np.bincount(cls, minlength=ncls)
    bounds = np.concatenate([[0], np.cumsum(counts)]) * T
    parts = [buf[bounds[k]:bounds[k + 1]] for k in range(ncls)]
    out = np.empty(shape, dt)
    K.img_decode(parts, cls, m, lo, coef, shift, wide, out)
    np.testing.assert_array_equal(out, x)
    # arbitrary residuals: equal to the reference inverse
    rs = rng.integers(-500, 500, size=(T, H * W))
    parts = [np.ascontiguousarray(rs[:, order[cls[order] == k]]).ravel().astype(np.int32) for k in range(ncls)]
    out = np.empty(shape, dt)
    K.img_decode(parts, cls, m, lo, coef, shift, wide, out)
    dd = ref_img_decode(rs.reshape(shape), coef, shift)
    np.testing.assert_array_equal(out, _wrap(dd.astype(object) + m.reshape(H, W) + lo, dt))


def test_img_gram_equals_reference():
    rng = np.random.default_rng(7)
    x = rng.integers(-300, 3000, size=(12, 9, 11)).astype(np.int16)
    T, H, W = x.shape
    _, lo, _ = K.stats(x.reshape(T, -1))
    m = np.round(_off(x, lo).reshape(T, -1).mean(axis=0)).astype(np.int64)
    d = (_off(x, lo) - m.reshape(H, W)).astype(np.float64)
    ts = np.array([2, 5, 11])
    A = np.concatenate([np.stack([box3(d[t - 1]).ravel(), box3(d[t - 2]).ravel(), d[t - 1].ravel()], 1) for t in ts])
    y = np.concatenate([d[t].ravel() for t in ts])
    G, g = K.img_gram(x, lo, m, ts)
    np.testing.assert_allclose(G, A.T @ A, rtol=1e-12)
    np.testing.assert_allclose(g, A.T @ y, rtol=1e-12)
    with pytest.raises(ValueError):
        K.img_gram(x, lo, m, [1])


def test_img_argument_checks():
    x = np.zeros((3, 4, 5), np.int16)
    m = np.zeros(20, np.int64)
    with pytest.raises(ValueError):
        K.img_residual(x, 0, m, [1, 2, 3], 12, False, np.full(20, 3), 3, np.int16)  # class out of range
    with pytest.raises(ValueError):
        K.img_decode([np.zeros(3 * 19, np.int16)], np.zeros(20, np.int64), m, 0, [1, 2, 3], 12, False,
                     np.empty((3, 4, 5), np.int16))  # stream size does not match
    with pytest.raises(TypeError):
        K.img_decode([np.zeros(60, np.int16), np.zeros(0, np.int32)], np.zeros(20, np.int64), m, 0, [1, 2, 3], 12,
                     False, np.empty((3, 4, 5), np.int16))  # mixed dtypes


# ---------------------------------------------------------------------------------------------- bounded
@pytest.mark.parametrize("dt", INT_DTYPES)
@pytest.mark.parametrize("E", [0, 1, 7, 1000])
def test_quant_dequant_uniform(dt, E):
    rng = np.random.default_rng(E)
    for shape in [(1,), (1001,), (3, 5, 7)]:
        x = _data(rng, dt, shape)
        _, lo, hi = K.stats(x.reshape(-1, 1))
        w = 2 * E + 1
        want = (_off(x, lo) + E) // w
        q = K.quant_uniform(x, lo, E, np.int64)
        np.testing.assert_array_equal(q, want)
        out = np.empty(shape, dt)
        K.dequant_uniform(q, w, hi - lo, lo, out)
        np.testing.assert_array_equal(out, _wrap(np.minimum(want * w, hi - lo).astype(object) + lo, dt))
        assert np.all(np.abs(out.astype(object) - x.astype(object)) <= E)


def test_quant_uniform_all_paths_exact():
    # dividends v = x - lo + E: multiply-shift below 2**31, corrected float estimate below 2**52, division above
    rng = np.random.default_rng(11)
    edges = np.array([0, 1, 2, 2**31 - 2, 2**31 - 1, 2**31, 2**52 - 1, 2**52, 2**52 + 1, 2**62 - 5, 2**62 - 1])
    small = rng.integers(0, 2**31, size=20000)
    for E in (0, 1, 2, 3, 7, 511, 512, 12345, 2**20, 2**30 - 1, 2**30, 2**31, 2**40):
        w = 2 * E + 1
        v = np.concatenate([edges, small, np.arange(3 * w) if w < 10**6 else edges, (small[:100] % (2**62 // w)) * w])
        v = v[(v >= E) & (v < 2**62)]
        x = (v - E).astype(np.int64)
        np.testing.assert_array_equal(K.quant_uniform(x, 0, E, np.int64), [int(a) // w for a in v])


@pytest.mark.parametrize("dt", ["i2", "u2", "i4", "u8"])
@pytest.mark.parametrize("shape", [(2, 1), (3, 7), (40, 33)])
def test_moments(dt, shape):
    rng = np.random.default_rng(shape[1])
    x = _data(rng, dt, shape, span=60000)
    lo, hi = int(x.min()), int(x.max())
    got = K.moments(x, lo, hi)
    if got is None:  # sums could pass 2**53
        assert max(abs(lo), abs(hi)) * shape[0] >= 1 << 53
        return
    xs = x.astype(object)
    assert got[0].tolist() == [int(sum(xs[:, k])) for k in range(shape[1])]
    assert got[1].tolist() == [int(sum((xs[1:, k] - xs[:-1, k]) ** 2)) for k in range(shape[1])]


@pytest.mark.parametrize("dt", ["i2", "u2", "i4", "u8"])
def test_quant_dequant_lut(dt):
    rng = np.random.default_rng(3)
    x = _data(rng, dt, (50, 7), span=5000)
    if dt == "u8":  # bin centers are int64 (bounded mode tabulates only ranges inside +-2**62)
        x = x - np.uint64(x.min()) + np.uint64(2**62 - 6000)
    _, lo, hi = K.stats(x.reshape(-1, 1))
    widths = rng.integers(1, 40, size=1000)
    widths = widths[:np.searchsorted(np.cumsum(widths), hi - lo + 1) + 1]
    widths[-1] -= widths.sum() - (hi - lo + 1)
    starts = lo + np.concatenate([[0], np.cumsum(widths)[:-1]])
    centers = starts + widths // 2
    lut = np.repeat(np.arange(widths.size, dtype=np.int32), widths)
    q, emax = K.quant_lut(x, lo, lut, centers, np.int16)
    want = lut[_off(x, lo)]
    np.testing.assert_array_equal(q, want)
    assert emax == int(np.abs(centers[want] - lo - _off(x, lo)).max())
    out = np.empty(x.shape, dt)
    K.dequant_lut(q, centers, out)
    np.testing.assert_array_equal(out, _wrap(centers[want].astype(object), dt))
    with pytest.raises(ValueError):
        K.dequant_lut(np.array([centers.size], np.int16), centers, np.empty(1, dt))
    with pytest.raises(ValueError):
        K.quant_lut(x, lo + 1, lut, centers, np.int16)  # x - lo = -1 is outside the table


def test_missing_library_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(K, "_lib", None)
    monkeypatch.setattr(K, "PLUGIN_PATH", str(tmp_path))
    with pytest.raises(K.KernelsUnavailable, match="libnecoda_kernels.so is missing"):
        K.stats(np.zeros((3, 2), np.int16))
    assert not K.available()


def test_an_unbuilt_source_checkout_is_named_as_the_cause(tmp_path):
    """Python run from the root of a checkout imports its package folder, which has no C libraries unless
    the install was editable: the error said "reinstall with pip install necoda-filter", which does not help."""
    from necoda_filter._plugin import missing_library

    (tmp_path / "repo" / "necoda_filter").mkdir(parents=True)
    (tmp_path / "repo" / "CMakeLists.txt").write_text("# a source checkout\n")
    msg = missing_library("libh5necoda.so", "HDF5 filter shim", str(tmp_path / "repo" / "necoda_filter"))
    assert "source checkout" in msg and "from another folder" in msg and "--no-build-isolation -e ." in msg
    (tmp_path / "site" / "necoda_filter").mkdir(parents=True)  # an installed package without its library
    msg = missing_library("libh5necoda.so", "HDF5 filter shim", str(tmp_path / "site" / "necoda_filter"))
    assert "reinstall" in msg and "source checkout" not in msg


def test_type_codes_and_library():
    assert K.available()
    assert K.code(np.int16) == 2 and K.code(np.uint64) == 24
    with pytest.raises(TypeError):
        K.code(np.float32)
    with pytest.raises(TypeError):
        K.code(np.dtype(">i2"))


# ---------------------------------------------------------------------------------------------- closed loop
def _cl_q(d, E):
    w = 2 * E + 1
    return (d + E) // w if d >= 0 else -((-d + E) // w)


def _ref_lorenzo(x, lo, R, E, c, s):
    """Python reference of nk_cl_lorenzo (encode): indices and reconstruction (offset values)."""
    T, H, W = x.shape
    v = x.astype(object) - lo
    r = np.zeros((T, H, W), dtype=object)
    q = np.zeros(T * H * W, dtype=object)
    w = 2 * E + 1

    def lor(t, i, j, axes):
        axes = [a for a in axes if (t, i, j)[a] > 0]
        if not axes:
            return None
        tot = 0
        for m in range(1, 1 << len(axes)):
            idx = [t, i, j]
            bits = 0
            for b, a in enumerate(axes):
                if m >> b & 1:
                    idx[a] -= 1
                    bits += 1
            tot += (1 if bits % 2 else -1) * r[tuple(idx)]
        return tot

    n = 0
    for t in range(T):
        for i in range(H):
            for j in range(W):
                f0 = r[t, i, j - 1] if j else r[t, i - 1, j] if i else r[t - 1, i, j] if t else R // 2
                acc = 0
                for cc, axes in zip(c, ([0], [1, 2], [0, 1, 2], [2])):
                    if cc:
                        L = lor(t, i, j, axes)
                        acc += cc * (f0 if L is None else L)
                p = min(max((acc + (1 << (s - 1))) >> s, 0), R)
                qq = _cl_q(v[t, i, j] - p, E)
                q[n] = qq
                n += 1
                r[t, i, j] = min(max(p + qq * w, 0), R)
    return q, r


@pytest.mark.parametrize("dt", INT_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 4, 5), (2, 1, 7), (4, 3, 1)])
def test_cl_lorenzo_matches_reference_and_bound(dt, shape):
    rng = np.random.default_rng(7)
    x = _data(rng, dt, shape, span=5000)
    lo, hi = int(x.min()), int(x.max())
    R = hi - lo
    for E, c in [(0, (64, 0, 0, 0)), (1, (0, 64, 0, 0)), (3, (0, 0, 64, 0)), (40, (32, 32, 0, 0)),
                 (7, (48, 16, 0, 0)), (2, (0, 0, 0, 64)), (R + 1, (16, 16, 16, 16))]:
        E = min(E, R + 1)
        for qd in WIDE:
            q = K.cl_lorenzo(x, shape, lo, R, E, c, 6, qd)
            qr, rr = _ref_lorenzo(x, lo, R, E, c, 6)
            assert [int(v) for v in q] == [int(v) for v in qr]
            out = np.empty_like(x)
            K.cl_lorenzo(None, shape, lo, R, E, c, 6, q=q, out=out)
            assert np.array_equal(out.astype(object), (rr + lo).astype(object))
            assert np.all(np.abs(out.astype(object) - x.astype(object)) <= E)


def _ref_lpc(x, lo, R, E, mu, Q, B, s):
    T, C = x.shape
    v = x.astype(object) - lo
    r = np.zeros((T, C), dtype=object)
    q = []
    w = 2 * E + 1
    for t in range(T):
        prow = [0] * C
        for c in range(C):
            acc = 0
            for i in range(Q.shape[1]):
                h = r[t - 1 - i, c] if t - 1 - i >= 0 else int(mu[c])
                acc += int(Q[c, i]) * (h - int(mu[c]))
            if c and B[c]:
                acc += int(B[c]) * (r[t, c - 1] - prow[c - 1])
            p = min(max(int(mu[c]) + ((acc + (1 << (s - 1))) >> s), 0), R)
            prow[c] = p
            qq = _cl_q(v[t, c] - p, E)
            q.append(qq)
            r[t, c] = min(max(p + qq * w, 0), R)
    return q, r


@pytest.mark.parametrize("dt", INT_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (9, 1), (20, 3), (5, 6)])
def test_cl_lpc_matches_reference_and_bound(dt, shape):
    rng = np.random.default_rng(9)
    x = _data(rng, dt, shape)
    lo, hi = int(x.min()), int(x.max())
    R = hi - lo
    C = shape[1]
    for E, p in [(0, 0), (1, 1), (5, 3), (1000, 2), (R + 1, 4)]:
        E = min(E, R + 1)
        mu = rng.integers(0, R, C, endpoint=True)
        Q = rng.integers(-(1 << 15), 1 << 15, (C, p))
        B = rng.integers(-(1 << 12), 1 << 12, C)
        q = K.cl_lpc(x, shape, lo, R, E, mu, Q, B, 12, np.int64)
        qr, rr = _ref_lpc(x, lo, R, E, mu, Q, B, 12)
        assert [int(v) for v in q] == qr
        out = np.empty_like(x)
        K.cl_lpc(None, shape, lo, R, E, mu, Q, B, 12, q=q, out=out)
        assert np.array_equal(out.astype(object), (rr + lo).astype(object))
        assert np.all(np.abs(out.astype(object) - x.astype(object)) <= E)


def test_cl_decode_rejects_bad_indices_and_sizes():
    x = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    R, E = 59, 2
    q = K.cl_lorenzo(x, x.shape, 0, R, E, (64, 0, 0, 0), 6, np.int16)
    out = np.empty_like(x)
    bad = q.copy()
    bad[7] = K.cl_qmax(R, E) + 1
    with pytest.raises(ValueError):
        K.cl_lorenzo(None, x.shape, 0, R, E, (64, 0, 0, 0), 6, q=bad, out=out)
    with pytest.raises(ValueError):
        K.cl_lorenzo(None, x.shape, 0, R, E, (64, 0, 0, 0), 6, q=q[:-1], out=out)
    with pytest.raises(ValueError):
        K.cl_lorenzo(None, x.shape, 0, 1 << 33, E, (64, 0, 0, 0), 6, q=q, out=out)
    x2 = x.reshape(-1, 3)
    q2 = K.cl_lpc(x2, x2.shape, 0, R, E, [0, 0, 0], np.full((3, 1), 4096), [0, 0, 0], 12, np.int32)
    bad2 = q2.copy()
    bad2[-1] = -(K.cl_qmax(R, E) + 5)
    out2 = np.empty_like(x2)
    with pytest.raises(ValueError):
        K.cl_lpc(None, x2.shape, 0, R, E, [0, 0, 0], np.full((3, 1), 4096), [0, 0, 0], 12, q=bad2, out=out2)
    with pytest.raises(ValueError):
        K.cl_lpc(None, x2.shape, 0, R, E, [0, 0, R + 1], np.full((3, 1), 4096), [0, 0, 0], 12, q=q2, out=out2)
    with pytest.raises(ValueError):
        K.cl_lpc(None, x2.shape, 0, R, E, [0, 0, 0], np.full((3, 1), 1 << 16), [0, 0, 0], 12, q=q2, out=out2)


# ---------------------------------------------------------------------------------------------- learned
def _learned_finish_ref(p, origin, bq, a, b, out_shape, dtype):
    """numpy reference: pixel shuffle (2 frames x 4 x 4 per channel group), crop, + baseline, inverse VST
    ``a * max(v, 0)**2 + b`` in float32, rint (half to even) and clip to the integer type."""
    t2, _, h4, w4 = p.shape
    tile = p.reshape(t2, 2, 4, 4, h4, w4).transpose(0, 1, 4, 2, 5, 3).reshape(2 * t2, 4 * h4, 4 * w4)
    T, H, W = out_shape
    t0, y0, x0 = origin
    tt, th, tw = min(2 * t2, T - t0), min(4 * h4, H - y0), min(4 * w4, W - x0)
    v = tile[:tt, :th, :tw] + bq[y0:y0 + th, x0:x0 + tw][None]
    y = np.maximum(v, np.float32(0))
    y *= y
    y *= np.float32(a)
    y += np.float32(b)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        ii = np.iinfo(dt)
        y = np.clip(np.rint(y), ii.min, ii.max)
    return (slice(t0, t0 + tt), slice(y0, y0 + th), slice(x0, x0 + tw)), y.astype(dt)


@pytest.mark.parametrize("threads", [1, 3, 7])  # 7 > the 4 frame pairs of a tile: clamped
@pytest.mark.parametrize("dtype", ["u2", "i2", "u1", "i1", "f4", "f8"])
def test_learned_finish_matches_numpy(dtype, threads):
    rng = np.random.default_rng(4)
    T, H, W = 13, 21, 30  # crops every axis of the 16 x 24 x 32 tiles
    bq = rng.normal(20, 8, (H, W)).astype(np.float32)
    out = np.zeros((T, H, W), dtype)
    ref = np.zeros_like(out)
    for origin in [(0, 0, 0), (0, 0, 16), (8, 12, 0), (8, 12, 16)]:
        p = rng.normal(0, 6, (4, 32, 3, 4)).astype(np.float32)
        p.flat[::97] = 0.5 - bq.flat[0]  # exact halves after the inverse VST are rare; keep some ties nearby
        a, b = np.float32(25.0), np.float32(-375.0)  # gain 100, offset 0: negative values get clipped
        K.learned_finish(p, origin, bq, a, b, out, threads=threads)
        sl, r = _learned_finish_ref(p, origin, bq, a, b, out.shape, dtype)
        ref[sl] = r
    assert np.array_equal(out, ref)
    if np.dtype(dtype).itemsize == 1:
        assert out.max() == np.iinfo(out.dtype).max  # the clip to the type's range was exercised


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["u2", "f4"])
def test_learned_finish_window_into_a_view(dtype, threads):
    """A box of the chunk written straight into a strided view of a larger array equals the box of the
    whole-chunk result, and nothing outside the view is touched."""
    rng = np.random.default_rng(5)
    T, H, W = 13, 21, 30
    bq = rng.normal(20, 8, (H, W)).astype(np.float32)
    tiles = [((t, y, x), rng.normal(0, 6, (4, 32, 3, 4)).astype(np.float32))
             for t in (0, 8) for y in (0, 12) for x in (0, 16)]  # 16 x 24 x 32 tiles cover the chunk
    a, b = np.float32(25.0), np.float32(-375.0)
    full = np.zeros((T, H, W), dtype)
    for origin, p in tiles:
        K.learned_finish(p, origin, bq, a, b, full)
    for start, shape in [((0, 0, 0), (T, H, W)), ((3, 5, 7), (9, 10, 20)), ((8, 12, 16), (5, 9, 14)),
                         ((12, 20, 29), (1, 1, 1)), ((2, 0, 13), (1, 21, 5))]:
        big = np.full((T + 4, H + 6, W + 9), 7, dtype)
        view = big[2:2 + shape[0], 3:3 + shape[1], 5:5 + shape[2]]
        for origin, p in tiles:
            K.learned_finish(p, origin, bq, a, b, view, window=start, threads=threads)
        box = tuple(slice(s, s + n) for s, n in zip(start, shape))
        assert np.array_equal(view, full[box])
        mask = np.ones(big.shape, bool)
        mask[2:2 + shape[0], 3:3 + shape[1], 5:5 + shape[2]] = False
        assert (big[mask] == 7).all()
    with pytest.raises(TypeError):  # the baseline image must cover the window
        K.learned_finish(tiles[0][1], (0, 0, 0), bq, a, b, np.zeros((2, 4, 4), dtype), window=(0, 19, 0))
    with pytest.raises(TypeError):  # rows must be contiguous
        K.learned_finish(tiles[0][1], (0, 0, 0), bq, a, b, np.zeros((2, 4, 8), dtype)[:, :, ::2])


def _blocked(x, blk, axis=1):
    """``x`` with channel axis ``axis`` split into blocks of ``blk`` moved last (ONNX Runtime's NCHWc)."""
    s = x.shape
    y = x.reshape(s[:axis] + (s[axis] // blk, blk) + s[axis + 1:])
    return np.ascontiguousarray(np.moveaxis(y, axis + 1, -1))


@pytest.mark.parametrize("blk", [4, 8, 16])
@pytest.mark.parametrize("dtype", ["u2", "f4"])
def test_learned_finish_reads_the_blocked_layout(dtype, blk):
    """p in ONNX Runtime's blocked layout gives the bytes p in planar layout gives: whole tiles, cropped
    tiles, windows into views, several threads."""
    rng = np.random.default_rng(blk)
    T, H, W = 13, 21, 30
    bq = rng.normal(20, 8, (H, W)).astype(np.float32)
    a, b = np.float32(25.0), np.float32(-375.0)
    tiles = [((t, y, x), rng.normal(0, 6, (4, 32, 3, 4)).astype(np.float32))
             for t in (0, 8) for y in (0, 12) for x in (0, 16)]
    for start, shape in [((0, 0, 0), (T, H, W)), ((3, 5, 7), (9, 10, 20)), ((12, 20, 29), (1, 1, 1))]:
        for threads in (1, 3):
            want = np.zeros(shape, dtype)
            got = np.full(shape, 7, dtype)
            for origin, p in tiles:
                K.learned_finish(p, origin, bq, a, b, want, window=start, threads=threads)
                K.learned_finish(_blocked(p, blk), origin, bq, a, b, got, window=start, threads=threads)
            assert np.array_equal(got, want)
    with pytest.raises(TypeError, match="blocked"):  # blocks must tile the 32 channels
        K.learned_finish(np.zeros((4, 3, 3, 4, 12), np.float32), (0, 0, 0), bq, a, b, np.zeros((8, 8, 8), dtype))


def test_learned_finish_rejects_bad_arguments():
    p = np.zeros((2, 32, 2, 2), np.float32)
    bq = np.zeros((8, 8), np.float32)
    with pytest.raises(TypeError):
        K.learned_finish(p, (0, 0, 0), bq, 1.0, 0.0, np.zeros((4, 8, 8), np.int64))  # no fused path
    with pytest.raises(TypeError):
        K.learned_finish(p.astype(np.float64), (0, 0, 0), bq, 1.0, 0.0, np.zeros((4, 8, 8), np.uint16))
    with pytest.raises(TypeError):
        K.learned_finish(p, (0, 0, 0), bq[:4], 1.0, 0.0, np.zeros((4, 8, 8), np.uint16))
    with pytest.raises(ValueError):
        K.learned_finish(p, (-1, 0, 0), bq, 1.0, 0.0, np.zeros((4, 8, 8), np.uint16))


def _trunk_inputs(seed, shape):
    """u (values over seven decades, both signs), ctx of u's shape and s = [s0, s1] for learned_trunk."""
    rng = np.random.default_rng(seed)
    n, t2, C, h, w = shape
    u = (rng.normal(0, 3, shape) * rng.choice([1e-3, 1, 1e4], shape)).astype(np.float32)
    ctx = rng.normal(0, 2, shape).astype(np.float32)
    s = rng.normal(0, 2, (n, 1, 2 * C, h, w)).astype(np.float32)
    return u, ctx, s


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_learned_trunk_matches_numpy(threads):
    """The fused trunk is the five ONNX operators' float32 arithmetic in their order: the same bits."""
    u, ctx, s = _trunk_inputs(threads, (2, 7, 5, 3, 11))
    C = u.shape[2]
    alpha = np.float32(0.1)
    v = ((u + ctx) + s[:, :, :C]) + ctx * s[:, :, C:]
    ref = np.where(v >= 0, v, alpha * v)
    got = K.learned_trunk(u.copy(), ctx, s, float(alpha), threads=threads)
    assert got.dtype == np.float32 and got.tobytes() == ref.tobytes()
    assert (ref < 0).any() and (ref > 0).any()


@pytest.mark.parametrize("blk", [4, 8, 16])
def test_learned_trunk_blocked_gives_the_planar_bits(blk):
    """u, ctx and s in ONNX Runtime's blocked layout give the planar result's bits, in that layout."""
    n, t2, C, h, w = 2, 5, 16, 9, 15
    u, ctx, s = _trunk_inputs(blk, (n, t2, C, h, w))
    want = K.learned_trunk(u.copy(), ctx, s, 0.1, threads=1)
    cb, sb = _blocked(ctx, blk, axis=2), _blocked(s, blk, axis=2)
    for threads in (1, 2, 4):
        got = K.learned_trunk(_blocked(u, blk, axis=2), cb, sb, 0.1, threads=threads)
        assert got.shape == (n, t2, C // blk, h, w, blk)
        assert got.tobytes() == _blocked(want, blk, axis=2).tobytes()
    with pytest.raises(TypeError, match="all three"):  # no mixing of layouts
        K.learned_trunk(_blocked(u, blk, axis=2), ctx, sb, 0.1)
    with pytest.raises(ValueError, match="shapes"):
        K.learned_trunk(_blocked(u, blk, axis=2), cb, _blocked(s[:, :, :C], blk, axis=2), 0.1)


def _padded_blocks(x, blk):
    """(n, t2, C, h, w) ``x`` with each frame pair's channels padded with zeros to whole blocks of ``blk``,
    in the blocked layout (n, t2, ceil(C / blk), h, w, blk): what ONNX Runtime's ReorderInput makes."""
    n, t2, C, h, w = x.shape
    cp = -(-C // blk) * blk
    y = np.zeros((n, t2, cp, h, w), np.float32)
    y[:, :, :C] = x
    return _blocked(y, blk, axis=2)


@pytest.mark.parametrize("blk,C,r", [(16, 24, 4), (16, 24, 2), (8, 12, 2), (4, 6, 2), (16, 8, 2), (16, 16, 1)])
def test_learned_trunk_reblock_gives_the_planar_bits(blk, C, r):
    """Where the block does not divide the channels (AVX-512: 16 against the decoder's 24), the trunk reads
    u as the head's convolution wrote it (r frame pairs per row of blocks) and writes the tail's padded
    layout: the planar result's bits, padding lanes zero, on any number of threads."""
    n, t8, h, w = 2, 3, 5, 7
    u, ctx, s = _trunk_inputs(blk + C + r, (n, t8 * r, C, h, w))
    want = _padded_blocks(K.learned_trunk(u.copy(), ctx, s, 0.1, threads=1), blk)
    uh = _blocked(u.reshape(n, t8, r * C, h, w), blk, axis=2)
    ctx_b = _padded_blocks(ctx, blk)
    if C % blk:
        ctx_b[:, :, -1, ..., C % blk:] = np.nan  # padding lanes of ctx are never read
    sb = _blocked(s, blk, axis=2)
    for threads in (1, 2, 3, 7):
        out = np.full(ctx_b.shape, 5.0, np.float32)
        got = K.learned_trunk_reblock(uh, ctx_b, sb, out, C, 0.1, threads=threads)
        assert got is out and got.tobytes() == want.tobytes(), threads
    with pytest.raises(ValueError, match="shapes"):
        K.learned_trunk_reblock(uh, ctx_b, sb, out, C + 1, 0.1)
    with pytest.raises(ValueError, match="shapes"):
        K.learned_trunk_reblock(uh, ctx_b[:1], sb, out[:1], C, 0.1)
    with pytest.raises(ValueError, match="overlap"):
        K.learned_trunk_reblock(uh, ctx_b, sb, ctx_b, C, 0.1)
    with pytest.raises(TypeError, match="out must be a 6-D"):
        K.learned_trunk_reblock(uh, ctx_b, sb, out.astype(np.float64), C, 0.1)


def test_learned_trunk_refuses_mismatched_arrays():
    u = np.zeros((1, 2, 3, 4, 5), np.float32)
    with pytest.raises(ValueError, match="shapes"):
        K.learned_trunk(u, u, np.zeros((1, 1, 5, 4, 5), np.float32), 0.1)
    with pytest.raises(TypeError, match="ctx"):
        K.learned_trunk(u, u.astype(np.float64), np.zeros((1, 1, 6, 4, 5), np.float32), 0.1)
    with pytest.raises(TypeError, match="u must"):
        K.learned_trunk(u[:, :, :, :, ::2], u, np.zeros((1, 1, 6, 4, 5), np.float32), 0.1)


@pytest.mark.parametrize("dt", ["i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8"])
def test_vst_matches_numpy(dt):
    """The one-pass VST is numpy's seven float32 steps in their order: the same bits, NaN, inf and -0
    included; prep.vst takes numpy's path for what the kernel does not take (int64, strided input)."""
    from necoda_filter.models import prep

    with np.errstate(all="ignore"):  # float64 max overflows float32 on purpose
        _vst_case(dt, prep)


def _vst_case(dt, prep):
    rng = np.random.default_rng(len(dt))
    x = _data(rng, dt, (3, 17, 29)) if dt[0] in "iu" else rng.normal(200, 300, (3, 17, 29)).astype(dt)
    if dt[0] == "f":
        x.flat[:5] = [np.nan, -0.0, np.inf, -np.inf, np.finfo(dt).max]
    for gain, offset in ((3.7, 101.3), (0.01, -5.0), (1e4, 0.0)):
        ref = prep._vst_numpy(x, gain, offset)
        got = K.vst(x, np.float32(offset), np.float32(1.0 / gain))
        assert got.dtype == np.float32 and got.tobytes() == ref.tobytes()
        assert prep.vst(x, gain, offset).tobytes() == ref.tobytes()
        assert prep.vst(x[:, ::2], gain, offset).tobytes() == prep._vst_numpy(x[:, ::2], gain, offset).tobytes()
    with pytest.raises(TypeError, match="C-contiguous"):
        K.vst(x[:, ::2], 0.0, 1.0)
    with pytest.raises(TypeError):
        K.vst(x.astype(np.int64), 0.0, 1.0)
