"""How many CPUs (and how much memory) this process may use: the one answer for worker counts and ONNX
Runtime threads."""
from __future__ import annotations

import os


def available() -> int:
    """CPUs in this process's affinity mask (``taskset``, cgroup cpusets under SLURM/containers), which
    ``os.cpu_count()`` and ONNX Runtime's default thread count ignore; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


#: resident memory one parallel coder may reach: measured 685 MB per `necoda compress` worker encoding and
#: decoding 64 x 512 x 512 learned chunks (benchmarks/nwb_scale.py), lossless ones ~200 MB; a decoder of
#: `read` holds one chunk's network activations and output, less
WORKER_BYTES = 800 << 20


def _memory_available() -> int | None:
    """Bytes this process may still use: the system's MemAvailable, or less under a cgroup (v2) memory limit
    on this process's cgroup or any above it (containers, SLURM jobs: MemAvailable there is the host's).
    None where neither can be read."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    room = _cgroup_room()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


#: cgroup memory files: (mount, line prefix in /proc/self/cgroup, limit, charged, reclaimable key in memory.stat)
_CGROUP_MEMORY = (("/sys/fs/cgroup", "0::", "memory.max", "memory.current", "inactive_file"),  # v2
                  ("/sys/fs/cgroup/memory", None, "memory.limit_in_bytes", "memory.usage_in_bytes",
                   "total_inactive_file"))  # v1


def _cgroup_room(layouts=_CGROUP_MEMORY, proc: str = "/proc/self/cgroup") -> int | None:
    """The least room under the memory limits of this process's cgroup and its ancestors (v2, or v1's memory
    controller): limit minus what is charged, less the page cache the kernel reclaims first; None when no
    limit is set or none can be read."""
    from pathlib import Path

    try:
        with open(proc) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    room = None
    for mount, prefix, limit_file, used_file, cache_key in layouts:
        rel = None
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) == 3 and ((prefix is not None and line.startswith(prefix))
                                    or (prefix is None and "memory" in parts[1].split(","))):
                rel = parts[2]
        if rel is None:
            continue
        top = Path(mount)
        path = top / rel.lstrip("/")
        while True:
            try:
                limit = (path / limit_file).read_text().strip()
                if limit != "max" and int(limit) < 1 << 60:  # v1 writes "no limit" as a huge number
                    used = int((path / used_file).read_text())
                    stat = dict(ln.split()[:2] for ln in (path / "memory.stat").read_text().splitlines()
                                if len(ln.split()) >= 2)
                    used -= int(stat.get(cache_key, 0))
                    r = max(0, int(limit) - max(0, used))
                    room = r if room is None else min(room, r)
            except (OSError, ValueError):
                pass
            if path == top or top not in path.parents:
                break
            path = path.parent
    return room


def workers(per_worker: int = WORKER_BYTES) -> int:
    """Parallel coders (processes of compress/decompress, decoders of ``read``) when none are asked for: the
    CPUs this process may use, but no more than three quarters of the memory available holds at
    ``per_worker`` bytes each (a 64-core machine with 32 GB would otherwise start 64 coders of up to 0.7 GB)."""
    n = available()
    avail = _memory_available()
    if avail is not None:
        n = min(n, max(1, int(avail * 0.75) // int(per_worker)))
    return n
