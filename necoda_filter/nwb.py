"""Whole-file NWB (HDF5) recompression and decompression.

``recompress_file(IN, OUT, ...)`` copies an NWB file object by object at the h5py level — every group,
attribute, soft/external/hard link, committed datatype and the cached namespace specifications stay as
they were, object references are re-pointed to the copied objects — and recompresses the large neural
datasets (the ``data`` of TwoPhotonSeries, OnePhotonSeries, ImageSeries, ElectricalSeries and
SpikeEventSeries, recognised by the ``neurodata_type`` attribute of their group) with the necoda filter.

How a dataset is recompressed:

* the output dataset is created with ``compression=Necoda(mode, **options)`` and a chunk shape chosen
  for the data (:func:`plan_chunks`), so its filter pipeline (cd_values included) is exactly what the
  filter would use;
* the input is streamed one chunk row at a time (never the whole dataset);
* each chunk is padded to the full chunk shape with the dataset's fill value — exactly the buffer HDF5
  hands to a filter for an edge chunk — and encoded with :func:`necoda_filter.chunk.encode` using the
  options from the dataset's own cd_values (what the filter would do), in a pool of worker processes
  (the pcodec-based codecs hold the GIL, so threads would not run in parallel);
* the encoded bytes are written with ``write_direct_chunk(offset, bytes, filter_mask=0)``, in chunk order;
* every chunk is decoded again and compared with the original (padding excluded) to measure the fidelity
  stored in the provenance attributes (:mod:`necoda_filter.provenance`); a chunk of a lossless mode that
  does not round-trip exactly aborts the run.

Files are written atomically: to a temporary ``.<OUT>.necoda-tmp-<pid>`` in OUT's directory, fsync'ed and
renamed over OUT only when complete; the temporary is removed on any error, Ctrl-C, SIGTERM or SIGHUP, and stale
temporaries of dead processes (SIGKILL) are removed by the next run for the same OUT.

Called from the main thread, the copy (h5py and the worker pool) runs in a helper thread while the main
thread only waits (``mainthread.off_main_thread``): a Ctrl-C landing inside concurrent.futures' locking left
a lock held, and the cleanup then waited for it forever (see :func:`_rewrite_file`).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import posixpath
import re
import signal
import sys
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from . import chunk, cpus, modes, options, provenance
from .constants import CD_USER_SLOTS, FILTER_ID
from .dtypes import UnsupportedDtype, code_of
from .filters import Necoda
from .mainthread import Stopped, check, off_main_thread, result

log = logging.getLogger("necoda_filter")

#: neurodata_type of the TimeSeries group -> kind of data in its ``data`` dataset
TARGET_TYPES = {
    "TwoPhotonSeries": "imaging",
    "OnePhotonSeries": "imaging",
    "ImageSeries": "imaging",
    "ElectricalSeries": "ephys",
    "SpikeEventSeries": "ephys",
}

IMAGING_FRAMES = 64          # frames per imaging chunk
IMAGING_TILE = 512           # max tile height/width
IMAGING_MAX_CHUNK = 64 << 20  # cap on the bytes of one imaging chunk (fewer frames if needed)
EPHYS_MAX_CHUNK = 4 << 20    # cap on the bytes of one ephys chunk (~1 s x all channels otherwise)
EPHYS_MIN_CHUNK = 16 << 10   # floor on the bytes of one ephys chunk (low sampling rates)
SLAB_MAX = 64 << 20          # read a whole row of chunks at once when it is at most this large
SOURCE_CACHE_MAX = 64 << 20  # chunk cache for a source whose chunks straddle our chunk rows
NOISE_SAMPLE_MAX = 32 << 20  # at most this many bytes of data are used to estimate the noise level
NOISE_FRAMES = 256           # imaging: first frames used for the photon-transfer fit
NOISE_SECONDS = 2.0          # ephys: first seconds used for the per-channel noise
DEFAULT_FS = 30000.0

TMP_MARK = ".necoda-tmp-"


# --------------------------------------------------------------------------------------------------
# what to recompress, and how to chunk it
# --------------------------------------------------------------------------------------------------

def _attr_str(obj, name) -> str | None:
    v = obj.attrs.get(name)
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return str(v)


def target_kind(dset: h5py.Dataset) -> str | None:
    """"imaging" or "ephys" for the ``data`` of a recognised NWB TimeSeries, else None."""
    if posixpath.basename(dset.name or "") != "data":
        return None
    kind = TARGET_TYPES.get(_attr_str(dset.parent, "neurodata_type") or "")
    if kind is None:
        return None
    if dset.size == 0 or dset.ndim == 0 or dset.dtype.fields is not None:
        return None
    try:
        code_of(dset.dtype)
    except UnsupportedDtype:
        return None
    return kind


def sampling_rate(group: h5py.Group) -> float:
    """Sampling rate of a TimeSeries group (starting_time@rate, else from timestamps), Hz."""
    st = group.get("starting_time")
    if isinstance(st, h5py.Dataset) and "rate" in st.attrs:
        r = float(st.attrs["rate"])
        if r > 0 and math.isfinite(r):
            return r
    ts = group.get("timestamps")
    if isinstance(ts, h5py.Dataset) and ts.ndim == 1 and ts.shape[0] > 2:
        d = np.diff(ts[: min(ts.shape[0], 10001)].astype(np.float64))
        d = d[d > 0]
        if d.size:
            return float(1.0 / np.median(d))
    return DEFAULT_FS


def plan_chunks(kind: str, shape: tuple, itemsize: int, fs: float | None = DEFAULT_FS) -> tuple:
    """Chunk shape for a recompressed dataset.

    imaging (T, H, W, ...): 64 frames x full frame when H, W <= 512, else tiles of at most 512 x 512
    (equal-sized tiles covering the frame); trailing axes whole; fewer frames if a chunk would exceed
    64 MB; imaging data of fewer than 3 axes (line scans) is chunked like untimed ephys rows. ephys
    (T, C, ...): about one second (``fs`` samples) x all channels, at least 16 KiB (low
    rates) and at most 4 MB; ``fs=None`` when rows are not time samples (SpikeEventSeries: one event
    per row): as many rows as 4 MB holds.
    """
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("cannot chunk a scalar dataset")
    dims = [max(1, s) for s in shape]
    if kind == "imaging" and len(dims) < 3:
        # not frames (a line scan or a trace matrix in an imaging series): 64 rows of a (T, X) series
        # encoded ~25x slower than 4096-row chunks (per-column predictor fits: 0.4 vs 11.5 MB/s on 512
        # columns of int16, ratio 2.19 vs 2.48), so rows as for ephys
        kind, fs = "ephys", None
    if kind == "imaging":
        c = list(dims)
        for ax in (1, 2):
            if ax < len(c) and c[ax] > IMAGING_TILE:
                n = math.ceil(c[ax] / IMAGING_TILE)
                c[ax] = math.ceil(c[ax] / n)
        per_frame = int(np.prod(c[1:], dtype=np.int64)) * itemsize
        c[0] = max(1, min(dims[0], IMAGING_FRAMES, IMAGING_MAX_CHUNK // max(per_frame, 1)))
        return tuple(c)
    if kind == "ephys":
        per_row = int(np.prod(dims[1:], dtype=np.int64)) * itemsize
        cap = max(1, EPHYS_MAX_CHUNK // max(per_row, 1))
        rows = cap if fs is None else max(1, int(round(fs)), -(-EPHYS_MIN_CHUNK // max(per_row, 1)))
        rows = min(rows, cap)
        if rows >= 1024:
            rows -= rows % 256
        return (max(1, min(dims[0], rows)), *dims[1:])
    raise ValueError(f"unknown data kind {kind!r}")


def necoda_filter_info(dset: h5py.Dataset) -> tuple[bool, bool, tuple]:
    """(has the necoda filter, necoda is the only filter, its cd_values)."""
    plist = dset.id.get_create_plist()
    n = plist.get_nfilters()
    ids = [plist.get_filter(i)[0] for i in range(n)]
    if FILTER_ID not in ids:
        return False, False, ()
    cd = tuple(plist.get_filter_by_id(FILTER_ID)[1])
    return True, n == 1, cd


# --------------------------------------------------------------------------------------------------
# atomic output
# --------------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_pattern(out: Path) -> re.Pattern:
    return re.compile(re.escape("." + out.name + TMP_MARK) + r"(\d+)(?:-\d+)?$")


def clean_stale_temps(out: Path) -> list[Path]:
    """Remove temporaries left for ``out`` by processes that no longer exist (e.g. after SIGKILL)."""
    removed = []
    pat = temp_pattern(out)
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pat.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def check_paths(src, dst, overwrite: bool = False) -> tuple[Path, Path]:
    src = Path(src)
    dst = Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"input file {src} does not exist")
    if not src.is_file():
        raise ValueError(f"input {src} is not a file")
    if not h5py.is_hdf5(src):
        raise ValueError(f"input file {src} is not an HDF5/NWB file")
    if os.path.realpath(src) == os.path.realpath(dst) or (dst.exists() and os.path.samefile(src, dst)):
        raise ValueError(f"refusing to overwrite the input file {src} (input and output are the same file)")
    if dst.is_dir():  # before the --overwrite advice: --overwrite never replaces a folder
        raise IsADirectoryError(f"output {dst} is a directory (give the path of the file to write)")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"output {dst} exists (use --overwrite to replace it)")
    if not dst.parent.exists():
        raise FileNotFoundError(f"output folder {dst.parent} does not exist")
    if not dst.parent.is_dir():
        raise NotADirectoryError(f"output folder {dst.parent} is not a folder")
    return src, dst


def open_input(path) -> h5py.File:
    """``h5py.File(path, "r")``; an error names the file, and a lock held by a writer says so."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        hint = ""
        if "lock" in str(e).lower():
            hint = (" (another program has it open for writing: close it there, or if you are sure nothing "
                    "writes it any more, set HDF5_USE_FILE_LOCKING=FALSE)")
        raise OSError(f"cannot open {path}{hint}: {e}") from e


