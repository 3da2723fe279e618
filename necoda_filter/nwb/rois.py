"""The ROIs an NWB file already holds for an imaging series, and the traces it stores for them.

A lab's NWB file often carries its own segmentation of a movie (a ``PlaneSegmentation`` with
``image_mask`` or ``pixel_mask``, e.g. from suite2p or CaImAn) and the traces extracted with it
(``RoiResponseSeries`` in ``Fluorescence`` / ``DfOverF``); a file made by ``necoda simulate`` holds the
true footprints and traces there. ``necoda evaluate`` measures ROI-trace fidelity on those ROIs and
against those traces when they exist (:func:`find_rois`), and detects ROIs itself otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np

#: a footprint's pixels are those above this fraction of its maximum weight (as metrics.imaging_fidelity)
MASK_THRESHOLD = 0.3


@dataclass
class FileROIs:
    """ROIs of one PlaneSegmentation: ``rows`` (the table rows used, increasing, at most ``max_rois``, evenly
    spread),
    their boolean ``masks`` (n, H, W), and per RoiResponseSeries over those rows: its path, the
    positions in ``rows`` it covers and its data columns for them (``traces``)."""

    path: str
    n_total: int
    rows: np.ndarray
    masks: np.ndarray
    traces: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)


def _type(obj) -> str | None:
    t = obj.attrs.get("neurodata_type")
    return t.decode() if isinstance(t, bytes) else t


def _same_object(a, b) -> bool:
    try:
        return a == b
    except Exception:  # noqa: BLE001  (a dangling link or an object of another file)
        return False


def _masks(ps: h5py.Group, rows: np.ndarray, hw: tuple) -> np.ndarray | None:
    if "image_mask" in ps and tuple(ps["image_mask"].shape[1:]) == hw:
        w = np.asarray(ps["image_mask"][rows], dtype=np.float64)  # rows increase, as h5py needs
    elif "pixel_mask" in ps and "pixel_mask_index" in ps:
        ends = ps["pixel_mask_index"][:].astype(np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        w = np.zeros((len(rows),) + hw)
        for k, r in enumerate(rows):
            pm = ps["pixel_mask"][starts[r]:ends[r]]
            x, y, v = (np.asarray(pm[n], dtype=np.float64) for n in ("x", "y", "weight"))
            ok = (x >= 0) & (y >= 0) & (y < hw[0]) & (x < hw[1])  # NWB: x = column, y = row
            w[k, y[ok].astype(np.int64), x[ok].astype(np.int64)] = v[ok]
    else:
        return None
    mx = w.reshape(len(w), -1).max(axis=1)
    return w > (MASK_THRESHOLD * np.where(mx > 0, mx, np.inf))[:, None, None]


def _series_over(f: h5py.File, ps: h5py.Group, rows: np.ndarray, n_frames: int):
    """RoiResponseSeries whose ``rois`` region points into ``ps`` and whose data has one row per frame."""
    found = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Group) or _type(obj) != "RoiResponseSeries":
            return
        if "rois" not in obj or "data" not in obj:
            return
        ref = obj["rois"].attrs.get("table")
        try:
            if ref is None or not _same_object(f[ref], ps):
                return
        except Exception:  # noqa: BLE001  (an unresolvable reference)
            return
        data = obj["data"]
        region = obj["rois"][:].astype(np.int64)
        if data.ndim != 2 or data.shape[0] != n_frames or data.shape[1] != len(region):
            return
        col_of = {int(r): c for c, r in enumerate(region)}
        have = np.array([k for k, r in enumerate(rows) if int(r) in col_of], dtype=np.int64)
        if len(have):
            cols = np.array([col_of[int(rows[k])] for k in have], dtype=np.int64)
            found.append(("/" + name, have, cols))

    f.visititems(visit)
    return sorted(found)


def find_rois(series_data: h5py.Dataset, max_rois: int = 50) -> FileROIs | None:
    """The ROIs the file of ``series_data`` (the (T, H, W) ``data`` of an imaging series) holds for that
    series: a PlaneSegmentation whose masks have the frame's shape and, when both name one, the same
    imaging plane as the series. None when there is none (or it has no ROI)."""
    if series_data.ndim != 3:
        return None
    f, series = series_data.file, series_data.parent
    hw = tuple(series_data.shape[1:])
    plane = series.get("imaging_plane")
    candidates = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and _type(obj) == "PlaneSegmentation":
            candidates.append("/" + name)

    f.visititems(visit)
    for path in sorted(candidates):
        ps = f[path]
        other = ps.get("imaging_plane")
        if plane is not None and other is not None and not _same_object(plane, other):
            continue
        n = len(ps["id"]) if "id" in ps else 0
        if n == 0:
            continue
        rows = np.unique(np.linspace(0, n - 1, min(n, max_rois)).round().astype(np.int64))
        masks = _masks(ps, rows, hw)
        if masks is None:
            continue
        keep = masks.reshape(len(masks), -1).any(axis=1)
        rows, masks = rows[keep], masks[keep]
        if not len(rows):
            continue
        traces = [(p, have, cols) for p, have, cols in _series_over(f, ps, rows, series_data.shape[0])]
        return FileROIs(path, n, rows, masks, traces)
    return None
