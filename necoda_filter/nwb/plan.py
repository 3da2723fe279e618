"""What to recompress, and how to chunk it: the NWB series whose ``data`` is recompressed
(:data:`TARGET_TYPES`), their sampling rate, the chunk shape of a recompressed dataset
(:func:`plan_chunks`) and the necoda filter of a dataset (:func:`necoda_filter_info`)."""
from __future__ import annotations

import math
import posixpath

import h5py
import numpy as np

from ..constants import FILTER_ID
from ..dtypes import UnsupportedDtype, code_of

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
DEFAULT_FS = 30000.0


def _attr_str(obj, name) -> str | None:
    v = obj.attrs.get(name)
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return str(v)


def object_key(obj) -> tuple:
    """(file number, address) of an HDF5 object: the same for every hard link to it."""
    info = h5py.h5o.get_info(obj.id)
    return (info.fileno, getattr(info, "addr", None) or getattr(info, "token", None))


def _is_series_group(group) -> bool:
    return isinstance(group, h5py.Group) and _attr_str(group, "neurodata_type") in TARGET_TYPES


_INDEX_CACHE: dict = {}


def series_data_index(f: h5py.File) -> dict:
    """{:func:`object_key` of a dataset: path of a :data:`TARGET_TYPES` group that holds it (a hard link)
    as its ``data``}, over every group of ``f``. A dataset can have several names (hard links): whether it
    is a series' data is a property of the object, not of the name it is first reached by (a root-level
    alias sorting before ``/acquisition``). Cached for files open read-only."""
    cache_key = object_key(f) if f.mode == "r" else None
    if cache_key is not None and cache_key in _INDEX_CACHE:
        return _INDEX_CACHE[cache_key]
    index: dict = {}

    def visit(name, obj):
        if _is_series_group(obj) and isinstance(obj.get("data", getlink=True), h5py.HardLink):
            d = obj.get("data")
            if isinstance(d, h5py.Dataset):
                index.setdefault(object_key(d), posixpath.join(obj.name, "data"))

    f.visititems(visit)
    if cache_key is not None:
        if len(_INDEX_CACHE) >= 8:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        _INDEX_CACHE[cache_key] = index
    return index


def is_series_data_link(group: h5py.Group, name: str) -> bool:
    """Whether the link ``name`` of ``group`` is the ``data`` of a :data:`TARGET_TYPES` series."""
    return name == "data" and _is_series_group(group)


def series_group(dset: h5py.Dataset) -> h5py.Group | None:
    """The :data:`TARGET_TYPES` group whose ``data`` ``dset`` is, whatever name it was opened by (its
    parent when opened as ``.../data``, else a group holding another hard link to it), else None."""
    name = dset.name
    if not name:  # anonymous
        return None
    if posixpath.basename(name) == "data" and _is_series_group(dset.parent):
        return dset.parent
    try:
        if h5py.h5o.get_info(dset.id).rc < 2:  # no other name
            return None
        path = series_data_index(dset.file).get(object_key(dset))
    except (KeyError, OSError, RuntimeError):
        return None
    return dset.file[posixpath.dirname(path)] if path else None


def series_data(dset: h5py.Dataset) -> h5py.Dataset:
    """``dset`` opened by its name in its series (``.../<series>/data``) when it is a series' data reached
    by another name (so that ``.parent`` is the series), else ``dset`` itself."""
    g = series_group(dset)
    if g is None or (posixpath.basename(dset.name) == "data" and dset.parent == g):
        return dset
    return g["data"]


def not_target_reason(obj) -> str | None:
    """Why ``obj`` (the ``data`` dataset of a series, or the series group) is not recompressed although it
    belongs to a :data:`TARGET_TYPES` series; None when it is no series' data (or is recompressed)."""
    if _is_series_group(obj):
        d = obj.get("data")
        if not isinstance(d, h5py.Dataset):
            return f"the {_attr_str(obj, 'neurodata_type')} {obj.name} has no data dataset"
        obj = d
    if not isinstance(obj, h5py.Dataset):
        return None
    g = series_group(obj)
    if g is None:
        return None
    what = f"the data of the {_attr_str(g, 'neurodata_type')} {g.name}"
    if obj.shape is None or obj.ndim == 0:
        return f"{what} is a scalar, not a series of samples"
    if obj.size == 0:
        if "external_file" in g:
            return (f"{what} is empty: its frames are stored in external files (external_file), "
                    "not in this file")
        return f"{what} is empty ({obj.shape}): there is nothing to compress"
    if obj.dtype.fields is not None:
        return f"{what} has a compound dtype, which the necoda filter cannot code"
    if h5py.check_enum_dtype(obj.dtype) is not None:  # numpy sees its integer base type; HDF5 sees an enum
        return f"{what} has an HDF5 enum type, which the necoda filter cannot code"
    try:
        code_of(obj.dtype)
    except UnsupportedDtype as e:
        return f"{what} has dtype {obj.dtype}, which the necoda filter cannot code ({e})"
    return None


def target_kind(dset: h5py.Dataset) -> str | None:
    """"imaging" or "ephys" for the ``data`` of a recognised NWB TimeSeries (by any of the dataset's names:
    see :func:`series_group`), else None."""
    g = series_group(dset)
    if g is None:
        return None
    kind = TARGET_TYPES[_attr_str(g, "neurodata_type")]
    if dset.size == 0 or dset.ndim == 0 or dset.dtype.fields is not None or h5py.check_enum_dtype(dset.dtype) is not None:
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
