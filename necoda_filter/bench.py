"""``necoda bench``: necoda's modes and the codecs a user would pick instead, on the same data, in one run.

One row per codec and setting:

- ``ratio`` = raw bytes / compressed bytes, every byte a reader needs included (chunk headers,
  container, stored offsets/scales; see :mod:`necoda_filter.anchors` for the framing);
- ``encode_mbps`` / ``decode_mbps`` = MB (1e6 bytes) of *raw* data per second of wall time, one
  run after a small warm-up; ``threads`` = the thread count we asked the library for (1 wherever it
  lets us choose) and ``cpu_per_wall`` = process CPU time / wall time measured during encode (about
  the number of busy cores; on a shared machine speeds vary from run to run);
- ``max_abs``, ``rmse``, ``psnr`` (dB over the range max - min of the original data) from
  :func:`metrics.error_stats`, and ``rmse_noise`` = RMSE in noise units (:func:`metrics.noise_rmse`;
  sigma from the photon-transfer fit for imaging, per-channel MAD of the 300–6000 Hz band for ephys);
- imaging: ``roi_r_median`` / ``roi_r_p05`` — Pearson r between ROI mean traces of the original and
  the decoded movie (ROIs: ground-truth footprints when known, else :func:`metrics.detect_rois` on the
  original, computed once); with ground truth also ``true_r_median`` (decoded ROI traces vs the true
  traces) and ``rmse_clean`` / ``psnr_clean`` (error against the noise-free movie); a reference row
  ``raw data`` holds the uncompressed data's own values;
- ephys: ``spike_f1`` and ``waveform_r_median`` from :func:`metrics.ephys_fidelity` (threshold 5 sigma
  detection on the original's band-passed signal, the same absolute thresholds on the decoded one).

Data: T x H x W is imaging, T x C (channels last) is ephys. Everything is chunked along time the way
necoda chunks it (imaging 64 frames x full frame; ephys ~1 s x all channels), for every codec.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import anchors as _anchors
from .anchors import EPHYS, IMAGING, Skipped

log = logging.getLogger("necoda_filter.bench")

DEFAULT_IMAGING_CHUNK = 64


# ------------------------------------------------------------------------------------------ data

@dataclass
class BenchData:
    """What the harness runs on. ``truth`` (simulations only) holds ``clean`` and, for imaging,
    ``footprints`` and ``traces``."""

    array: np.ndarray
    kind: str
    name: str
    source: str
    fs: float
    truth: dict | None = None
    info: dict = field(default_factory=dict)


def _parse_sim(spec: str):
    parts = spec.split(":", 2)
    if len(parts) < 2 or parts[1] not in (IMAGING, EPHYS):
        raise ValueError(f"simulation spec must be sim:imaging[:k=v,...] or sim:ephys[:k=v,...], got {spec!r}")
    kw = {}
    if len(parts) == 3 and parts[2]:
        for item in parts[2].split(","):
            if "=" not in item:
                raise ValueError(f"bad simulation parameter {item!r} (expected k=v)")
            k, v = item.split("=", 1)
            kw[k.strip()] = _literal(v.strip())
    return parts[1], kw


def _check_sim_params(fn, kw: dict, spec: str) -> None:
    """Each ``k=v`` of a ``sim:`` spec names a parameter of the simulator ``fn``, and a number where its
    default is a number: an error names the parameter and the value (``n_frames=abc`` gave only
    "invalid literal for int() with base 10: 'abc'")."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # takes anything: the simulator checks its parameters itself
    for k, v in kw.items():
        if k not in params:
            known = ", ".join(n for n, p in params.items() if p.default is not inspect.Parameter.empty)
            raise ValueError(f"bad simulation parameter {k!r} in {spec!r}: {fn.__name__} has no such parameter "
                             f"(it takes {known})")
        default = params[k].default
        if v is None and "None" in str(params[k].annotation):
            continue
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"bad simulation parameter {k}={v!r} in {spec!r}: expected a number "
                                 f"(default {default!r})")
            if isinstance(default, int) and isinstance(v, float) and not v.is_integer():
                raise ValueError(f"bad simulation parameter {k}={v!r} in {spec!r}: expected a whole number "
                                 f"(default {default!r})")
            if isinstance(default, int):
                kw[k] = int(v)  # n_frames=300.0


