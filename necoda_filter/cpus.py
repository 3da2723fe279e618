"""How many CPUs this process may use: the one answer for worker counts and ONNX Runtime threads."""
from __future__ import annotations

import os


def available() -> int:
    """CPUs in this process's affinity mask (``taskset``, cgroup cpusets under SLURM/containers), which
    ``os.cpu_count()`` and ONNX Runtime's default thread count ignore; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)
