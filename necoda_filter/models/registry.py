"""Content-addressed model registry.

A model package is a folder holding ``encoder.onnx``, ``decoder.onnx`` and ``tables.json`` (and, for a
split decoder, ``decoder_context.onnx``: see ``train/export.py:split_decoder``); its id is
``"necoda-" + first 16 hex digits of sha256(encoder bytes + decoder bytes + tables bytes [+ context bytes])``.
Chunk headers store that id, so a chunk always names the exact graphs and weights that decode it.

Search path: the packages under ``necoda_filter/models/builtin/`` (shipped in the wheel), then every folder
listed in the ``NECODA_MODEL_PATH`` environment variable (``os.pathsep``-separated); each entry may be a
package itself or a folder of packages.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

BUILTIN_DIR = Path(__file__).with_name("builtin")
#: the built-in package that ``mode="learned"`` uses when no model is named
DEFAULT_NAME = "imaging-v2.1"
FILES = ("encoder.onnx", "decoder.onnx", "tables.json")
#: files a package may add; hashed after FILES when present (packages without them keep their ids)
OPTIONAL_FILES = ("decoder_context.onnx",)
ENV_VAR = "NECODA_MODEL_PATH"


class ModelNotFound(LookupError):
    """The model id named by a chunk is not installed."""


@dataclass
class ModelPackage:
    id: str
    path: Path
    encoder: bytes
    decoder: bytes
    tables: dict
    #: the split decoder's context graph (``decoder_context.onnx``), or None
    context: bytes | None = None


def model_id_of_bytes(encoder: bytes, decoder: bytes, tables: bytes, *optional: bytes) -> str:
    h = hashlib.sha256()
    for b in (encoder, decoder, tables, *optional):
        h.update(b)
    return "necoda-" + h.hexdigest()[:16]


def _read_files(p: Path) -> list[bytes]:
    """FILES then the OPTIONAL_FILES present (an optional file the tables ask for must exist)."""
    out = [(p / f).read_bytes() for f in FILES]
    return out + [(p / f).read_bytes() for f in OPTIONAL_FILES if (p / f).is_file()]


def model_id_of_dir(path) -> str:
    return model_id_of_bytes(*_read_files(Path(path)))


_lock = threading.Lock()
_by_id: dict[str, ModelPackage] = {}
_scanned_key: tuple | None = None
_index: dict[str, Path] = {}


def _search_dirs() -> list[Path]:
    dirs = [BUILTIN_DIR]
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if entry.strip():
            dirs.append(Path(entry).expanduser())
    return dirs


def _candidates(d: Path):
    if (d / "tables.json").is_file():
        yield d
    elif d.is_dir():
        for sub in sorted(d.iterdir()):
            if (sub / "tables.json").is_file():
                yield sub


def _scan() -> dict[str, Path]:
    global _scanned_key, _index
    key = tuple(str(d) for d in _search_dirs())
    if key == _scanned_key:
        return _index
    idx: dict[str, Path] = {}
    for d in _search_dirs():
        for pkg in _candidates(d):
            try:
                mid = model_id_of_dir(pkg)
            except OSError:
                continue
            idx.setdefault(mid, pkg)
    _index, _scanned_key = idx, key
    return idx


def available() -> dict[str, Path]:
    """All installed model ids -> package folder."""
    with _lock:
        return dict(_scan())


def label(model_id: str) -> str:
    """``model_id`` with the name of its installed package folder, e.g. ``imaging-v2.1 (necoda-249d…)``;
    the bare id when no installed package has it."""
    path = available().get(model_id)
    return f"{path.name} ({model_id})" if path is not None else model_id


def _load(mid: str, path: Path) -> ModelPackage:
    files = _read_files(path)
    got = model_id_of_bytes(*files)
    if got != mid:
        raise ModelNotFound(f"necoda model {mid} at {path} changed on disk (now {got})")
    try:
        tables = json.loads(files[2])
    except ValueError as e:
        raise ModelNotFound(f"necoda model folder {path}: tables.json is not valid JSON ({e})") from None
    context = files[3] if len(files) > 3 else None
    if tables.get("decoder_split") and context is None:
        raise ModelNotFound(f"necoda model {mid} at {path}: its tables name a split decoder but "
                            f"{OPTIONAL_FILES[0]} is missing")
    return ModelPackage(mid, path, files[0], files[1], tables, context)


def get(model_id: str) -> ModelPackage:
    """The package with this content id; raises :class:`ModelNotFound` naming the id."""
    with _lock:
        if model_id in _by_id:
            return _by_id[model_id]
        path = _scan().get(model_id)
        if path is None:
            global _scanned_key
            _scanned_key = None  # rescan once: a package may have been installed meanwhile
            path = _scan().get(model_id)
        if path is None:
            raise ModelNotFound(
                f"necoda model {model_id!r} is not installed: this chunk was compressed with it. Put its "
                f"package folder (encoder.onnx, decoder.onnx, tables.json, and decoder_context.onnx when it has "
                f"one) on {ENV_VAR} or upgrade necoda-filter. A model is named by its content: a package "
                f"changed or retrained in place after the file was written has another id and cannot decode it")
        pkg = _load(model_id, path)
        _by_id[model_id] = pkg
        return pkg


_default: ModelPackage | None = None


def default() -> ModelPackage:
    """The built-in default package for ``mode="learned"`` (hashed and loaded once per process: every
    chunk encoded without a model asks for it)."""
    global _default
    if _default is None:
        path = BUILTIN_DIR / DEFAULT_NAME
        if not (path / "tables.json").is_file():
            raise ModelNotFound(f"necoda built-in model {DEFAULT_NAME!r} is missing from {BUILTIN_DIR}")
        _default = get(model_id_of_dir(path))
    return _default


#: a model id: "necoda-" and the first 16 hex digits of the package's sha256
ID_PREFIX = "necoda-"
ID_HEX = 16


def is_model_id(s) -> bool:
    """Whether ``s`` is spelled like a model id (``necoda-`` + 16 lowercase hex digits)."""
    return (isinstance(s, str) and s.startswith(ID_PREFIX) and len(s) == len(ID_PREFIX) + ID_HEX
            and all(c in "0123456789abcdef" for c in s[len(ID_PREFIX):]))


#: package folder (resolved) -> (size and mtime of its files, content id): a folder named again (every
#: chunk a worker encodes with ``model=FOLDER``) is hashed again only when one of its files changed
_dir_ids: dict[str, tuple[tuple, str]] = {}


def _dir_id(p: Path) -> str:
    key = str(p.resolve())
    sig = tuple((f, st.st_size, st.st_mtime_ns) for f in (*FILES, *OPTIONAL_FILES)
                if (st := _stat(p / f)) is not None)
    with _lock:
        hit = _dir_ids.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    mid = model_id_of_dir(p)
    with _lock:
        _dir_ids[key] = (sig, mid)
    return mid


def _stat(f: Path):
    try:
        return f.stat()
    except OSError:
        return None


def resolve(name_or_id: str | None) -> ModelPackage:
    """A package by id (``necoda-...``), built-in folder name, or path; ``None`` = default.

    A package given as a folder is remembered by its id for the rest of the process: chunks written
    with it here (the HDF5 filter names models by id) find it without ``NECODA_MODEL_PATH``."""
    if not name_or_id:
        return default()
    if is_model_id(name_or_id):
        return get(name_or_id)
    as_path = Path(name_or_id).expanduser()
    pathlike = os.sep in name_or_id or "/" in name_or_id or name_or_id.startswith((".", "~"))
    builtin = BUILTIN_DIR / name_or_id
    if pathlike or not (builtin / "tables.json").is_file():
        p = as_path  # "./imaging-v2", "models/x", "~/m": a folder, never a built-in's name
    elif (as_path / "tables.json").is_file() and _dir_id(as_path) != _dir_id(builtin):
        raise ModelNotFound(f"necoda model {name_or_id!r} names both the built-in model and the folder "
                            f"{as_path.resolve()} (another model): give the folder as ./{name_or_id} or its full "
                            "path, or the model's id")
    else:
        p = builtin
    if (p / "tables.json").is_file():
        try:
            mid = _dir_id(p)
        except OSError as e:  # e.g. encoder.onnx missing
            raise ModelNotFound(f"necoda model folder {name_or_id!r} is not a complete model package "
                                f"({', '.join(FILES)}): {e}") from None
        with _lock:
            if mid not in _by_id:
                _by_id[mid] = _load(mid, p.resolve())  # absolute: still found after a chdir, or by a worker
            return _by_id[mid]
    raise ModelNotFound(f"necoda model {name_or_id!r} not found (give an id, a built-in name or a package folder)")


def require_for_writing(model_id: str) -> ModelPackage:
    """The package with this id, for writing chunks with it (the id comes from a dataset's cd_values or
    a codec's config). Raises :class:`ModelNotFound` naming the id and the remedy: the writer must never
    fall back to storing the chunk uncompressed."""
    try:
        return get(model_id)
    except ModelNotFound as e:
        if "changed on disk" in str(e):
            raise
        raise ModelNotFound(
            f"necoda model {model_id!r} (named by the dataset's necoda filter options / codec config) is not "
            f"installed in this process, so chunks cannot be written with it: put its package folder "
            f"(encoder.onnx, decoder.onnx, tables.json; the output of `necoda train`) on {ENV_VAR}, or name "
            f"the folder (model=FOLDER) in this process first") from None
