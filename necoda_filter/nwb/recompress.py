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
from .plan import (DEFAULT_FS, TARGET_TYPES, _attr_str, necoda_filter_info, not_target_reason, plan_chunks,
                   sampling_rate, target_kind)
from .rewrite import _rewrite_file
from .workers import _encode_chunk, _encode_slot, _progress, shared_slots

log = logging.getLogger("necoda_filter")

SLAB_MAX = 64 << 20          # read a whole row of chunks at once when it is at most this large
SOURCE_CACHE_MAX = 64 << 20  # chunk cache for a source whose chunks straddle our chunk rows
NOISE_SAMPLE_MAX = 32 << 20  # at most this many bytes of data are used to estimate the noise level
NOISE_FRAMES = 256           # imaging: first frames used for the photon-transfer fit
NOISE_SECONDS = 2.0          # ephys: first seconds used for the per-channel noise


#: the units of ``max_error`` for each kind of series (messages)
BOUND_UNITS = {"imaging": "counts of the movie",
               "ephys": "the stored sample units: ADC counts for integer data, which NWB's conversion attribute "
                        "turns into volts"}


@dataclass
class Settings:
    imaging: str = "lossless"
    ephys: str = "lossless"
    quality: int | None = None
    #: the bound of every kind that uses one (bounded, and learned's safeguard) unless that kind has its own
    max_error: float | None = None
    max_error_noise: float | None = None
    level: int | None = None
    #: learned imaging: the model (built-in name, content id or package folder); None = the default
    model: str | None = None
    #: per-kind bounds: when either of a kind's two is given, that kind ignores the shared two above
    imaging_max_error: float | None = None
    imaging_max_error_noise: float | None = None
    ephys_max_error: float | None = None
    ephys_max_error_noise: float | None = None

    def mode_of(self, kind: str) -> str:
        return self.imaging if kind == "imaging" else self.ephys

    def own_bounds(self, kind: str) -> tuple:
        """The bounds given for ``kind`` alone: (max_error, max_error_noise)."""
        if kind == "imaging":
            return self.imaging_max_error, self.imaging_max_error_noise
        return self.ephys_max_error, self.ephys_max_error_noise

    def bounds(self, kind: str) -> tuple:
        """(max_error, max_error_noise) that apply to ``kind``: its own when either is given, else the shared."""
        own = self.own_bounds(kind)
        return own if own != (None, None) else (self.max_error, self.max_error_noise)

    def check(self, kinds=None) -> None:
        """Refuse a shared bound that would reach a learned movie although it was (most likely) meant for the
        bounded other kind: one number cannot be a sensible bound in both ephys and imaging units, and a
        learned safeguard of a few raw units costs most of the learned ratio. ``kinds``: the kinds of series
        the file holds (None: assume both); with only one of them the shared bound is unambiguous."""
        shared = self.max_error is not None or self.max_error_noise is not None
        modes_ = {self.imaging, self.ephys}
        if kinds is not None and not {"imaging", "ephys"} <= set(kinds):
            return
        if shared and modes_ == {"learned", "bounded"}:
            learned = "imaging" if self.imaging == "learned" else "ephys"
            bounded = "ephys" if learned == "imaging" else "imaging"
            if self.own_bounds(learned) == (None, None):
                raise ValueError(
                    f"--max-error/--max-error-noise apply to every kind that takes a bound, here also the safeguard "
                    f"of the learned {learned}, where a bound of a few raw units costs most of the learned ratio. "
                    f"Name the kind: --{bounded}-max-error E or --{bounded}-max-error-noise K for the bounded "
                    f"{bounded} (E in {BOUND_UNITS[bounded]}), and add --{learned}-max-error E / "
                    f"--{learned}-max-error-noise K only if the learned {learned} should have a safeguard too "
                    f"(E in {BOUND_UNITS[learned]})")

    def filter_for(self, kind: str, mode: str | None = None) -> Necoda:
        mode = mode or self.mode_of(kind)
        max_error, max_error_noise = self.bounds(kind)
        opts = {}
        if mode == "learned":
            opts = dict(quality=self.quality, max_error=max_error, max_error_noise=max_error_noise,
                        model=self.model)
        elif mode == "bounded":
            opts = dict(max_error=max_error, max_error_noise=max_error_noise)
        elif mode == "lossless":
            opts = dict(level=self.level)
        return Necoda(mode=mode, **opts)

    def choose_mode(self, kind: str, chunks: tuple, dtype, path: str = "") -> tuple[str, str]:
        """(mode, why) for a dataset of ``kind`` with these chunks: the asked mode, except that the learned
        mode (a two-photon/one-photon movie model) is used only for chunks mode "auto" would code with it
        (:func:`necoda_filter.modes.is_imaging_shaped`: T x H x W integer movies) and not for stimuli; the rest
        is coded bounded when a bound applies to ``kind``, else losslessly. ``why`` says why (or "")."""
        mode = self.mode_of(kind)
        if mode != "learned":
            return mode, ""
        dt = np.dtype(dtype)
        if str(path).startswith("/stimulus/"):
            why = "a stimulus (what was presented), not a recording"
        elif modes.is_imaging_shaped(chunks, dt):
            return mode, ""
        elif len(chunks) != 3:
            why = f"{len(chunks)}-D data, not a T x H x W movie"
        elif dt.kind not in "iu":
            why = f"{dt} data, not an integer movie"
        elif chunks[0] < modes.AUTO_LEARNED_MIN_FRAMES:
            why = f"{chunks[0]} frame(s), fewer than {modes.AUTO_LEARNED_MIN_FRAMES}"
        else:
            why = f"frames of {chunks[1]} x {chunks[2]} pixels, under {modes.AUTO_LEARNED_MIN_SIDE} per side"
        if not str(path).startswith("/stimulus/"):
            why += (f"; learned is for T x H x W integer movies, >= {modes.AUTO_LEARNED_MIN_FRAMES} frames, >= "
                    f"{modes.AUTO_LEARNED_MIN_SIDE} px per side, as mode auto")
        fallback = "bounded" if self.bounds(kind) != (None, None) else "lossless"
        return fallback, why


