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


def spike_samples(series_data: h5py.Dataset, fs: float | None, n_rows: int) -> tuple[str, np.ndarray] | None:
    """(path of the Units table, sorted sample indices in ``[0, n_rows)`` of every spike of every unit) for
    the (T, C) ``data`` of a spike-band ElectricalSeries sampled at ``fs``; None when the file has no
    Units spike times or the series is not a spike-band recording with a start time."""
    if not fs or fs < MIN_SPIKE_RATE:
        return None
    f = series_data.file
    units = f.get("units")
    if not isinstance(units, h5py.Group) or not isinstance(units.get("spike_times"), h5py.Dataset):
        return None
    t0 = _series_start(series_data.parent)
    if t0 is None:
        return None
    times = np.asarray(units["spike_times"][:], dtype=np.float64)  # all units' times, ragged by an index
    s = np.round((times - t0) * fs).astype(np.int64)
    s = np.sort(s[(s >= 0) & (s < n_rows)])
    return units.name, s
