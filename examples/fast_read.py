"""Read parts of a necoda-compressed movie quickly: ``necoda_filter.read`` and ``necoda_filter.fast``.

    python examples/fast_read.py [OUTDIR]

Plain h5py slicing decodes the chunks a selection touches one after another. ``necoda_filter.read(dataset,
selection)`` decodes them in parallel (and, for learned chunks, only the part of each chunk that is asked
for) and returns the same values. ``necoda_filter.fast(dataset)`` wraps a dataset, e.g. the ``data`` of a
pynwb series, so that ordinary slicing goes through ``read``:

    data = necoda_filter.fast(nwbfile.acquisition["TwoPhotonSeries"].data)
    traces = data[:, 40:72, 50:82]

Timings are printed for information only: on small data and few cores the gain is small or none.
"""
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

import necoda_filter
from necoda_filter import Necoda
from necoda_filter.simulate import simulate_imaging

out = (Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="necoda-example-"))).resolve()
out.mkdir(parents=True, exist_ok=True)
path = out / "fast_read.h5"
print(f"writing {path}")

# A learned-mode movie of 4 chunks (64 frames x full frame each)
movie = simulate_imaging(n_frames=256, height=128, width=128, n_cells=20, seed=1).movie
with h5py.File(path, "w") as f:
    f.create_dataset("movie", data=movie, chunks=(64, 128, 128), compression=Necoda(mode="learned"))


def timed(fn):
    """Wall time (s) and result of fn(dataset) on a freshly opened file: HDF5 keeps recently decoded chunks
    in a per-dataset cache (8 MB with HDF5 2.0: this whole movie), so slicing an open dataset a second time
    would time a memory copy, not a decode."""
    with h5py.File(path, "r") as f:
        t = time.perf_counter()
        result = fn(f["movie"])
        return time.perf_counter() - t, result


with h5py.File(path, "r") as f:
    dset = f["movie"]
    print(f"{dset.shape} {dset.dtype}, {dset.nbytes / dset.id.get_storage_size():.0f}x, chunks {dset.chunks}")
    necoda_filter.read(dset, np.s_[0])  # the first call starts the pool of decoders: keep it out of the timings

cases = {
    "32x32 region, all frames": np.s_[:, 40:72, 50:82],
    "one frame": np.s_[100],
    "every 4th frame, all pixels": np.s_[::4],
}
print(f"{'selection':28} {'shape':16} {'h5py':>8} {'read':>8} {'fast':>8}")
for label, sel in cases.items():
    t_h5, expected = timed(lambda d: d[sel])                          # plain h5py slicing
    t_read, got_read = timed(lambda d: necoda_filter.read(d, sel))    # the function
    t_fast, got_fast = timed(lambda d: necoda_filter.fast(d)[sel])    # the wrapper: the same thing
    assert np.array_equal(got_read, expected), f"read() differs from h5py for {label}"
    assert np.array_equal(got_fast, expected), f"fast() differs from h5py for {label}"
    print(f"{label:28} {str(expected.shape):16} {t_h5 * 1e3:6.0f}ms {t_read * 1e3:6.0f}ms {t_fast * 1e3:6.0f}ms")

# fast() gives an array-like (shape, dtype, len, slicing, np.asarray) to hand to analysis code
with h5py.File(path, "r") as f:
    data = necoda_filter.fast(f["movie"])
    trace = data[:, 40:72, 50:82].mean(axis=(1, 2))  # the mean trace of a region, a quick ROI look
    print(f"region mean trace: {len(trace)} of {len(data)} frames, {trace.min():.0f}..{trace.max():.0f} raw units")

print("OK: read() and fast() return exactly what h5py slicing returns")
