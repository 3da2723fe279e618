"""nwbinspector check: what necoda did to each TimeSeries' data, for a reviewer.

    nwbinspector FILE.nwb --modules necoda_filter.inspector

lists, for every TimeSeries whose ``data`` is necoda-compressed, the mode, quality, model and the fidelity
measured at write time (the ``necoda_*`` provenance attributes ``necoda compress`` writes; see
:mod:`necoda_filter.provenance`), as a best-practice *suggestion* (nwbinspector's lowest importance: it
never turns into an error, and ``dandi validate``, which imports no extra modules, is unaffected). Data
written straight through the filter carries no provenance; its mode and quality are read from the chunk
headers, and a lossy mode is named as such.

A second check flags ephys series (ElectricalSeries, SpikeEventSeries) coded with the learned mode, a
model made for imaging movies: ``compression="necoda"`` picks it by shape alone, so spike snippets written
through the filter (events x channels x samples) get it (a best-practice *violation*; still never an error).
"""
from __future__ import annotations

import h5py
from nwbinspector import Importance, InspectorMessage, register_check
from pynwb import TimeSeries
from pynwb.ecephys import ElectricalSeries

from .commands.info import dataset_info, describe


@register_check(importance=Importance.BEST_PRACTICE_SUGGESTION, neurodata_type=TimeSeries)
def check_necoda_compression(time_series: TimeSeries):
    """What necoda did to this TimeSeries' data (mode, quality, measured fidelity)."""
    data = time_series.data
    if not isinstance(data, h5py.Dataset):
        return None
    text = describe(data)
    return None if text is None else InspectorMessage(message=text)


@register_check(importance=Importance.BEST_PRACTICE_VIOLATION, neurodata_type=ElectricalSeries)
def check_necoda_ephys_not_learned(series: ElectricalSeries):
    """Ephys data (SpikeEventSeries included) coded with the learned imaging model."""
    data = series.data
    if not isinstance(data, h5py.Dataset):
        return None
    modes_ = dataset_info(data, max_chunks=8).get("chunk_modes") or {}
    if "learned" not in modes_:
        return None
    return InspectorMessage(
        message=f"{type(series).__name__} data is coded with necoda's learned mode ({modes_['learned']} of the "
                f"chunks read), whose model is made for imaging movies: spike waveforms are distorted (lossy). "
                f"Write ephys with necoda mode 'lossless' (or 'bounded'); `necoda compress` does so.")
