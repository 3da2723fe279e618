"""Benchmark ``necoda_filter.read`` against plain h5py slicing on a multi-chunk necoda dataset.

    python benchmarks/bench_read.py [--mode lossless|bounded|learned] [--frames 512] [--size 512]
                                    [--workers N] [--repeat 3] [--json OUT.json]

Data: a simulated two-photon movie (``necoda_filter.simulate.simulate_imaging`` on a 256 x 256 field of
view, tiled to ``size`` x ``size``), written with ``compression=Necoda(mode)`` and the chunking
``necoda compress`` uses (64 frames x full frame). Each timing reads the whole dataset (and a strided
sub-selection) in a fresh, cold chunk cache; the best and median of ``repeat`` runs are reported, and
every result is checked equal to h5py's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import h5py
import numpy as np

import necoda_filter
from necoda_filter import Necoda
from necoda_filter.reader import read, shutdown_pool


def make_movie(frames: int, size: int, seed: int = 0) -> np.ndarray:
    from necoda_filter.simulate import simulate_imaging

    base = 256 if size >= 256 else size
    sim = simulate_imaging(n_frames=frames, height=base, width=base, n_cells=60, seed=seed)
    m = sim.movie
    reps = -(-size // base)
    tiles = [[np.flip(m, axis=1 + ((i + j) % 2)) if (i + j) % 2 else m for j in range(reps)] for i in range(reps)]
    big = np.block(tiles)[:, :size, :size]
    return np.ascontiguousarray(big)


def timeit(fn, repeat):
    ts = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), statistics.median(ts), out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="lossless", choices=["lossless", "bounded", "learned"])
    p.add_argument("--max-error", type=float, default=None, help="bounded/learned: max error (raw units)")
    p.add_argument("--frames", type=int, default=512)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--dir", default=None, help="folder for the temporary HDF5 file")
    a = p.parse_args(argv)

    opts = {}
    if a.mode in ("bounded", "learned") and a.max_error is None and a.mode == "bounded":
        opts["max_error_noise"] = 0.5
    if a.max_error is not None:
        opts["max_error"] = a.max_error
    filt = Necoda(mode=a.mode, **opts)
    movie = make_movie(a.frames, a.size)
    chunks = (64, a.size, a.size)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        path = os.path.join(tmp, "bench.h5")
        t = time.perf_counter()
        with h5py.File(path, "w") as f:
            f.create_dataset("movie", data=movie, chunks=chunks, compression=filt)
        t_write = time.perf_counter() - t
        stored = os.path.getsize(path)
        del movie
        results = {"mode": a.mode, "options": opts, "shape": [a.frames, a.size, a.size], "dtype": "uint16",
                   "chunks": list(chunks), "raw_mb": a.frames * a.size * a.size * 2 / 1e6,
                   "file_mb": stored / 1e6, "write_s": t_write, "cpus": os.cpu_count(),
                   "workers": a.workers, "loadavg": os.getloadavg(), "cases": {}}
        cases = {"whole": np.s_[...], "strided": np.s_[10:500:2, 50:450, ::3], "one_frame": np.s_[100]}
        # warm the process pool once (it is persistent across calls)
        with h5py.File(path, "r") as f:
            read(f["movie"], np.s_[0:128], workers=a.workers)
        for name, sel in cases.items():
            row = {}
            with h5py.File(path, "r", rdcc_nbytes=0) as f:
                d = f["movie"]
                best, med, ref = timeit(lambda: d[sel], a.repeat)
                row["h5py"] = {"best_s": best, "median_s": med}
                for ex in ("process", "thread", "serial"):
                    b, m, got = timeit(lambda: read(d, sel, workers=a.workers, executor=ex), a.repeat)
                    if got.shape != ref.shape or not np.array_equal(got, ref):
                        print(f"MISMATCH: read(executor={ex}) differs from h5py for {name}", file=sys.stderr)
                        return 1
                    row[ex] = {"best_s": b, "median_s": m, "speedup_best": best / b, "speedup_median": med / m}
                row["mb"] = ref.nbytes / 1e6
            results["cases"][name] = row
            print(f"{name:10s} {row['mb']:8.1f} MB  h5py {row['h5py']['best_s']:.3f}s  "
                  + "  ".join(f"{ex} {row[ex]['best_s']:.3f}s (x{row[ex]['speedup_best']:.2f})"
                              for ex in ("process", "thread", "serial")))
        shutdown_pool()
    print(f"mode={a.mode} raw {results['raw_mb']:.0f} MB, file {results['file_mb']:.0f} MB, "
          f"load average {results['loadavg'][0]:.2f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
