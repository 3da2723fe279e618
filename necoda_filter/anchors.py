"""Reference codecs ("anchors") that ``necoda bench`` runs side by side with necoda's own modes.

Every anchor is a small object with ``name`` (the row label), ``family`` (one marker/line per family
in the plots), ``settings`` (a dict written to results.json), ``lossy``, ``threads`` (the thread count
we ask the library for; 1 wherever the library lets us choose) and

* ``encode(arr) -> bytes`` — the whole array, cut into chunks along the time axis exactly as necoda
  cuts it (imaging: ``chunk`` frames x full frame; ephys: ``chunk`` samples x all channels);
* ``decode(buf) -> ndarray`` — the same shape and dtype back.

The bytes are a tiny frame (dtype, shape, chunk length, per-chunk byte counts; 16 + 4·n_chunks + 4·ndim
bytes) around one payload per chunk, so ratios include every byte a reader needs: headers, container
overhead, stored offsets and scales. Anchors whose package is missing are reported as skipped by
:func:`build_anchors`, never raised.

Lossy anchors whose natural unit is an absolute error (SZ3, ZFP) are configured in multiples of the
noise sigma estimated from the data, so their settings line up with necoda's ``bounded`` mode.
"""
from __future__ import annotations

import io
import logging
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("necoda_filter.bench")

IMAGING, EPHYS = "imaging", "ephys"

# ---------------------------------------------------------------------------------------- framing

_FRAME = struct.Struct("<4sBBxxII")  # magic, ndim, dtype-string length, chunk length, n_chunks


def pack_chunks(arr: np.ndarray, chunk: int, parts: list[bytes]) -> bytes:
    """Frame per-chunk payloads: header (dtype, shape, chunk length, sizes) + payloads."""
    dt = arr.dtype.str.encode()
    head = _FRAME.pack(b"NBCH", arr.ndim, len(dt), chunk, len(parts)) + dt
    head += struct.pack(f"<{arr.ndim}Q", *arr.shape)
    head += struct.pack(f"<{len(parts)}I", *(len(p) for p in parts))
    return head + b"".join(parts)


def unpack_chunks(buf: bytes):
    """Inverse of :func:`pack_chunks`: (dtype, shape, chunk, [payload, ...])."""
    buf = memoryview(buf)
    magic, ndim, ldt, chunk, n = _FRAME.unpack_from(buf, 0)
    if magic != b"NBCH":
        raise ValueError("not a bench chunk frame")
    pos = _FRAME.size
    dtype = np.dtype(bytes(buf[pos:pos + ldt]).decode())
    pos += ldt
    shape = struct.unpack_from(f"<{ndim}Q", buf, pos)
    pos += 8 * ndim
    sizes = struct.unpack_from(f"<{n}I", buf, pos)
    pos += 4 * n
    parts = []
    for s in sizes:
        parts.append(bytes(buf[pos:pos + s]))
        pos += s
    return dtype, tuple(int(x) for x in shape), int(chunk), parts


def chunk_bounds(n: int, chunk: int):
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


class Anchor:
    """Base: subclasses implement ``encode_chunk(chunk) -> bytes`` and
    ``decode_chunk(payload, shape, dtype) -> ndarray``; this class does the chunking."""

    name = "anchor"
    family = "anchor"
    lossy = False
    threads = 1
    kinds: tuple[str, ...] = (IMAGING, EPHYS)

    def __init__(self, chunk: int = 64, **settings):
        self.chunk = int(chunk)
        self.settings = dict(settings)
        self.notes: list[str] = []

    def encode(self, arr: np.ndarray) -> bytes:
        arr = np.ascontiguousarray(arr)
        parts = [self.encode_chunk(arr[a:b]) for a, b in chunk_bounds(arr.shape[0], self.chunk)]
        return pack_chunks(arr, self.chunk, parts)

    def decode(self, buf: bytes) -> np.ndarray:
        dtype, shape, chunk, parts = unpack_chunks(buf)
        out = np.empty(shape, dtype)
        for (a, b), p in zip(chunk_bounds(shape[0], chunk), parts):
            out[a:b] = self.decode_chunk(p, (b - a, *shape[1:]), dtype)
        return out

    def encode_chunk(self, chunk: np.ndarray) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode_chunk(self, payload: bytes, shape, dtype) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.settings}>"


