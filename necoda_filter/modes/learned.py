"""Learned mode: a spatiotemporal hourglass network (ONNX) coding imaging movies at 100×–2000×.

Encode (one chunk, (T, H, W); other ranks are folded to that):

1. estimate gain/offset (photon transfer) and variance-stabilise to noise units (generalised Anscombe);
2. baseline = per-pixel temporal mean, block-averaged and quantised per quality level, coded
   losslessly as integers (pcodec) — the static image costs a fixed few hundred bytes to a few KB;
3. dynamics ``d = v - baseline`` (edge-padded inside the chunk to T % 8 == 0, H, W % 16 == 0 and cut into
   equal tiles for large frames; no halo, so chunks stay independent) go through the ONNX encoder; the two
   latents are scaled by per-quality, per-channel gains (step sizes) and rounded to integers;
4. each latent channel is entropy-coded with pcodec (forward-adaptive, bit-exact on any machine);
5. optional safeguard (``max_error`` raw units / ``max_error_noise`` noise sd): the residual
   ``original - reconstruction`` is coded with the bounded mode so the bound holds whatever the network did.

Decode = pcodec ints → ints / gain → ONNX decoder → + baseline → inverse VST → round/clip to dtype
(+ safeguard residual). Torch is never imported; the model is named by its content id in the chunk header.
"""
from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import OrderedDict

import numpy as np

from . import Encoded

FORMAT = 1
MAGIC = b"NL"
#: quality levels are 1 (smallest files) .. the model's n_quality (best fidelity); a model's tables name
#: its default level ("default_quality"); models without one use DEFAULT_QUALITY
DEFAULT_QUALITY = 2
BASE_SCALE = 0.2
#: frames are cut into tiles of at most this many pixels per side when larger than TILE_THRESHOLD pixels
TILE_HW = 256
TILE_THRESHOLD = 512 * 512
TILE_T = 128
TILE_T_THRESHOLD = 256
#: voxels per ONNX Runtime call (bounds memory for large chunks)
RUN_VOXELS = 1 << 23
#: the C finishing pass of a tile uses the decoder's thread count when each thread gets at least this many
#: packed values (smaller tiles: one thread; starting a thread costs about what 64 K values take)
FINISH_VOXELS_PER_THREAD = 1 << 20
MAX_LATENT = 1 << 20