class _Terminated(SystemExit):
    pass


@contextlib.contextmanager
def _sigterm_as_exit():
    """Turn SIGTERM and SIGHUP (terminal or ssh session closed) into an exception (so cleanup runs)
    while the block runs in the main thread; a signal already ignored (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated(128 + signum)

    old = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def atomic_output(dst: Path):
    """Yield a temporary path next to ``dst``; on success fsync it and rename it to ``dst``."""
    dst = Path(dst)
    clean_stale_temps(dst)
    tmp = dst.parent / f".{dst.name}{TMP_MARK}{os.getpid()}"
    if tmp.exists():
        tmp.unlink()
    ok = False
    try:
        with _sigterm_as_exit():
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dst)
            ok = True
            with contextlib.suppress(OSError):
                dfd = os.open(dst.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
    finally:
        if not ok:
            with contextlib.suppress(OSError):
                tmp.unlink()


# --------------------------------------------------------------------------------------------------
# object-by-object copy with re-pointed references
# --------------------------------------------------------------------------------------------------

def _vlen_base(dt: np.dtype) -> np.dtype | None:
    """Element dtype of a variable-length sequence type (not of a vlen string), else None."""
    base = h5py.check_vlen_dtype(dt)
    return base if isinstance(base, np.dtype) else None


def _has_ref(dt: np.dtype) -> bool:
    if dt.fields:
        return any(_has_ref(f[0]) for f in dt.fields.values())
    if dt.subdtype is not None:
        return _has_ref(dt.subdtype[0])
    base = _vlen_base(dt)  # e.g. DIMENSION_LIST of dimension scales: vlen sequences of references
    if base is not None:
        return _has_ref(base)
    return h5py.check_ref_dtype(dt) is not None


def _track_order(group) -> bool:
    try:
        return bool(group.id.get_create_plist().get_link_creation_order())
    except Exception:  # noqa: BLE001
        return False


def _naming(e: Exception, where: str) -> Exception:
    """``e`` with ``where`` (file:dataset) in front of its message, of the same class when possible."""
    msg = f"{where}: {e}"
    try:
        return type(e)(msg)
    except Exception:  # noqa: BLE001 — a class that wants other arguments
        return (OSError if isinstance(e, OSError) else ValueError)(msg)


class Copier:
    """Copy ``src`` (an open h5py.File) into ``dst`` object by object.

    ``handler(src_dataset, dst_group, name) -> bool`` may create the dataset itself (return True); other
    datasets, and committed datatypes, are copied with H5Ocopy (filters, chunking, fill value and
    attributes unchanged). Object references in attributes and datasets are re-pointed afterwards.
    ``stop``: a flag (``[bool]``) checked before each object; once set the copy raises ``Stopped``.
    """

    def __init__(self, src: h5py.File, dst: h5py.File, handler=None, stop=None):
        self.src = src
        self.dst = dst
        self.handler = handler
        self.stop = stop
        self._seen: dict[tuple, str] = {}
        self._ref_attrs: list[tuple[str, str, str]] = []   # (src path, dst path, attribute name)
        self._ref_data: list[tuple[str, str]] = []         # (src path, dst path)
        self._map_cache: dict[str, object] = {}

    @staticmethod
    def _key(obj) -> tuple:
        info = h5py.h5o.get_info(obj.id)
        return (info.fileno, getattr(info, "addr", None) or getattr(info, "token", None))

    def run(self) -> None:
        self.copy_attrs(self.src, self.dst)
        self._seen[self._key(self.src)] = "/"
        self._group(self.src, self.dst)
        self._fix_refs()

    def copy_attrs(self, s, d, skip=None) -> None:
        """Copy every attribute of ``s`` (but those ``skip(name)`` is true for) onto ``d`` with its exact
        type and shape (refs deferred)."""
        for name in s.attrs:
            if skip is not None and skip(name):
                continue
            aid = s.attrs.get_id(name)
            dt = aid.dtype
            if _has_ref(dt):
                self._ref_attrs.append((s.name, d.name, name))
                continue
            val = s.attrs[name]
            if isinstance(val, h5py.Empty):
                d.attrs.create(name, val)
            else:
                d.attrs.create(name, val, shape=aid.shape, dtype=dt)

    def _note_refs(self, s, d) -> None:
        """After H5Ocopy of ``s`` (a dataset) to ``d``: remember its reference-typed content."""
        for name in s.attrs:
            if _has_ref(s.attrs.get_id(name).dtype):
                self._ref_attrs.append((s.name, d.name, name))
        if isinstance(s, h5py.Dataset) and _has_ref(s.dtype):
            self._ref_data.append((s.name, d.name))

    def _group(self, sg: h5py.Group, dg: h5py.Group) -> None:
        for name in sg:
            check(self.stop)
            link = sg.get(name, getlink=True)
            if isinstance(link, h5py.SoftLink):
                dg[name] = h5py.SoftLink(link.path)
                continue
            if isinstance(link, h5py.ExternalLink):
                dg[name] = h5py.ExternalLink(self._link_file(link.filename, posixpath.join(dg.name, name)), link.path)
                continue
            obj = sg[name]
            key = self._key(obj)
            dpath = posixpath.join(dg.name, name)
            if key in self._seen:  # another hard link to an object already copied
                dg[name] = self.dst[self._seen[key]]
                continue
            self._seen[key] = dpath
            if isinstance(obj, h5py.Group):
                ng = dg.create_group(name, track_order=_track_order(obj) or None)
                self.copy_attrs(obj, ng)
                self._group(obj, ng)
            elif isinstance(obj, h5py.Dataset):
                try:
                    if self.handler is not None and self.handler(obj, dg, name):
                        continue
                    sg.copy(obj, dg, name)
                except (OSError, ValueError) as e:  # e.g. a corrupt chunk: say which dataset of which file
                    raise _naming(e, f"{self.src.filename}:{obj.name}") from e
                self._note_refs(obj, dg[name])
            else:  # committed datatype
                sg.copy(obj, dg, name)
                self._note_refs(obj, dg[name])

    def _link_file(self, fn: str, where: str) -> str:
        """File name for an external link in OUT. HDF5 looks for a relative name in the linking file's
        folder: when OUT is written to another folder and the file exists next to IN, the name is
        re-based on OUT's folder so that the link still resolves (otherwise it is kept as it was)."""
        if os.path.isabs(fn):
            return fn
        sdir = os.path.dirname(os.path.abspath(self.src.filename))
        ddir = os.path.dirname(os.path.abspath(self.dst.filename))
        target = os.path.join(sdir, fn)
        if os.path.realpath(sdir) == os.path.realpath(ddir) or not os.path.exists(target):
            return fn
        new = os.path.relpath(target, ddir)
        log.warning("necoda: external link %s: file %r written as %r (relative to the output's folder)", where, fn, new)
        return new

    def _map_ref(self, ref):
        if not ref:
            return ref
        try:
            obj = self.src[ref]
        except Exception as e:  # noqa: BLE001
            log.warning("necoda: dangling object reference left null (%s)", e)
            return h5py.Reference()
        path = obj.name
        if path is None:
            log.warning("necoda: reference to an anonymous object left null")
            return h5py.Reference()
        if path not in self._map_cache:
            self._map_cache[path] = self.dst[path].ref
        return self._map_cache[path]

    def _map_regionref(self, ref, src_ds_path=None):
        if not ref:
            return ref
        obj = self.src[ref]
        space = h5py.h5r.get_region(ref, obj.id)
        dobj = self.dst[obj.name]
        return h5py.h5r.create(dobj.id, b".", h5py.h5r.DATASET_REGION, space)

    def remap(self, val, dt: np.dtype):
        if isinstance(val, h5py.Empty):
            return val
        if isinstance(val, h5py.Reference) and not isinstance(val, h5py.RegionReference):
            return self._map_ref(val)
        if isinstance(val, h5py.RegionReference):
            return self._map_regionref(val)
        arr = np.asarray(val)
        if arr.dtype.fields:
            out = arr.copy()
            for f, (fdt, *_) in arr.dtype.fields.items():
                if _has_ref(fdt):
                    out[f] = self.remap(arr[f], fdt)
            return out if arr.ndim else out[()]
        base = _vlen_base(arr.dtype)
        if base is not None:
            if not _has_ref(base):
                return val
            out = np.empty(arr.shape, dtype=arr.dtype)
            for idx in np.ndindex(arr.shape):
                out[idx] = self.remap(np.asarray(arr[idx], dtype=base), base)
            return out if arr.ndim else out[()]
        kind = h5py.check_ref_dtype(arr.dtype)
        if kind is None:
            return val
        out = np.empty(arr.shape, dtype=arr.dtype)
        fn = self._map_regionref if kind is h5py.RegionReference else self._map_ref
        for idx in np.ndindex(arr.shape):
            out[idx] = fn(arr[idx])
        return out

    def _fix_refs(self) -> None:
        for spath, dpath, name in self._ref_attrs:
            check(self.stop)
            s = self.src[spath]
            d = self.dst[dpath]
            aid = s.attrs.get_id(name)
            val = self.remap(s.attrs[name], aid.dtype)
            if isinstance(val, h5py.Empty):
                d.attrs.create(name, val)
            else:
                d.attrs.create(name, val, shape=aid.shape, dtype=aid.dtype)
        for spath, dpath in self._ref_data:
            check(self.stop)
            s = self.src[spath]
            d = self.dst[dpath]
            if s.shape is None or s.size == 0:
                continue
            if _vlen_base(s.dtype) is not None and s.ndim:
                # h5py's __setitem__ cannot convert vlen sequences of references; the low-level write can
                d.id.write(h5py.h5s.ALL, h5py.h5s.ALL, self.remap(s[...], s.dtype))
                continue
            d[...] = self.remap(s[...], s.dtype)


