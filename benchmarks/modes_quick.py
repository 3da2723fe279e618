"""Quick single-thread measurement of the lossless and bounded modes against the anchors.

    python benchmarks/modes_quick.py ../shared/data/ephys_locust_tetrode_15khz_4ch_int16.raw \
        ../shared/data/ophys_2p_cortex_300x200x200_int16.npz [--fast]

``--sigmas 0.5 1 2 4`` (with ``--noise``, raw units per sigma, one per file) prints the bounded-mode table
at E = k sigma, chunk by chunk (``--chunk`` rows along axis 0: 64 frames / 15000 samples by default),
ours (closed loop on, and open loop only) against SZ3 (pysz) and ZFP (imagecodecs) at the same E.
``--levels 6 7`` adds lossless rows at other pcodec levels (the ratio/speed trade-off).
``.npz`` files: key ``data`` (imaging T×H×W). ``.raw`` files: interleaved int16; the channel count is read
from ``<N>ch`` in the file name (or ``--channels``). Throughput is MB of original data per second of
*process CPU time* on one thread (BLAS/OpenMP pinned to one thread), so that other jobs on a shared
machine do not distort it. Anchors whose package is missing are skipped.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import lzma  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from necoda_filter import chunk  # noqa: E402
from necoda_filter.modes import lossless as LL  # noqa: E402


def load(path: str, channels: int | None):
    p = Path(path)
    if p.suffix == ".npz":
        return np.load(p)["data"]
    m = re.search(r"(\d+)ch", p.name)
    c = channels or (int(m.group(1)) if m else 1)
    return np.fromfile(p, dtype="<i2").reshape(-1, c)


def cpu(fn, repeat=1):
    best = None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        dt = time.process_time() - t
        best = dt if best is None else min(best, dt)
    return out, max(best, 1e-9)


def entropy_bits(v: np.ndarray) -> float:
    """Empirical (order-0) entropy of integer values, bits/value."""
    _, c = np.unique(np.asarray(v).ravel(), return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def residual_entropy(arr) -> tuple[float, float]:
    """(per-stream, pooled) empirical entropy of the residual streams the lossless mode codes, in bits
    per sample of the chunk (side streams such as means and coefficients excluded)."""
    seen = []
    orig = LL.pco

    def spy(a, level=LL.DEFAULT_LEVEL, residual=False):
        if residual:
            seen.append(np.asarray(a).ravel())
        return orig(a, level, residual)

    LL.pco = spy
    try:
        LL.MODE.encode(arr)
    finally:
        LL.pco = orig
    n = arr.size
    big = seen
    cond = sum(entropy_bits(s) * s.size for s in big) / n
    glob = entropy_bits(np.concatenate(big)) * sum(s.size for s in big) / n
    return cond, glob


def row(name, ratio, enc=None, dec=None, extra=""):
    e = f"{enc:8.1f}" if enc else "       -"
    d = f"{dec:8.1f}" if dec else "       -"
    print(f"  {name:44s} {ratio:7.3f} {e} {d}  {extra}")


def ours(arr, mode, repeat, **kw):
    buf, te = cpu(lambda: chunk.encode(arr, mode=mode, **kw), repeat)
    out, td = cpu(lambda: chunk.decode(buf), repeat)
    mb = arr.nbytes / 1e6
    return buf, out, arr.nbytes / len(buf), mb / te, mb / td


def anchors_lossless(arr, kind, fast):
    from pcodec import ChunkConfig, DeltaSpec, standalone
    res = {}
    mb = arr.nbytes / 1e6
    flat = np.ascontiguousarray(arr).ravel()
    b, t = cpu(lambda: standalone.simple_compress(flat, ChunkConfig(compression_level=8)))
    _, td = cpu(lambda: standalone.simple_decompress(b))
    res["pcodec L8 (default)"] = (arr.nbytes / len(b), mb / t, mb / td)
    tr = np.ascontiguousarray(np.moveaxis(arr, 0, -1)).ravel()
    b, t = cpu(lambda: standalone.simple_compress(tr, ChunkConfig(compression_level=8, delta_spec=DeltaSpec.try_conv1(8))))
    _, td = cpu(lambda: standalone.simple_decompress(b))
    res["pcodec L8 time-contiguous conv1(8)"] = (arr.nbytes / len(b), mb / t, mb / td)
    try:
        import zstandard
        b, t = cpu(lambda: zstandard.ZstdCompressor(level=19).compress(arr.tobytes()))
        res["zstd-19"] = (arr.nbytes / len(b), mb / t, None)
    except ImportError:
        pass
    if not fast:
        preset = 9 | lzma.PRESET_EXTREME if arr.nbytes < 8e6 else 6
        b, t = cpu(lambda: lzma.compress(arr.tobytes(), preset=preset))
        res[f"lzma preset {'9e' if preset != 6 else 6}"] = (arr.nbytes / len(b), mb / t, None)
    if kind == "ephys":
        try:
            from flac_numcodecs import Flac
            c = Flac(level=8)
            b, t = cpu(lambda: c.encode(np.ascontiguousarray(arr)))
            res["FLAC -8 (flac-numcodecs)"] = (arr.nbytes / len(b), mb / t, None)
        except ImportError:
            pass
    else:
        try:
            import imagecodecs
            u = (arr.astype(np.int32) - int(arr.min())).astype(np.uint16)
            frames = u if not fast else u[:50]
            tot, t = cpu(lambda: sum(len(imagecodecs.jpegxl_encode(f, lossless=True, effort=7)) for f in frames))
            res["JPEG-XL lossless effort 7 (per frame)"] = (frames.nbytes / tot, frames.nbytes / 1e6 / t, None)
        except Exception as e:  # noqa: BLE001
            print("  (JPEG-XL skipped:", e, ")")
    return res


def sz3(arr, E):
    try:
        from pysz import sz, szConfig, szErrorBoundMode
    except ImportError:
        return None
    a = np.ascontiguousarray(arr.astype(np.float32))
    cfg = szConfig(a.shape)
    cfg.errorBoundMode = szErrorBoundMode.ABS
    cfg.absErrorBound = float(E)
    (cmp, _), t = cpu(lambda: sz.compress(a, cfg))
    (rec, _), td = cpu(lambda: sz.decompress(cmp, np.float32, a.shape))
    err = float(np.abs(np.rint(rec).astype(np.float64) - arr).max())  # rounded back to the integer dtype
    return arr.nbytes / cmp.nbytes, arr.nbytes / 1e6 / t, arr.nbytes / 1e6 / td, err


def bench(path, args):
    arr = load(path, args.channels)
    kind = "imaging" if arr.ndim == 3 else "ephys"
    print(f"\n== {Path(path).name}: {kind} {arr.shape} {arr.dtype}, {arr.nbytes / 1e6:.1f} MB")
    print(f"  {'codec':44s} {'ratio':>7s} {'enc MB/s':>8s} {'dec MB/s':>8s}")
    if args.bounded_only:
        return bench_bounded(arr, kind, args)
    buf, out, r, e, d = ours(arr, "lossless", args.repeat, **lvl(args))
    assert np.array_equal(out, arr), "lossless round trip failed"
    bps = len(buf) * 8 / arr.size
    cond, glob = residual_entropy(arr)
    row(f"necoda lossless (level {args.level or LL.DEFAULT_LEVEL})", r, e, d,
        f"{bps:.3f} bits/sample; residual entropy {cond:.3f} "
        f"(per context stream) / {glob:.3f} (pooled) bits/sample; params {chunk.info(buf).params}")
    for lv in args.levels:
        b2, o2, r2, e2, d2 = ours(arr, "lossless", args.repeat, level=lv)
        assert np.array_equal(o2, arr), "lossless round trip failed"
        row(f"necoda lossless level {lv}", r2, e2, d2, f"{(r2 / r - 1) * 100:+.2f} % ratio")
    res = anchors_lossless(arr, kind, args.fast)
    for k, (ra, ea, da) in res.items():
        row(k, ra, ea, da)
    best = max(res.items(), key=lambda kv: kv[1][0])
    print(f"  -> lossless ratio / best anchor ({best[0]}): {r / best[1][0]:.3f}")
    bench_bounded(arr, kind, args)


def lvl(args) -> dict:
    return {} if args.level is None else {"level": args.level}


def bench_bounded(arr, kind, args):

    print("  bounded:")
    if kind == "imaging":
        try:
            from anscombe_transform.codec import encode as aenc, decode as adec
            from anscombe_transform.estimate import compute_conversion_gain
            import zstandard
            from pcodec import ChunkConfig, standalone
            cg = compute_conversion_gain(arr)
            g, z = float(cg["conversion_gain"]), int(round(float(cg["zero_level"])))
            enc8 = aenc(arr, conversion_gain=g, zero_level=z, encoded_dtype="uint8")
            rec = adec(enc8, conversion_gain=g, zero_level=z, encoded_dtype="uint8", decoded_dtype="int16")
            rec = np.asarray(rec).reshape(arr.shape)
            err = np.abs(rec.astype(np.int64) - arr)
            Ea = int(err.max())
            sz_z = len(zstandard.ZstdCompressor(level=19).compress(enc8.tobytes()))
            sz_p = len(standalone.simple_compress(enc8.ravel(), ChunkConfig(compression_level=8, enable_8_bit=True)))
            sz_l = len(lzma.compress(enc8.tobytes(), preset=6))
            ra = arr.nbytes / min(sz_z, sz_p, sz_l)
            row("anscombe-transform 1.0.0 (+best of zstd/pcodec/lzma)", ra, None, None,
                f"gain {g:.1f} zero {z}; max error {Ea} raw = {Ea / g:.2f} photons "
                f"(zstd {arr.nbytes / sz_z:.2f}, pcodec {arr.nbytes / sz_p:.2f}, lzma {arr.nbytes / sz_l:.2f})")
            # our noise-aware mode at the anscombe quantizer's own per-level tolerance (beta = 0.5 -> 0.25 sigma)
            for k in (0.25, 0.5):
                buf, out, r, e, d = ours(arr, "bounded", args.repeat, max_error_noise=k, **lvl(args))
                eo = int(np.abs(out.astype(np.int64) - arr).max())
                row(f"necoda bounded max_error_noise={k}", r, e, d,
                    f"max error {eo} raw = {eo / g:.2f} photons; {r / ra:.2f}x anscombe; nm {chunk.info(buf).params.get('nm')}")
            # equal raw max error
            buf, out, r, e, d = ours(arr, "bounded", args.repeat, max_error=Ea, **lvl(args))
            eo = int(np.abs(out.astype(np.int64) - arr).max())
            row(f"necoda bounded max_error={Ea}", r, e, d, f"max error {eo}; {r / ra:.2f}x anscombe")
            s = sz3(arr, Ea)
            if s:
                row(f"SZ3 (pysz) abs={Ea}", s[0], s[1], s[2], f"max error {s[3]:.0f}")
        except ImportError as ex:
            print("  (anscombe-transform skipped:", ex, ")")
    for E in args.errors:
        buf, out, r, e, d = ours(arr, "bounded", args.repeat, max_error=E, **lvl(args))
        eo = float(np.abs(out.astype(np.float64) - arr).max())
        row(f"necoda bounded max_error={E}", r, e, d, f"max error {eo:.0f}")
        s = sz3(arr, E)
        if s:
            row(f"SZ3 (pysz) abs={E}", s[0], s[1], s[2], f"max error {s[3]:.1f} (after rounding to ints)")


def _chunks(arr, rows):
    return [np.ascontiguousarray(arr[s:s + rows]) for s in range(0, arr.shape[0], rows)]


def _ours_chunked(chunks, E, repeat, closed_loop=True):
    from necoda_filter.modes import bounded as BD
    orig = BD.BoundedMode._pick
    if not closed_loop:
        BD.BoundedMode._pick = lambda self, arr, lo, hi, E, level, ol, params: ol
    try:
        bufs, te = cpu(lambda: [chunk.encode(c, mode="bounded", max_error=E) for c in chunks], repeat)
    finally:
        BD.BoundedMode._pick = orig
    outs, td = cpu(lambda: [chunk.decode(b) for b in bufs], repeat)
    nb = sum(c.nbytes for c in chunks)
    err = max(int(np.abs(o.astype(np.int64) - c).max()) for o, c in zip(outs, chunks))
    cl = sum(chunk.info(b).params.get("t") == 2 for b in bufs)
    return nb / sum(len(b) for b in bufs), nb / 1e6 / te, nb / 1e6 / td, err, cl


def _sz3_chunked(chunks, E, repeat):
    try:
        from pysz import sz, szConfig, szErrorBoundMode
    except ImportError:
        return None
    tot = 0
    err = 0.0
    te = td = 0.0
    for c in chunks:
        a = np.ascontiguousarray(c.astype(np.float32))
        cfg = szConfig(a.shape)
        cfg.errorBoundMode = szErrorBoundMode.ABS
        cfg.absErrorBound = float(E)
        (cmp, _), t = cpu(lambda: sz.compress(a, cfg), repeat)
        (rec, _), t2 = cpu(lambda: sz.decompress(cmp, np.float32, a.shape), repeat)
        te += t
        td += t2
        tot += cmp.nbytes
        err = max(err, float(np.abs(np.rint(rec).astype(np.float64) - c).max()))
    nb = sum(c.nbytes for c in chunks)
    return nb / tot, nb / 1e6 / te, nb / 1e6 / td, err


def _zfp_chunked(chunks, E, repeat):
    try:
        import imagecodecs
        if not imagecodecs.ZFP.available:
            return None
    except (ImportError, AttributeError):
        return None
    tot = 0
    err = 0.0
    te = td = 0.0
    for c in chunks:
        a = np.ascontiguousarray(c.astype(np.float32))
        if a.ndim > 4:
            a = a.reshape(a.shape[0], -1, a.shape[-1])
        b, t = cpu(lambda: imagecodecs.zfp_encode(a, level=float(E), mode="a"), repeat)
        rec, t2 = cpu(lambda: imagecodecs.zfp_decode(b), repeat)
        te += t
        td += t2
        tot += len(b)
        err = max(err, float(np.abs(np.rint(np.asarray(rec, np.float64)).reshape(c.shape) - c).max()))
    nb = sum(c.nbytes for c in chunks)
    return nb / tot, nb / 1e6 / te, nb / 1e6 / td, err


def sigma_table(path, sigma, args):
    arr = load(path, args.channels)
    rows = args.chunk or (64 if arr.ndim >= 3 else 15000)
    chunks = _chunks(arr, rows)
    print(f"\n== {Path(path).name} {arr.shape} {arr.dtype}, chunks of {rows} rows, sigma = {sigma} raw")
    print(f"  {'k':>4s} {'E':>5s} | {'ours':>7s} {'enc':>6s} {'dec':>6s} {'err':>5s} {'cl':>5s} | "
          f"{'open':>7s} | {'SZ3':>7s} {'enc':>6s} {'dec':>6s} {'err':>6s} | {'ZFP':>7s} {'err':>6s} | ours/best")
    for k in args.sigmas:
        E = int(round(k * sigma))
        r, e, d, err, cl = _ours_chunked(chunks, E, args.repeat)
        r0 = _ours_chunked(chunks, E, 1, closed_loop=False)[0]
        s = _sz3_chunked(chunks, E, args.repeat)
        z = _zfp_chunked(chunks, E, 1)
        best = max([v[0] for v in (s, z) if v] or [float("nan")])
        sz_s = f"{s[0]:7.2f} {s[1]:6.1f} {s[2]:6.1f} {s[3]:6.1f}" if s else f"{'-':>7s} {'':6s} {'':6s} {'':6s}"
        zf_s = f"{z[0]:7.2f} {z[3]:6.1f}" if z else f"{'-':>7s} {'':6s}"
        print(f"  {k:4.1f} {E:5d} | {r:7.2f} {e:6.1f} {d:6.1f} {err:5d} {cl:2d}/{len(chunks):<2d} | {r0:7.2f} | "
              f"{sz_s} | {zf_s} | {r / best:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--channels", type=int, default=None)
    ap.add_argument("--errors", type=float, nargs="*", default=[2, 10, 50])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--bounded-only", action="store_true")
    ap.add_argument("--level", type=int, default=None, help="pcodec level for our modes (default: the modes' own)")
    ap.add_argument("--levels", type=int, nargs="*", default=[],
                    help="extra lossless rows at these pcodec levels (ratio / speed trade-off)")
    ap.add_argument("--fast", action="store_true", help="skip lzma, JPEG-XL on 50 frames only")
    ap.add_argument("--sigmas", type=float, nargs="*", default=None,
                    help="bounded table at E = k * sigma against SZ3 and ZFP (needs --noise)")
    ap.add_argument("--noise", type=float, nargs="*", default=None, help="sigma in raw units, one per path")
    ap.add_argument("--chunk", type=int, default=None, help="rows per chunk for --sigmas")
    args = ap.parse_args()
    if args.sigmas:
        for p, sg in zip(args.paths, args.noise or []):
            sigma_table(p, sg, args)
        return
    for p in args.paths:
        bench(p, args)


if __name__ == "__main__":
    main()