def _ceil_to(n, m):
    return -(-n // m) * m


def _geometry(shape3, tables):
    """Tile size and padded size (deterministic function of the chunk shape)."""
    T, H, W = shape3
    ts, ss = tables["t_stride"], tables["s_stride"]
    Tp, Hp, Wp = _ceil_to(T, ts), _ceil_to(H, ss), _ceil_to(W, ss)
    tt = Tp if Tp <= TILE_T_THRESHOLD else TILE_T
    if Hp * Wp > TILE_THRESHOLD:
        th, tw = min(TILE_HW, Hp), min(TILE_HW, Wp)
    else:
        th, tw = Hp, Wp
    return (tt, th, tw), (_ceil_to(Tp, tt), _ceil_to(Hp, th), _ceil_to(Wp, tw))


def _to_tiles(a, tile):
    """(Tp, Hp, Wp) -> (n, tt, th, tw) in C order of the tile grid."""
    tt, th, tw = tile
    Tp, Hp, Wp = a.shape
    a = a.reshape(Tp // tt, tt, Hp // th, th, Wp // tw, tw).transpose(0, 2, 4, 1, 3, 5)
    return a.reshape(-1, tt, th, tw)


def _from_tiles(b, tile, padded):
    tt, th, tw = tile
    Tp, Hp, Wp = padded
    b = b.reshape(Tp // tt, Hp // th, Wp // tw, tt, th, tw).transpose(0, 3, 1, 4, 2, 5)
    return b.reshape(Tp, Hp, Wp)


def _tile_origin(k, tile, grid):
    """First voxel (t, y, x) in the padded chunk of tile ``k`` (C order of the (time, row, column) grid)."""
    tt, th, tw = tile
    gh, gw = grid
    return (k // (gh * gw) * tt, (k // gw) % gh * th, k % gw * tw)


def _as3(shape):
    if len(shape) == 1:
        raise ValueError("learned mode needs image data (at least 2-D)")
    if len(shape) == 2:
        return (1, *shape)
    return (int(np.prod(shape[:-2])), shape[-2], shape[-1])


def _latent_shapes(tiles_n, tile, tables):
    tt, th, tw = tile
    out = {}
    for name in ("zs", "zt"):
        spec = tables["latents"][name]
        dt, dh, dw = spec["down"]
        out[name] = (tiles_n, spec["channels"], tt // dt, th // dh, tw // dw)
    return out


def _batches(n, per):
    step = max(1, RUN_VOXELS // per)
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _pad_edge(a, pads):
    """``np.pad(a, pads, mode="edge")`` without the copy when nothing is padded."""
    if not any(lo or hi for lo, hi in pads):
        return a
    return np.pad(a, pads, mode="edge")


def _dtype_limits(dtype):
    if np.issubdtype(dtype, np.integer):
        ii = np.iinfo(dtype)
        return float(ii.min), float(ii.max)
    return None


def _finish(y, dtype):
    lim = _dtype_limits(dtype)
    if lim is not None:
        if np.dtype(dtype).itemsize >= 4:
            y = y.astype(np.float64)
        np.rint(y, out=y)
        # float(iinfo(int64/uint64).max) rounds up to 2**63 / 2**64, whose cast overflows (undefined: INT64_MIN
        # on x86): clip to the largest float64 that is a valid value of the dtype
        hi = lim[1] if lim[1] <= np.iinfo(dtype).max else float(np.nextafter(lim[1], 0.0))
        np.clip(y, max(lim[0], -3.0e38), min(hi, 3.0e38), out=y)
        return y.astype(dtype)
    return y.astype(dtype)


def _add_residual(rec: np.ndarray, resid: np.ndarray, dtype) -> np.ndarray:
    """Safeguarded output: the reconstruction plus the decoded safeguard residual. Integers: exact integer
    arithmetic, clipped to the dtype's range (64-bit types in wrapping arithmetic with the overflow detected
    and saturated; float64 would round them). Floats: summed in float64, rounded once to the dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return (rec.astype(np.float64) + np.asarray(resid, np.float64)).astype(dtype)
    r = np.asarray(resid)
    if dtype.itemsize < 8:
        ii = np.iinfo(dtype)
        return np.clip(rec.astype(np.int64) + r.astype(np.int64, copy=False), int(ii.min), int(ii.max)).astype(dtype)
    r = r.astype(np.int64, copy=False)
    rec = np.ascontiguousarray(rec, dtype=dtype)
    s = rec + r.astype(dtype)  # modulo 2**64
    ii = np.iinfo(dtype)
    s[(r > 0) & (s < rec)] = ii.max
    s[(r < 0) & (s > rec)] = ii.min
    return s


#: relative difference allowed between reconstructions of the same chunk on different machines/providers:
#: 2**-20 is 8 float32 ulps of the largest value (the decoder's output is float32). The safeguard keeps that
#: much margin below max_error; for 16-bit integers it is under one raw unit (no change). An estimate: only
#: CPU kernels could be compared here (1-3 threads: identical); GPUs run with TF32 off (models/runtime.py).
SAFEGUARD_DRIFT = 2.0 ** -20


#: decode a box of a chunk from the latents around it (box + receptive field) when that is at most this
#: fraction of the chunk's decoder work; 0 (or ``NECODA_READ_CROP=0``) turns cropping off
CROP_MAX_FRACTION = 0.75
#: receptive field of the split packed decoder's main graph in latent units: one latent frame each side
#: (its 3x3x3 convolution is the only operator that mixes time; everything after it works per frame
#: pair) and two latent pixels each side (that convolution and the trunk's 3x3 one)
CROP_HALO_T, CROP_HALO_S = 1, 2

#: Output positions below which a convolution's sums may be rounded differently. ONNX Runtime's CPU
#: convolutions (MLAS) sum an output over its K = channels x taps inputs in blocks of 128 — two partial
#: sums for the decoder's 3x3x3 convolution (K = 216) — but in one block when the GEMM they run has at
#: most 64 output positions (``MlasConvOperation``/``MlasSgemmOperation`` widen the K stride for narrow
#: GEMMs). Which GEMM a position falls in depends on the call: a batch of several tiles runs each tile
#: whole, a single tile is cut into one slice per thread. Measured before this rule: a 16x32x32 float32
#: chunk decoded on 2 threads differed from 1 thread in 298 voxels, and time crops of 64x16x32 chunks
#: differed from the whole-chunk decode. Keeping every such GEMM at or above this many positions (8 times
#: 64, so a change of those constants is covered too) makes the sums the same whatever the thread count,
#: batch or crop (checked: 0 of 463 random space and time crops differed; tests/test_learned.py).
MIN_GEMM_POSITIONS = 512


def _call_threads(threads, batch: int, positions: int) -> int:
    """ONNX Runtime threads for a call on ``batch`` tiles whose 3-D convolution has ``positions`` output
    positions per tile: several tiles are convolved one whole tile at a time (any thread count); a single
    tile is sliced over the threads, so it gets them only when every slice keeps MIN_GEMM_POSITIONS
    (MLAS rounds the slice length up to 16, so the last slice can be shorter by 16 per thread)."""
    from ..models import runtime

    t = runtime.threads_for(threads)
    if batch >= 2 or t == 1 or positions >= t * (MIN_GEMM_POSITIONS + 16 * t):
        return t
    return 1


def _crop_range(lo, hi, step, halo, n, minimum):
    """Latent range [a, b) of a box [lo, hi) (pixels or frames of the tile) plus ``halo`` latent units each
    side, clamped to [0, n) and widened evenly to at least ``minimum`` units (clamped to n)."""
    a, b = max(0, lo // step - halo), min(n, -(-hi // step) + halo)
    while b - a < min(minimum, n):
        a, b = max(0, a - 1), min(n, b + 1)
    return a, b


def _box_crops(tile, grid, n, window, box, split, down):
    """The tiles and latent crops that decode the box of a chunk starting at ``window`` with shape
    ``box``: ``[(tile index, (t0, t1), (y0, y1), (x0, x1)), ...]`` (latent ranges of the tile), or None
    when that does not pay (or does not apply: unsplit decoders, a GPU provider, tiles too small).

    Exactness: tiles are decoded independently anyway, and every voxel written lies at least the
    receptive field away from a crop edge that is not the tile's own edge, so it sees exactly the
    latents, context and baseline the whole-tile decode gives it; ONNX Runtime's CPU convolutions sum each
    output over its taps in the same order whatever the input's extent as long as the GEMMs they run
    keep MIN_GEMM_POSITIONS output positions (crops are widened to keep that many per frame and per 3-D
    call; smaller tiles are never cropped). Checked bit for bit against whole-chunk decodes, float32
    included: tests/test_learned.py."""
    from ..models import runtime

    if not CROP_MAX_FRACTION or os.environ.get("NECODA_READ_CROP", "1") == "0" or not split \
            or not split.get("zs_shape_only") or runtime.providers() != ["CPUExecutionProvider"]:
        return None
    lt_n, ly_n, lx_n = (s // d for s, d in zip(tile, down))
    if ly_n * lx_n < MIN_GEMM_POSITIONS:
        return None  # the tile's own GEMMs are narrow: decode it whole
    side = int(np.ceil(np.sqrt(MIN_GEMM_POSITIONS)))
    crops, work = [], 0
    for k in range(n):
        o = _tile_origin(k, tile, grid)
        lo = [max(w, org) - org for w, org in zip(window, o)]
        hi = [min(w + b, org + size) - org for w, b, org, size in zip(window, box, o, tile)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue  # the box misses this tile
        # rows: at least about sqrt(MIN_GEMM_POSITIONS) (more when the tile is narrow), then columns: what
        # the rows leave to reach MIN_GEMM_POSITIONS per frame (a box that spans all rows keeps few columns)
        ly = _crop_range(lo[1], hi[1], down[1], CROP_HALO_S, ly_n, min(side, ly_n) if lx_n >= side else
                         -(-MIN_GEMM_POSITIONS // lx_n))
        lx = _crop_range(lo[2], hi[2], down[2], CROP_HALO_S, lx_n, -(-MIN_GEMM_POSITIONS // (ly[1] - ly[0])))
        lt = _crop_range(lo[0], hi[0], down[0], CROP_HALO_T, lt_n, 1)
        crops.append((k, lt, ly, lx))
        work += (lt[1] - lt[0]) * (ly[1] - ly[0]) * (lx[1] - lx[0])
    if work > CROP_MAX_FRACTION * n * lt_n * ly_n * lx_n:
        return None
    return crops


#: bytes of decoder context tensors kept per process (split decoders, all-zero zt: one per tile geometry)
CONTEXT_CACHE_BYTES = 256 << 20
_context_lock = threading.Lock()
_context_cache: OrderedDict = OrderedDict()


def _context(pkg, zs, zt, zt_is_zero: bool, threads, cut=None):
    """The split decoder's context input for a batch of tiles. It is a function of ``zt`` and of the
    batch geometry only (``zs`` is read for its shape: checked when the package was split), so when the
    batch's ``zt`` is all zero it is computed once per geometry and reused (read-only). With ``cut``
    (models/trunk.py), in that cut's layout (a blocked variant's: cached as such, reordered once)."""
    from ..models import runtime, trunk

    split = pkg.tables["decoder_split"]
    threads = _call_threads(threads, zt.shape[0], int(np.prod(zt.shape[2:])))  # its 3-D convs run at zt's size
    block = cut.block if cut else 1

    def run(feeds):
        if block == 1:
            return runtime.run(pkg.id, "context", pkg.context, feeds, threads)[0]
        # into a numpy buffer freed after the reorder: an output of ONNX Runtime's own would go back to its
        # arena and stay resident next to the reordered copy (+50 MB per process for a 64x512x512 chunk)
        down = tuple(int(v) for v in pkg.tables["latents"]["zs"]["down"])
        planar = np.empty((zs.shape[0], down[0] // 2 * zs.shape[2], cut.channels) + zs.shape[3:], np.float32)
        runtime.run_into(pkg.id, "context", pkg.context, feeds, [planar], threads)
        return trunk.to_layout(cut, planar)

    if not (zt_is_zero and split.get("zs_shape_only")):
        return run({"zs": zs, "zt": zt})
    key = (pkg.id, zs.shape, zt.shape, block)
    with _context_lock:
        got = _context_cache.get(key)
        if got is not None:
            _context_cache.move_to_end(key)
            return got
    got = run({"zs": np.zeros(zs.shape, np.float32), "zt": np.zeros(zt.shape, np.float32)})
    got.setflags(write=False)
    if got.nbytes <= CONTEXT_CACHE_BYTES:
        with _context_lock:
            _context_cache[key] = got
            while sum(v.nbytes for v in _context_cache.values()) > CONTEXT_CACHE_BYTES:
                _context_cache.popitem(last=False)
    return got


class LearnedMode:
    name = "learned"
    mode_id = 3
    lossy = True
    options = ("quality", "max_error", "max_error_noise", "model")
    #: ``decode`` can write a box of a chunk straight into a caller's array (chunk.decode_box)
    decode_options = ("into",)

    # ------------------------------------------------------------------ encode
    def encode(self, arr: np.ndarray, quality: int | None = None, max_error: float | None = None,
               max_error_noise: float | None = None, model: str | None = None, threads: int | None = None,
               **_ignored) -> Encoded:
        from ..models import prep, registry, runtime

        arr = np.asarray(arr)
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"learned mode codes numeric images, not {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError("learned mode cannot code NaN/inf")
        pkg = registry.resolve(model)
        tab = pkg.tables
        nq = int(tab["n_quality"])
        q = int(tab.get("default_quality", DEFAULT_QUALITY)) if quality is None else int(quality)
        if not 1 <= q <= nq:
            raise ValueError(f"learned quality must be 1..{nq} for model {pkg.id} ({pkg.path.name}), got {quality}")
        qi = q - 1
        x = arr.reshape(_as3(arr.shape))
        T, H, W = x.shape
        g, o = prep.estimate_gain_offset(x)
        v = prep.vst(x, g, o)
        base = v.mean(0, dtype=np.float32)
        bcfg = tab["baseline"][qi]
        bstep, bfac = float(bcfg["step"]), int(bcfg["factor"])
        bint = prep.quantize_baseline(base, bstep, bfac)
        bq = prep.dequantize_baseline(bint, bstep, bfac, base.shape)
        tile, padded = _geometry((T, H, W), tab)
        d = v - bq[None]
        pads = ((0, padded[0] - T), (0, padded[1] - H), (0, padded[2] - W))
        d = _pad_edge(d, pads)
        bpad = _pad_edge(bq, pads[1:])
        dt = _to_tiles(d, tile)
        n = dt.shape[0]
        tt, th, tw = tile
        gh, gw = padded[1] // th, padded[2] // tw
        btiles = (bpad * np.float32(BASE_SCALE)).reshape(gh, th, gw, tw).transpose(0, 2, 1, 3)
        btiles = np.ascontiguousarray(btiles).reshape(gh * gw, 1, 1, th, tw)
        shapes = _latent_shapes(n, tile, tab)
        # a model whose temporal pathway is pruned (tables latents.zt.pruned) has an encoder without it
        # and codes zt as all zeros (what imaging-v2's encoder produced nearly everywhere: docs/LEARNED.md)
        pruned = bool(tab["latents"]["zt"].get("pruned"))
        zs = np.empty(shapes["zs"], np.float32)
        zt = np.zeros(shapes["zt"], np.float32)
        for a, b in _batches(n, int(np.prod(tile))):
            idx = np.arange(a, b) % (gh * gw)
            # the same thread rule as the decoder (MIN_GEMM_POSITIONS): the latents, hence the bytes written,
            # do not depend on the thread count (necoda compress's workers vs the HDF5 filter pipeline)
            run_threads = _call_threads(threads, b - a, int(np.prod(shapes["zs"][2:])))
            got = runtime.run(pkg.id, "encoder", pkg.encoder, {"x": dt[a:b, None], "base": btiles[idx]}, run_threads)
            zs[a:b] = got[0]
            if not pruned:
                zt[a:b] = got[1]
        gs = np.asarray(tab["gain_zs"][qi], np.float32)[None, :, None, None, None]
        gt = np.asarray(tab["gain_zt"][qi], np.float32)[None, :, None, None, None]
        qs = np.clip(np.rint(zs * gs), -MAX_LATENT, MAX_LATENT).astype(np.int32)
        qt = np.clip(np.rint(zt * gt), -MAX_LATENT, MAX_LATENT).astype(np.int32)
        sections = [prep.encode_ints_2d(bint)]
        for lat in (qs, qt):
            for c in range(lat.shape[1]):
                sections.append(prep.encode_ints(lat[:, c]))
        params = {"g": g, "o": o, "q": q, "tile": list(tile), "bs": bstep, "bf": bfac}
        sg = b""
        if max_error is not None or max_error_noise is not None:
            sg, sgp = self._safeguard(arr, x, qs, qt, bq, params, pkg, max_error, max_error_noise, threads)
            params["sg"] = sgp
        sections.append(sg)
        body = b"".join(struct.pack("<I", len(s)) + s for s in sections)
        payload = MAGIC + struct.pack("<BI", FORMAT, zlib.crc32(body)) + body
        return Encoded(payload, params, pkg.id)

    def _safeguard(self, arr, x, qs, qt, bq, params, pkg, max_error, max_error_noise, threads):
        from . import get

        bounded = get("bounded")  # the project's bounded-error mode (ImportError if it is not installed)
        if max_error_noise is not None:
            xf = x.astype(np.float32)
            if xf.shape[0] >= 2:
                sig = float(np.median(np.abs(np.diff(xf, axis=0)))) / (0.6745 * np.sqrt(2.0))
            else:
                sig = float(params["g"])
            me = float(max_error_noise) * max(sig, 1e-12)
            me = me if max_error is None else min(me, float(max_error))
        else:
            me = float(max_error)
        rec = self._reconstruct(qs, qt, bq, x.shape, params, pkg, arr.dtype, threads).reshape(x.shape)
        # the decoder elsewhere (another CPU's kernels, a GPU) may differ from this reconstruction by float
        # rounding, which grows with the magnitude of the values: keep that much margin (see SAFEGUARD_DRIFT)
        drift = float(np.abs(x).max(initial=0)) * SAFEGUARD_DRIFT if x.size else 0.0
        if np.issubdtype(arr.dtype, np.integer):
            # rounding to integers turns a drift d into at most floor(d) + 1 raw units
            eff = np.floor(me) - 1.0 - np.floor(drift)
            if eff < 0:
                raise ValueError(f"learned safeguard needs max_error >= {1 + np.floor(drift):g} raw units for "
                                 f"these integers (got {me:g})")
            if x.dtype.itemsize < 8:
                resid = x.astype(np.int64) - rec.astype(np.int64)  # exact
            else:  # exact modulo 2**64, so exact when |x - rec| < 2**63 (checked in float64)
                if not np.abs(x.astype(np.float64) - rec.astype(np.float64)).max(initial=0.0) < 2.0 ** 62:
                    raise ValueError("learned safeguard residual exceeds the 64-bit range")
                resid = np.ascontiguousarray(x).view(np.int64) - np.ascontiguousarray(rec).view(np.int64)
            if resid.size and -(1 << 31) <= int(resid.min()) and int(resid.max()) < 1 << 31:
                resid = resid.astype(np.int32)
        else:
            # the residual in float64 (exact for float16/32 data); the final rounding to the dtype adds up to
            # half its spacing s at the sample: with an error e on the residual the output is within
            # |e| + s/2 of x when s <= me, and is x itself when s > me and |e| < s/2. So |e| <= eff with
            # eff = max(0.999 me - s_max / 2, 0.999 me / 2) keeps every sample within 0.999 me.
            s_max = float(np.spacing(np.abs(x).max(initial=0).astype(x.dtype))) if x.size else 0.0
            eff = max(me * 0.999 - s_max / 2, me * 0.999 / 2) - drift
            if eff <= 0:
                raise ValueError(f"learned safeguard: max_error {me:g} is below the float rounding the decoder "
                                 f"may add at these magnitudes ({drift:g})")
            resid = x.astype(np.float64) - rec.astype(np.float64)
        enc = bounded.encode(resid, max_error=float(eff))
        # check the chunk as the decoder will rebuild it (with this reconstruction): a network output that
        # no residual can repair (NaN/inf, out of range) must not be stored as if the bound held
        dec = bounded.decode(enc.payload, resid.shape, resid.dtype, enc.params, enc.model_id)
        y = _add_residual(rec, dec, x.dtype)
        if x.dtype.kind in "iu":
            u = np.dtype(f"u{x.dtype.itemsize}")  # |x - y| without overflow: the difference modulo 2**bits
            dist = np.maximum(x, y).astype(u) - np.minimum(x, y).astype(u)
            ok = bool(np.all(dist <= min(int(np.floor(me)), int(np.iinfo(u).max))))
        else:
            ok = bool(np.all(np.abs(y.astype(np.float64) - x.astype(np.float64)) <= me))
        if not ok:
            raise ValueError("learned safeguard could not bring the reconstruction within the bound")
        return enc.payload, {"me": me, "eff": float(eff), "dt": resid.dtype.str, "p": enc.params, "m": enc.model_id}

    # ------------------------------------------------------------------ decode
    def _reconstruct(self, qs, qt, bq, shape3, params, pkg, dtype, threads=None, into=None):
        """The decoded chunk (T, H, W). With ``into = (view, (wt, wy, wx))`` and a decoder whose tail the C
        kernel finishes in ``view``'s dtype, the box of the chunk starting at (wt, wy, wx) with the view's
        shape is written straight into ``view`` and None is returned (else the whole chunk is returned)."""
        from ..models import prep, runtime, trunk

        tab = pkg.tables
        qi = int(params["q"]) - 1
        if not 0 <= qi < int(tab["n_quality"]):
            raise ValueError(f"learned chunk quality {params['q']} not in model {pkg.id}")
        tile = tuple(int(t) for t in params["tile"])
        T, H, W = shape3
        _, padded = _geometry((T, H, W), tab)
        gs = np.asarray(tab["gain_zs"][qi], np.float32)[None, :, None, None, None]
        gt = np.asarray(tab["gain_zt"][qi], np.float32)[None, :, None, None, None]
        zs = qs.astype(np.float32) / gs
        zt = qt.astype(np.float32) / gt
        pads = ((0, padded[1] - H), (0, padded[2] - W))
        bpad = _pad_edge(bq, pads)
        n = qs.shape[0]
        tt, th, tw = tile
        gh, gw = padded[1] // th, padded[2] // tw
        btiles = bpad.reshape(gh, th, gw, tw).transpose(0, 2, 1, 3).reshape(gh * gw, 1, 1, th, tw)
        batches = _batches(n, int(np.prod(tile)))
        base_feed = btiles * np.float32(BASE_SCALE)

        packed = tab.get("decoder_output", "dense") == "packed"
        split = tab.get("decoder_split")

        down = tuple(int(v) for v in tab["latents"]["zs"]["down"])  # latent step: frames, pixels
        pairs = down[0] // 2  # packed output frame pairs per latent frame

        def run_decoder(lo, hi, lt=None, ly=None, lx=None):
            """Decoder output for tiles lo..hi-1, on their latent frames ``lt`` and latent rows and columns
            ``ly``, ``lx`` (a split decoder's main graph only; the whole tile when None)."""
            t, y, x = (slice(None) if r is None else slice(*r) for r in (lt, ly, lx))
            py, px = (slice(None) if r is None else slice(d * r[0], d * r[1])
                      for r, d in ((ly, down[1]), (lx, down[2])))
            feeds = {"zs": zs[lo:hi, :, t, y, x], "base": base_feed[np.arange(lo, hi) % (gh * gw)][..., py, px]}
            zs_pos = int(np.prod(feeds["zs"].shape[2:]))
            # the cut (models/trunk.py) of a split, packed decoder on the CPU; its context comes in its layout
            cut = split and packed and runtime.providers() == ["CPUExecutionProvider"] and trunk.get(pkg)
            if split:
                ctx = _context(pkg, zs[lo:hi], zt[lo:hi], not qt[lo:hi].any(), threads, cut)
                # frames, rows, columns: axes 1, 3, 4 in the planar and the blocked layout alike
                feeds[split["input"]] = ctx[:, slice(None) if lt is None else slice(pairs * lt[0], pairs * lt[1]),
                                            :, y, x]
                run_threads = _call_threads(threads, hi - lo, zs_pos)
            else:
                feeds["zt"] = zt[lo:hi]
                run_threads = _call_threads(threads, hi - lo, min(zs_pos, int(np.prod(zt.shape[2:]))))
            if packed:  # consumed before the next call: decode into this thread's reusable buffer
                nt = tt // 2 if lt is None else pairs * (lt[1] - lt[0])
                lat = feeds["zs"].shape[3:]
                if cut:  # the elementwise trunk as one C pass between the two halves of the graph: same bits
                    kthreads = min(runtime.threads_for(run_threads),
                                   max(1, (hi - lo) * nt * cut.channels * int(np.prod(lat))
                                       // FINISH_VOXELS_PER_THREAD))
                    return trunk.run(cut, lambda g, b, f, outs: runtime.run_into(pkg.id, g, b, f, outs, run_threads,
                                                                                 cut.preoptimized),
                                     feeds, feeds[split["input"]], kthreads, runtime.scratch)
                pp = runtime.scratch(((hi - lo) * nt, 32) + lat)
                return runtime.run_into(pkg.id, "decoder", pkg.decoder, feeds, [pp], run_threads)[0]
            return runtime.run(pkg.id, "decoder", pkg.decoder, feeds, run_threads)[0]

        def decoded():  # (first tile, last tile + 1, decoder output) per ONNX Runtime call
            for lo, hi in batches:
                yield lo, hi, run_decoder(lo, hi)

        if packed:
            from .. import _kernels

            dt = np.dtype(dtype)
            fused = dt in _kernels.LEARNED_FINISH_CODES and dt.isnative
            # straight into the caller's view when the kernel can write it (else: whole chunk, then a copy)
            direct = (into is not None and fused and into[0].dtype == dt and into[0].flags.writeable
                      and _kernels.finish_layout_ok(into[0]))
            if direct:
                res, window = into
            else:  # the kernel writes the final dtype, or float32 for the numpy rounding of wider integers
                res, window = np.empty((T, H, W), dt if fused else np.float32), (0, 0, 0)
            a = np.float32(0.25 * float(params["g"]))  # inverse VST: a * max(v, 0)**2 + b, as prep.inverse_vst
            b = np.float32(float(params["o"]) - 0.375 * float(params["g"]))
            bqc = np.ascontiguousarray(bq, dtype=np.float32)
            crops = _box_crops(tile, (gh, gw), n, window, res.shape, split, down) if direct else None
            if crops is not None:  # a small box: run the decoder on the latents around it only
                for k, lt, ly, lx in crops:
                    t0, y0, x0 = _tile_origin(k, tile, (gh, gw))
                    _kernels.learned_finish(run_decoder(k, k + 1, lt, ly, lx),
                                            (t0 + down[0] * lt[0], y0 + down[1] * ly[0], x0 + down[2] * lx[0]),
                                            bqc, a, b, res, window)
                return None
            # the finishing pass is memory-bound and single-threaded per call: split large tiles over the
            # cores ONNX Runtime had (h5py's filter path; read()'s decoders run one thread each)
            fthreads = min(runtime.threads_for(threads), max(1, (tt // 2) * 32 * (th // 4) * (tw // 4)
                                                             // FINISH_VOXELS_PER_THREAD))
            for lo, hi, pp in decoded():  # planar (.., 32, h4, w4) or blocked (.., 32 / B, h4, w4, B)
                pp = pp.reshape((hi - lo, tt // 2) + pp.shape[1:])
                for k in range(lo, hi):
                    _kernels.learned_finish(pp[k - lo], _tile_origin(k, tile, (gh, gw)), bqc, a, b, res, window,
                                            threads=fthreads)
            if direct:
                return None
            return res if fused else _finish(res, dtype)
        out = None if len(batches) == 1 else np.empty((n, tt, th, tw), np.float32)
        for lo, hi, dd in decoded():
            if out is None:
                out = dd.reshape(n, tt, th, tw)  # one call: use ORT's output buffer as is
            else:
                out[lo:hi] = dd[:, 0]
        v = _from_tiles(out, tile, padded)[:T, :H, :W] + bq[None]
        y = prep.inverse_vst(v, float(params["g"]), float(params["o"]), out=v)
        return _finish(y, dtype)

    def decode(self, payload, shape, dtype, params, model_id, threads: int | None = None,
               into=None) -> np.ndarray | None:
        """Decode a chunk of ``shape``. ``into = (view, start)`` (3-D chunks without a safeguard block):
        write the box of the chunk at ``start`` with ``view``'s shape straight into ``view`` when the
        model's decoder tail allows it, and return None; otherwise the whole chunk is returned."""
        from ..models import prep, registry

        pkg = registry.get(model_id)  # ModelNotFound (a LookupError) names the id
        tab = pkg.tables
        mv = bytes(payload)
        if len(mv) < 7 or mv[:2] != MAGIC:
            raise ValueError("learned payload has a bad magic")
        fmt, crc = struct.unpack_from("<BI", mv, 2)
        if fmt != FORMAT:
            raise ValueError(f"learned payload format {fmt} not supported")
        body = mv[7:]
        if zlib.crc32(body) != crc:
            raise ValueError("learned payload checksum mismatch (corrupt latents)")
        sections, pos = [], 0
        while pos < len(body):
            if pos + 4 > len(body):
                raise ValueError("learned payload truncated")
            (k,) = struct.unpack_from("<I", body, pos)
            pos += 4
            if pos + k > len(body):
                raise ValueError("learned payload truncated")
            sections.append(body[pos:pos + k])
            pos += k
        cs, ct = tab["latents"]["zs"]["channels"], tab["latents"]["zt"]["channels"]
        if len(sections) != 1 + cs + ct + 1:
            raise ValueError(f"learned payload has {len(sections)} sections, expected {cs + ct + 2}")
        shape3 = _as3(tuple(shape))
        T, H, W = shape3
        tile = tuple(int(t) for t in params["tile"])
        _, padded = _geometry(shape3, tab)
        if any(p % t for p, t in zip(padded, tile)) or tile != _geometry(shape3, tab)[0]:
            raise ValueError("learned chunk tiling does not match its shape")
        bstep, bfac = float(params["bs"]), int(params["bf"])
        bshape = (-(-H // bfac), -(-W // bfac))
        bint = prep.decode_ints_2d(sections[0], bshape)
        bq = prep.dequantize_baseline(bint, bstep, bfac, (H, W))
        n = int(np.prod([p // t for p, t in zip(padded, tile)]))
        shapes = _latent_shapes(n, tile, tab)
        lat = []
        i = 1
        for name in ("zs", "zt"):
            s = shapes[name]
            per = s[0] * int(np.prod(s[2:]))
            chans = [prep.decode_ints(sections[i + c], per).reshape((s[0],) + s[2:]) for c in range(s[1])]
            i += s[1]
            lat.append(np.stack(chans, axis=1))
        qs, qt = lat
        if max(np.abs(qs).max(initial=0), np.abs(qt).max(initial=0)) > MAX_LATENT:
            raise ValueError("learned latents out of range (corrupt payload)")
        sg = sections[-1]
        if into is not None and ("sg" in params or len(sg) or len(tuple(shape)) != 3):
            into = None
        rec = self._reconstruct(qs, qt, bq, shape3, params, pkg, np.dtype(dtype), threads, into)
        if rec is None:
            return None
        if "sg" in params:
            from . import get

            sgp = params["sg"]
            resid = get("bounded").decode(sg, shape3, np.dtype(sgp["dt"]), sgp["p"], sgp.get("m", ""))
            rec = _add_residual(rec.reshape(shape3), resid, dtype)
        elif len(sg):
            raise ValueError("learned payload carries a safeguard block but the params do not describe it")
        return rec.reshape(tuple(shape))

    # ------------------------------------------------------------------ helpers for tests and tools
    def latents(self, payload, shape, params, model_id):
        """Integer latents stored in a payload (for determinism checks)."""
        from ..models import prep, registry

        pkg = registry.get(model_id)
        tab = pkg.tables
        body = bytes(payload)[7:]
        sections, pos = [], 0
        while pos < len(body):
            (k,) = struct.unpack_from("<I", body, pos)
            sections.append(body[pos + 4:pos + 4 + k])
            pos += 4 + k
        shape3 = _as3(tuple(shape))
        tile, padded = _geometry(shape3, tab)
        n = int(np.prod([p // t for p, t in zip(padded, tile)]))
        shapes = _latent_shapes(n, tile, tab)
        out, i = [], 1
        for name in ("zs", "zt"):
            s = shapes[name]
            per = s[0] * int(np.prod(s[2:]))
            out += [prep.decode_ints(sections[i + c], per) for c in range(s[1])]
            i += s[1]
        return out


MODE = LearnedMode()