def _as_int_range(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip a float reconstruction to an integer dtype (identity for float dtypes)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)


# ------------------------------------------------------------------------- general-purpose lossless

class NumcodecsAnchor(Anchor):
    """A numcodecs codec applied to each chunk's bytes (zstd, lzma, Blosc, pcodec)."""

    def __init__(self, name, family, codec, chunk=64, **settings):
        super().__init__(chunk, **settings)
        self.name, self.family, self.codec = name, family, codec

    def encode_chunk(self, chunk):
        return bytes(self.codec.encode(chunk))

    def decode_chunk(self, payload, shape, dtype):
        out = self.codec.decode(payload)
        return np.frombuffer(out, dtype).reshape(shape) if not isinstance(out, np.ndarray) or out.dtype != dtype \
            else out.reshape(shape)


def zstd(level, chunk):
    from numcodecs import Zstd
    return NumcodecsAnchor(f"zstd-{level}", "zstd", Zstd(level=level), chunk, level=level)


def lzma_(preset, chunk):
    from numcodecs import LZMA
    return NumcodecsAnchor(f"lzma-{preset}", "lzma", LZMA(preset=preset), chunk, preset=preset)


def blosc_zstd(clevel, chunk):
    from numcodecs import Blosc, blosc
    blosc.use_threads = False  # one thread, like every other row
    c = Blosc(cname="zstd", clevel=clevel, shuffle=Blosc.BITSHUFFLE)
    return NumcodecsAnchor(f"blosc-zstd{clevel}-bitshuffle", "blosc", c, chunk, cname="zstd",
                           clevel=clevel, shuffle="bitshuffle")


def pcodec_(level, chunk):
    from numcodecs import PCodec
    return NumcodecsAnchor(f"pcodec-{level}", "pcodec", PCodec(level=level), chunk, level=level)


# ------------------------------------------------------------------------------ ephys lossless

class FlacAnchor(Anchor):
    """FLAC via ``flac-numcodecs`` (int16 only). Channels are stored one after another (channel-major),
    which is how the codec reaches its best ratio on multichannel data: it flattens >2 channels."""

    family = "flac"
    kinds = (EPHYS,)

    def __init__(self, level, chunk, fs=30000.0):
        super().__init__(chunk, level=level)
        from flac_numcodecs import Flac
        self.name = f"flac-{level}"
        self.codec = Flac(level=level)

    def encode_chunk(self, chunk):
        if chunk.dtype != np.int16:
            raise TypeError("FLAC anchor: int16 only")
        return bytes(self.codec.encode(np.ascontiguousarray(chunk.T) if chunk.shape[1] > 2 else chunk))

    def decode_chunk(self, payload, shape, dtype):
        out = np.asarray(self.codec.decode(payload)).astype(dtype, copy=False)
        if shape[1] > 2:
            return out.reshape(shape[1], shape[0]).T
        return out.reshape(shape)


class MtscompAnchor(Anchor):
    """mtscomp (IBL): time-diff + zlib, its own ~1 s chunks. The library works on files, so each call
    writes a temporary .npy and counts the compressed data file plus its JSON metadata file."""

    family = "mtscomp"
    name = "mtscomp"
    kinds = (EPHYS,)

    def __init__(self, chunk, fs):
        super().__init__(chunk, chunk_duration_s=chunk / fs)
        import mtscomp  # noqa: F401
        self.fs = float(fs)

    def encode(self, arr):
        import mtscomp
        logging.getLogger("mtscomp").setLevel(logging.WARNING)
        arr = np.ascontiguousarray(arr)
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            np.save(d / "x.npy", arr)
            w = mtscomp.Writer(n_threads=1, chunk_duration=self.chunk / self.fs, check_after_compress=False,
                               quiet=True)
            w.open(d / "x.npy", sample_rate=self.fs)
            w.write(d / "x.cbin", d / "x.ch")
            w.data = None  # drop the memmap before the directory goes away
            cbin, ch = (d / "x.cbin").read_bytes(), (d / "x.ch").read_bytes()
        return struct.pack("<Q", len(ch)) + ch + cbin

    def decode(self, buf):
        import json

        import mtscomp
        n = struct.unpack_from("<Q", buf, 0)[0]
        meta = json.loads(bytes(buf[8:8 + n]))
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "x.cbin"
            p.write_bytes(bytes(buf[8 + n:]))
            r = mtscomp.Reader(n_threads=1, check_after_decompress=False)
            r.open(p, meta)
            out = np.array(r[:])
            r.close()
        return out.reshape(meta["shape"])


