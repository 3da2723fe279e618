"""Recompression of the neural datasets of an NWB file (:func:`recompress_file`).

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
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from .. import modes, options, provenance
from ..filters import Necoda
from ..mainthread import check, result
from .atomic import check_paths, open_input
from .copier import Copier
from .plan import DEFAULT_FS, TARGET_TYPES, _attr_str, necoda_filter_info, plan_chunks, sampling_rate, target_kind
from .rewrite import _rewrite_file
from .workers import _encode_chunk, _progress

log = logging.getLogger("necoda_filter")

SLAB_MAX = 64 << 20          # read a whole row of chunks at once when it is at most this large
SOURCE_CACHE_MAX = 64 << 20  # chunk cache for a source whose chunks straddle our chunk rows
NOISE_SAMPLE_MAX = 32 << 20  # at most this many bytes of data are used to estimate the noise level
NOISE_FRAMES = 256           # imaging: first frames used for the photon-transfer fit
NOISE_SECONDS = 2.0          # ephys: first seconds used for the per-channel noise


@dataclass
class Settings:
    imaging: str = "lossless"
    ephys: str = "lossless"
    quality: int | None = None
    max_error: float | None = None
    max_error_noise: float | None = None
    level: int | None = None
    #: learned imaging: the model (built-in name, content id or package folder); None = the default
    model: str | None = None

    def filter_for(self, kind: str) -> Necoda:
        mode = self.imaging if kind == "imaging" else self.ephys
        opts = {}
        if mode == "learned":
            opts = dict(quality=self.quality, max_error=self.max_error, max_error_noise=self.max_error_noise,
                        model=self.model)
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
    from .. import metrics

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
    from .. import __version__

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
    fmode, fopts = options.user_options(cd)
    fdtype, fshape = options.chunk_layout(cd)
    if fopts.get(options.MODEL_OPTION):
        # the workers get the model's package folder, not only the id the cd_values hold: a worker process
        # that is spawned (not forked) would not know a model given as a folder (off NECODA_MODEL_PATH)
        from ..models import registry

        fopts = {**fopts, options.MODEL_OPTION: str(registry.require_for_writing(fopts[options.MODEL_OPTION]).path)}
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
    from .. import metrics

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
        # the model is recorded as model_id (the ids the chunk headers name)
        "options": {k: v for k, v in filt.options.items() if k != options.MODEL_OPTION},
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