def _create_file(dst_path: Path, src: h5py.File, **kw) -> h5py.File:
    ub = src.userblock_size
    f = h5py.File(dst_path, "w", userblock_size=ub or None, track_order=_track_order(src) or None, **kw)
    return f


def _copy_userblock(src_path: Path, dst_path: Path, size: int) -> None:
    if not size:
        return
    with open(src_path, "rb") as s, open(dst_path, "r+b") as d:
        d.write(s.read(size))


# --------------------------------------------------------------------------------------------------
# workers (module level: run in worker processes)
# --------------------------------------------------------------------------------------------------

def finite_pair(o: np.ndarray, d: np.ndarray):
    """``(o, d, mismatch, lo, hi)`` for error statistics of decoded ``d`` against original ``o``.

    NaN/inf would turn every statistic into NaN (which ``max()`` then silently drops): samples not
    finite on both sides are set to 0 in both (no error), ``mismatch`` says whether one of them was not
    returned as itself (an infinite error), ``lo``/``hi`` are the finite extremes of ``o`` (inf/-inf
    when it has none)."""
    if o.dtype.kind != "f" or (np.isfinite(o).all() and np.isfinite(d).all()):
        return o, d, False, float(o.min()), float(o.max())
    both = np.isfinite(o) & np.isfinite(d)
    mismatch = bool((~both & (o != d) & ~(np.isnan(o) & np.isnan(d))).any())
    fin_o = o[np.isfinite(o)]
    lo, hi = (float(fin_o.min()), float(fin_o.max())) if fin_o.size else (math.inf, -math.inf)
    return np.where(both, o, 0).astype(o.dtype), np.where(both, d, 0).astype(d.dtype), mismatch, lo, hi


