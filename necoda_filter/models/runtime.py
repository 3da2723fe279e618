"""ONNX Runtime sessions for the learned codec: one cached session per (model, graph, threads).

CUDAExecutionProvider is used when ``onnxruntime-gpu`` is installed and reports it (set
``NECODA_PROVIDER=cpu`` to force the CPU). Thread count: ``NECODA_THREADS``, or the CPUs this process
may use (its affinity mask: ORT's own default counts every core of the machine, so under ``taskset`` or a
SLURM/container cpuset it would start more threads than the process has cores).
Parallel decoders (``necoda_filter.read``) run one chunk per worker; they ask for single-threaded
sessions with :func:`worker_threads` so that ``workers`` decoders never fight over the same cores with
``workers`` × ORT's default thread pool (oversubscription costs ~25 % on two cores).
ORT's intra-op threads do not spin-wait between operators (``NECODA_ORT_SPIN=1`` turns spinning back on):
the HDF5 filter path decodes with ORT's default pool in whatever process reads, and spinning threads
steal the cores that other reader processes (multiprocessing, Dask, MPI ranks) and the caller's own
finishing work need. Measured on two cores (512 frames of ``bench_read.py``'s 512×512 learned movie,
whole h5py reads, median of 3 runs × 3 reads): two reader processes side by side 3.2 → 2.7 s per read;
one process alone 1.47 vs 1.56 s, within run-to-run spread.
Float outputs never drive entropy coding (latents are integers coded with forward-adaptive pcodec
blocks), so provider and thread differences can only move the lossy reconstruction by float rounding.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading

import numpy as np

_lock = threading.Lock()
_sessions: dict[tuple, object] = {}
_local = threading.local()
#: ORT threads for sessions created in worker processes of ``read`` (set by :func:`set_process_threads`)
_process_threads: int | None = None


def _after_fork_in_child() -> None:
    """A forked child must not use or destroy its copies of the parent's sessions: their intra-op thread
    pools' threads stayed in the parent, and destroying one waits for them forever (a child that exits
    normally, or calls :func:`clear_cache`, hung at exit). They are kept alive and never used; the child
    builds its own. ``_lock`` may have been held by another thread of the parent (creating a session) at
    fork time: the child gets a fresh one, and so do the learned mode's context cache and decoder cuts."""
    global _lock
    _lock = threading.Lock()
    if _sessions:
        for s in _sessions.values():
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(s))  # never freed, even at interpreter exit
        _sessions.clear()
    learned = sys.modules.get(__name__.rsplit(".", 2)[0] + ".modes.learned")
    if learned is not None and hasattr(learned, "_context_lock"):
        learned._context_lock = threading.Lock()
    trunk = sys.modules.get(__name__.rsplit(".", 1)[0] + ".trunk")
    if trunk is not None and hasattr(trunk, "_lock"):
        trunk._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class worker_threads:
    """Context manager: sessions used by *this thread* run with ``n`` intra-op threads (unless the caller
    passes ``threads`` explicitly). ``with runtime.worker_threads(1): chunk.decode(buf)``."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        self.prev = getattr(_local, "threads", None)
        _local.threads = self.n
        return self

    def __exit__(self, *exc):
        _local.threads = self.prev
        return False


def set_process_threads(n: int | None) -> None:
    """Default intra-op threads for every session of this process (used in ``read``'s worker processes)."""
    global _process_threads
    _process_threads = n


def _default_threads() -> int:
    n = getattr(_local, "threads", None)
    if n is None:
        n = _process_threads
    if n is None:
        env = os.environ.get("NECODA_THREADS")
        n = int(env) if env else 0
    if int(n) <= 0:  # ORT's own default counts the machine's cores, ignoring taskset / cgroup cpusets
        from .. import cpus

        n = cpus.available()
    return int(n)


def threads_for(threads: int | None) -> int:
    """The intra-op thread count a session run with ``threads`` uses (None: this thread's, process's or
    environment's default): the same count for the C kernels that follow the network."""
    return int(threads) if threads else _default_threads()


def providers() -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    want = os.environ.get("NECODA_PROVIDER", "auto").lower()
    if want != "cpu" and "CUDAExecutionProvider" in avail:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


#: CUDA execution provider settings. ORT's defaults would let the decoded values drift between machines and
#: between runs: TF32 tensor-core convolutions (10-bit mantissa, on by default on Ampere and later GPUs) and
#: an exhaustive, timing-based cuDNN algorithm search (the chosen kernel, hence the rounding, can change
#: from run to run). Full float32 math and cuDNN's heuristic choice (fixed for a GPU, shape and version) keep
#: the GPU within the float-rounding margin the learned safeguard allows for (modes/learned.py).
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}


def provider_config(names) -> list:
    """ONNX Runtime ``providers=`` argument for the provider ``names`` (with their options)."""
    return [(n, dict(CUDA_OPTIONS)) if n == "CUDAExecutionProvider" else n for n in names]