# --------------------------------------------------------------------------- image lossless

class _FrameImageAnchor(Anchor):
    """Per-frame still-image codecs. Signed data are offset to unsigned per chunk (offset stored)."""

    kinds = (IMAGING,)

    def encode_chunk(self, chunk):
        if chunk.dtype.kind not in "iu" or chunk.dtype.itemsize > 2:
            raise TypeError(f"{self.name}: 8/16-bit integer data only")
        lo = int(chunk.min()) if chunk.dtype.kind == "i" else 0
        u = (chunk.astype(np.int32) - lo).astype(np.uint16 if chunk.dtype.itemsize == 2 else np.uint8)
        frames = [self._enc(f) for f in u]
        return struct.pack(f"<i{len(frames)}I", lo, *(len(f) for f in frames)) + b"".join(frames)

    def decode_chunk(self, payload, shape, dtype):
        n = shape[0]
        lo, *sizes = struct.unpack_from(f"<i{n}I", payload, 0)
        pos = 4 + 4 * n
        out = np.empty(shape, dtype)
        for i, s in enumerate(sizes):
            out[i] = (self._dec(payload[pos:pos + s]).astype(np.int32) + lo).reshape(shape[1:])
            pos += s
        return out


class JpegXLAnchor(_FrameImageAnchor):
    family = "jpegxl"

    def __init__(self, chunk, effort=7):
        import imagecodecs
        if not imagecodecs.JPEGXL.available:
            raise ImportError("imagecodecs was built without JPEG-XL")
        super().__init__(chunk, lossless=True, effort=effort)
        self.name = f"jpegxl-lossless-e{effort}"
        self._ic, self.effort = imagecodecs, effort

    def _enc(self, f):
        return bytes(self._ic.jpegxl_encode(f, lossless=True, effort=self.effort, numthreads=1))

    def _dec(self, b):
        return self._ic.jpegxl_decode(b, numthreads=1)


class Jpeg2kAnchor(_FrameImageAnchor):
    family = "jpeg2k"
    name = "jpeg2k-lossless"

    def __init__(self, chunk):
        import imagecodecs
        if not imagecodecs.JPEG2K.available:
            raise ImportError("imagecodecs was built without JPEG 2000")
        super().__init__(chunk, reversible=True)
        self._ic = imagecodecs

    def _enc(self, f):
        return bytes(self._ic.jpeg2k_encode(f, level=0, reversible=True, numthreads=1))

    def _dec(self, b):
        return self._ic.jpeg2k_decode(b, numthreads=1)


class AnscombeAnchor(Anchor):
    """``anscombe-transform``'s photon-quantizing lookup (beta = 0.5 noise sigma per grey level, the
    library's default) to uint8, then Zstd — the codec is an array-to-array filter meant to sit in front
    of a compressor. Needs conversion gain and zero level: we pass the photon-transfer fit from
    ``metrics.estimate_noise_imaging`` (stored in each chunk, 12 bytes)."""

    family = "anscombe"
    lossy = True
    kinds = (IMAGING,)

    def __init__(self, chunk, gain, offset, zstd_level=19):
        from anscombe_transform import codec as ac
        from numcodecs import Zstd
        if not (np.isfinite(gain) and gain > 0):
            raise ValueError(f"no usable photon-transfer fit (gain={gain})")
        super().__init__(chunk, conversion_gain=round(float(gain), 3), zero_level=int(round(offset)),
                         beta=0.5, then=f"zstd-{zstd_level}")
        self.name = f"anscombe+zstd{zstd_level}"
        self.ac, self.z = ac, Zstd(level=zstd_level)
        self.gain, self.zero = float(gain), int(round(offset))

    def encode_chunk(self, chunk):
        enc = self.ac.encode(chunk, conversion_gain=self.gain, zero_level=self.zero, encoded_dtype="uint8")
        return struct.pack("<di", self.gain, self.zero) + bytes(self.z.encode(np.ascontiguousarray(enc)))

    def decode_chunk(self, payload, shape, dtype):
        gain, zero = struct.unpack_from("<di", payload, 0)
        enc = self.z.decode(payload[12:])
        out = self.ac.decode(enc, conversion_gain=gain, zero_level=zero, encoded_dtype="uint8",
                             decoded_dtype=dtype)
        return np.asarray(out).reshape(shape)


