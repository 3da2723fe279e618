"""User options <-> HDF5 cd_values: the one table (docs/FORMAT.md, "cd_values").

Slots 0..CD_USER_SLOTS-1 are written by :class:`necoda_filter.Necoda`; the C shim's ``set_local``
appends ``type class, type size, signed, byte order (0 LE, 1 BE), rank, chunk dims...``. cd_values are
parsed by the layout version in slot 0 and written in the lowest layout that holds them: layout 1
(CD_USER_SLOTS_V1 user slots: the default model; also every file written before models could be chosen)
unless a model is named, layout 2 (CD_USER_SLOTS, the model id in the last two) when one is.
"""
from __future__ import annotations

import math
import numbers
import os
import struct

import numpy as np

from . import modes
from .constants import CD_LAYOUT_VERSION, CD_MODEL_SLOT, CD_USER_SLOTS, CD_USER_SLOTS_V1
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
#: the learned model (name, content id or package folder; stored as its id): layout 2 slots
#: CD_MODEL_SLOT, CD_MODEL_SLOT + 1
MODEL_OPTION = "model"
OPTION_NAMES = (*OPTION_SLOTS, MODEL_OPTION)
#: user slots per cd_values layout version
USER_SLOTS = {1: CD_USER_SLOTS_V1, CD_LAYOUT_VERSION: CD_USER_SLOTS}
#: modes that code chunks with a learned model
MODEL_MODES = ("learned", "auto")


def _learned_levels(pkg=None) -> int | None:
    """Quality levels of ``pkg`` or the default learned model (None when the learned mode is unavailable)."""
    try:
        from .models import registry

        return int((pkg or registry.default()).tables["n_quality"])
    except Exception:  # noqa: BLE001 — no model installed: the mode itself will say so
        return None


def check_model(mode: str, model, strict: bool = True):
    """``(content id, package or None)`` of the ``model=`` option: a name of a built-in package, a content
    id (``necoda-<16 hex>``) or a package folder. Raises ValueError when ``mode`` never uses a model, and
    :class:`necoda_filter.models.registry.ModelNotFound` (a LookupError) naming ``model`` when it is not
    found. ``strict=False`` (a codec rebuilt from a stored config) accepts a well-formed id that is not
    installed here: decoding and encoding then say so, naming the id."""
    from .models import registry

    if mode not in MODEL_MODES:
        raise ValueError(f"necoda option model={model!r} applies to mode 'learned' or 'auto' only, not {mode!r}")
    if isinstance(model, registry.ModelPackage):
        return model.id, model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str) or not model:
        raise TypeError(f"necoda option model must be a model name, id (necoda-<16 hex digits>) or package "
                        f"folder, got {model!r}")
    try:
        pkg = registry.resolve(model)
    except registry.ModelNotFound as e:
        if registry.is_model_id(model):
            if not strict:
                return model, None
            raise registry.ModelNotFound(
                f"necoda model {model!r} is not installed: put its package folder (the output of `necoda train`) "
                f"on {registry.ENV_VAR}, or give the folder itself as model=") from None
        if os.path.isdir(os.path.expanduser(model)) or "names both" in str(e):
            raise  # a folder that exists: the registry says what is wrong with it (incomplete, changed, bad JSON)
        builtin = sorted(p.name for p in registry.BUILTIN_DIR.iterdir() if (p / "tables.json").is_file())
        raise registry.ModelNotFound(
            f"necoda model {model!r} not found: give a built-in model name ({', '.join(builtin)}), a model id "
            f"(necoda-<16 hex digits>) or a package folder (encoder.onnx, decoder.onnx, tables.json)") from None
    return pkg.id, pkg


