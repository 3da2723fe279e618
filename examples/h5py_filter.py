"""Write imaging and ephys data with h5py through the necoda HDF5 filter, in each mode, and read it back.

    python examples/h5py_filter.py [OUTDIR]

Shows the four ways to ask for necoda in ``create_dataset``: the name ``compression="necoda"`` (mode
"auto"), a ``Necoda(...)`` object, ``**Necoda(...)`` (hdf5plugin style) and the learned mode with a
quality level. Checks that lossless is bit-exact and bounded stays within its bound, and prints the
compression ratio (raw bytes / bytes stored in the file) and maximum error of every dataset.
"""
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

import necoda_filter  # registers the HDF5 filter and the name "necoda" with h5py
from necoda_filter import Necoda
from necoda_filter.simulate import simulate_ephys, simulate_imaging

out = (Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="necoda-example-"))).resolve()
out.mkdir(parents=True, exist_ok=True)
path = out / "h5py_filter.h5"
print(f"writing {path}")

# Small simulated data: a 128-frame 128x128 two-photon movie (uint16) and 2 s of 32-channel ephys (int16)
movie = simulate_imaging(n_frames=128, height=128, width=128, n_cells=20, seed=0).movie
ephys = simulate_ephys(duration_s=2.0, n_channels=32, n_units=5, seed=0).data

MOVIE_CHUNKS = (64, 128, 128)   # movies: 64-128 frames x full frame
EPHYS_CHUNKS = (30000, 32)      # ephys: about one second x all channels

with h5py.File(path, "w") as f:
    # "auto": learned (LOSSY) for T x H x W integer movies, lossless for everything else (ephys, floats)
    f.create_dataset("movie_auto", data=movie, chunks=MOVIE_CHUNKS, compression="necoda")
    f.create_dataset("ephys_auto", data=ephys, chunks=EPHYS_CHUNKS, compression="necoda")
    # explicit lossless: bit-exact
    f.create_dataset("movie_lossless", data=movie, chunks=MOVIE_CHUNKS, compression=Necoda(mode="lossless"))
    f.create_dataset("ephys_lossless", data=ephys, chunks=EPHYS_CHUNKS, compression=Necoda(mode="lossless"))
    # bounded: every sample within max_error raw units; ``**Necoda(...)`` is the hdf5plugin style
    f.create_dataset("movie_bounded", data=movie, chunks=MOVIE_CHUNKS, **Necoda(mode="bounded", max_error=2))
    # learned: the neural codec, quality 1 (smallest files) .. 9 (default 6); lossy, no bound unless
    # max_error= or max_error_noise= is given
    f.create_dataset("movie_learned", data=movie, chunks=MOVIE_CHUNKS,
                     compression=Necoda(mode="learned", quality=8))

originals = {"movie_auto": movie, "ephys_auto": ephys, "movie_lossless": movie, "ephys_lossless": ephys,
             "movie_bounded": movie, "movie_learned": movie}

# Reading needs nothing special: h5py decompresses chunk by chunk (necoda_filter is imported above;
# a process without that import needs HDF5_PLUGIN_PATH, see pynwb_write.py)
# Errors are in raw units; this movie has ~100 raw units per photon, so its shot noise alone is a few
# hundred units: the learned codec's errors are of that order (it also removes part of that noise).
print(f"{'dataset':16} {'ratio':>8} {'max error':>10} {'rms error':>10}")
with h5py.File(path, "r") as f:
    for name, original in originals.items():
        dset = f[name]
        back = dset[:]
        assert back.dtype == original.dtype and back.shape == original.shape
        ratio = original.nbytes / dset.id.get_storage_size()
        err = back.astype(np.int64) - original.astype(np.int64)
        max_err, rms_err = int(np.abs(err).max()), float(np.sqrt(np.mean(err.astype(np.float64) ** 2)))
        print(f"{name:16} {ratio:7.1f}x {max_err:10d} {rms_err:10.1f}")
        if name in ("ephys_auto", "ephys_lossless", "movie_lossless"):
            assert np.array_equal(back, original), f"{name} is not bit-exact"
        if name == "movie_bounded":
            assert max_err <= 2, f"{name}: max error {max_err} above the bound 2"
        assert ratio > 1, f"{name} did not compress"

print("OK: lossless is bit-exact, bounded is within max_error=2")