# ---------------------------------------------------------------------------- error-bounded

class SZ3Anchor(Anchor):
    """SZ3 (``pysz``) in absolute-error mode on each chunk (3-D for imaging, 2-D for ephys).
    Integer data go in as int32, so the bound holds exactly on the integers."""

    family = "sz3"
    lossy = True

    def __init__(self, chunk, abs_error, k_sigma=None):
        from pysz import sz, szConfig, szErrorBoundMode  # noqa: F401
        super().__init__(chunk, abs_error=float(abs_error), k_sigma=k_sigma)
        self.name = f"sz3-abs{_fmt_bound(abs_error)}" + (f" ({k_sigma:g}σ)" if k_sigma else "")
        self.abs_error = float(abs_error)

    def encode_chunk(self, chunk):
        from pysz import sz, szConfig, szErrorBoundMode
        x = chunk.astype(np.int32) if chunk.dtype.kind in "iu" and chunk.dtype.itemsize <= 2 else chunk
        if x.dtype not in (np.int32, np.int64, np.float32, np.float64):
            x = x.astype(np.float64)
        conf = szConfig(x.shape)
        conf.errorBoundMode = szErrorBoundMode.ABS
        conf.absErrorBound = self.abs_error
        conf.openmp = False
        comp, _ = sz.compress(np.ascontiguousarray(x), conf)
        return x.dtype.char.encode() + comp.tobytes()

    def decode_chunk(self, payload, shape, dtype):
        from pysz import sz
        work = np.dtype(payload[:1].decode())
        out, _ = sz.decompress(np.frombuffer(payload[1:], np.uint8), work, tuple(shape))
        return _as_int_range(np.asarray(out).reshape(shape), dtype)


class ZFPAnchor(Anchor):
    """ZFP fixed-accuracy mode (imagecodecs) on float32 chunks; decoded values rounded back to the
    integer dtype. ZFP's tolerance is conservative (power of two), so measured errors sit below it."""

    family = "zfp"
    lossy = True

    def __init__(self, chunk, tolerance, k_sigma=None):
        import imagecodecs
        if not imagecodecs.ZFP.available:
            raise ImportError("imagecodecs was built without ZFP")
        super().__init__(chunk, tolerance=float(tolerance), k_sigma=k_sigma, mode="fixed-accuracy")
        self.name = f"zfp-tol{_fmt_bound(tolerance)}" + (f" ({k_sigma:g}σ)" if k_sigma else "")
        self._ic, self.tol = imagecodecs, float(tolerance)

    def encode_chunk(self, chunk):
        return bytes(self._ic.zfp_encode(chunk.astype(np.float32), level=self.tol, mode="a",
                                         execution="serial"))

    def decode_chunk(self, payload, shape, dtype):
        return _as_int_range(np.asarray(self._ic.zfp_decode(payload)).reshape(shape), dtype)


def _fmt_bound(x):
    return f"{x:.3g}"


# ----------------------------------------------------------------------------------- video

#: family -> (PyAV encoder, muxer (raw elementary stream: the smallest container), pixel format,
#: bits, extra options). Pixel formats are the deepest grey/4:2:0 format each encoder accepts.
VIDEO_CODECS = {
    "h264": ("libx264", "h264", "gray10le", 10, {"preset": "medium"}),
    "h265": ("libx265", "hevc", "gray12le", 12,
             {"preset": "medium", "x265-params": "pools=1:frame-threads=1:wpp=0:log-level=error"}),
    "av1": ("libsvtav1", "ivf", "yuv420p10le", 10, {"preset": "8", "svtav1-params": "lp=1"}),
}


