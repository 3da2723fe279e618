"""Simulations as NWB files: the recording where a lab's file holds it, and its ground truth beside it.

:func:`write_nwb` writes an :class:`~necoda_filter.simulate.ImagingSim` and/or an
:class:`~necoda_filter.simulate.EphysSim` into one NWB file (``necoda simulate imaging|ephys|both OUT.nwb``,
``necoda demo``):

* imaging: ``acquisition/TwoPhotonSeries`` (the movie, raw units, ``rate`` = fps) on an imaging plane
  whose ``grid_spacing`` is the pixel size; ground truth in ``processing/ophys``: the true footprints as
  the image masks of the PlaneSegmentation ``GroundTruthROIs`` (ImageSegmentation), and in
  Fluorescence the RoiResponseSeries ``GroundTruthTraces`` (photons per pixel and frame at footprint
  value 1) and ``GroundTruthSpikeCounts`` (spikes per frame), both (frames, cells);
* ephys: ``acquisition/ElectricalSeries`` (ADC samples; ``conversion`` = µV per bit in volts) over an
  electrode table with each channel's probe position (``rel_x``, ``rel_y``, µm); ground truth: the
  Units table (``spike_times`` in seconds, one unit per simulated neuron).

The series are written as given (contiguous, uncompressed: what an acquisition system or converter
typically leaves, the input ``necoda compress`` is for) unless ``imaging_io`` / ``ephys_io`` pass
``H5DataIO`` keywords (e.g. ``compression="necoda"``; chunks default to 64 frames x full frame and about
one second x all channels). The file is written to a temporary name next to ``path`` and renamed.
"""
from __future__ import annotations

import os
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .simulate import EphysSim, ImagingSim

__all__ = ["write_nwb"]

SESSION_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _data(array, io: dict | None, chunks: tuple):
    if io is None:
        return array
    from hdmf.backends.hdf5.h5_utils import H5DataIO

    return H5DataIO(array, **{"chunks": chunks, **io})


def _add_imaging(nwb, sim: ImagingSim, device, io: dict | None, ground_truth: bool) -> None:
    from pynwb.ophys import Fluorescence, ImageSegmentation, OpticalChannel, TwoPhotonSeries

    p = sim.params
    fps = float(p["fps"])
    movie = sim.movie
    plane = nwb.create_imaging_plane(
        name="ImagingPlane", optical_channel=OpticalChannel(name="green", description="GCaMP",
                                                             emission_lambda=520.0),
        description="simulated plane (necoda_filter.simulate)", device=device, excitation_lambda=920.0,
        indicator="GCaMP (simulated)", location="VISp", imaging_rate=fps,
        grid_spacing=[float(p["pixel_um"]) * 1e-6] * 2, grid_spacing_unit="meters")
    nwb.add_acquisition(TwoPhotonSeries(
        name="TwoPhotonSeries", imaging_plane=plane, rate=fps, unit="n.a.",
        description=f"simulated movie: {p['gain']:g} raw units per photon, offset {p['offset']:g}",
        data=_data(movie, io, (min(64, movie.shape[0]),) + movie.shape[1:])))
    if not ground_truth:
        return
    ophys = nwb.create_processing_module(name="ophys", description="ground truth of the simulation")
    seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(seg)
    rois = seg.create_plane_segmentation(name="GroundTruthROIs", imaging_plane=plane,
                                         description="true footprints of the simulated cells (max 1)")
    for fp in sim.footprints:
        rois.add_roi(image_mask=fp)
    region = rois.create_roi_table_region(region=list(range(len(sim.footprints))), description="all cells")
    fl = Fluorescence(name="Fluorescence")
    ophys.add(fl)
    fl.create_roi_response_series(name="GroundTruthTraces", data=np.ascontiguousarray(sim.traces.T), rois=region,
                                  rate=fps, unit="photons/pixel/frame",
                                  description="true fluorescence of each cell at footprint value 1")
    fl.create_roi_response_series(name="GroundTruthSpikeCounts", data=np.ascontiguousarray(sim.spikes.T),
                                  rois=region, rate=fps, unit="spikes/frame",
                                  description="true spike count of each cell in each frame")


def _add_ephys(nwb, sim: EphysSim, device, io: dict | None, ground_truth: bool) -> None:
    from pynwb.ecephys import ElectricalSeries

    data, fs = sim.data, float(sim.fs)
    group = nwb.create_electrode_group(name="probe", description="simulated Neuropixels-like probe",
                                       location="CA1", device=device)
    for x, y in sim.channel_positions:
        nwb.add_electrode(group=group, location="CA1", rel_x=float(x), rel_y=float(y))
    region = nwb.create_electrode_table_region(list(range(data.shape[1])), "all channels")
    nwb.add_acquisition(ElectricalSeries(
        name="ElectricalSeries", electrodes=region, rate=fs, conversion=float(sim.params["uv_per_bit"]) * 1e-6,
        description="simulated extracellular recording (necoda_filter.simulate)",
        data=_data(data, io, (min(int(fs), data.shape[0]), data.shape[1]))))
    if not ground_truth:
        return
    from pynwb.misc import Units

    nwb.units = Units(name="units", resolution=1.0 / fs,
                      description="ground truth of the simulation: every spike of every simulated neuron")
    for u in range(int(sim.params["n_units"])):
        nwb.add_unit(spike_times=(sim.spike_times[sim.spike_units == u] / fs).astype(np.float64))


def write_nwb(path, imaging: ImagingSim | None = None, ephys: EphysSim | None = None, *,
              imaging_io: dict | None = None, ephys_io: dict | None = None, ground_truth: bool = True,
              identifier: str | None = None, session_description: str | None = None) -> Path:
    """Write the simulations into a new NWB file at ``path`` (see the module docstring); returns the path.
    ``imaging_io`` / ``ephys_io``: ``H5DataIO`` keywords for the series' data (None: written plain)."""
    if imaging is None and ephys is None:
        raise ValueError("write_nwb needs an imaging or an ephys simulation (or both)")
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject

    path = Path(path)
    what = " and ".join(w for w, s in (("a two-photon movie", imaging), ("an extracellular recording", ephys)) if s)
    nwb = NWBFile(session_description=session_description or f"necoda_filter simulation: {what}",
                  identifier=identifier or str(uuid.uuid4()), session_start_time=SESSION_START,
                  experiment_description="simulated data with its ground truth (necoda_filter.simulate)",
                  keywords=["simulation", "ground truth"],
                  subject=Subject(subject_id="sim", species="Mus musculus", sex="U", age="P90D",
                                  description="simulated (necoda_filter.simulate)"))
    device = nwb.create_device(name="SimulatedDevice", description="necoda_filter.simulate")
    if imaging is not None:
        _add_imaging(nwb, imaging, device, imaging_io, ground_truth)
    if ephys is not None:
        _add_ephys(nwb, ephys, device, ephys_io, ground_truth)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with warnings.catch_warnings():  # hdmf: a plugin filter "may not be available on all installations"
            warnings.filterwarnings("ignore", message=".*may not be available")
            with NWBHDF5IO(str(tmp), "w") as io:
                io.write(nwb)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