def _native_order(a: np.ndarray) -> np.ndarray:
    """``a`` in native byte order with the same values, bit for bit (NaN payloads included)."""
    return a if a.dtype.isnative else a.byteswap().view(a.dtype.newbyteorder("="))


def _encode_chunk(arr: np.ndarray, mode: str, opts: dict, valid: tuple, sigma) -> tuple[bytes, dict]:
    """Encode one full (padded) chunk as the filter would, decode it again and measure the error on
    the valid (unpadded) region. Runs in a worker process."""
    from . import metrics
    from .models import runtime

    # the decoder's activations must not stay resident next to the encoder's in every worker: its arena is
    # shrunk after each decode. The encoder's is kept: shrinking it too cost ~0.1 s per 64x512x512 learned
    # chunk (its activations re-faulted every time) and lowered no peak (one-thread worker, 5 chunks:
    # 0.55 s/chunk and 980 MB with neither shrunk, 0.67 s and 740 MB with the decoder's, 0.75 s and 720 MB
    # with both)
    enc = chunk.encode(arr, mode, **opts)
    h = chunk.info(enc)
    with runtime.arena_shrink():
        dec = chunk.decode(enc)
    sl = tuple(slice(0, v) for v in valid)
    # a big-endian dataset (arr in file byte order) decodes to native order: compare in one order, bit for bit
    o = _native_order(arr[sl])
    d = _native_order(dec[sl])
    n = int(o.size)
    st = {"n": n, "mode_id": h.mode_id, "model_id": h.model_id, "stored": len(enc), "version": h.version}
    if h.mode_id == modes.MODE_IDS["learned"] and isinstance(h.params.get("q"), int):
        st["quality"] = h.params["q"]  # the level actually coded (the model's default when none was asked)
    lossy = modes.get(h.mode_id).lossy
    if not lossy:  # bit for bit (NaN payloads and -0.0 included), whatever the values
        u = np.dtype(f"u{o.dtype.itemsize}")
        if not np.array_equal(o.view(u), d.view(u)):
            raise RuntimeError(f"necoda {modes.MODE_NAMES[h.mode_id]} chunk did not round-trip exactly: "
                               "refusing to write it")
    o, d, mismatch, lo, hi = finite_pair(o, d)
    es = metrics.error_stats(o, d)
    st["sse"] = math.inf if mismatch else es["rmse"] ** 2 * n
    st["max_abs"] = math.inf if mismatch else es["max_abs"]
    st["lo"] = lo
    st["hi"] = hi
    if sigma is not None and np.ndim(sigma) == 0 and float(sigma) > 0:
        # one noise level (imaging): the noise-unit sum of squares is the sum of squares over sigma^2, so no
        # second pass over the chunk (that pass was 0.13 of 1.18 s per 64x512x512 learned chunk)
        st["noise_sse"] = math.inf if mismatch else st["sse"] / float(sigma) ** 2
    elif sigma is not None:
        nr = metrics.noise_rmse(o, d, sigma)
        st["noise_sse"] = math.inf if mismatch else nr * nr * n
    return enc, st