def session(model_id: str, graph: str, blob: bytes, threads: int | None = None, preoptimized: bool = False):
    """The cached ONNX Runtime session of graph ``graph`` of model ``model_id`` (``blob``: its bytes) with
    ``threads`` intra-op threads. ``preoptimized``: the graph is ONNX Runtime's own optimised form (the
    decoder cut's blocked variant, models/trunk.py) and runs as it is, without optimising it again."""
    import onnxruntime as ort

    if threads is None or int(threads) <= 0:
        threads = _default_threads()
    prov = tuple(providers())
    spin = os.environ.get("NECODA_ORT_SPIN", "0") == "1"
    key = (model_id, graph, threads, prov, spin, bool(preoptimized))
    with _lock:
        s = _sessions.get(key)
        if s is None:
            so = ort.SessionOptions()
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
            so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if preoptimized
                                           else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            # no memory patterns: after a session's first run ORT plans one block for all its activations and
            # allocates it from the arena next to what the first run left there. One process decoding
            # 64x512x512 chunks on 1- and 2-thread sessions peaked at 1406 MB with patterns, 879 MB without;
            # decode times were the same within run-to-run spread (0.18-0.21 s per chunk on one thread)
            so.enable_mem_pattern = False
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
            s = ort.InferenceSession(blob, sess_options=so, providers=provider_config(prov))
            _sessions[key] = s
        return s


_run_options: dict = {}


class arena_shrink:
    """Context manager: ONNX runs of *this thread* shrink ORT's CPU memory arena at their end.

    Without it a session's arena keeps the peak activations of its largest run (a 64×512×512 chunk:
    ~0.25 GB for the encoder, ~0.5 GB for the decoder). ``necoda compress`` encodes *and* decodes every
    chunk in each worker process, so both arenas stayed resident per worker (measured: 1.05 GB per worker,
    2.34 GB peak tree RSS on a 2.4 GB NWB file with 2 workers; with shrinking 0.58 GB and 1.39 GB). It now
    shrinks the decoder's arena only, which is where the peak comes from (nwb/workers.py:_encode_chunk). Readers
    keep their arenas: re-faulting the activations of every chunk made whole-movie reads ~60 % slower.
    ``NECODA_ORT_ARENA=shrink`` / ``keep`` forces either everywhere."""

    def __enter__(self):
        self.prev = getattr(_local, "shrink", False)
        _local.shrink = True
        return self

    def __exit__(self, *exc):
        _local.shrink = self.prev
        return False


def run_options():
    """RunOptions for a call from this thread (arena shrinking per :class:`arena_shrink`)."""
    env = os.environ.get("NECODA_ORT_ARENA", "").lower()
    shrink = env == "shrink" or (env != "keep" and getattr(_local, "shrink", False))
    ro = _run_options.get(shrink)
    if ro is None:
        import onnxruntime as ort

        ro = ort.RunOptions()
        if shrink:
            ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        _run_options[shrink] = ro
    return ro


def run(model_id: str, graph: str, blob: bytes, feeds: dict, threads: int | None = None) -> list[np.ndarray]:
    s = session(model_id, graph, blob, threads)
    return s.run(None, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}, run_options())


#: decoder outputs up to this many bytes are written into a per-thread buffer that is reused from call to
#: call (no fresh allocation, page faults and copy per chunk); larger ones get a new array each time
SCRATCH_MAX_BYTES = 128 << 20


def scratch(shape, slot: str = "out") -> np.ndarray:
    """A float32 array of ``shape`` backed by this thread's reusable buffer ``slot`` (or a new array when
    it is larger than ``SCRATCH_MAX_BYTES``). Valid until this thread asks for that slot again."""
    n = int(np.prod(shape, dtype=np.int64))
    if n * 4 > SCRATCH_MAX_BYTES:
        return np.empty(shape, np.float32)
    bufs = getattr(_local, "scratch", None)
    if bufs is None:
        bufs = _local.scratch = {}
    buf = bufs.get(slot)
    if buf is None or buf.size < n:
        buf = bufs[slot] = np.empty(n, np.float32)
    return buf[:n].reshape(shape)


def run_into(model_id: str, graph: str, blob: bytes, feeds: dict, outs: list[np.ndarray],
             threads: int | None = None, preoptimized: bool = False) -> list[np.ndarray]:
    """Like :func:`run`, but ONNX Runtime writes the outputs straight into ``outs`` (C-contiguous float32
    arrays of the output shapes, in the graph's output order) through an I/O binding."""
    s = session(model_id, graph, blob, threads, preoptimized)
    io = s.io_binding()
    keep = []
    for k, v in feeds.items():
        a = np.ascontiguousarray(v, dtype=np.float32)
        keep.append(a)
        io.bind_cpu_input(k, a)
    for meta, o in zip(s.get_outputs(), outs):
        if o.dtype != np.float32 or not o.flags.c_contiguous or not o.flags.writeable:
            raise TypeError("run_into: outputs must be writeable C-contiguous float32 arrays")
        io.bind_output(meta.name, "cpu", 0, np.float32, list(o.shape), o.ctypes.data)
    s.run_with_iobinding(io, run_options())
    return outs


def clear_cache() -> None:
    """Drop the cached ONNX sessions, this thread's decoder buffer, the learned mode's cached decoder
    contexts and ``read``'s decoder threads and processes with their buffers (all are rebuilt on the next
    decode)."""
    from .. import reader

    reader.shutdown_pool()
    with _lock:
        _sessions.clear()
    _local.scratch = None
    from ..modes import learned

    with learned._context_lock:
        learned._context_cache.clear()
