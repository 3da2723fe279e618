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