def _decode_chunk(buf: bytes, filter_mask: int, shape: tuple, dtype: str, gzip_level: int | None) -> bytes:
    """Decode one stored necoda chunk to the raw bytes of the file type (optionally deflated as
    HDF5's gzip filter would). Runs in a worker process."""
    dt = np.dtype(dtype)
    if filter_mask & 1:  # the necoda filter was skipped for this chunk: bytes are raw
        raw = bytes(buf)
    else:
        arr = chunk.decode(buf)
        if tuple(arr.shape) != tuple(shape):
            arr = arr.reshape(shape)
        raw = np.ascontiguousarray(arr, dtype=dt).tobytes()
    if gzip_level is not None:
        return zlib.compress(raw, gzip_level)
    return raw


class _Inline:
    """Executor stand-in that runs tasks immediately in the calling process."""

    def submit(self, fn, *args, **kwargs) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001
            f.set_exception(e)
        return f

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def make_executor(workers: int | None):
    workers = cpus.available() if workers is None else int(workers)
    if workers <= 1:
        return _Inline(), 1
    from .reader import _new_process_pool

    return _new_process_pool(workers), workers


def _progress(total, desc, enabled):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                leave=True, dynamic_ncols=True, file=sys.stderr)


def _chunk_grid(shape, chunks):
    return [range(0, max(s, 0), c) for s, c in zip(shape, chunks)]


# --------------------------------------------------------------------------------------------------
# recompression
# --------------------------------------------------------------------------------------------------

@dataclass
class Settings:
    imaging: str = "lossless"
    ephys: str = "lossless"
    quality: int | None = None
    max_error: float | None = None
    max_error_noise: float | None = None
    level: int | None = None

    def filter_for(self, kind: str) -> Necoda:
        mode = self.imaging if kind == "imaging" else self.ephys
        opts = {}
        if mode == "learned":
            opts = dict(quality=self.quality, max_error=self.max_error, max_error_noise=self.max_error_noise)
        elif mode == "bounded":
            opts = dict(max_error=self.max_error, max_error_noise=self.max_error_noise)
        elif mode == "lossless":
            opts = dict(level=self.level)
        return Necoda(mode=mode, **opts)


@dataclass
class DatasetReport:
    path: str
    kind: str
    shape: tuple
    dtype: str
    chunks: tuple
    provenance: dict = field(default_factory=dict)
    seconds: float = 0.0


