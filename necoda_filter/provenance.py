"""Per-dataset provenance of necoda recompression: attribute names, writing and reading.

``necoda compress`` writes these attributes on every dataset it recompresses; ``necoda info`` reads them
back with :func:`read`. All names start with :data:`PREFIX` so they never collide with NWB schema
attributes (``unit``, ``conversion``, ``resolution``, ...). Values are scalars: strings are stored as
variable-length UTF-8, numbers as float64 / int64, flags as int8 (0/1) — portable to every HDF5 reader.

Fidelity figures are measured at write time on the whole dataset (streamed chunk by chunk: each chunk
is encoded, decoded again and compared with the original samples; padding of edge chunks excluded):

``ratio``            raw bytes / stored chunk bytes
``max_abs_error``    max |original - decoded| in raw units
``rmse``             root mean square error in raw units
``psnr_db``          20 log10(data_range / rmse), data_range = max - min of the original samples
                     (``inf`` when rmse is 0)
``noise_sigma``      the noise level used for ``noise_rmse``, raw units. Imaging: ``sigma`` of
                     :func:`necoda_filter.metrics.estimate_noise_imaging` (photon-transfer fit; the rms
                     noise sd over the movie) on the first <= 256 frames; ephys: median over channels of
                     :func:`necoda_filter.metrics.estimate_noise_ephys` (MAD of the 300-6000 Hz band) on
                     the first 2 s. ``noise_model`` records the estimate's details.
``noise_rmse``       :func:`necoda_filter.metrics.noise_rmse` over the whole dataset: imaging rmse / sigma;
                     ephys sqrt(mean(e^2 / sigma_c^2)) with the per-channel sigma; NaN when no noise
                     estimate was possible
``chunk_modes``      mode actually stored -> number of chunks (a chunk the requested mode could not
                     encode is stored raw and counted here)
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

PREFIX = "necoda_"

#: provenance key -> kind ("str", "float", "int", "bool", "json")
FIELDS: dict[str, str] = {
    "version": "str",            # necoda-filter version that wrote the data
    "format_version": "int",     # newest chunk container format version among the chunks written
    "mode": "str",               # lossless | bounded | learned | raw | auto
    "lossy": "bool",
    "model_id": "str",           # content-addressed model id ("" when no model is used)
    "options": "json",           # the Necoda options: quality, max_error, max_error_noise, level
    "quality": "json",           # learned: the level the chunks were coded at (the model's default unless
                                 # asked; a sorted list if chunks differ)
    "chunks": "json",            # chunk shape used
    "chunk_modes": "json",       # mode actually stored -> number of chunks (e.g. raw fallbacks)
    "raw_bytes": "int",
    "stored_bytes": "int",
    "ratio": "float",
    "max_abs_error": "float",
    "rmse": "float",
    "psnr_db": "float",
    "data_range": "float",
    "noise_sigma": "float",
    "noise_rmse": "float",
    "noise_model": "json",       # how noise_sigma was obtained
    "kind": "str",               # imaging | ephys
    "source": "str",             # original file name and dataset path
    "created": "str",            # ISO 8601 UTC time of recompression
    "decompressed_by": "str",    # set by `necoda decompress` (data no longer necoda-compressed)
    "history": "json",           # earlier necoda runs on this data, oldest first (their records): data
                                 # decoded from a lossy run and recompressed stays marked as such
}


def attr_name(key: str) -> str:
    return PREFIX + key


def write(obj, prov: dict[str, Any]) -> None:
    """Write provenance ``prov`` (keys of :data:`FIELDS`) as attributes on the h5py object ``obj``."""
    import h5py

    for key, value in prov.items():
        if key not in FIELDS:
            raise KeyError(f"unknown necoda provenance field {key!r}")
        if value is None:
            continue
        kind = FIELDS[key]
        name = attr_name(key)
        if kind == "str":
            obj.attrs.create(name, str(value), dtype=h5py.string_dtype("utf-8"))
        elif kind == "json":
            obj.attrs.create(name, json.dumps(value, sort_keys=True), dtype=h5py.string_dtype("utf-8"))
        elif kind == "float":
            obj.attrs.create(name, np.float64(value))
        elif kind == "int":
            obj.attrs.create(name, np.int64(value))
        elif kind == "bool":
            obj.attrs.create(name, np.int8(bool(value)))


def read(obj) -> dict[str, Any] | None:
    """Provenance of an h5py object, or ``None`` when it carries none."""
    out: dict[str, Any] = {}
    for key, kind in FIELDS.items():
        name = attr_name(key)
        if name not in obj.attrs:
            continue
        v = obj.attrs[name]
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if kind == "json":
            try:
                v = json.loads(v)
            except (TypeError, ValueError):
                pass
        elif kind == "float":
            v = float(v)
        elif kind == "int":
            v = int(v)
        elif kind == "bool":
            v = bool(v)
        else:
            v = str(v)
        out[key] = v
    return out or None


def history_of(obj) -> list[dict[str, Any]]:
    """The ``history`` a new record for ``obj``'s data carries: ``obj``'s own record (if any) after the
    earlier ones it lists, oldest first."""
    prev = read(obj)
    if not prev:
        return []
    earlier = prev.pop("history", None)
    return (list(earlier) if isinstance(earlier, list) else []) + [prev]


#: chunk headers :func:`filter_written` reads per dataset (evenly spread, as ``necoda info`` samples them)
SAMPLED_CHUNKS = 8


def filter_written(dset, max_chunks: int = SAMPLED_CHUNKS) -> dict[str, Any] | None:
    """A record for an h5py dataset written through the HDF5 filter (``compression="necoda"``) that has no
    record of its own (no ``necoda compress`` run wrote it): the modes, models and learned quality levels
    the headers of up to ``max_chunks`` of its chunks name (as ``necoda info`` samples them), and whether
    any is lossy. A copy made from it (``necoda compress``, ``necoda decompress``) carries this record, so
    data once coded lossily through the filter is never presented as bit-exact. With other filters after
    necoda, the mode its options ask for. None when the dataset has a record, no necoda filter, or
    nothing can be said."""
    from .commands.info import _lossy_chunks, dataset_info

    if read(dset):
        return None
    row = dataset_info(dset, max_chunks=max(2, int(max_chunks)))
    if "necoda" not in row["filters"]:
        return None
    if row["filters"] != ["necoda"]:  # other filters after necoda (fletcher32, deflate)
        return _requested_record(dset, row.get("requested") or {})
    seen = row.get("chunk_modes") or {}
    if not seen:
        return None
    rec: dict[str, Any] = {
        "mode": max(seen, key=seen.get), "lossy": _lossy_chunks(seen), "chunk_modes": seen,
        "source": f"{dset.name}, written through the HDF5 filter (compression=\"necoda\"), without a necoda "
                  f"record: modes read from {sum(seen.values())} of its {row['chunks_total']} chunk headers"}
    models, qualities = row.get("models") or [], row.get("qualities") or []
    if models:
        rec["model_id"] = ",".join(models)
    if qualities:
        rec["quality"] = qualities[0] if len(qualities) == 1 else qualities
    return rec


def _requested_record(dset, requested: dict) -> dict[str, Any] | None:
    """:func:`filter_written`'s record from the mode the filter's own options ask for (``requested``: the
    options ``necoda info`` reads from them), where the chunk headers are not read (necoda followed by
    other filters); mode "auto" is what it would pick for the dataset's chunks (learned for integer
    movies: lossy)."""
    from . import modes

    opts = {k: v for k, v in requested.items() if k not in ("mode", "error")}
    try:
        mode = requested["mode"]
        if mode == "auto":
            mode = modes.resolve("auto", tuple(dset.chunks or dset.shape), dset.dtype)
        lossy = modes.get(modes.MODE_IDS[mode]).lossy
    except Exception:  # noqa: BLE001 — unknown layout or mode: nothing to say
        return None
    rec: dict[str, Any] = {"mode": mode, "lossy": lossy,
                           "source": f"{dset.name}, written through the HDF5 filter (compression=\"necoda\"), without "
                                     "a necoda record: the mode its options ask for (necoda is followed by other "
                                     "filters, so the chunk headers were not read)"}
    if any(k != "model" for k in opts):
        rec["options"] = {k: v for k, v in opts.items() if k != "model"}
    if opts.get("model"):
        rec["model_id"] = opts["model"]
    return rec


def filter_comment(rec: dict[str, Any], path: str, what: str) -> str:
    """The sentence appended to a TimeSeries ``comments`` for a copy (``what``: e.g. "recompressed
    losslessly by necoda-filter 0.1.0") of data once coded lossily through the filter (:func:`filter_written`)."""
    q = f", quality {rec['quality']}" if rec.get("quality") is not None else ""
    return (f"[necoda] {path} holds data that was LOSSILY compressed through the HDF5 filter (mode {rec.get('mode')}"
            f"{q}; no fidelity was recorded), {what}. See the necoda_* attributes of the dataset.")


def earlier_lossy(prov: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of earlier lossy runs in ``prov``'s history."""
    hist = prov.get("history")
    return [h for h in hist if isinstance(h, dict) and h.get("lossy")] if isinstance(hist, list) else []


def fidelity_bits(prov: dict[str, Any]) -> list[str]:
    """The write-time fidelity of a record, in words: max abs error, PSNR and noise-unit RMS error (the
    ones it has, PSNR and RMS error when finite)."""
    fid = []
    if prov.get("max_abs_error") is not None:
        fid.append(f"max abs error {prov['max_abs_error']:.4g}")
    if prov.get("psnr_db") is not None and math.isfinite(prov["psnr_db"]):
        fid.append(f"PSNR {prov['psnr_db']:.2f} dB")
    nr = prov.get("noise_rmse")
    if nr is not None and math.isfinite(nr):
        fid.append(f"RMS error {nr:.3f} noise sigma")
    return fid


def comment_text(prov: dict[str, Any], path: str) -> str:
    """The sentence appended to the TimeSeries ``comments`` attribute for a lossy recompression."""
    opts = dict(prov.get("options") or {})
    if prov.get("quality") is not None:  # the level actually coded, also when the model's default was used
        opts["quality"] = prov["quality"]
    bits = [f"{k}={v}" for k, v in sorted(opts.items())]
    if prov.get("model_id"):
        bits.append(f"model {prov['model_id']}")
    fid = fidelity_bits(prov)
    if prov.get("ratio") is not None:
        fid.append(f"ratio {prov['ratio']:.2f}")
    return (f"[necoda] {path} was LOSSILY recompressed by necoda-filter {prov.get('version', '?')} "
            f"(mode {prov.get('mode')}{', ' + ', '.join(bits) if bits else ''}); measured at write time: "
            f"{', '.join(fid) if fid else 'n/a'}. See the necoda_* attributes of the dataset.")


def append_comment(group, text: str) -> None:
    """Append ``text`` to the NWB ``comments`` attribute of a TimeSeries group (created if absent),
    keeping the existing comment and the attribute's string type."""
    import h5py

    old = ""
    dtype = h5py.string_dtype("utf-8")
    if "comments" in group.attrs:
        old = group.attrs["comments"]
        if isinstance(old, np.ndarray):  # an array of strings (not what NWB specifies, but it happens): lines
            old = "\n".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in old.ravel())
        if isinstance(old, bytes):
            old = old.decode("utf-8", "replace")
        old = str(old)
        dt = group.attrs.get_id("comments").dtype
        info = h5py.check_string_dtype(dt)
        if info is not None and info.length is None:
            dtype = h5py.string_dtype(info.encoding)
    if old in ("", "no comments"):
        new = text
    elif text in old:
        new = old
    else:
        new = old.rstrip() + "\n" + text
    if dtype == h5py.string_dtype("ascii"):
        try:
            new.encode("ascii")
        except UnicodeEncodeError:
            dtype = h5py.string_dtype("utf-8")
    group.attrs.create("comments", new, dtype=dtype)
