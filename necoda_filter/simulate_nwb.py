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
  Units table (``spike_times`` in seconds, one unit per simulated neuron; its description says how many,
  if any, fired no spike).

Ground truth that would be empty is left out (NWB readers and nwbinspector refuse an empty
PlaneSegmentation or a Units table without a single spike): a movie simulated with no cells has no
``processing/ophys``, a recording without any spike no Units table; the series' description says so.

The series are written as given (contiguous, uncompressed: what an acquisition system or converter
typically leaves, the input ``necoda compress`` is for) unless ``imaging_io`` / ``ephys_io`` pass
``H5DataIO`` keywords (e.g. ``compression="necoda"``; chunks default to 64 frames x full frame and about
one second x all channels). The file is written to a temporary ``.<stem>.<random>.tmp.nwb`` next to
``path`` (removed on any error, Ctrl-C, SIGTERM or SIGHUP) and then published as ``path``: without
``overwrite`` by a hard link that fails when ``path`` appeared meanwhile (never replacing a file, a folder or
a symbolic link, even a dangling one), with it by a rename over ``path``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .nwb.atomic import publish  # the one publish of every writer (compress, decompress, simulate, demo)
from .simulate import EphysSim, ImagingSim

__all__ = ["write_nwb", "new_file", "publish", "temporary_next_to"]

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
    n_cells = len(sim.footprints)
    description = f"simulated movie: {p['gain']:g} raw units per photon, offset {p['offset']:g}"
    if ground_truth and n_cells == 0:
        description += "; no cells were simulated (no ground-truth ROIs or traces)"
    nwb.add_acquisition(TwoPhotonSeries(
        name="TwoPhotonSeries", imaging_plane=plane, rate=fps, unit="n.a.", description=description,
        data=_data(movie, io, (min(64, movie.shape[0]),) + movie.shape[1:])))
    if not ground_truth or n_cells == 0:  # an empty PlaneSegmentation cannot be read back (pynwb)
        return
    ophys = nwb.create_processing_module(name="ophys", description="ground truth of the simulation")
    seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(seg)
    rois = seg.create_plane_segmentation(name="GroundTruthROIs", imaging_plane=plane,
                                         description="true footprints of the simulated cells (max 1)")
    for fp in sim.footprints:
        rois.add_roi(image_mask=fp)
    region = rois.create_roi_table_region(region=list(range(n_cells)), description="all cells")
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
    n_units = int(sim.params["n_units"])
    description = "simulated extracellular recording (necoda_filter.simulate)"
    if ground_truth and sim.spike_times.size == 0:
        description += (f"; none of the {n_units} simulated units fired a spike in it (no Units table)" if n_units
                        else "; no units were simulated (no Units table)")
    nwb.add_acquisition(ElectricalSeries(
        name="ElectricalSeries", electrodes=region, rate=fs, conversion=float(sim.params["uv_per_bit"]) * 1e-6,
        description=description, data=_data(data, io, (min(int(fs), data.shape[0]), data.shape[1]))))
    if not ground_truth or sim.spike_times.size == 0:  # a Units table without any spike: nwbinspector errors
        return
    from pynwb.misc import Units

    counts = np.bincount(sim.spike_units, minlength=n_units)
    silent = int(np.count_nonzero(counts == 0))
    description = "ground truth of the simulation: every spike of every simulated neuron, one unit per neuron"
    if silent:
        description += f" ({silent} of the {n_units} fired no spike)"
    nwb.units = Units(name="units", resolution=1.0 / fs, description=description)
    for u in range(n_units):
        nwb.add_unit(spike_times=(sim.spike_times[sim.spike_units == u] / fs).astype(np.float64))


def _renamed(e: OSError, message: str) -> OSError:
    """An OSError of the same kind as ``e`` (PermissionError, ...) with ``message``."""
    try:
        return type(e)(message)
    except Exception:  # noqa: BLE001 — a subclass with another signature
        return OSError(message)


def temporary_next_to(path: Path, suffix: str) -> Path:
    """Create (empty, mode 0666 less the umask) and return a new temporary ``.<stem>.<random>.tmp<suffix>``
    next to ``path``; an OSError names ``path``, not the temporary."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as e:
        raise _renamed(e, f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the output the usual permissions
    return Path(tmp)


@contextlib.contextmanager
def new_file(path, suffix: str, overwrite: bool = False):
    """Yield a new temporary ``.<stem>.<random>.tmp<suffix>`` next to ``path`` to write; when the block ends
    without error, :func:`publish` it as ``path``. It is removed on any error, Ctrl-C, SIGTERM or SIGHUP
    (the signals become an exit, main thread only, as in ``necoda compress``), and an OSError while writing
    names ``path``, not the temporary."""
    from .nwb.atomic import sigterm_as_exit

    path, tmp = Path(path), None
    with sigterm_as_exit():
        try:
            tmp = temporary_next_to(path, suffix)
            try:
                yield tmp
            except (OSError, RuntimeError) as e:
                # h5py raises RuntimeError for some write failures of a closing file (a full disk:
                # "Disable slist on flush dest failure failed (... errno = 28 ...)"): an I/O error too
                from .cli import io_errno

                err = io_errno(e)
                if not isinstance(e, OSError) and err is None:
                    raise
                msg = os.strerror(err) if err is not None else (e.strerror or str(e))
                msg = " ".join(msg.replace(str(tmp), str(path)).replace(tmp.name, path.name).split())
                new = _renamed(e, f"writing {path} failed: {msg}") if isinstance(e, OSError) else \
                    OSError(f"writing {path} failed: {msg}")
                new.errno = err
                raise new from e
            publish(tmp, path, overwrite)
        except BaseException:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise


def write_nwb(path, imaging: ImagingSim | None = None, ephys: EphysSim | None = None, *,
              imaging_io: dict | None = None, ephys_io: dict | None = None, ground_truth: bool = True,
              identifier: str | None = None, session_description: str | None = None,
              overwrite: bool = False) -> Path:
    """Write the simulations into a new NWB file at ``path`` (see the module docstring); returns the path.
    ``imaging_io`` / ``ephys_io``: ``H5DataIO`` keywords for the series' data (None: written plain).
    ``overwrite``: replace ``path`` if it exists; without it (default) an existing ``path`` (also one
    created while the file was written, or a dangling symbolic link) is a FileExistsError and is left alone."""
    if imaging is None and ephys is None:
        raise ValueError("write_nwb needs an imaging or an ephys simulation (or both)")
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject

    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path} exists (not overwritten)")
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
    # the temporary ends in .nwb whatever path's suffix (pynwb warns about a name without it)
    with new_file(path, ".nwb", overwrite) as tmp:
        with warnings.catch_warnings():  # hdmf: a plugin filter "may not be available on all installations"
            warnings.filterwarnings("ignore", message=".*may not be available")
            with NWBHDF5IO(str(tmp), "w") as io:
                io.write(nwb)
    return path
