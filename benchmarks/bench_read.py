"""Benchmark ``necoda_filter.read`` against plain h5py slicing on a multi-chunk necoda dataset.

    python benchmarks/bench_read.py [--mode lossless|bounded|learned] [--frames 512] [--size 512]
                                    [--workers N] [--repeat 3] [--into] [--json OUT.json]

Each case runs h5py slicing and ``read`` with each executor in turn, ``repeat`` times (interleaved, so
all see the same machine load), and reports median wall times and CPU seconds: of the calling process
and, for the process executor, of each worker. On a shared machine the wall-clock speedup depends on
how many cores are free; the CPU critical path (the busiest process's CPU time) is what the wall time
would be with idle cores.

Data: a simulated two-photon movie (``necoda_filter.simulate.simulate_imaging`` on a 256 x 256 field of
view, tiled to ``size`` x ``size``), written with ``compression=Necoda(mode)`` and the chunking
``necoda compress`` uses (64 frames x full frame). Each timing reads, with HDF5's chunk cache off, the whole
dataset, a strided sub-selection, one frame, a 64 x 64-pixel region over every frame (trace extraction)
and a 16-frame window; every result is checked equal to h5py's. "auto" is ``read``'s default executor.
``--into`` reads into one reused buffer per method instead (h5py's ``read_direct``, ``read(out=)``): on a
VM whose freed memory goes back to the host (virtio-balloon free page reporting), first touching a fresh
output array can cost more than decoding it, and differently from one read to the next.
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


def _machine() -> dict:
    """What the figures depend on: the CPU (its vector width sets ONNX Runtime's kernels), the CPUs this
    process may use, and the ONNX Runtime build and providers the learned mode decodes with."""
    import platform

    import onnxruntime as ort

    from necoda_filter import cpus
    from necoda_filter.models import runtime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            info = fh.read().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
        flags = next((ln.split(":", 1)[1].split() for ln in info if ln.startswith("flags")), [])
        simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
        cpu += f" ({simd})" if simd else ""
    except OSError:
        pass
    return {"cpu": cpu, "cpus": cpus.available(), "onnxruntime": ort.__version__, "providers": runtime.providers()}


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _worker_pids():
    from necoda_filter import reader

    pool = reader._pool
    return list(pool._processes) if pool is not None and pool._processes else []


def measure(fn, pids=()):
    """(wall s, CPU s of this process, CPU s of each worker process, result)."""
    w0 = [_proc_cpu(p) for p in pids]
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    wcpu = [_proc_cpu(p) - a for p, a in zip(pids, w0)]
    return wall, cpu, wcpu, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="lossless", choices=["lossless", "bounded", "learned"])
    p.add_argument("--max-error", type=float, default=None, help="bounded/learned: max error (raw units)")
    p.add_argument("--frames", type=int, default=512)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--cases", default=None,
                   help="comma-separated subset of: whole, strided, one_frame, roi_64px, window_16")
    p.add_argument("--dir", default=None, help="folder for the temporary HDF5 file")
    p.add_argument("--into", action="store_true",
                   help="read into one reused, already touched buffer per method (h5py: read_direct; read: "
                        "out=) instead of a new array per read: the decode without allocation costs")
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
                   "workers": a.workers, "loadavg": os.getloadavg(), "machine": _machine(), "cases": {}}
        r0, c0 = a.size * 2 // 5, a.size * 3 // 5
        cases = {"whole": np.s_[...], "strided": np.s_[10:500:2, 50:450, ::3], "one_frame": np.s_[100],
                 # 64 x 64 pixels (a few cells) over every frame: what trace extraction reads
                 "roi_64px": np.s_[:, r0:r0 + 64, c0:c0 + 64],
                 "window_16": np.s_[100:116]}
        if a.cases:
            unknown = set(a.cases.split(",")) - set(cases)
            if unknown:
                p.error(f"unknown case(s) {sorted(unknown)}; choose from {sorted(cases)}")
            cases = {k: v for k, v in cases.items() if k in a.cases.split(",")}
        methods = ("h5py", "auto", "process", "thread", "serial")
        # warm the pools, sessions and buffers once (they are kept across calls)
        with h5py.File(path, "r") as f:
            for m in methods[1:]:
                read(f["movie"], np.s_[0:128], workers=a.workers, executor=m)
        pids = _worker_pids()
        for name, sel in cases.items():
            runs = {m: [] for m in methods}
            with h5py.File(path, "r", rdcc_nbytes=0) as f:
                d = f["movie"]
                ref = d[sel]
                bufs = {m: np.full(ref.shape, 7, ref.dtype) for m in methods} if a.into else {}
                for i in range(a.repeat):
                    # interleaved, so every method sees the same machine load, and rotated, so none always
                    # runs right after the same neighbour (each read allocates its output afresh; on this
                    # VM, freshly faulted memory costs vary a lot with what ran before)
                    for m in methods[i % len(methods):] + methods[:i % len(methods)]:
                        if m == "h5py" and a.into:
                            r = measure(lambda: (d.read_direct(bufs[m], sel), bufs[m])[1])
                        elif m == "h5py":
                            r = measure(lambda: d[sel])
                        else:
                            r = measure(lambda: read(d, sel, out=bufs.get(m), workers=a.workers, executor=m),
                                        pids if m in ("process", "auto") else ())
                        if (m != "h5py" or a.into) and (r[3].shape != ref.shape or not np.array_equal(r[3], ref)):
                            print(f"MISMATCH: read(executor={m}) differs from h5py for {name}", file=sys.stderr)
                            return 1
                        runs[m].append(r[:3])
                        del r  # free this result before the next read allocates its own
            row = {"mb": ref.nbytes / 1e6}
            base = statistics.median(w for w, _, _ in runs["h5py"])
            base_cpu = statistics.median(c for _, c, _ in runs["h5py"])
            for m in methods:
                wall = statistics.median(w for w, _, _ in runs[m])
                cpu = statistics.median(c for _, c, _ in runs[m])
                row[m] = {"median_s": wall, "best_s": min(w for w, _, _ in runs[m]), "main_cpu_s": cpu,
                          "speedup_median": base / wall}
                if m == "process" and runs[m][0][2]:
                    wc = [statistics.median(r[2][i] for r in runs[m]) for i in range(len(runs[m][0][2]))]
                    row[m]["worker_cpu_s"] = wc
                    # on idle cores the wall time is bounded below by the busiest process's CPU time
                    row[m]["cpu_critical_path_s"] = max([cpu, *wc])
                    row[m]["speedup_cpu_critical_path"] = base_cpu / max([cpu, *wc])
            results["cases"][name] = row
            print(f"{name:10s} {row['mb']:7.1f} MB  h5py {base:.3f}s (cpu {base_cpu:.3f}s)  "
                  + "  ".join(f"{m} {row[m]['median_s']:.3f}s (x{row[m]['speedup_median']:.2f})" for m in methods[1:])
                  + (f"  | process CPU critical path {row['process']['cpu_critical_path_s']:.3f}s "
                     f"(x{row['process']['speedup_cpu_critical_path']:.2f} vs h5py CPU)"
                     if "cpu_critical_path_s" in row["process"] else ""))
        shutdown_pool()
    results["into"] = a.into
    print(("reads into reused buffers (h5py read_direct, read(out=)); " if a.into else "")
          + f"mode={a.mode} raw {results['raw_mb']:.0f} MB, file {results['file_mb']:.0f} MB, "
          f"load average {results['loadavg'][0]:.2f}; {results['machine']['cpu']}, "
          f"{results['machine']['cpus']} CPUs, onnxruntime {results['machine']['onnxruntime']} "
          f"({', '.join(results['machine']['providers'])})")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