def _literal(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def _split_h5(spec: str):
    """'file.nwb:/acquisition/X/data' -> (path, dataset) when the part before ':' is a file."""
    i = spec.rfind(":")
    while i > 0:
        head, tail = spec[:i], spec[i + 1:]
        if os.path.isfile(head) and tail:
            return head, tail
        i = spec.rfind(":", 0, i)
    return None


#: .npz arrays ``load_data`` picks without --key: ``necoda simulate imaging`` writes ``movie``, ``necoda
#: simulate ephys`` writes ``data`` (next to ground-truth arrays)
NPZ_RECORDING_KEYS = ("movie", "data")


def _npz_key(keys):
    """The array to bench when no --key is given: the one known recording key present, else the only array."""
    known = [k for k in NPZ_RECORDING_KEYS if k in keys]
    if len(known) == 1:
        return known[0]
    return keys[0] if len(keys) == 1 else None


def hdf5_candidates(f, under="/", limit=5):
    """Datasets of an open HDF5 file worth benching, best first: the ``data`` of NWB series (a group whose
    ``neurodata_type`` ends in ``Series``), then every other dataset with 2 or more dimensions; each
    ``(path, shape, dtype)``, larger first within each kind. Returns (up to ``limit`` of them, the total)."""
    import h5py

    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2:
            nt = obj.parent.attrs.get("neurodata_type", "")
            nt = nt.decode() if isinstance(nt, bytes) else str(nt)
            series = name.rsplit("/", 1)[-1] == "data" and nt.endswith("Series")
            found.append((not series, -obj.size, "/" + name.lstrip("/"), obj.shape, obj.dtype))

    root = f[under] if under in f and isinstance(f[under], h5py.Group) else f
    prefix = root.name.rstrip("/")
    root.visititems(lambda name, obj: visit(f"{prefix}/{name}", obj))
    found.sort(key=lambda t: t[:3])
    return [(p, shape, dt) for _, _, p, shape, dt in found[:limit]], len(found)


def _hdf5_hint(f, path, near=None):
    """'e.g. FILE:/acquisition/X/data; datasets with 2 or more dimensions: ...' for an error message."""
    under = near.name if near is not None and hasattr(near, "visititems") else "/"
    cands, total = hdf5_candidates(f, under)
    if not cands and under != "/":
        cands, total = hdf5_candidates(f)
    if not cands:
        return ("it holds no dataset with 2 or more dimensions (an NWB movie is e.g. "
                "/acquisition/TwoPhotonSeries/data)")
    listed = ", ".join(f"{p} ({'×'.join(map(str, shape))} {dt})" for p, shape, dt in cands)
    more = f", and {total - len(cands)} more" if total > len(cands) else ""
    return f"e.g. {path}:{cands[0][0]}; datasets with 2 or more dimensions: {listed}{more}"


def load_data(spec: str, *, key=None, dtype=None, channels=None, fs=None, max_frames=None) -> BenchData:
    """Load DATA for the bench (see module docstring and ``necoda bench --help``)."""
    truth = None
    info: dict = {}
    if spec.startswith("sim:"):
        from . import simulate
        kind, kw = _parse_sim(spec)
        _check_sim_params(simulate.simulate_imaging if kind == IMAGING else simulate.simulate_ephys, kw, spec)
        if kind == IMAGING:
            sim = simulate.simulate_imaging(**kw)
            arr = sim.movie
            truth = {"clean": sim.clean, "footprints": sim.footprints, "traces": sim.traces}
            rate = float(sim.params.get("fps", kw.get("fps", 30.0)))
        else:
            sim = simulate.simulate_ephys(**kw)
            arr = sim.data
            truth = {"clean": sim.clean, "spike_times": sim.spike_times}
            rate = float(sim.fs)
        name = "sim-" + kind + ("-" + "-".join(f"{k}{v}" for k, v in kw.items()) if kw else "")
        info["sim_params"] = {k: v for k, v in sim.params.items()
                              if isinstance(v, (int, float, str, bool, type(None)))}
        fs = fs or rate
        source = spec
    else:
        h5 = _split_h5(spec)
        path = Path(h5[0] if h5 else spec)
        if path.is_dir():  # not raw binary: say what it is
            if any((path / m).is_file() for m in ("zarr.json", ".zarray", ".zgroup")):
                raise IsADirectoryError(f"{path} is a zarr store: bench reads .npy, .npz, .tif, raw binary and "
                                        "HDF5/NWB datasets (file.nwb:/path/to/dataset); zarr stores are not supported")
            raise IsADirectoryError(f"{path} is a folder: DATA is a file (.npy, .npz, .tif, raw binary), an HDF5/NWB "
                                    "dataset file.nwb:/path/to/dataset, or sim:imaging|sim:ephys")
        if not path.exists():
            raise FileNotFoundError(f"no such file: {path}")
        suffix = path.suffix.lower()
        name = path.stem
        source = spec
        if h5:
            import h5py
            if not h5py.is_hdf5(path):
                raise ValueError(f"{path} is not an HDF5 file: 'FILE:/path/to/dataset' names a dataset in an "
                                 "HDF5/NWB file")
            from .nwb.atomic import open_input  # a file a writer holds locked gets compress's hint

            with open_input(path) as f:
                ds = f.get(h5[1])
                if not isinstance(ds, h5py.Dataset):
                    what = (f"{path}: {h5[1]} is a group, not a dataset" if isinstance(ds, h5py.Group)
                            else f"{path} has no dataset {h5[1]}")
                    raise ValueError(f"{what}; " + _hdf5_hint(f, path, ds))
                from .reader import read  # a necoda dataset decodes in Python: errors say why (e.g. the model)

                arr = read(ds, np.s_[: max_frames] if max_frames else ())
                parent = ds.parent
                if fs is None:
                    if "starting_time" in parent and "rate" in parent["starting_time"].attrs:
                        fs = float(parent["starting_time"].attrs["rate"])
                    elif "rate" in parent.attrs:
                        fs = float(parent.attrs["rate"])
            name = f"{path.stem}-{h5[1].strip('/').replace('/', '-')}"
        elif suffix == ".npy":
            arr = np.load(path, mmap_mode="r")
        elif suffix == ".npz":
            with np.load(path) as z:
                keys = list(z.keys())
                if key is not None and key not in keys:
                    raise ValueError(f"{path.name} has no array named {key}; it holds {', '.join(keys) or 'none'}")
                k = key or _npz_key(keys)
                if k is None:
                    raise ValueError(f"{path.name} holds the arrays {', '.join(keys) or '(none)'}: choose one with "
                                     "--key")
                arr = z[k]
        elif suffix in (".tif", ".tiff"):
            import tifffile
            arr = tifffile.imread(path)
        else:
            import h5py
            if h5py.is_hdf5(path):  # an NWB/HDF5 file without ':/path/to/dataset' is no raw binary
                from .nwb.atomic import open_input

                with open_input(path) as f:
                    raise ValueError(f"{path} is an HDF5 file: name the dataset to bench as "
                                     f"{path}:/path/to/dataset, " + _hdf5_hint(f, path))
            if dtype is None or channels is None:
                raise ValueError(f"{path.name}: raw binary needs --dtype and --channels "
                                 "(or use .npy/.npz/.tif/file.nwb:/path/to/dataset)")
            dt = np.dtype(dtype)
            n = path.stat().st_size // dt.itemsize
            if n % int(channels):
                raise ValueError(f"{path.name}: {n} samples of {dt} do not divide into {channels} channels")
            arr = np.memmap(path, dt, "r").reshape(-1, int(channels))
    arr = np.asarray(arr)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim not in (2, 3):
        raise ValueError(f"data of shape {arr.shape}: expected T x H x W (imaging) or T x C (ephys)")
    if max_frames:
        arr = arr[:int(max_frames)]
        if truth is not None:
            truth = {k: (v[:int(max_frames)] if k == "clean" else v[:, :int(max_frames)] if k == "traces" else v)
                     for k, v in truth.items()}
    arr = np.ascontiguousarray(arr)
    kind = IMAGING if arr.ndim == 3 else EPHYS
    if kind == EPHYS and arr.shape[0] < arr.shape[1]:
        log.warning("ephys data %s has fewer samples than channels: expected time x channels", arr.shape)
    if fs is None:
        fs = 30.0 if kind == IMAGING else 30000.0
        info["fs_assumed"] = True
        log.warning("no sampling rate given (--fs); assuming %g %s", fs, "frames/s" if kind == IMAGING else "Hz")
    return BenchData(arr, kind, name, source, float(fs), truth, info)


# ------------------------------------------------------------------------------------------ run

def _versions():
    out = {"python": platform.python_version(), "numpy": np.__version__}
    import importlib.metadata as md
    for dist in ("numcodecs", "pcodec", "imagecodecs", "av", "pysz", "flac-numcodecs", "mtscomp",
                 "anscombe-transform", "tifffile", "h5py", "matplotlib"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        import av
        out["ffmpeg"] = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    except Exception:  # noqa: BLE001
        pass
    return out


class _LogCollector(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def json_safe(v, nonfinite=None):
    """JSON-safe copy: numpy scalars and arrays -> Python; NaN/inf (JSON has neither) -> ``nonfinite``,
    or their names ("nan", "inf", "-inf") when ``nonfinite == "name"``."""
    if isinstance(v, dict):
        return {k: json_safe(x, nonfinite) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x, nonfinite) for x in v]
    if isinstance(v, (np.floating, float)):
        v = float(v)
        if math.isfinite(v):
            return v
        return str(v) if nonfinite == "name" else nonfinite
    if isinstance(v, np.ndarray):
        return json_safe(v.tolist(), nonfinite)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _clean(v):
    """JSON-safe, NaN/inf -> None."""
    return json_safe(v)


def _short_label(row):
    s = row.get("settings") or {}
    fam = row["family"]
    if "k_sigma" in s and s["k_sigma"]:
        return f"{s['k_sigma']:g}σ"
    if "max_error_noise" in s:
        return f"{s['max_error_noise']:g}σn"
    if "max_error" in s:
        return f"±{s['max_error']:g}"
    if "quality" in s:
        return f"q{s['quality']}"
    if "crf" in s:
        return f"crf{s['crf']}"
    if fam in ("zstd",):
        return str(s.get("level", ""))
    return ""


def noise_estimate(data: BenchData) -> dict:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _noise_estimate(data)


def _noise_estimate(data: BenchData) -> dict:
    from . import metrics
    if data.kind == IMAGING:
        n = metrics.estimate_noise_imaging(data.array)
        return {"sigma": float(n["sigma"]), "gain": float(n["gain"]), "offset": float(n["offset"]),
                "ok": bool(n["ok"]), "reason": n.get("reason", ""), "method": "photon-transfer fit"
                if n["ok"] else "MAD of frame differences (photon-transfer fit not trusted)"}
    sig = np.asarray(metrics.estimate_noise_ephys(data.array, data.fs), np.float64)
    return {"sigma": float(np.median(sig)), "sigma_per_channel": sig, "ok": bool(np.all(sig > 0)),
            "method": "MAD of 300-6000 Hz band, per channel (sigma = median over channels)"}


def run_bench(data: BenchData, codecs="all", *, chunk=None, out_dir=None, progress=True, plots=True,
              warmup=True, anchors=None) -> dict:
    """Run every selected codec on ``data``; return (and with ``out_dir`` write) the results dict.

    ``anchors``: run these objects (anything with name, family, lossy, encode, decode; or
    :class:`anchors.Skipped`) instead of the built-in selection — e.g. to bench your own codec."""
    from . import metrics
    t_start = time.perf_counter()
    arr = data.array
    kind = data.kind
    if chunk is None:
        chunk = DEFAULT_IMAGING_CHUNK if kind == IMAGING else max(1, int(round(data.fs)))
    chunk = int(min(chunk, arr.shape[0]))
    families, necoda_modes = parse_codecs(codecs)
    noise = noise_estimate(data)
    if anchors is not None:
        items = list(anchors)
    else:
        items = _anchors.build_anchors(kind, chunk, families=families, noise=noise, fs=data.fs, fps=data.fs,
                                       dtype=arr.dtype)
    if necoda_modes is not None and anchors is None:
        items = [a for a in items if not a.family.startswith("necoda-") or a.family[7:] in necoda_modes]
    data_range = float(arr.max()) - float(arr.min())
    sigma_for_rmse = noise.get("sigma_per_channel", noise["sigma"])
    truth = data.truth or {}

    # fidelity context computed once
    masks = None
    roi_source = None
    if kind == IMAGING:
        if "footprints" in truth:
            roi_source = "ground-truth footprints (> 0.3 of max)"
        else:
            masks = metrics.detect_rois(arr, max_rois=50)
            roi_source = f"metrics.detect_rois on the original ({masks.shape[0]} ROIs)"

    identical: dict = {}

    def fidelity(dec):
        # A bit-identical decode scores exactly what the original scores against itself: compute that
        # once and reuse it (the spike-band metrics filter the whole recording, twice, per call).
        same = dec is arr or np.array_equal(dec, arr)
        if same and identical:
            return dict(identical)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            row = _fidelity(dec)
        if same:
            identical.update(row)
        return row

    def _fidelity(dec):
        row = {}
        e = metrics.error_stats(arr, dec, data_range=data_range)
        row.update(max_abs=e["max_abs"], rmse=e["rmse"], psnr=e["psnr"])
        row["rmse_noise"] = metrics.noise_rmse(arr, dec, sigma_for_rmse)
        if "clean" in truth:
            ec = metrics.error_stats(truth["clean"], dec, data_range=data_range)
            row.update(rmse_clean=ec["rmse"], psnr_clean=ec["psnr"])
        if kind == IMAGING:
            f = metrics.imaging_fidelity(arr, dec, masks=masks, true_traces=truth.get("traces"),
                                         footprints=truth.get("footprints"))
            row.update(roi_r_median=f["roi_r_median"], roi_r_p05=f["roi_r_p05"], n_rois=f["n_rois"])
            if "traces" in truth:
                row.update(true_r_median=f.get("true_r_median_dec"), true_r_p05=f.get("true_r_p05_dec"),
                           true_r_median_orig=f.get("true_r_median_orig"))
        else:
            f = metrics.ephys_fidelity(arr, dec, data.fs)
            row.update(spike_f1=f["spike_f1"], waveform_r_median=f["waveform_r_median"],
                       n_spikes=f["n_spikes"], n_spikes_dec=f.get("n_spikes_dec"))
        return row

    rows = []
    if truth:
        ref = {"name": "raw data (reference)", "family": "reference", "settings": {}, "lossy": False,
               "status": "reference", "ratio": 1.0, "compressed_bytes": int(arr.nbytes)}
        ref.update(fidelity(arr))
        rows.append(ref)

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=len(items), desc="necoda bench", unit="codec", disable=not progress, file=sys.stderr,
               dynamic_ncols=True) if tqdm else None
    raw_mb = arr.nbytes / 1e6
    nlog = logging.getLogger("necoda_filter")
    for a in items:
        if bar is not None:
            bar.set_postfix_str(a.name, refresh=True)
        base = {"name": a.name, "family": a.family, "settings": dict(getattr(a, "settings", {}) or {}),
                "lossy": bool(getattr(a, "lossy", False))}
        if isinstance(a, Skipped):
            rows.append({**base, "status": "skipped", "reason": a.reason})
            if bar is not None:
                bar.update(1)
            continue
        coll = _LogCollector()
        nlog.addHandler(coll)
        propagate, nlog.propagate = nlog.propagate, False  # collected into the row's notes instead
        try:
            if warmup:
                w = arr[:min(chunk, 8 if kind == IMAGING else arr.shape[0])]
                a.decode(a.encode(w))
                if hasattr(a, "fallback_chunks"):
                    a.fallback_chunks = a.n_chunks = 0
            c0, t0 = time.process_time(), time.perf_counter()
            buf = a.encode(arr)
            t_enc, c_enc = time.perf_counter() - t0, time.process_time() - c0
            c0, t0 = time.process_time(), time.perf_counter()
            dec = a.decode(buf)
            t_dec, c_dec = time.perf_counter() - t0, time.process_time() - c0
            dec = np.asarray(dec)
            if dec.shape != arr.shape or dec.dtype != arr.dtype:
                raise ValueError(f"decoded to {dec.shape} {dec.dtype}, expected {arr.shape} {arr.dtype}")
            row = {**base, "status": "ok", "ratio": arr.nbytes / len(buf), "compressed_bytes": len(buf),
                   "encode_mbps": raw_mb / max(t_enc, 1e-9), "decode_mbps": raw_mb / max(t_dec, 1e-9),
                   "encode_s": t_enc, "decode_s": t_dec, "threads": int(getattr(a, "threads", 1)),
                   "cpu_per_wall": c_enc / max(t_enc, 1e-9), "cpu_per_wall_decode": c_dec / max(t_dec, 1e-9)}
            row.update(fidelity(dec))
            notes = []
            if getattr(a, "fallback_chunks", 0):
                why = coll.messages[-1] if coll.messages else ""
                m = re.search(r"chunk \((.*)\); stored raw", why)
                why = m.group(1) if m else why
                notes.append(f"{a.fallback_chunks}/{a.n_chunks} chunks stored raw" + (f" ({why})" if why else ""))
                if a.fallback_chunks == a.n_chunks:
                    row["status"] = "fallback"
            if not row["lossy"] and row["max_abs"] != 0:
                notes.append("NOT LOSSLESS: max_abs > 0")
            if notes:
                row["notes"] = "; ".join(notes)
        except ImportError as e:
            row = {**base, "status": "skipped", "reason": f"{type(e).__name__}: {e}"}
        except Exception as e:  # noqa: BLE001 — one failing codec must not end the run
            log.debug("codec %s failed", a.name, exc_info=True)
            row = {**base, "status": "error", "reason": f"{type(e).__name__}: {e}"}
        finally:
            nlog.removeHandler(coll)
            nlog.propagate = propagate
        row["label"] = _short_label(row)
        rows.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    rows = _order_rows(rows)
    results = {
        "data": {"name": data.name, "source": data.source, "kind": kind, "shape": list(arr.shape),
                 "dtype": str(arr.dtype), "raw_bytes": int(arr.nbytes), "fs": data.fs,
                 "chunk": [chunk, *arr.shape[1:]], "data_range": data_range,
                 "ground_truth": bool(truth), "roi_source": roi_source, **data.info},
        "noise": {k: v for k, v in noise.items()},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "versions": _versions(),
        "elapsed_s": time.perf_counter() - t_start,
        "rows": rows,
    }
    results = _clean(results)
    if out_dir is not None:
        write_outputs(results, out_dir, plots=plots)
    return results


def parse_codecs(codecs):
    """'all' | 'zstd,necoda' | ['zstd', 'necoda-lossless'] -> (families or None, necoda modes or None)."""
    if codecs is None or codecs == "all" or codecs == ["all"]:
        return None, None
    toks = [t.strip() for t in (codecs.split(",") if isinstance(codecs, str) else codecs) if t.strip()]
    if "all" in toks:
        return None, None
    fams, modes = [], set()
    whole_necoda = False
    for t in toks:
        if t.startswith("necoda-"):
            modes.add(t[7:])
            t = "necoda"
        elif t == "necoda":
            whole_necoda = True
        if t not in fams:
            fams.append(t)
    return fams, (None if whole_necoda or not modes else modes)


def _order_rows(rows):
    """Reference first; lossless rows by decreasing ratio; then lossy rows family by family (in
    :data:`anchors.FAMILIES` order, necoda first) by decreasing ratio; skipped/error rows last."""
    def fam_index(f):
        base = "necoda" if f.startswith("necoda") else f
        return _anchors.FAMILIES.index(base) if base in _anchors.FAMILIES else 99

    ref = [r for r in rows if r["status"] == "reference"]
    done = [r for r in rows if r["status"] == "ok"]
    rest = [r for r in rows if r["status"] not in ("ok", "reference")]
    lossless = sorted((r for r in done if not r["lossy"]), key=lambda r: -r["ratio"])
    lossy = sorted((r for r in done if r["lossy"]), key=lambda r: (fam_index(r["family"]), r["family"], -r["ratio"]))
    return ref + lossless + lossy + rest


# ------------------------------------------------------------------------------------------ output

def _f(v, fmt):
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    try:
        return format(v, fmt)
    except (TypeError, ValueError):
        return str(v)


def _r(v):
    """Correlations: 4 decimals, but show how far from 1 when very close."""
    if v is None:
        return "—"
    if v >= 0.99995 and v < 1:
        return f"{v:.6f}"
    return f"{v:.4f}"


def format_table(results: dict) -> str:
    """Markdown table of a results dict (one row per codec/setting)."""
    kind = results["data"]["kind"]
    gt = results["data"].get("ground_truth")
    cols = ["codec", "ratio", "enc MB/s", "dec MB/s", "thr", "max abs", "RMSE", "PSNR dB", "RMSE/σ"]
    if kind == IMAGING:
        cols += ["ROI r med", "ROI r p5"]
        if gt:
            cols += ["r vs truth", "RMSE vs clean"]
    else:
        cols += ["spike F1", "wave r"]
        if gt:
            cols += ["RMSE vs clean"]
    cols += ["notes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in results["rows"]:
        if r["status"] in ("skipped", "error"):
            cells = [r["name"]] + ["—"] * (len(cols) - 2) + [f"{r['status']}: {r.get('reason', '')}"]
            lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
            continue
        ref = r["status"] == "reference"
        cells = [r["name"] + ("" if r["lossy"] or ref else " (lossless)"),
                 _f(r.get("ratio"), ".2f"),
                 "—" if ref else _f(r.get("encode_mbps"), ".1f"),
                 "—" if ref else _f(r.get("decode_mbps"), ".1f"),
                 "—" if ref else f"{r.get('threads', 1)} ({r.get('cpu_per_wall', 0):.1f})",
                 _f(r.get("max_abs"), ".4g"), _f(r.get("rmse"), ".4g"), _f(r.get("psnr"), ".2f"),
                 _f(r.get("rmse_noise"), ".3f")]
        if kind == IMAGING:
            cells += [_r(r.get("roi_r_median")), _r(r.get("roi_r_p05"))]
            if gt:
                cells += [_r(r.get("true_r_median")), _f(r.get("rmse_clean"), ".4g")]
        else:
            cells += [_f(r.get("spike_f1"), ".4f"), _r(r.get("waveform_r_median"))]
            if gt:
                cells += [_f(r.get("rmse_clean"), ".4g")]
        cells.append(("FALLBACK (not the requested mode): " if r["status"] == "fallback" else "") + r.get("notes", ""))
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    return "\n".join(lines)


def _md(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def describe(results: dict) -> str:
    """A short paragraph describing the data, noise estimate and conventions of a results dict."""
    d, n = results["data"], results["noise"]
    lines = [f"**{d['name']}** — `{d['source']}`: {d['kind']}, {'×'.join(map(str, d['shape']))} {d['dtype']} "
             f"({d['raw_bytes'] / 1e6:.1f} MB), {'frame rate' if d['kind'] == IMAGING else 'fs'} {d['fs']:g}, "
             f"chunks {'×'.join(map(str, d['chunk']))}."]
    nd = f"Noise σ = {n['sigma']:.4g} ({n.get('method', '')})"
    if d["kind"] == IMAGING and n.get("gain") is not None:
        nd += f"; photon-transfer fit gain {n['gain']:.4g} units/photon, zero level {n['offset']:.4g}"
        if not n.get("ok"):
            nd += f" (not trusted: {n.get('reason', '')})"
    lines.append(nd + ".")
    if d["kind"] == IMAGING:
        lines.append(f"ROIs: {d.get('roi_source')}.")
    lines.append(f"Machine: {results['machine']['cpu_count']} CPUs ({results['machine']['processor']}); "
                 f"thr = threads requested (measured CPU/wall during encode); run took "
                 f"{results['elapsed_s']:.0f} s.")
    return " ".join(lines)


def write_outputs(results: dict, out_dir, plots=True) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json"]
    with open(paths[0], "w") as f:
        json.dump(results, f, indent=1, ensure_ascii=False, allow_nan=False)
    md = out / "results.md"
    md.write_text(describe(results) + "\n\n" + format_table(results) + "\n")
    paths.append(md)
    if plots:
        paths += plot_results(results, out)
    return paths


# ------------------------------------------------------------------------------------------ plots

_STYLE = {  # family -> (colour, marker)
    "necoda-lossless": ("#000000", "*"), "necoda-bounded": ("#d62728", "*"), "necoda-learned": ("#9467bd", "*"),
    "zstd": ("#1f77b4", "o"), "lzma": ("#4a6fa5", "d"), "blosc": ("#17becf", "s"), "pcodec": ("#2ca02c", "D"),
    "flac": ("#8c564b", "^"), "mtscomp": ("#a0522d", "v"), "jpegxl": ("#9a9a00", "P"), "jpeg2k": ("#b8860b", "X"),
    "anscombe": ("#e377c2", "h"), "sz3": ("#ff7f0e", "^"), "zfp": ("#c8a000", "v"),
    "h264": ("#7f7f7f", "<"), "h265": ("#393b79", ">"), "av1": ("#637939", "p"),
}


def _style(fam):
    return _STYLE.get(fam, ("#555555", "o"))


def plot_results(results: dict, out_dir) -> list[Path]:
    """Rate–distortion plots: ratio (log x) vs PSNR and vs the kind's fidelity measures, one marker and
    line per codec family. Returns the written PNG paths."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    out = Path(out_dir)
    d = results["data"]
    rows = [r for r in results["rows"] if r["status"] == "ok" and r.get("ratio")]
    ref = next((r for r in results["rows"] if r["status"] == "reference"), None)
    if d["kind"] == IMAGING:
        panels = [("psnr", "PSNR vs original (dB)"), ("roi_r_median", "ROI trace r vs original (median)")]
        if d.get("ground_truth"):
            panels.append(("true_r_median", "ROI trace r vs TRUE traces (median)"))
    else:
        panels = [("psnr", "PSNR vs original (dB)"), ("spike_f1", "spike detection F1 vs original"),
                  ("waveform_r_median", "spike waveform r (median)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 5.2), squeeze=False)
    axes = axes[0]
    finite_psnr = [r["psnr"] for r in rows if r.get("psnr") is not None]
    top_psnr = (max(finite_psnr) if finite_psnr else 60.0) + 8.0
    def series(r):  # necoda-bounded has two knobs (absolute / noise-unit bounds): one line each
        return r["family"] + (" (noise units)" if "max_error_noise" in (r.get("settings") or {}) else "")

    fams = []
    for r in rows:
        if series(r) not in fams:
            fams.append(series(r))
    handles = {}
    for ax, (key, title) in zip(axes, panels):
        is_r = False  # r drawn as 1 - r on a log axis (r == 1 on a line above the best point) when the
        floor = 1e-6  # values span decades or include exact 1s; else plain r on a linear axis
        if key != "psnr":
            vals = [r[key] for r in rows if r.get(key) is not None]
            gaps = [1.0 - v for v in vals if v < 1.0]
            if ref and ref.get(key) is not None and ref[key] < 1.0:
                gaps.append(1.0 - ref[key])
            is_r = bool(vals) and (len(gaps) < len(vals) or (gaps and max(gaps) / max(min(gaps), 1e-12) > 10))
            if gaps:
                floor = max(min(gaps) / 4.0, 1e-7)  # differences below 1e-7 are rounding, not fidelity
        for fam in fams:
            pts = []
            for r in rows:
                if series(r) != fam:
                    continue
                v = r.get(key)
                if key == "psnr" and v is None and r.get("max_abs") == 0:
                    v = top_psnr  # lossless: drawn on the "lossless" line at the top
                if v is None:
                    continue
                pts.append((r["ratio"], (1.0 - v) if is_r else v, r.get("label", "")))
            if not pts:
                continue
            pts.sort()
            col, mk = _style(fam.split(" (")[0])
            nec = fam.startswith("necoda")
            sub = " (" in fam
            xs, ys = [p[0] for p in pts], [max(p[1], floor) if is_r else p[1] for p in pts]
            h, = ax.plot(xs, ys, marker=mk, color=col, ms=11 if nec else 7, lw=2.2 if nec else 1.2,
                         ls=(":" if sub else "-") if nec else "--", mec="k" if nec else col, mew=0.6,
                         mfc="white" if sub else col, label=fam, zorder=3 if nec else 2)
            handles[fam] = h
            for x, y, lab in zip(xs, ys, [p[2] for p in pts]):
                if lab and len(pts) > 1:
                    ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6.5, color=col)
        ax.set_xscale("log")
        lo_x, hi_x = ax.get_xlim()
        decades = math.log10(max(hi_x, 1e-9) / max(lo_x, 1e-9))
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2.2
                                              else (1.0, 3.0) if decades <= 3.3 else (1.0,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("compression ratio (raw / compressed bytes, log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(title, fontsize=10)
        # Reference lines are drawn before any set_ylim (which stops autoscaling), so the y range includes
        # them, and their labels are clipped to the axes: with lossless rows only the PSNR axis spans just
        # the "lossless" line, and a label far outside it made tight_layout give up (a UserWarning).
        if key == "psnr":
            ax.axhline(top_psnr, color="k", lw=0.6, ls=":")
            ax.text(0.99, top_psnr, "lossless (PSNR ∞) ", transform=ax.get_yaxis_transform(), va="top", ha="right",
                    fontsize=8, clip_on=True)
            if ref and ref.get("psnr_clean") is not None:
                ax.axhline(ref["psnr_clean"], color="#2ca02c", lw=1, ls="-.")
                ax.text(0.99, ref["psnr_clean"], "raw data vs clean ", transform=ax.get_yaxis_transform(),
                        va="top", ha="right", fontsize=7, color="#2ca02c", clip_on=True)
            ax.set_ylim(top=top_psnr + 3)
            ax.set_ylabel("PSNR (dB)")
        elif not is_r:
            ax.set_ylabel(title.split(" (")[0].split(" vs")[0])
            ref_v = ref.get(key) if ref else None
            if key == "true_r_median" and ref_v is not None:
                ax.axhline(ref_v, color="#2ca02c", lw=1.2, ls="-.")
                ax.text(0.99, ref_v, f"raw data r = {ref_v:.4f} ", transform=ax.get_yaxis_transform(),
                        va="top", ha="right", fontsize=8, color="#2ca02c", clip_on=True)
        else:
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.axhline(floor, color="k", lw=0.6, ls=":")
            q = "F1" if key == "spike_f1" else "r"
            ax.text(0.99, floor, (f"identical ({q} = 1) " if floor > 1e-7 else f"{q} ≥ 1 − 1e-7 "),
                    transform=ax.get_yaxis_transform(), va="top", ha="right", fontsize=8, clip_on=True)
            if key == "true_r_median" and ref and ref.get("true_r_median") is not None:
                y = max(1.0 - ref["true_r_median"], floor)
                ax.axhline(y, color="#2ca02c", lw=1.2, ls="-.")
                ax.text(0.99, y, f"raw data r = {ref['true_r_median']:.4f} ", transform=ax.get_yaxis_transform(),
                        va="top", ha="right", fontsize=8, color="#2ca02c", clip_on=True)
            ax.set_ylim(bottom=floor / 2.5)
            ax.invert_yaxis()  # up = better (r closer to 1)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{1 - v:.6g}" if v >= 1e-6 else f"1 − {v:.0e}"))
            ax.set_ylabel(f"{q} (axis: 1 − {q}, log; up = better)")
    fig.suptitle(f"{d['name']}: {d['kind']} {'×'.join(map(str, d['shape']))} {d['dtype']} — rate–distortion",
                 fontsize=11)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
               ncol=min(len(handles), 9), fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, 0.08 if len(handles) <= 9 else 0.13, 1, 0.95))
    p = out / "rate_distortion.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


# ------------------------------------------------------------------------------------------ report

#: fidelity floor for the "highest ratio at acceptable fidelity" summary: (column, floor, label)
SUMMARY_FLOOR = {IMAGING: ("roi_r_median", 0.99, "ROI trace r ≥ 0.99"),
                 EPHYS: ("spike_f1", 0.95, "spike F1 ≥ 0.95")}


def headlines(results: dict) -> list[str]:
    """Bullet lines summarising one results dict: best lossless ratios, necoda's vs the best anchor's,
    and per family the highest ratio whose fidelity stays above :data:`SUMMARY_FLOOR`."""
    rows = [r for r in results["rows"] if r["status"] == "ok"]
    out = []
    lossless = sorted((r for r in rows if not r["lossy"]), key=lambda r: -r["ratio"])
    if lossless:
        ours = [r for r in lossless if r["family"].startswith("necoda")]
        other = [r for r in lossless if not r["family"].startswith("necoda")]
        s = "lossless: " + ", ".join(f"{r['name']} {r['ratio']:.2f}×" for r in lossless[:3])
        if ours and other:
            s += f" (necoda {ours[0]['ratio']:.2f}× vs best anchor {other[0]['name']} {other[0]['ratio']:.2f}×)"
        out.append(s)
    key, floor, label = SUMMARY_FLOOR[results["data"]["kind"]]
    best: dict[str, dict] = {}
    for r in rows:
        if r["lossy"] and r.get(key) is not None and r[key] >= floor:
            if r["family"] not in best or r["ratio"] > best[r["family"]]["ratio"]:
                best[r["family"]] = r
    if best:
        items = sorted(best.values(), key=lambda r: -r["ratio"])
        extra = "true r" if results["data"].get("ground_truth") and results["data"]["kind"] == IMAGING else None
        out.append(f"lossy, highest ratio with {label}: " + ", ".join(
            f"{r['name']} {r['ratio']:.1f}× (PSNR {_f(r.get('psnr'), '.1f')} dB"
            + (f", r vs truth {_r(r.get('true_r_median'))}" if extra else "") + ")" for r in items))
    skipped = [r["name"] for r in results["rows"] if r["status"] in ("skipped", "error", "fallback")]
    if skipped:
        out.append("not measured (see table): " + ", ".join(skipped))
    return out


def write_summary(out_dirs, md_path, plots_dir, command: str = "", titles=None) -> Path:
    """Collect the results of several ``necoda bench`` runs into one Markdown report, copying each
    run's plot to ``plots_dir/<name>.png`` (linked relative to the report)."""
    import shutil
    md_path, plots_dir = Path(md_path), Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, d in enumerate(out_dirs):
        res = json.loads((Path(d) / "results.json").read_text())
        runs.append((titles[i] if titles else res["data"]["name"], Path(d), res))
    v = runs[0][2]["versions"] if runs else {}
    lines = ["# necoda bench results", "",
             "Generated by `" + (command or "benchmarks/run_all.sh") + "` on "
             + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()) + ". Do not edit by hand: rerun the command.",
             "",
             "Package versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".", "",
             "Columns: ratio = raw bytes / compressed bytes (every header and stored parameter counted); "
             "MB/s of raw data, one run, wall clock; thr = threads requested (CPU/wall measured during encode — "
             "the machine is shared, so speeds are indicative); max abs / RMSE / PSNR against the original "
             "(PSNR over its max − min); RMSE/σ = RMSE in noise units; ROI r = Pearson r of ROI mean traces, "
             "original vs decoded (median / 5th percentile); r vs truth = decoded ROI traces vs the simulator's "
             "true traces (the `raw data` row is the uncompressed data's own value); spike F1 / wave r = "
             "threshold (5σ) spike detection agreement and waveform correlation vs the original. "
             "See `benchmarks/README.md`.", ""]
    lines += ["## Summary", ""]
    for title, _, res in runs:
        lines.append(f"**{title}** ({res['data']['kind']}, {'×'.join(map(str, res['data']['shape']))} "
                     f"{res['data']['dtype']}, run {res['elapsed_s'] / 60:.1f} min)")
        lines += [f"- {h}" for h in headlines(res)]
        lines.append("")
    for title, d, res in runs:
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in res["data"]["name"])
        png = d / "rate_distortion.png"
        lines += [f"## {title}", "", describe(res), ""]
        if png.exists():
            shutil.copyfile(png, plots_dir / f"{slug}.png")
            rel = os.path.relpath(plots_dir / f"{slug}.png", md_path.parent)
            lines += [f"![rate–distortion, {title}]({rel})", ""]
        lines += [format_table(res), ""]
    md_path.write_text("\n".join(lines))
    return md_path
