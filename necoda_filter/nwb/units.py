"""The spike times an NWB file holds (its Units table), as sample indices of an ElectricalSeries.

The Units table is a lab's sorted units, or the true spikes in a file made by ``necoda simulate``.
``necoda evaluate`` reports the fraction of them that threshold detection still finds after compression
(:func:`spike_samples` + :func:`necoda_filter.metrics.ephys_fidelity` ``true_times``).
"""
from __future__ import annotations

import h5py
import numpy as np

#: below this sampling rate a series is not a spike-band recording (LFP): its samples are not matched
MIN_SPIKE_RATE = 12000.0


def _series_start(series: h5py.Group) -> float | None:
    """The time (s) of the series' first sample: ``starting_time``, else ``timestamps[0]``."""
    if "starting_time" in series:
        return float(series["starting_time"][()])
    if "timestamps" in series and series["timestamps"].shape and series["timestamps"].shape[0]:
        return float(series["timestamps"][0])
    return None


def _ragged(table: h5py.Group, name: str) -> list[np.ndarray] | None:
    """Column ``name`` of a DynamicTable split per row by its ``name_index``; None when absent."""
    col, idx = table.get(name), table.get(name + "_index")
    if not isinstance(col, h5py.Dataset) or not isinstance(idx, h5py.Dataset):
        return None
    ends = np.asarray(idx[:], dtype=np.int64)
    vals = col[:]
    return [vals[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]


def _units_on(units: h5py.Group, series: h5py.Group) -> np.ndarray | None:
    """Which rows of the Units table were recorded by ``series``: units whose ``electrodes`` include one of
    the series' electrodes, or (without that column) whose ``electrode_group`` is the group of one of them.
    None when the file cannot tell (no such column, or a series without an ``electrodes`` region): then
    every unit counts."""
    region = series.get("electrodes")
    if not isinstance(region, h5py.Dataset):
        return None
    mine = {int(r) for r in np.asarray(region[:]).reshape(-1)}
    per_unit = _ragged(units, "electrodes")
    if per_unit is not None:
        return np.array([bool(mine & {int(e) for e in np.asarray(rows).reshape(-1)}) for rows in per_unit])
    groups = units.get("electrode_group")
    table_ref = region.attrs.get("table")
    if not isinstance(groups, h5py.Dataset) or table_ref is None:
        return None
    f = series.file
    try:
        table = f[table_ref]
        col = table["group"]
        names = {f[col[r]].name for r in sorted(mine) if 0 <= r < len(col)}
        return np.array([f[ref].name in names for ref in groups[:]])
    except Exception:  # noqa: BLE001  (dangling or foreign references: cannot tell)
        return None


def spike_samples(series_data: h5py.Dataset, fs: float | None, n_rows: int) -> tuple[str, np.ndarray] | None:
    """(path of the Units table, sorted sample indices in ``[0, n_rows)`` of every spike of the units this
    series recorded (:func:`_units_on`: by their electrodes or electrode group; all units when the file
    does not say)) for the (T, C) ``data`` of a spike-band ElectricalSeries sampled at ``fs``; None when the
    file has no Units spike times, none of its units is on this series' electrodes, or the series is not a
    spike-band recording with a start time."""
    if not fs or fs < MIN_SPIKE_RATE:
        return None
    f = series_data.file
    units = f.get("units")
    if not isinstance(units, h5py.Group) or not isinstance(units.get("spike_times"), h5py.Dataset):
        return None
    t0 = _series_start(series_data.parent)
    if t0 is None:
        return None
    per_unit = _ragged(units, "spike_times")
    on = _units_on(units, series_data.parent)
    if on is not None and per_unit is not None and len(on) == len(per_unit):
        if not on.any():
            return None
        times = np.concatenate([np.asarray(t, dtype=np.float64) for t, keep in zip(per_unit, on) if keep])
    else:
        times = np.asarray(units["spike_times"][:], dtype=np.float64)  # all units' times, ragged by an index
    s = np.round((times - t0) * fs).astype(np.int64)
    s = np.sort(s[(s >= 0) & (s < n_rows)])
    return units.name, s