def _noise_sigma(src: h5py.Dataset, kind: str, fs: float):
    """Noise level for noise-unit RMSE, estimated on the first part of the data (bounded memory)."""
    from . import metrics

    row_bytes = int(np.prod(src.shape[1:], dtype=np.int64)) * src.dtype.itemsize
    rows = max(2, min(src.shape[0], NOISE_SAMPLE_MAX // max(row_bytes, 1)))
    try:
        if kind == "imaging":
            sample = src[:min(rows, NOISE_FRAMES)]
            if sample.ndim != 3:
                sample = sample.reshape(sample.shape[0], sample.shape[1], -1) if sample.ndim > 3 else None
            if sample is None:
                return None, {"method": "unavailable", "reason": "not a (T, H, W) movie"}
            est = metrics.estimate_noise_imaging(sample)
            sig = float(est["sigma"])
            model = {"method": "metrics.estimate_noise_imaging", "ok": bool(est["ok"]), "gain": est["gain"],
                     "offset": est["offset"], "sigma": sig, "frames": int(sample.shape[0]),
                     "reason": est.get("reason", "")}
            return (sig if sig > 0 else None), model
        rows = min(rows, max(2, int(NOISE_SECONDS * fs)))
        sample = src[:rows]
        if sample.ndim > 2:
            return None, {"method": "unavailable", "reason": "ephys data of rank > 2"}
        sig = metrics.estimate_noise_ephys(sample, fs)
        model = {"method": "metrics.estimate_noise_ephys", "fs": fs, "samples": int(rows),
                 "sigma_median": float(np.median(sig))}
        if sample.ndim == 1:
            sig = float(sig[0])
        return sig, model
    except Exception as e:  # noqa: BLE001 — no estimate is not fatal: noise_rmse becomes NaN
        return None, {"method": "unavailable", "reason": f"{type(e).__name__}: {e}"}


def _with_chunk_cache(src: h5py.Dataset, chunks: tuple, per_chunk: bool) -> h5py.Dataset:
    """Reopen a chunked source whose chunks do not line up with what we read (rows of ``chunks``, or
    single chunks when ``per_chunk``) with a chunk cache big enough for one row of its chunks (at most
    SOURCE_CACHE_MAX), so no source chunk is decompressed twice; aligned or contiguous sources keep
    HDF5's small default cache (memory stays bounded either way)."""
    sc = src.chunks
    if sc is None:
        return src
    aligned = chunks[0] % sc[0] == 0 and (not per_chunk or all(c % s == 0 for c, s in zip(chunks[1:], sc[1:])))
    if aligned:
        return src
    row = int(np.prod([sc[0], *[-(-s // c) * c for s, c in zip(src.shape[1:], sc[1:])]], dtype=np.int64))
    nbytes = int(min(SOURCE_CACHE_MAX, 2 * row * src.dtype.itemsize))
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(100003, nbytes, 1.0)
    return h5py.Dataset(h5py.h5d.open(src.file.id, src.name.encode(), dapl=dapl))


def recompress_dataset(src: h5py.Dataset, dg: h5py.Group, name: str, kind: str, settings: Settings,
                       executor, workers: int, progress: bool = True, source_label: str = "",
                       stop=None) -> DatasetReport:
    from . import __version__

    t0 = time.perf_counter()
    fs = sampling_rate(src.parent) if kind == "ephys" else DEFAULT_FS
    events = _attr_str(src.parent, "neurodata_type") == "SpikeEventSeries"  # rows are events, not samples
    chunks = plan_chunks(kind, src.shape, src.dtype.itemsize, None if events else fs)
    filt = settings.filter_for(kind)
    maxshape = src.maxshape
    fill = src.fillvalue
    dst = dg.create_dataset(name, shape=src.shape, dtype=src.dtype, chunks=chunks, maxshape=maxshape,
                            fillvalue=fill, compression=filt)
    has, sole, cd = necoda_filter_info(dst)
    if not (has and sole):
        raise RuntimeError(f"{dst.name}: the necoda filter is not the dataset's only filter")
    fmode, fopts = options.user_options(cd[:CD_USER_SLOTS])
    fdtype, fshape = options.chunk_layout(cd)
    if tuple(fshape) != tuple(chunks):
        raise RuntimeError(f"{dst.name}: chunk shape in cd_values {fshape} != {chunks}")
    fillv = np.asarray(dst.fillvalue, dtype=fdtype)

    with np.errstate(all="ignore"):
        sigma, noise_model = _noise_sigma(src, kind, fs)
    row_bytes = int(np.prod(src.shape[1:], dtype=np.int64)) * src.dtype.itemsize * chunks[0]
    src = _with_chunk_cache(src, chunks, per_chunk=row_bytes > SLAB_MAX)

    shape = src.shape
    acc = {"n": 0, "sse": 0.0, "max_abs": 0.0, "lo": math.inf, "hi": -math.inf, "noise_sse": 0.0,
           "stored": 0, "modes": {}, "models": set(), "qualities": set(), "version": 1}
    window: deque = deque()
    depth = workers + 1  # chunks in flight: every worker busy, one queued; bounds memory
    raw_bytes = int(np.prod(shape, dtype=np.int64)) * src.dtype.itemsize
    bar = _progress(raw_bytes, src.name, progress)

    def drain(limit):
        while len(window) > limit:
            off, vbytes, fut = window.popleft()
            enc, st = result(fut, stop)
            dst.id.write_direct_chunk(off, enc, filter_mask=0)
            acc["n"] += st["n"]
            acc["sse"] += st["sse"]
            acc["max_abs"] = max(acc["max_abs"], st["max_abs"])
            acc["lo"] = min(acc["lo"], st["lo"])
            acc["hi"] = max(acc["hi"], st["hi"])
            acc["noise_sse"] += st.get("noise_sse", 0.0)
            acc["stored"] += st["stored"]
            acc["version"] = max(acc["version"], st["version"])
            mname = modes.MODE_NAMES.get(st["mode_id"], str(st["mode_id"]))
            acc["modes"][mname] = acc["modes"].get(mname, 0) + 1
            if st["model_id"]:
                acc["models"].add(st["model_id"])
            if "quality" in st:
                acc["qualities"].add(st["quality"])
            bar.update(vbytes)

    grid0 = range(0, shape[0], chunks[0])
    rest = [list(range(0, s, c)) for s, c in zip(shape[1:], chunks[1:])]
    try:
        for t in grid0:
            t1 = min(shape[0], t + chunks[0])
            slab = src[t:t1] if row_bytes <= SLAB_MAX else None
            for offs in itertools.product(*rest):
                check(stop)
                off = (t, *offs)
                sel = tuple(slice(o, min(s, o + c)) for o, s, c in zip(off, shape, chunks))
                if slab is not None:
                    part = slab[(slice(None), *sel[1:])]
                else:
                    part = src[sel]
                valid = part.shape
                if tuple(valid) == tuple(chunks):
                    arr = np.ascontiguousarray(part, dtype=fdtype)
                else:  # edge chunk: the full chunk buffer HDF5 gives a filter, padded with the fill value
                    arr = np.full(chunks, fillv, dtype=fdtype)
                    arr[tuple(slice(0, v) for v in valid)] = part
                fut = executor.submit(_encode_chunk, arr, fmode, fopts, valid, sigma)
                window.append((off, part.nbytes, fut))
                del arr, part
                drain(depth)
            del slab
        drain(0)
    finally:
        bar.close()
        for _, _, fut in window:
            fut.cancel()

    n = max(acc["n"], 1)
    rmse = math.sqrt(acc["sse"] / n)
    rng = acc["hi"] - acc["lo"] if acc["hi"] >= acc["lo"] else math.nan  # NaN: no finite sample
    from . import metrics

    psnr = metrics.psnr_db(rng, rmse)
    noise_rmse = math.sqrt(acc["noise_sse"] / n) if sigma is not None else math.nan
    mode_name = modes.resolve(fmode) if fmode != "auto" else "auto"
    lossy = any(modes.get(m).lossy for m in acc["modes"] if m in modes.MODE_IDS)
    if acc["modes"] and set(acc["modes"]) - {mode_name}:
        log.warning("necoda: %s: chunks stored with modes %s (requested %s)", src.name, acc["modes"], mode_name)
    noise_sigma = None
    if sigma is not None:
        noise_sigma = float(np.median(sigma)) if np.ndim(sigma) else float(sigma)
    prov = {
        "version": __version__,
        "format_version": acc["version"],  # the newest container version among its chunks
        "mode": mode_name,
        "lossy": lossy,
        "model_id": ",".join(sorted(acc["models"])),
        "options": {k: v for k, v in filt.options.items()},
        # learned chunks: the quality level they were coded at (a list if several: chunks of another model)
        "quality": (min(acc["qualities"]) if len(acc["qualities"]) == 1 else sorted(acc["qualities"]))
        if acc["qualities"] else None,
        "chunks": list(chunks),
        "chunk_modes": acc["modes"],
        "raw_bytes": raw_bytes,
        "stored_bytes": acc["stored"],
        "ratio": raw_bytes / acc["stored"] if acc["stored"] else math.nan,
        "max_abs_error": acc["max_abs"],
        "rmse": rmse,
        "psnr_db": psnr,
        "data_range": rng,
        "noise_sigma": noise_sigma,
        "noise_rmse": noise_rmse,
        "noise_model": noise_model,
        "kind": kind,
        "source": f"{source_label}:{src.name}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # the caller writes ``prov`` as attributes after copying the source dataset's own attributes
    return DatasetReport(src.name, kind, tuple(shape), str(src.dtype), tuple(chunks), prov,
                         time.perf_counter() - t0)


def _rewrite_file(src_path, dst_path, overwrite, workers, handler) -> None:
    """What compress and decompress share: check the paths, copy ``src_path`` object by object into a
    temporary file renamed to ``dst_path`` at the end (userblock included), with a worker pool.
    ``handler(sds, dg, name, copier, executor, nworkers) -> bool`` writes a dataset itself (True) or
    leaves it to the plain copy (False).

    From the main thread the copy runs in a helper thread, and the main thread only waits on a bare lock:
    a KeyboardInterrupt raised between a lock's acquire and its ``with`` block leaves the lock held, and
    concurrent.futures takes Python-level locks on every submit (the mutex of its ``queue.Queue`` of work
    ids) and result (each future's condition) that its manager thread needs too, so the cleanup's
    ``executor.shutdown(wait=True)`` waited forever for that thread (and a Ctrl-C while the pool started
    left its workers running). On an interrupt (or SIGTERM/SIGHUP, whose handlers stay in the main
    thread) the helper is told to stop: it raises at its next chunk, future or object, removes the
    temporary, stops the workers, and the interrupt is re-raised; a second Ctrl-C returns at once (a
    temporary left then is removed by the next run). A Ctrl-C after OUT was renamed leaves OUT complete."""
    src_path, dst_path = check_paths(src_path, dst_path, overwrite)

    def run(stop):
        executor, nworkers = make_executor(workers)
        try:
            with atomic_output(dst_path) as tmp:
                with open_input(src_path) as src:
                    ub = src.userblock_size
                    with _create_file(tmp, src) as dst:
                        copier = Copier(src, dst, lambda sds, dg, name: handler(sds, dg, name, copier, executor,
                                                                                nworkers), stop=stop)
                        copier.run()
                _copy_userblock(src_path, tmp, ub)
                check(stop)  # interrupted meanwhile: no OUT
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    with _sigterm_as_exit():  # signal handlers can only be set in the main thread
        off_main_thread(run)


def _resolve_only(src_path, paths) -> set:
    """Object addresses of the series data named by ``paths`` (see :func:`recompress_file`)."""
    with open_input(src_path) as f:
        targets = set()

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and target_kind(obj) is not None:
                targets.add(Copier._key(obj)[1])

        f.visititems(visit)
        keys = set()
        for p in paths:
            try:
                obj = f.get("/" + str(p).strip("/"))
            except (KeyError, OSError):  # e.g. a dangling external link
                obj = None
            if isinstance(obj, h5py.Group) and isinstance(obj.get("data"), h5py.Dataset):
                obj = obj["data"]
            key = Copier._key(obj)[1] if isinstance(obj, h5py.Dataset) and obj.file == f else None
            if key not in targets:
                raise ValueError(f"--only {p}: not the data of a {'/'.join(TARGET_TYPES)} in {src_path}")
            keys.add(key)
    return keys


def recompress_file(src_path, dst_path, settings: Settings | None = None, workers: int | None = None,
                    overwrite: bool = False, progress: bool = True, only: list[str] | None = None) -> list[DatasetReport]:
    """Copy the NWB/HDF5 file ``src_path`` to ``dst_path`` recompressing its neural datasets.

    Returns one :class:`DatasetReport` per recompressed dataset. ``only``: restrict recompression to
    these series (paths of their ``data``, of the series group, or links to either; the leading "/" is
    optional); a path that names no recompressible series data is an error."""
    settings = settings or Settings()
    # validate the settings (and that the modes are available) before touching the disk
    for kind in ("imaging", "ephys"):
        f = settings.filter_for(kind)
        modes.get(f.mode)
    check_paths(src_path, dst_path, overwrite)
    only_keys = None if only is None else _resolve_only(src_path, only)
    reports: list[DatasetReport] = []
    source_name = Path(src_path).name

    def handler(sds, dg, name, copier, executor, nworkers):
        kind = target_kind(sds)
        if kind is None or (only_keys is not None and Copier._key(sds)[1] not in only_keys):
            return False
        rep = recompress_dataset(sds, dg, name, kind, settings, executor, nworkers, progress, source_name,
                                 stop=copier.stop)
        # provenance of an earlier necoda run (e.g. necoda_decompressed_by) does not describe this one: it
        # goes into this one's history (data decoded from a lossy run stays marked as such)
        copier.copy_attrs(sds, dg[name], skip=lambda n: n.startswith(provenance.PREFIX))
        history = provenance.history_of(sds)
        if history:
            rep.provenance["history"] = history
        provenance.write(dg[name], rep.provenance)
        if rep.provenance["lossy"]:
            provenance.append_comment(dg, provenance.comment_text(rep.provenance, sds.name))
        reports.append(rep)
        return True

    _rewrite_file(src_path, dst_path, overwrite, workers, handler)
    return reports


# --------------------------------------------------------------------------------------------------
# decompression
# --------------------------------------------------------------------------------------------------

def _allocated_chunks(dset: h5py.Dataset) -> list[tuple[tuple, int]]:
    """(offset, filter_mask) of every allocated chunk, in file-index order."""
    out = []
    dsid = dset.id
    if hasattr(dsid, "chunk_iter"):
        try:
            dsid.chunk_iter(lambda info: out.append((tuple(info.chunk_offset), info.filter_mask)))
            return out
        except Exception:  # noqa: BLE001 — older HDF5: fall back to probing the grid
            out.clear()
    for off in itertools.product(*_chunk_grid(dset.shape, dset.chunks)):
        info = dsid.get_chunk_info_by_coord(off)
        if info.byte_offset is not None:
            out.append((tuple(off), info.filter_mask))
    return out


def decompress_dataset(src: h5py.Dataset, dg: h5py.Group, name: str, gzip_level: int | None, executor,
                       workers: int, progress: bool = True, stop=None) -> None:
    from . import __version__

    kw = {}
    if gzip_level is not None:
        kw = dict(compression="gzip", compression_opts=gzip_level)
    dst = dg.create_dataset(name, shape=src.shape, dtype=src.dtype, chunks=src.chunks, maxshape=src.maxshape,
                            fillvalue=src.fillvalue, **kw)
    _, sole, _ = necoda_filter_info(src)
    raw_bytes = int(np.prod(src.shape, dtype=np.int64)) * src.dtype.itemsize
    bar = _progress(raw_bytes, src.name, progress)
    chunks = src.chunks
    file_dtype = dst.dtype.str
    try:
        if sole:
            window: deque = deque()
            depth = max(2, 2 * workers)

            def drain(limit):
                while len(window) > limit:
                    off, nb, fut = window.popleft()
                    dst.id.write_direct_chunk(off, result(fut, stop), filter_mask=0)
                    bar.update(nb)

            try:
                for off, mask in _allocated_chunks(src):
                    check(stop)
                    _, buf = src.id.read_direct_chunk(off)
                    nb = int(np.prod([min(c, s - o) for o, s, c in zip(off, src.shape, chunks)])) * src.dtype.itemsize
                    window.append((off, nb, executor.submit(_decode_chunk, buf, mask, chunks, file_dtype,
                                                            gzip_level)))
                    drain(depth)
                drain(0)
            finally:
                for _, _, fut in window:
                    fut.cancel()
        else:  # necoda combined with other filters: let HDF5 run the whole pipeline
            for off in itertools.product(*_chunk_grid(src.shape, chunks)):
                check(stop)
                sel = tuple(slice(o, min(s, o + c)) for o, s, c in zip(off, src.shape, chunks))
                block = src[sel]
                dst[sel] = block
                bar.update(block.nbytes)
    finally:
        bar.close()
    return dst


def decompress_file(src_path, dst_path, gzip_level: int | None = None, workers: int | None = None,
                    overwrite: bool = False, progress: bool = True) -> list[str]:
    """Copy ``src_path`` to ``dst_path`` replacing every necoda-compressed dataset by a plain (or
    gzip-compressed) one with the same chunking, readable by any HDF5 tool. Returns the dataset paths."""
    from . import __version__

    done: list[str] = []

    def handler(sds, dg, name, copier, executor, nworkers):
        has, _, _ = necoda_filter_info(sds)
        if not has:
            return False
        decompress_dataset(sds, dg, name, gzip_level, executor, nworkers, progress, stop=copier.stop)
        copier.copy_attrs(sds, dg[name])
        if provenance.attr_name("mode") in sds.attrs:
            provenance.write(dg[name], {"decompressed_by": f"necoda-filter {__version__}"})
        done.append(sds.name)
        return True

    _rewrite_file(src_path, dst_path, overwrite, workers, handler)
    return done


# --------------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------------

def structure_diff(a_path, b_path, compare_data: bool = True, ignore_attrs=None) -> list[str]:
    """Differences between two HDF5 files: links, objects, attribute types and values (references
    compared by the path of the object they point to), dataset dtypes/shapes and (optionally) values.
    Dataset storage (chunks, filters) is not compared; necoda provenance attributes and the NWB
    ``comments`` of recompressed series are ignored when ``ignore_attrs`` says so (a callable
    ``(path, attr_name) -> bool``). Returns human-readable lines, empty when equivalent."""
    diffs: list[str] = []
    ignore_attrs = ignore_attrs or (lambda path, name: False)

    def norm(f, v):
        if isinstance(v, h5py.Reference):
            return ("ref", f[v].name) if v else ("ref", None)
        if isinstance(v, np.ndarray) and v.dtype.kind == "O":
            return [norm(f, x) for x in v.ravel().tolist()] + [("shape", v.shape)]
        if isinstance(v, np.ndarray) and v.dtype.fields:
            return [tuple(norm(f, x) for x in row) for row in v.ravel().tolist()]
        if isinstance(v, np.ndarray):
            return ("arr", v.dtype.str, v.shape, v.tobytes())
        if isinstance(v, h5py.Empty):
            return ("empty", str(v.dtype))
        return v

    def attrs(fa, fb, oa, ob, path):
        na = set(oa.attrs)
        nb = set(ob.attrs)
        for n in sorted(na ^ nb):
            if not ignore_attrs(path, n):
                diffs.append(f"{path}: attribute {n!r} only in {'first' if n in na else 'second'}")
        for n in sorted(na & nb):
            if ignore_attrs(path, n):
                continue
            ta = oa.attrs.get_id(n).get_type()
            tb = ob.attrs.get_id(n).get_type()
            if not ta.equal(tb):
                diffs.append(f"{path}: attribute {n!r} type differs")
            if oa.attrs.get_id(n).shape != ob.attrs.get_id(n).shape:
                diffs.append(f"{path}: attribute {n!r} shape differs")
            if norm(fa, oa.attrs[n]) != norm(fb, ob.attrs[n]):
                diffs.append(f"{path}: attribute {n!r} value differs")

    with h5py.File(a_path, "r") as fa, h5py.File(b_path, "r") as fb:
        attrs(fa, fb, fa, fb, "/")

        def walk(ga, gb):
            la, lb = set(ga), set(gb)
            for n in sorted(la ^ lb):
                diffs.append(f"{posixpath.join(ga.name, n)}: only in {'first' if n in la else 'second'}")
            for n in sorted(la & lb):
                p = posixpath.join(ga.name, n)
                ka = ga.get(n, getlink=True)
                kb = gb.get(n, getlink=True)
                if type(ka) is not type(kb):
                    diffs.append(f"{p}: link kind differs ({type(ka).__name__} vs {type(kb).__name__})")
                    continue
                if isinstance(ka, h5py.SoftLink):
                    if ka.path != kb.path:
                        diffs.append(f"{p}: soft link target differs")
                    continue
                if isinstance(ka, h5py.ExternalLink):
                    if (ka.filename, ka.path) != (kb.filename, kb.path):
                        diffs.append(f"{p}: external link differs")
                    continue
                oa, ob = ga[n], gb[n]
                if type(oa) is not type(ob):
                    diffs.append(f"{p}: object kind differs")
                    continue
                attrs(fa, fb, oa, ob, p)
                if isinstance(oa, h5py.Group):
                    walk(oa, ob)
                elif isinstance(oa, h5py.Dataset):
                    if not oa.id.get_type().equal(ob.id.get_type()):
                        diffs.append(f"{p}: dtype differs")
                    if oa.shape != ob.shape or oa.maxshape != ob.maxshape:
                        diffs.append(f"{p}: shape/maxshape differs ({oa.shape}/{oa.maxshape} vs {ob.shape}/{ob.maxshape})")
                        continue
                    if compare_data and oa.shape is not None:
                        if oa.dtype.kind in "biuf" and oa.size:
                            rows = max(1, (32 << 20) // max(1, oa.dtype.itemsize * (oa.size // max(oa.shape[0], 1)))) if oa.ndim else 1
                            for i in range(0, oa.shape[0] if oa.ndim else 1, rows):
                                sel = np.s_[i:i + rows] if oa.ndim else ()
                                if not np.array_equal(oa[sel], ob[sel], equal_nan=oa.dtype.kind == "f"):
                                    diffs.append(f"{p}: values differ")
                                    break
                        elif norm(fa, oa[()]) != norm(fb, ob[()]):
                            diffs.append(f"{p}: values differ")
        walk(fa, fb)
    return diffs
