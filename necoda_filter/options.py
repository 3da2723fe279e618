"""User options <-> HDF5 cd_values: the one table (docs/FORMAT.md, "cd_values").

Slots 0..CD_USER_SLOTS-1 are written by :class:`necoda_filter.Necoda`; the C shim's ``set_local``
appends ``type class, type size, signed, byte order (0 LE, 1 BE), rank, chunk dims...``.
"""
from __future__ import annotations

import math
import numbers
import struct

import numpy as np

from . import modes
from .constants import CD_LAYOUT_VERSION, CD_USER_SLOTS
from .dtypes import from_hdf5

MODE_AUTO = 255

#: option name -> (first slot, kind). "f64" takes two slots (low word first); unset f64 is NaN,
#: unset u32 is 0.
OPTION_SLOTS = {
    "max_error": (2, "f64"),
    "max_error_noise": (4, "f64"),
    "quality": (6, "u32"),
    "level": (7, "u32"),
}
OPTION_NAMES = tuple(OPTION_SLOTS)


def _learned_levels() -> int | None:
    """Quality levels of the default learned model (None when the learned mode is unavailable)."""
    try:
        from .models import registry

        return int(registry.default().tables["n_quality"])
    except Exception:  # noqa: BLE001 — no model installed: the mode itself will say so
        return None


BOUNDED_NEEDS_A_BOUND = "mode='bounded' needs max_error= (raw units) or max_error_noise= (noise units)"


def check_bound(name: str, v) -> float:
    """``max_error`` / ``max_error_noise`` as a float; a clear error unless a finite number >= 0."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"necoda option {name} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"necoda option {name} must be a finite number >= 0, got {v}")
    return v


def check_options(mode: str, options: dict) -> dict:
    """Validate user options; returns the options that are set (not None)."""
    if mode not in modes.MODE_CHOICES:
        raise ValueError(f"unknown necoda mode {mode!r}; choose one of {', '.join(modes.MODE_CHOICES)}")
    out = {}
    for k, v in options.items():
        if k not in OPTION_SLOTS:
            raise TypeError(f"unknown necoda option {k!r}; options are {', '.join(OPTION_NAMES)}")
        if v is None:
            continue
        kind = OPTION_SLOTS[k][1]
        if kind == "f64":
            v = check_bound(k, v)
        else:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"necoda option {k} must be a number, got {v!r}")
            if not math.isfinite(v) or int(v) != v or not 0 < int(v) < 2**32:
                raise ValueError(f"necoda option {k} must be a positive integer, got {v}")
            v = int(v)
        out[k] = v
    if mode in ("lossless", "raw") and ("max_error" in out or "max_error_noise" in out):
        raise ValueError(f"mode={mode!r} is exact; max_error/max_error_noise need mode='bounded' or 'learned'")
    if "quality" in out and mode in ("learned", "auto"):
        nq = _learned_levels()
        if nq is not None and not 1 <= out["quality"] <= nq:
            raise ValueError(f"necoda option quality must be 1..{nq} (levels of the built-in learned model), "
                             f"got {out['quality']}")
    if "level" in out:
        from .modes.lossless import MAX_LEVEL

        if out["level"] > MAX_LEVEL:  # pcodec's levels; a larger one was silently taken as MAX_LEVEL
            raise ValueError(f"necoda option level must be 1..{MAX_LEVEL} (pcodec compression levels), "
                             f"got {out['level']}")
    if mode == "bounded" and not ({"max_error", "max_error_noise"} & set(out)):
        raise ValueError(BOUNDED_NEEDS_A_BOUND)
    return out


def to_cd_values(mode: str = "auto", **options) -> tuple:
    opts = check_options(mode, options)
    cd = [0] * CD_USER_SLOTS
    cd[0] = CD_LAYOUT_VERSION
    cd[1] = MODE_AUTO if mode == "auto" else modes.MODE_IDS[mode]
    for k, (slot, kind) in OPTION_SLOTS.items():
        if kind == "f64":
            lo, hi = struct.unpack("<II", struct.pack("<d", opts.get(k, math.nan)))
            cd[slot], cd[slot + 1] = lo, hi
        else:
            cd[slot] = opts.get(k, 0)
    return tuple(cd)


def user_options(cd) -> tuple[str, dict]:
    """(mode name, options) from the user slots of cd_values (empty cd = defaults)."""
    cd = tuple(int(c) for c in cd)
    if not cd:
        return "auto", {}
    if cd[0] != CD_LAYOUT_VERSION:
        raise ValueError(f"necoda cd_values layout version {cd[0]} is not supported (expected {CD_LAYOUT_VERSION})")
    if len(cd) < CD_USER_SLOTS:
        raise ValueError(f"necoda cd_values too short ({len(cd)} < {CD_USER_SLOTS})")
    mode = "auto" if cd[1] == MODE_AUTO else modes.MODE_NAMES.get(cd[1])
    if mode is None:
        raise ValueError(f"necoda cd_values name unknown mode id {cd[1]}")
    opts = {}
    for k, (slot, kind) in OPTION_SLOTS.items():
        if kind == "f64":
            (v,) = struct.unpack("<d", struct.pack("<II", cd[slot], cd[slot + 1]))
            if not math.isnan(v):
                opts[k] = v
        elif cd[slot]:
            opts[k] = cd[slot]
    return mode, opts


def chunk_layout(cd) -> tuple[np.dtype, tuple]:
    """(dtype as stored in the file, chunk shape) from the slots appended by set_local."""
    cd = tuple(int(c) for c in cd)
    base = CD_USER_SLOTS
    if len(cd) < base + 5:
        raise ValueError("necoda cd_values lack the dtype/chunk slots set_local appends")
    tclass, size, signed, order, rank = cd[base:base + 5]
    shape = cd[base + 5:base + 5 + rank]
    if len(shape) != rank:
        raise ValueError("necoda cd_values chunk shape is truncated")
    dt = from_hdf5(tclass, size, signed)
    if order == 1 and dt.itemsize > 1:
        dt = dt.newbyteorder(">")
    return dt, tuple(shape)
