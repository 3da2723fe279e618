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
    #: the table's ``id`` of each of ``rows`` (what a lab calls ROI 17)
    ids: np.ndarray | None = None


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
            # NWB orders a movie's axes (frames, x, y) and an image mask's (roi, x, y): x indexes the first
            # axis of a frame, as pynwb's PlaneSegmentation.image_to_pixel and suite2p's converters write it
            ok = (x >= 0) & (y >= 0) & (x < hw[0]) & (y < hw[1])
            w[k, x[ok].astype(np.int64), y[ok].astype(np.int64)] = v[ok]
    else:
        return None
    mx = w.reshape(len(w), -1).max(axis=1)
    return w > (MASK_THRESHOLD * np.where(mx > 0, mx, np.inf))[:, None, None]


def _series_over(f: h5py.File, ps: h5py.Group, n_frames: int) -> list[tuple[str, np.ndarray]]:
    """(path, region rows) of each RoiResponseSeries whose ``rois`` region points into ``ps`` and whose data
    has one row per frame of the movie; spike series (a ``unit`` naming spikes: deconvolved events, a
    simulation's spike counts) are left out, their correlation with fluorescence means something else."""
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
        unit = data.attrs.get("unit", "")
        if "spike" in (unit.decode() if isinstance(unit, bytes) else str(unit)).lower():
            return
        region = obj["rois"][:].astype(np.int64).reshape(-1)
        n_cols = data.shape[1] if data.ndim == 2 else 1 if data.ndim == 1 else -1
        if data.shape[0] == n_frames and n_cols == len(region):
            found.append(("/" + name, region))

    f.visititems(visit)
    return sorted(found, key=lambda t: t[0])


def _frame_of_references(ps: h5py.Group, series: h5py.Group) -> tuple | None:
    """The frame shape of the images a PlaneSegmentation was drawn on (its ``reference_images``): ``()``
    when they include ``series`` itself, None when it names none (or none that resolves)."""
    refs = ps.get("reference_images")
    if not isinstance(refs, h5py.Group):
        return None
    shapes = []
    for k in refs:
        obj = refs.get(k)  # None for a dangling link
        if not isinstance(obj, h5py.Group):
            continue
        if _same_object(obj, series):
            return ()
        data = obj.get("data")
        if isinstance(data, h5py.Dataset) and data.ndim == 3:
            shapes.append(tuple(data.shape[1:]))
    return shapes[0] if shapes and all(sh == shapes[0] for sh in shapes) else None


def _pixel_mask_fits(ps: h5py.Group, hw: tuple) -> bool:
    """Every pixel of the ``pixel_mask`` lies inside an ``hw`` frame (a mask drawn on another field of
    view, e.g. the full frame of a cropped or binned copy of the movie, does not)."""
    pm = ps["pixel_mask"]
    if pm.dtype.names is None or not {"x", "y"} <= set(pm.dtype.names) or len(pm) == 0:
        return False
    step = 1 << 20
    for i in range(0, len(pm), step):
        blk = pm[i:i + step]
        x, y = np.asarray(blk["x"], dtype=np.float64), np.asarray(blk["y"], dtype=np.float64)
        if x.min() < 0 or y.min() < 0 or x.max() >= hw[0] or y.max() >= hw[1]:
            return False
    return True


def _plane_segmentations(f: h5py.File, series: h5py.Group, hw: tuple) -> list[str]:
    """PlaneSegmentations that may segment ``series``: masks of the frame's shape on the series' imaging
    plane; when the series names no (existing) plane, only if all such segmentations share one plane.
    A ``pixel_mask`` has no shape of its own: its frame is that of its ``reference_images`` when they
    name other series, and every pixel must lie inside the frame (so a segmentation of the full frame is
    not applied to a binned, cropped or otherwise re-sampled movie on the same plane)."""
    plane = series.get("imaging_plane")  # None when missing or dangling
    found = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Group) or _type(obj) != "PlaneSegmentation":
            return
        if isinstance(obj.get("image_mask"), h5py.Dataset):
            shape = tuple(obj["image_mask"].shape[1:])
        elif isinstance(obj.get("pixel_mask"), h5py.Dataset):
            ref = _frame_of_references(obj, series)
            shape = hw if (ref == () or ref is None or ref == hw) and _pixel_mask_fits(obj, hw) else None
        else:
            shape = None
        if shape is not None and tuple(shape) == hw:
            found.append(("/" + name, obj.get("imaging_plane")))

    f.visititems(visit)
    found.sort(key=lambda t: t[0])
    if plane is not None:
        return [p for p, other in found if other is not None and _same_object(plane, other)]
    planes = [other for _, other in found]
    same = all(o is not None and _same_object(planes[0], o) for o in planes[1:]) if planes else False
    return [p for p, _ in found] if len(found) == 1 or same else []


def find_rois(series_data: h5py.Dataset, max_rois: int = 50) -> FileROIs | None:
    """The ROIs the file of ``series_data`` (the (T, H, W) ``data`` of an imaging series) holds for that
    series (see :func:`_plane_segmentations`), at most ``max_rois`` of them, evenly spread over the rows
    that have stored traces (over all rows when none has). None when there is none."""
    if series_data.ndim != 3:
        return None
    f = series_data.file
    hw = tuple(series_data.shape[1:])
    for path in _plane_segmentations(f, series_data.parent, hw):
        ps = f[path]
        n = len(ps["id"]) if "id" in ps else 0
        if n == 0:
            continue
        series = _series_over(f, ps, series_data.shape[0])
        pool = np.unique(np.concatenate([r for _, r in series])) if series else np.arange(n)
        pool = pool[(pool >= 0) & (pool < n)]
        if not len(pool):
            continue
        rows = pool[np.unique(np.linspace(0, len(pool) - 1, min(len(pool), max_rois)).round().astype(np.int64))]
        masks = _masks(ps, rows, hw)
        if masks is None:
            continue
        keep = masks.reshape(len(masks), -1).any(axis=1)
        rows, masks = rows[keep], masks[keep]
        if not len(rows):
            continue
        traces = []
        for p, region in series:
            col_of = {int(r): c for c, r in enumerate(region)}
            have = np.array([k for k, r in enumerate(rows) if int(r) in col_of], dtype=np.int64)
            if len(have):
                traces.append((p, have, np.array([col_of[int(rows[k])] for k in have], dtype=np.int64)))
        ids = np.asarray(ps["id"][:], dtype=np.int64)[rows] if "id" in ps else rows
        return FileROIs(path, n, rows, masks, traces, ids)
    return None
