"""nwbinspector check: what necoda did to each TimeSeries' data, for a reviewer.

    nwbinspector FILE.nwb --modules necoda_filter.inspector

lists, for every TimeSeries whose ``data`` is necoda-compressed, the mode, quality, model and the fidelity
measured at write time (the ``necoda_*`` provenance attributes ``necoda compress`` writes; see
:mod:`necoda_filter.provenance`), as a best-practice *suggestion* (nwbinspector's lowest importance: it
never turns into an error, and ``dandi validate``, which imports no extra modules, is unaffected). Data
written straight through the filter carries no provenance; its mode and quality are read from the chunk
headers, and a lossy mode is named as such.
"""
from __future__ import annotations

import h5py
from nwbinspector import Importance, InspectorMessage, register_check
from pynwb import TimeSeries

from .commands.info import describe


@register_check(importance=Importance.BEST_PRACTICE_SUGGESTION, neurodata_type=TimeSeries)
def check_necoda_compression(time_series: TimeSeries):
    """What necoda did to this TimeSeries' data (mode, quality, measured fidelity)."""
    data = time_series.data
    if not isinstance(data, h5py.Dataset):
        return None
    text = describe(data)
    return None if text is None else InspectorMessage(message=text)