@dataclass
class DatasetReport:
    path: str
    kind: str
    shape: tuple
    dtype: str
    chunks: tuple
    provenance: dict = field(default_factory=dict)
    seconds: float = 0.0
    #: what differs from what was asked, in words (e.g. chunks stored raw, and why)
    notes: list = field(default_factory=list)
    #: why the dataset's mode is not the one asked for its kind ("" when it is)
    mode_reason: str = ""


def _electrode_count(series: h5py.Group) -> int | None:
    """Number of electrodes of a series' ``electrodes`` region (None without one)."""
    region = series.get("electrodes")
    return int(region.shape[0]) if isinstance(region, h5py.Dataset) and region.ndim == 1 else None


def estimate_noise_sigma(src: h5py.Dataset, kind: str, fs: float, events: bool = False):
    """Noise level for noise-unit RMSE, estimated on the first part of the data (bounded memory), over
    its finite samples. ``events``: rows are spike snippets (SpikeEventSeries), whose noise is measured
    along the sample axis (the last), not across events."""
    from .. import metrics

    row_bytes = int(np.prod(src.shape[1:], dtype=np.int64)) * src.dtype.itemsize
    rows = max(2, min(src.shape[0], NOISE_SAMPLE_MAX // max(row_bytes, 1)))
    try:
        if events:
            sample = src[:rows]
            if sample.ndim not in (2, 3):
                return None, {"method": "unavailable", "reason": f"event data of rank {sample.ndim}"}
            layout = "(events, channels, samples)"
            if sample.ndim == 3:  # NWB orders snippets (events, channels, samples); hdmf does not enforce it
                n_ch = _electrode_count(src.parent)
                if n_ch is not None and sample.shape[2] == n_ch != sample.shape[1]:
                    sample = np.swapaxes(sample, 1, 2)  # stored (events, samples, channels)
                    layout = "(events, samples, channels): channels taken from the electrodes region"
            sig_c = metrics.estimate_noise_events(sample)
            sig = float(np.nanmedian(sig_c)) if np.isfinite(sig_c).any() else math.nan
            model = {"method": "metrics.estimate_noise_events", "events": int(sample.shape[0]),
                     "sigma_channels": [float(v) if np.isfinite(v) else None for v in sig_c[:64]], "sigma": sig,
                     "axis": "samples within each event (the baseline at both ends)", "layout": layout}
            return (sig if sig > 0 else None), model
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
        if not np.isfinite(sig).any():
            return None, {"method": "unavailable", "reason": "no finite samples"}
        model = {"method": "metrics.estimate_noise_ephys", "fs": fs, "samples": int(rows),
                 "sigma_median": float(np.nanmedian(sig))}
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
    mode, why = settings.choose_mode(kind, chunks, src.dtype, src.name)
    notes = []
    if why:
        why = f"asked {settings.mode_of(kind)}: {why}"
        log.info("necoda: %s: mode %s (%s)", src.name, mode, why)
    filt = settings.filter_for(kind, mode)
    with np.errstate(all="ignore"):
        sigma, noise_model = estimate_noise_sigma(src, kind, fs, events)
    if events and filt.options.get("max_error_noise") is not None:
        # the bounded mode's noise model measures noise along axis 0 (time), which for event snippets runs
        # across events (waveform variability, several times the noise): the bound is set in raw units here
        # from the noise measured within the snippets
        k = float(filt.options["max_error_noise"])
        if sigma is None:
            raise ValueError(f"{src.name}: --max-error-noise needs the noise of the spike snippets, which could "
                             f"not be estimated ({noise_model.get('reason', '')}): give --ephys-max-error E "
                             f"(raw units) instead")
        e = k * float(sigma)
        if filt.options.get("max_error") is not None:
            e = min(e, float(filt.options["max_error"]))
        if np.dtype(src.dtype).kind in "iu":
            e = float(math.floor(e))
        noise_model = {**noise_model, "max_error_noise": k, "max_error": e}
        filt = Necoda(mode="bounded", max_error=e)
        notes.append(f"max_error_noise={k:g} on spike snippets: max_error={e:g} raw units = {k:g} x the noise sigma "
                     f"{float(sigma):.3g} measured within the snippets")
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

    row_bytes = int(np.prod(src.shape[1:], dtype=np.int64)) * src.dtype.itemsize * chunks[0]
    src = _with_chunk_cache(src, chunks, per_chunk=row_bytes > SLAB_MAX)

    shape = src.shape
    acc = {"n": 0, "sse": 0.0, "max_abs": 0.0, "lo": math.inf, "hi": -math.inf, "noise_sse": 0.0, "noise_n": 0,
           "stored": 0, "modes": {}, "models": set(), "qualities": set(), "version": 1, "inexact": 0,
           "raw_reasons": {}}
    window: deque = deque()
    depth = workers + 1  # chunks in flight: every worker busy, one queued; bounds memory
    raw_bytes = int(np.prod(shape, dtype=np.int64)) * src.dtype.itemsize
    bar = _progress(raw_bytes, src.name, progress)

    def drain(limit):
        while len(window) > limit:
            off, vbytes, fut = window[0]
            enc, st = result(fut, stop)
            window.popleft()  # only now: a stop raised by result() leaves the running chunk in the window
            dst.id.write_direct_chunk(off, enc, filter_mask=0)
            acc["n"] += st["n"]
            acc["sse"] += st["sse"]
            acc["max_abs"] = max(acc["max_abs"], st["max_abs"])
            acc["lo"] = min(acc["lo"], st["lo"])
            acc["hi"] = max(acc["hi"], st["hi"])
            acc["noise_sse"] += st.get("noise_sse", 0.0)
            acc["noise_n"] += st.get("noise_n", 0)
            acc["stored"] += st["stored"]
            acc["version"] = max(acc["version"], st["version"])
            if st.get("exact") is False:
                acc["inexact"] += 1
            if st.get("raw_reason") is not None:
                r = st["raw_reason"] or "see the warning logged above"
                acc["raw_reasons"][r] = acc["raw_reasons"].get(r, 0) + 1
            mname = modes.MODE_NAMES.get(st["mode_id"], str(st["mode_id"]))
            acc["modes"][mname] = acc["modes"].get(mname, 0) + 1
            if st["model_id"]:
                acc["models"].add(st["model_id"])
            if "quality" in st:
                acc["qualities"].add(st["quality"])
            bar.update(vbytes)

    grid0 = range(0, shape[0], chunks[0])
    rest = [list(range(0, s, c)) for s, c in zip(shape[1:], chunks[1:])]
    per_row = math.prod(len(r) for r in rest)
    # worker processes get the chunks through a shared array of depth + 1 chunk slots: chunk i goes to slot
    # i % (depth + 1), whose last user (chunk i - depth - 1) has been drained before chunk i is read
    shared, spec = shared_slots(executor, (depth + 1, *chunks), fdtype, src.name)
    i = 0
    try:
        for t in grid0:
            t1 = min(shape[0], t + chunks[0])
            # a row of several chunks is read at once (one pass over a contiguous source); a row that is
            # one chunk is read straight into the chunk's buffer
            slab = src[t:t1] if row_bytes <= SLAB_MAX and per_row > 1 else None
            for offs in itertools.product(*rest):
                check(stop)
                off = (t, *offs)
                sel = tuple(slice(o, min(s, o + c)) for o, s, c in zip(off, shape, chunks))
                valid = tuple(x.stop - x.start for x in sel)
                arr = shared.arr[i % (depth + 1)] if shared is not None else np.empty(chunks, fdtype)
                inner = tuple(slice(0, v) for v in valid)
                if valid != tuple(chunks):  # edge chunk: the full chunk buffer HDF5 gives a filter, padded
                    arr[...] = fillv        # with the fill value
                if slab is not None:
                    arr[inner] = slab[(slice(None), *sel[1:])]
                else:
                    src.read_direct(arr, source_sel=sel, dest_sel=inner)
                if shared is not None:
                    fut = executor.submit(_encode_slot, spec, i % (depth + 1), fmode, fopts, valid, sigma)
                else:
                    fut = executor.submit(_encode_chunk, arr, fmode, fopts, valid, sigma)
                window.append((off, math.prod(valid) * src.dtype.itemsize, fut))
                del arr
                i += 1
                drain(depth)
            del slab
        drain(0)
    finally:
        bar.close()
        for _, _, fut in window:
            fut.cancel()
        if shared is not None and all(fut.done() for _, _, fut in window):
            shared.discard()  # its space freed now: no worker uses a slot any more
        elif shared is not None:
            shared.close()
        shared = None

    n = max(acc["n"], 1)
    rmse = math.sqrt(acc["sse"] / n)
    rng = acc["hi"] - acc["lo"] if acc["hi"] >= acc["lo"] else math.nan  # NaN: no finite sample
    from .. import metrics

    psnr = metrics.psnr_db(rng, rmse)
    # over the samples of channels with a noise level (all of them, but for flat or missing channels)
    noise_rmse = math.sqrt(acc["noise_sse"] / acc["noise_n"]) if sigma is not None and acc["noise_n"] else math.nan
    mode_name = modes.resolve(fmode) if fmode != "auto" else "auto"
    # lossy = some chunk of a lossy mode did not decode to its original bits: bounded with max_error 0 (or a
    # bound no sample needed) returns integers exactly, and is then recorded and described as lossless
    lossy = acc["inexact"] > 0
    if acc["modes"] and set(acc["modes"]) - {mode_name}:
        log.warning("necoda: %s: chunks stored with modes %s (requested %s)", src.name, acc["modes"], mode_name)
    noise_sigma = None
    if sigma is not None:
        noise_sigma = float(np.nanmedian(sigma)) if np.ndim(sigma) else float(sigma)
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
    if acc["raw_reasons"]:
        notes.append("chunks stored raw: " + "; ".join(f"{n} x {r}" for r, n in acc["raw_reasons"].items()))
    if not lossy and mode_name in modes.MODE_IDS and modes.get(mode_name).lossy:
        notes.append(f"mode {mode_name} returned every sample exactly (measured): recorded as lossless")
    for n_ in notes:
        log.info("necoda: %s: %s", src.name, n_)
    return DatasetReport(src.name, kind, tuple(shape), str(src.dtype), tuple(chunks), prov,
                         time.perf_counter() - t0, notes, why)


def _target_kinds(src_path, only_keys=None) -> set:
    """The kinds ("imaging", "ephys") of the series data of ``src_path`` that would be recompressed."""
    kinds = set()
    with open_input(src_path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                kind = target_kind(obj)
                if kind is not None and (only_keys is None or Copier._key(obj)[1] in only_keys):
                    kinds.add(kind)

        f.visititems(visit)
    return kinds


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
                why = not_target_reason(obj) if isinstance(obj, h5py.Dataset) else None
                raise ValueError(f"--only {p}: {why} in {src_path}" if why else
                                 f"--only {p}: not the data of a {'/'.join(TARGET_TYPES)} in {src_path}")
            keys.add(key)
    return keys


def recompress_file(src_path, dst_path, settings: Settings | None = None, workers: int | None = None,
                    overwrite: bool = False, progress: bool = True, only: list[str] | None = None,
                    skipped: list[str] | None = None) -> list[DatasetReport]:
    """Copy the NWB/HDF5 file ``src_path`` to ``dst_path`` recompressing its neural datasets.

    Returns one :class:`DatasetReport` per recompressed dataset. ``only``: restrict recompression to
    these series (paths of their ``data``, of the series group, or links to either; the leading "/" is
    optional); a path that names no recompressible series data is an error. ``skipped``: a list that
    receives why each series' data the filter cannot code (enum, bool, compound ...) was copied as it was
    (:func:`not_target_reason`)."""
    settings = settings or Settings()
    # validate the settings (and that the modes are available) before touching the disk
    for kind in ("imaging", "ephys"):
        f = settings.filter_for(kind)
        modes.get(f.mode)
    check_paths(src_path, dst_path, overwrite)
    only_keys = None if only is None else _resolve_only(src_path, only)
    settings.check(_target_kinds(src_path, only_keys))
    reports: list[DatasetReport] = []
    source_name = Path(src_path).name

    def handler(sds, dg, name, copier, executor, nworkers):
        kind = target_kind(sds)
        if kind is None and skipped is not None:
            why = not_target_reason(sds)
            if why:
                skipped.append(why)
        if kind is None or (only_keys is not None and Copier._key(sds)[1] not in only_keys):
            return False
        rep = recompress_dataset(sds, dg, name, kind, settings, executor, nworkers, progress, source_name,
                                 stop=copier.stop)
        # provenance of an earlier necoda run (e.g. necoda_decompressed_by) does not describe this one: it
        # goes into this one's history (data decoded from a lossy run stays marked as such)
        copier.copy_attrs(sds, dg[name], skip=lambda n: n.startswith(provenance.PREFIX))
        history = provenance.history_of(sds)
        written = None if history else provenance.filter_written(sds)  # coded through the filter
        if written:
            history = [written]
        if history:
            rep.provenance["history"] = history
        provenance.write(dg[name], rep.provenance)
        if rep.provenance["lossy"]:
            provenance.append_comment(dg, provenance.comment_text(rep.provenance, sds.name))
        elif written and written["lossy"]:
            provenance.append_comment(dg, provenance.filter_comment(
                written, sds.name, f"recompressed losslessly by necoda-filter {rep.provenance.get('version', '?')}"))
        reports.append(rep)
        return True

    _rewrite_file(src_path, dst_path, overwrite, workers, handler)
    return reports