def require_model(mode: str, opts: dict, shape, dtype) -> None:
    """Before a chunk is written with ``opts`` (a dataset's cd_values, a codec's config): when they name a
    model and the chunk will be coded with the learned mode, that model must be installed in this process,
    else :class:`ModelNotFound` naming the id and ``NECODA_MODEL_PATH``. (``chunk.encode`` stores a chunk
    its mode cannot code raw; a missing model is the writer's setup, never a reason to store raw.)"""
    model = opts.get(MODEL_OPTION)
    if model and modes.resolve(mode, shape, dtype) == "learned":
        from .models import registry

        if registry.is_model_id(model):
            registry.require_for_writing(model)
        else:
            check_model(mode, model)


def model_words(model_id: str | None) -> tuple[int, int]:
    """The two cd_values slots of a model id: its 64 bits, low word first; (0, 0) = the default model."""
    if not model_id:
        return 0, 0
    from .models import registry

    if not registry.is_model_id(model_id):
        raise ValueError(f"not a necoda model id: {model_id!r}")
    v = int(model_id[len(registry.ID_PREFIX):], 16)
    return v & 0xFFFFFFFF, v >> 32


def model_from_words(lo: int, hi: int) -> str | None:
    """The model id held by two cd_values slots (None for 0, 0: the default model)."""
    from .models import registry

    v = (int(hi) << 32) | int(lo)
    return f"{registry.ID_PREFIX}{v:0{registry.ID_HEX}x}" if v else None


BOUNDED_NEEDS_A_BOUND = "mode='bounded' needs max_error= (raw units) or max_error_noise= (noise units)"