class VideoAnchor(Anchor):
    """H.264/H.265/AV1 through PyAV (FFmpeg). Each chunk is one closed video stream. The chunk's
    [min, max] is mapped linearly onto the encoder's full code range (10 or 12 bits; the float range
    is stored, 16 bytes) and back. Bytes counted: the whole elementary stream (headers, parameter sets).
    4:2:0 encoders get neutral chroma (mid-grey) planes."""

    lossy = True
    kinds = (IMAGING,)

    def __init__(self, family, crf, chunk, fps=30.0):
        import av
        enc, mux, pix, bits, opts = VIDEO_CODECS[family]
        try:
            codec = av.codec.Codec(enc, "w")
        except Exception as e:  # noqa: BLE001
            raise ImportError(f"FFmpeg in PyAV has no {enc} encoder ({e})") from e
        fmts = [f.name for f in (codec.video_formats or [])]
        if pix not in fmts:
            alt = [p for p in ("gray12le", "gray10le", "yuv420p12le", "yuv420p10le") if p in fmts]
            if not alt:
                raise ImportError(f"{enc} supports no 10/12-bit format here")
            pix = alt[0]
            bits = 12 if "12" in pix else 10
        super().__init__(chunk, encoder=enc, crf=crf, pix_fmt=pix, bits=bits, threads=1,
                         **{k: v for k, v in opts.items() if k == "preset"})
        self.family, self.enc, self.mux, self.pix, self.bits, self.opts = family, enc, mux, pix, bits, opts
        self.crf, self.fps = crf, fps
        self.name = f"{family}-{pix}-crf{crf}"
        self._av = av
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr otherwise
        av.logging.set_level(av.logging.ERROR)

    def _frame(self, q):
        av = self._av
        h, w = q.shape
        fr = av.VideoFrame(w, h, self.pix)
        planes = [q]
        if not self.pix.startswith("gray"):
            mid = np.full(((h + 1) // 2, (w + 1) // 2), 1 << (self.bits - 1), np.uint16)
            planes += [mid, mid]
        for pl, a in zip(fr.planes, planes):
            buf = np.frombuffer(pl, np.uint16).reshape(-1, pl.line_size // 2)
            buf[:a.shape[0], :a.shape[1]] = a
        return fr

    def encode_chunk(self, chunk):
        av = self._av
        t, h, w = chunk.shape
        lo, hi = float(chunk.min()), float(chunk.max())
        top = (1 << self.bits) - 1
        scale = top / (hi - lo) if hi > lo else 0.0
        q = np.clip(np.rint((chunk.astype(np.float64) - lo) * scale), 0, top).astype(np.uint16)
        if h % 2 or w % 2:  # 4:2:0 encoders need even sizes; pad by edge replication
            q = np.pad(q, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
        bio = io.BytesIO()
        with av.open(bio, "w", format=self.mux) as c:
            s = c.add_stream(self.enc, rate=int(round(self.fps)) or 30)
            s.width, s.height = q.shape[2], q.shape[1]
            s.pix_fmt = self.pix
            s.options = dict(self.opts, crf=str(self.crf))
            s.codec_context.thread_count = 1
            for f in q:
                for p in s.encode(self._frame(f)):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        return struct.pack("<dd", lo, hi) + bio.getvalue()

    def decode_chunk(self, payload, shape, dtype):
        av = self._av
        lo, hi = struct.unpack_from("<dd", payload, 0)
        t, h, w = shape
        frames = []
        with av.open(io.BytesIO(payload[16:]), "r", format=self.mux) as c:
            st = c.streams.video[0]
            st.codec_context.thread_count = 1
            for fr in c.decode(st):
                pl = fr.planes[0]
                y = np.frombuffer(pl, np.uint16).reshape(-1, pl.line_size // 2)
                frames.append(y[:h, :w].astype(np.float64))
        if len(frames) != t:
            raise ValueError(f"video stream decoded to {len(frames)} frames, expected {t}")
        top = (1 << self.bits) - 1
        x = np.stack(frames) * ((hi - lo) / top) + lo
        return _as_int_range(x, dtype)


# ------------------------------------------------------------------------------------ necoda

class NecodaAnchor(Anchor):
    """necoda's own chunk codec: ``necoda_filter.chunk.encode(chunk, mode=..., **options)``.
    Chunks whose header says a different mode than requested (the container stored them raw because the
    mode raised) are counted in ``fallback_chunks`` so the harness can flag the row."""

    family = "necoda"

    def __init__(self, mode, chunk, options=None, label=None, lossy=None):
        super().__init__(chunk, mode=mode, **(options or {}))
        self.mode, self.options = mode, dict(options or {})
        self.name = label or f"necoda-{mode}"
        self.family = f"necoda-{mode}"
        self.lossy = bool(lossy)
        self.fallback_chunks = 0
        self.n_chunks = 0

    def encode_chunk(self, chunk):
        from . import chunk as nchunk
        from . import modes
        buf = nchunk.encode(chunk, mode=self.mode, **self.options)
        self.n_chunks += 1
        if nchunk.info(buf).mode_id != modes.MODE_IDS[self.mode]:
            self.fallback_chunks += 1
        return buf

    def decode_chunk(self, payload, shape, dtype):
        from . import chunk as nchunk
        return nchunk.decode(payload)


# ------------------------------------------------------------------------------------ registry

@dataclass
class Skipped:
    name: str
    family: str
    reason: str
    settings: dict = field(default_factory=dict)


#: families the harness knows, in table order; "necoda" expands to every mode in MODE_TABLE.
FAMILIES = ("necoda", "zstd", "lzma", "blosc", "pcodec", "flac", "mtscomp", "jpegxl", "jpeg2k",
            "anscombe", "sz3", "zfp", "h264", "h265", "av1")

#: noise-sigma multiples for absolute-error anchors and necoda bounded (max_error)
SIGMA_MULTIPLES = (0.5, 1.0, 2.0)
#: CRF per video family: near-transparent, medium, aggressive, and the 100x-2000x range where the
#: learned mode is compared with video codecs at equal ratio
VIDEO_CRF = {"h264": (12, 20, 28, 40, 51), "h265": (12, 20, 28, 40, 51), "av1": (16, 28, 40, 55, 63)}
#: necoda bounded settings in noise units; the learned mode runs every quality level of its default model
BOUNDED_NOISE = (0.5, 1.0, 2.0)


def learned_qualities() -> tuple:
    from .models import registry

    return tuple(range(1, int(registry.default().tables["n_quality"]) + 1))


def _try(out, name, family, make, settings=None):
    try:
        a = make()
    except Exception as e:  # noqa: BLE001 — missing package, missing encoder, bad estimate
        hint = " (pip install \"necoda-filter[bench]\" installs the reference codecs)" \
            if isinstance(e, ModuleNotFoundError) else ""
        out.append(Skipped(name, family, f"{type(e).__name__}: {e}{hint}", settings or {}))
        return
    out.append(a)


def necoda_anchors(kind, chunk, sigma, out, is_int=True):
    """One anchor per (mode, setting) for every mode in ``modes.MODE_TABLE`` except raw; a mode whose
    module is missing or fails to import becomes skipped rows."""
    from . import modes
    for mode in modes.MODE_TABLE:
        if mode == "raw":
            continue
        try:
            m = modes.get(mode)
            accepted = set(getattr(m, "options", ()) or ())
            lossy = bool(getattr(m, "lossy", mode != "lossless"))
        except Exception as e:  # noqa: BLE001 — module not written yet / broken import
            out.append(Skipped(f"necoda-{mode}", f"necoda-{mode}", f"{type(e).__name__}: {e}"))
            continue
        if mode == "bounded":
            settings = []
            if sigma and np.isfinite(sigma) and sigma > 0:
                for k in SIGMA_MULTIPLES:
                    me = max(1, int(round(k * sigma))) if is_int else k * sigma
                    settings.append((f"necoda-bounded-abs{_fmt_bound(me)} ({k:g}σ)", {"max_error": me}))
            for k in BOUNDED_NOISE:
                settings.append((f"necoda-bounded-noise{k:g}", {"max_error_noise": k}))
        elif mode == "learned":
            if kind != "imaging":  # the learned model is for T x H x W movies only
                out.append(Skipped("necoda-learned", "necoda-learned", "the learned mode codes imaging movies only"))
                continue
            settings = [(f"necoda-learned-q{q}", {"quality": q}) for q in learned_qualities()]
        else:
            settings = [(f"necoda-{mode}", {})]
        for label, opts in settings:
            bad = [k for k in opts if accepted and k not in accepted]
            if bad:
                out.append(Skipped(label, f"necoda-{mode}", f"mode {mode!r} does not accept option(s) {bad}", opts))
                continue
            _try(out, label, f"necoda-{mode}", lambda: NecodaAnchor(mode, chunk, opts, label, lossy), opts)


def build_anchors(kind: str, chunk: int, *, families=None, noise=None, fs=30000.0, fps=30.0, dtype=None):
    """Anchors (or :class:`Skipped` entries) for ``kind`` ("imaging"/"ephys").

    ``noise`` is the harness's noise estimate: {"sigma": float, "gain": .., "offset": ..}; error-bounded
    settings are multiples of sigma. ``families`` restricts to a subset of :data:`FAMILIES`
    (``None`` = all that apply to ``kind``)."""
    fams = list(FAMILIES if families is None else families)
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown codec famil{'ies' if len(unknown) > 1 else 'y'} {unknown}; "
                         f"choose from {', '.join(FAMILIES)} or 'all'")
    noise = noise or {}
    sigma = float(noise.get("sigma") or 0.0)
    dtype = np.dtype(dtype) if dtype is not None else None
    is_int = dtype is None or dtype.kind in "iu"
    out: list = []
    applies = {"flac": EPHYS, "mtscomp": EPHYS, "jpegxl": IMAGING, "jpeg2k": IMAGING, "anscombe": IMAGING,
               "h264": IMAGING, "h265": IMAGING, "av1": IMAGING}
    for fam in fams:
        if fam in applies and applies[fam] != kind:
            if families is not None:
                out.append(Skipped(fam, fam, f"{fam} is an anchor for {applies[fam]} data, not {kind}"))
            continue
        if fam == "necoda":
            necoda_anchors(kind, chunk, sigma, out, is_int)
        elif fam == "zstd":
            for lv in (3, 19):
                _try(out, f"zstd-{lv}", fam, lambda lv=lv: zstd(lv, chunk))
        elif fam == "lzma":
            _try(out, "lzma-6", fam, lambda: lzma_(6, chunk))
        elif fam == "blosc":
            _try(out, "blosc-zstd5-bitshuffle", fam, lambda: blosc_zstd(5, chunk))
        elif fam == "pcodec":
            _try(out, "pcodec-8", fam, lambda: pcodec_(8, chunk))
        elif fam == "flac":
            for lv in (5, 8):
                if dtype is not None and dtype != np.int16:
                    out.append(Skipped(f"flac-{lv}", fam, f"FLAC anchor takes int16 only, data are {dtype}"))
                    continue
                _try(out, f"flac-{lv}", fam, lambda lv=lv: FlacAnchor(lv, chunk, fs))
        elif fam == "mtscomp":
            _try(out, "mtscomp", fam, lambda: MtscompAnchor(chunk, fs))
        elif fam in ("jpegxl", "jpeg2k"):
            if not is_int or (dtype is not None and dtype.itemsize > 2):
                out.append(Skipped(fam, fam, f"{fam} anchor takes 8/16-bit integers, data are {dtype}"))
                continue
            _try(out, fam, fam, (lambda: JpegXLAnchor(chunk)) if fam == "jpegxl" else (lambda: Jpeg2kAnchor(chunk)))
        elif fam == "anscombe":
            _try(out, "anscombe+zstd19", fam,
                 lambda: AnscombeAnchor(chunk, float(noise.get("gain") or np.nan), float(noise.get("offset") or 0.0)))
        elif fam in ("sz3", "zfp"):
            if not sigma > 0:
                out.append(Skipped(fam, fam, "no noise estimate to set error bounds from"))
                continue
            for k in SIGMA_MULTIPLES:
                b = k * sigma
                if fam == "sz3":
                    _try(out, f"sz3 ({k:g}σ)", fam, lambda b=b, k=k: SZ3Anchor(chunk, b, k))
                else:
                    _try(out, f"zfp ({k:g}σ)", fam, lambda b=b, k=k: ZFPAnchor(chunk, b, k))
        elif fam in VIDEO_CODECS:
            for crf in VIDEO_CRF[fam]:
                _try(out, f"{fam}-crf{crf}", fam, lambda crf=crf: VideoAnchor(fam, crf, chunk, fps))
    return out
