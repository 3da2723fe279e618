"""Compression modes. Each mode turns one chunk (an ndarray) into a payload and back.

A mode is an object with ``name``, ``mode_id``, ``lossy``, ``options`` (accepted keyword options) and

* ``encode(arr, **options) -> Encoded`` — may raise; the container then stores the chunk raw;
* ``decode(payload, shape, dtype, params, model_id) -> ndarray`` — must raise on bad payloads.

Modes are imported lazily so that e.g. ONNX Runtime is only loaded when a learned chunk is met.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field

#: name -> (mode id stored in chunk headers, "module:object"). Never renumber ids.
MODE_TABLE: dict[str, tuple[int, str]] = {
    "raw": (0, "necoda_filter.modes.raw:MODE"),
    "lossless": (1, "necoda_filter.modes.lossless:MODE"),
    "bounded": (2, "necoda_filter.modes.bounded:MODE"),
    "learned": (3, "necoda_filter.modes.learned:MODE"),
}
MODE_IDS = {name: mid for name, (mid, _) in MODE_TABLE.items()}
MODE_NAMES = {mid: name for name, mid in MODE_IDS.items()}
#: "auto" is resolved per dataset by :func:`resolve`.
MODE_CHOICES = ("auto", *MODE_TABLE)

_loaded: dict[str, object] = {}


@dataclass
class Encoded:
    payload: bytes
    params: dict = field(default_factory=dict)
    model_id: str = ""


def get(name_or_id) -> object:
    name = MODE_NAMES.get(name_or_id, name_or_id) if isinstance(name_or_id, int) else name_or_id
    if name not in MODE_TABLE:
        raise ValueError(f"unknown necoda mode {name_or_id!r}; choose one of {', '.join(MODE_CHOICES)}")
    if name not in _loaded:
        modname, attr = MODE_TABLE[name][1].split(":")
        _loaded[name] = getattr(importlib.import_module(modname), attr)
    return _loaded[name]


#: "auto" treats a chunk as a functional-imaging movie (learned mode) when it is T x H x W integer data
#: with at least this many frames and this many pixels per side; everything else is coded losslessly.
AUTO_LEARNED_MIN_FRAMES = 8
AUTO_LEARNED_MIN_SIDE = 16


def is_imaging_shaped(shape, dtype) -> bool:
    import numpy as np

    return (shape is not None and len(shape) == 3 and np.dtype(dtype).kind in "iu"
            and shape[0] >= AUTO_LEARNED_MIN_FRAMES and min(shape[1:]) >= AUTO_LEARNED_MIN_SIDE)


@functools.lru_cache(maxsize=1)
def learned_available() -> bool:
    """Whether the learned mode can run here (ONNX Runtime importable, a model installed)."""
    try:
        get("learned")
        from ..models import registry

        registry.default()
        return True
    except Exception:  # noqa: BLE001 — any missing piece means "not available"
        return False


def resolve(mode: str, shape=None, dtype=None) -> str:
    """Concrete mode for ``mode``. "auto": ``learned`` for imaging-shaped integer chunks (T x H x W)
    when the learned mode is available, else ``lossless`` (README, "Choosing a mode")."""
    if mode != "auto":
        get(mode)  # validates
        return mode
    if is_imaging_shaped(shape, dtype) and learned_available():
        return "learned"
    return "lossless"
