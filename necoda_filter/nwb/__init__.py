"""Whole-file NWB (HDF5) recompression and decompression.

``recompress_file(IN, OUT, ...)`` copies an NWB file object by object at the h5py level — every group,
attribute, soft/external/hard link, committed datatype and the cached namespace specifications stay as
they were, object references are re-pointed to the copied objects — and recompresses the large neural
datasets (the ``data`` of TwoPhotonSeries, OnePhotonSeries, ImageSeries, ElectricalSeries and
SpikeEventSeries, recognised by the ``neurodata_type`` attribute of their group) with the necoda filter.

Modules:

* :mod:`.plan` — what to recompress (target kinds, sampling rate) and how to chunk it;
* :mod:`.atomic` — input/output path checks and atomic output (a temporary file published when complete,
  never replacing a file without ``overwrite``);
* :mod:`.copier` — object-by-object copy with re-pointed references;
* :mod:`.workers` — chunk encoding/decoding in worker processes, the pool, progress bars;
* :mod:`.rewrite` — what compress and decompress share: the copy into an atomic output, off the main thread;
* :mod:`.recompress` — recompression (:func:`recompress_file`);
* :mod:`.decompress` — decompression (:func:`decompress_file`);
* :mod:`.verify` — structural comparison of two files (:func:`structure_diff`).
* :mod:`.rois` — the ROIs (and stored traces) a file holds for an imaging series (``necoda evaluate``).
* :mod:`.units` — the spike times of a file's Units table as samples of an ElectricalSeries (``necoda evaluate``).

The names below are re-exported from those modules. The tuning constants (chunk sizes, read-slab and
noise-sample limits) are not: they live in :mod:`.plan` and :mod:`.recompress`. To replace a name (e.g. in
a test), patch it in the module that uses it (``nwb.recompress._encode_chunk``,
``nwb.recompress.SLAB_MAX``): patching a re-exported name here changes nothing.
"""
from __future__ import annotations

from .atomic import TMP_MARK, atomic_output, check_paths, clean_stale_temps, open_input, publish, temp_pattern
from .copier import Copier
from .decompress import decompress_dataset, decompress_file
from .plan import (TARGET_TYPES, necoda_filter_info, not_target_reason, plan_chunks, sampling_rate, series_data,
                   series_group, target_kind)
from .recompress import DatasetReport, Settings, recompress_dataset, recompress_file
from .verify import structure_diff
from .workers import finite_pair, make_executor

__all__ = [
    "TARGET_TYPES", "TMP_MARK",
    "target_kind", "series_group", "series_data", "not_target_reason", "sampling_rate", "plan_chunks",
    "necoda_filter_info",
    "temp_pattern", "clean_stale_temps", "check_paths", "open_input", "atomic_output", "publish",
    "Copier",
    "finite_pair", "make_executor",
    "Settings", "DatasetReport", "recompress_dataset", "recompress_file",
    "decompress_dataset", "decompress_file",
    "structure_diff",
]