def check_bound(name: str, v) -> float:
    """``max_error`` / ``max_error_noise`` as a float; a clear error unless a finite number >= 0."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"necoda option {name} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"necoda option {name} must be a finite number >= 0, got {v}")
    return v


def asks_exact(options: dict, dtype) -> bool:
    """``max_error`` below one raw unit on integers: only exact values meet it, which the learned mode's
    safeguard cannot promise (it keeps a margin of one unit for float differences between machines)."""
    me = options.get("max_error")
    return me is not None and np.dtype(dtype).kind in "iu" and float(me) < 1


def check_for_dtype(mode: str, options: dict, dtype) -> None:
    """Options that cannot work for data of ``dtype``, refused when the dataset or array is created (else
    every chunk would be stored raw, one log line each): ``mode="learned"`` with a bound that
    :func:`asks_exact`. ``mode="auto"`` codes such chunks losslessly instead (``chunk.encode``)."""
    if mode == "learned" and asks_exact(options, dtype):
        raise ValueError(f"mode='learned' with max_error={float(options['max_error']):g} on {np.dtype(dtype)} data "
                         "asks for exact values (a bound below one raw unit): use mode='lossless', or max_error >= 1")


def check_options(mode: str, options: dict, strict_model: bool = True, stored: bool = False) -> dict:
    """Validate user options; returns the options that are set (not None). ``model`` is resolved and
    returned as its content id (:func:`check_model`; ``strict_model``). An option the mode does not use
    (``quality`` for lossless, ``level`` for learned), and a ``level`` above pcodec's, are refused except
    in ``stored`` settings (a zarr array's metadata or a numcodecs config being opened, an HDF5 dataset's
    filter values given again as ``compression_opts``): earlier releases wrote such options."""
    if mode not in modes.MODE_CHOICES:
        raise ValueError(f"unknown necoda mode {mode!r}; choose one of {', '.join(modes.MODE_CHOICES)}")
    out = {}
    pkg = None
    for k, v in options.items():
        if k not in OPTION_NAMES:
            raise TypeError(f"unknown necoda option {k!r}; options are {', '.join(OPTION_NAMES)}")
        if v is None:
            continue
        if k == MODEL_OPTION:
            out[k], pkg = check_model(mode, v, strict_model)
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
    if not stored and mode != "auto":  # auto takes every option: its chunks are learned or lossless
        takes = modes.get(mode).options
        unused = sorted(k for k in out if k not in takes)
        if unused:
            which = f"option {unused[0]} does" if len(unused) == 1 else f"options {', '.join(unused)} do"
            raise ValueError(f"necoda {which} not apply to mode={mode!r}, which takes "
                             f"{', '.join(takes) if takes else 'no options'}")
    if "quality" in out and mode in MODEL_MODES and (pkg is not None or MODEL_OPTION not in out):
        nq = _learned_levels(pkg)
        if nq is not None and not 1 <= out["quality"] <= nq:
            which = (f"model {pkg.path.name} ({pkg.id})" if pkg is not None else "the built-in learned model")
            raise ValueError(f"necoda option quality must be 1..{nq} (levels of {which}), got {out['quality']}")
    if "level" in out and not stored:  # stored: an earlier release's level above 12 is coded at 12 (clamped)
        from .modes.lossless import MAX_LEVEL

        if out["level"] > MAX_LEVEL:  # pcodec's levels; a larger one was silently taken as MAX_LEVEL
            raise ValueError(f"necoda option level must be 1..{MAX_LEVEL} (pcodec compression levels), "
                             f"got {out['level']}")
    if mode == "bounded" and not ({"max_error", "max_error_noise"} & set(out)):
        raise ValueError(BOUNDED_NEEDS_A_BOUND)
    return out


def to_cd_values(mode: str = "auto", **options) -> tuple:
    """The user slots of cd_values, in the lowest layout that holds the options: layout 1 (8 slots) unless
    a model is named, layout 2 (10 slots, the model id's 64 bits in the last two) when one is."""
    opts = check_options(mode, options)
    version = CD_LAYOUT_VERSION if opts.get(MODEL_OPTION) else 1
    cd = [0] * USER_SLOTS[version]
    cd[0] = version
    cd[1] = MODE_AUTO if mode == "auto" else modes.MODE_IDS[mode]
    for k, (slot, kind) in OPTION_SLOTS.items():
        if kind == "f64":
            lo, hi = struct.unpack("<II", struct.pack("<d", opts.get(k, math.nan)))
            cd[slot], cd[slot + 1] = lo, hi
        else:
            cd[slot] = opts.get(k, 0)
    if version >= 2:
        cd[CD_MODEL_SLOT], cd[CD_MODEL_SLOT + 1] = model_words(opts[MODEL_OPTION])
    return tuple(cd)


def user_slots(cd) -> int:
    """Number of user slots of cd_values, by the layout version in slot 0 (ValueError if unknown)."""
    version = int(cd[0])
    if version not in USER_SLOTS:
        raise ValueError(f"necoda cd_values layout version {version} is not supported (this necoda-filter "
                         f"reads {', '.join(map(str, sorted(USER_SLOTS)))})")
    return USER_SLOTS[version]


def user_options(cd) -> tuple[str, dict]:
    """(mode name, options) from the user slots of cd_values (empty cd = defaults). ``cd`` may be the
    whole cd_values (what set_local appended after the user slots is ignored) in any known layout;
    a model named by the slots is returned as ``options["model"]`` (its id; not resolved)."""
    cd = tuple(int(c) for c in cd)
    if not cd:
        return "auto", {}
    n = user_slots(cd)
    if len(cd) < n:
        raise ValueError(f"necoda cd_values too short ({len(cd)} < {n} for layout version {cd[0]})")
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
    if n > CD_MODEL_SLOT + 1:
        model = model_from_words(cd[CD_MODEL_SLOT], cd[CD_MODEL_SLOT + 1])
        if model is not None:
            if mode not in MODEL_MODES:
                raise ValueError(f"necoda cd_values name model {model} for mode {mode!r}, which uses no model")
            opts[MODEL_OPTION] = model
    return mode, opts


def chunk_layout(cd) -> tuple[np.dtype, tuple]:
    """(dtype as stored in the file, chunk shape) from the slots appended by set_local (after the user
    slots of the layout version in slot 0)."""
    cd = tuple(int(c) for c in cd)
    if not cd:
        raise ValueError("necoda cd_values lack the dtype/chunk slots set_local appends")
    base = user_slots(cd)
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
