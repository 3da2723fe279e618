"""``necoda info FILE``: per dataset, the filter, necoda mode/model/options and the storage ratio."""
from __future__ import annotations

import json
import math

from . import whole_number


def add_arguments(p):
    p.add_argument("file", help="HDF5 or NWB file, or a zarr store (folder)")
    p.add_argument("--all", action="store_true", help="list every chunked dataset, not only necoda ones")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--provenance", action="store_true",
                   help="also list every necoda_* attribute stored with each dataset (version, source, noise model...)")
    p.add_argument("--chunks", type=whole_number(0, " (all)"), default=8, metavar="N",
                   help="chunk headers sampled per dataset to report modes (default 8; 0 = all)")


def dataset_info(d, max_chunks: int = 8) -> dict:
    """Facts about one h5py dataset: filter pipeline, necoda chunk headers sampled, ratio, provenance."""
    import h5py
    import numpy as np

    from .. import chunk, modes, options
    from ..constants import FILTER_ID

    plist = d.id.get_create_plist()
    filters, necoda_cd, after = [], None, []  # after: (pipeline position, id) of the filters after necoda
    for i in range(plist.get_nfilters()):
        fid, _, cd, name = plist.get_filter(i)
        filters.append("necoda" if fid == FILTER_ID else h5py._hl.filters.get_filter_name(fid))
        if necoda_cd is not None:
            after.append((i, fid))
        if fid == FILTER_ID:
            necoda_cd = cd
    stored = d.id.get_storage_size()
    row = {
        "path": d.name, "shape": list(d.shape), "dtype": str(d.dtype), "chunks": list(d.chunks or []),
        "filters": filters, "raw_bytes": int(d.nbytes), "stored_bytes": int(stored),
        # a storage ratio only where a filter compresses: without one it would show the bytes of variable-
        # length strings or a partial edge chunk's padding (0.5x, 0.992x), not compression
        "ratio": round(d.nbytes / stored, 3) if stored and filters and d.dtype.kind != "O" else None,
    }
    if necoda_cd is not None:
        try:
            mode, opts = options.user_options(necoda_cd)
            row["requested"] = {"mode": mode, **opts}
        except ValueError as e:
            row["requested"] = {"error": str(e)}
        n = d.id.get_num_chunks()
        grid = int(np.prod([-(-s // c) for s, c in zip(d.shape, d.chunks)], dtype=np.int64))
        if n < grid:  # chunks never written read as the fill value: the ratio is over the written ones
            row["chunks_in_grid"] = grid
            chunk_bytes = int(np.prod(d.chunks, dtype=np.int64)) * d.dtype.itemsize
            row["ratio"] = round(n * chunk_bytes / stored, 3) if stored else None

        def buffer(i):
            mask, buf = d.id.read_direct_chunk(d.id.get_chunk_info(i).chunk_offset)
            return _undo_later_filters(buf, mask, after)

        row.update(_chunk_headers(buffer, n, max_chunks))
    from .. import provenance

    prov = provenance.read(d)  # typed necoda_* attributes written by `necoda compress`
    if prov:
        row["provenance"] = {k: _jsonable(v) for k, v in prov.items()}
    return row


def _undo_later_filters(buf: bytes, mask: int, after: list) -> bytes:
    """A stored chunk's necoda container: the filters after necoda in the pipeline (the checksum and
    compressors HDF5 allows there) undone, last first. A filter that is not undone here raises."""
    import h5py
    import zlib

    for pos, fid in reversed(after):
        if mask & (1 << pos):  # HDF5 skipped this filter for this chunk
            continue
        if fid == h5py.h5z.FILTER_FLETCHER32:
            buf = bytes(buf)[:-4]
        elif fid == h5py.h5z.FILTER_DEFLATE:
            buf = zlib.decompress(bytes(buf))
        else:
            raise ValueError(f"filter {fid} after necoda: chunk headers not read")
    return buf


def _fmt(v, spec=".4g") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else str(v)


def describe(dset: h5py.Dataset) -> str | None:
    """One sentence on the necoda compression of ``dset``, or None when it is not necoda-compressed."""
    row = dataset_info(dset, max_chunks=8)
    from .. import provenance

    prov = provenance.read(dset) or {}
    if "necoda" not in row["filters"]:
        return _decoded_text(prov)
    modes_ = row.get("chunk_modes") or {}

    requested = (row.get("requested") or {}).get("mode")
    lossy = prov.get("lossy")
    if lossy is None and modes_:
        lossy = _lossy_chunks(modes_)
    elif lossy is None:  # no chunk header read (none written, or unreadable): what the filter asks for
        lossy = True if requested in ("learned", "bounded") else None if requested == "auto" else False
    mode = prov.get("mode") or ", ".join(sorted(modes_)) or requested or "?"
    bits = []
    quality = prov.get("quality", row.get("qualities"))
    if isinstance(quality, list) and len(quality) == 1:
        quality = quality[0]
    if quality not in (None, []):
        bits.append(f"quality {quality}")
    # the options it was written with: its record's, else (written through the filter) the filter's own
    given = prov.get("options") if prov else {k: v for k, v in (row.get("requested") or {}).items()
                                              if k not in ("mode", "error", "model")}  # the model: named below
    opts = {k: v for k, v in (given or {}).items() if k != "quality"}
    bits += [f"{k}={v}" for k, v in sorted(opts.items())]
    model = _model_label(prov["model_id"]) if prov.get("model_id") else ", ".join(map(_model_label, row.get("models") or []))
    if model:
        bits.append(f"model {model}")
    ratio = prov.get("ratio", row.get("ratio"))
    flags = ((["LOSSY"] if lossy else ["lossy or lossless: no chunk header read"] if lossy is None
              else [] if mode == "lossless" else ["lossless"]) + ([", ".join(bits)] if bits else []))
    text = (f"data is necoda-compressed{' by necoda-filter ' + prov['version'] if prov.get('version') else ''}"
            f" with mode {mode}{' (' + '; '.join(flags) + ')' if flags else ''}"
            f", ratio {_fmt(ratio)}")
    if prov and not lossy:
        text += "; checked bit-exact at write time"
        for h in provenance.earlier_lossy(prov):  # a lossless copy of lossy data is still lossy data
            text += (f", but the data it holds was LOSSILY compressed before ({_earlier_text(h)}"
                     f"{', by necoda-filter ' + h['version'] if h.get('version') else ''})")
    elif prov:
        text += "; measured at write time: " + (", ".join(provenance.fidelity_bits(prov)) or "n/a")
        text += _before_text(provenance.earlier_lossy(prov))
    elif lossy:
        text += "; no fidelity was recorded when it was written (compare with the original: `necoda evaluate`)"
    return text + "."


def _decoded_text(prov: dict) -> str | None:
    """A `necoda decompress` copy: the data is plain now, but what it holds may have been coded lossily."""
    from .. import provenance

    if not prov.get("decompressed_by"):
        return None
    runs = ([prov] if prov.get("lossy") else []) + provenance.earlier_lossy(prov)
    text = f"data was decoded from necoda compression by {prov['decompressed_by']}"
    if runs:
        return text + "; it holds LOSSILY compressed data (" + "; ".join(map(_earlier_text, runs)) + ")."
    return text + "; it was compressed losslessly (bit-exact)."


def _before_text(earlier: list) -> str:
    """For lossy data compressed lossily again: the earlier runs, whose errors add to this one's (the
    figures measured at write time compare with the data each run was given, not the acquired data)."""
    if not earlier:
        return ""
    return ("; against the data it was given, which had been LOSSILY compressed before ("
            + "; ".join(_earlier_text(h) for h in earlier)
            + "): errors relative to the acquired data add up (`necoda evaluate ACQUIRED.nwb THIS.nwb`)")


def _model_label(model_id: str) -> str:
    try:
        from ..models import registry

        return registry.label(model_id)
    except Exception:  # noqa: BLE001  (the learned mode not installed: the id is all we know)
        return model_id


def _lossy_chunks(chunk_modes) -> bool:
    """Whether any of the sampled chunk modes (names) is lossy."""
    from .. import modes

    return any(modes.get(modes.MODE_IDS[m]).lossy for m in chunk_modes or {} if m in modes.MODE_IDS)


def _earlier_text(h: dict) -> str:
    """An earlier (lossy) provenance record in words: mode, quality and its write-time fidelity."""
    from .. import provenance

    return ", ".join([f"mode {h.get('mode', '?')}"] + ([f"quality {h['quality']}"] if h.get("quality") else [])
                     + provenance.fidelity_bits(h))


def fidelity_text(row: dict) -> str:
    """The write-time fidelity of a ``dataset_info`` row in a few words (table cell)."""
    from .. import provenance

    prov = row.get("provenance")
    if prov and prov.get("decompressed_by") and "necoda" not in row.get("filters", []):
        return "decoded copy: " + (_decoded_text(prov) or "").split("; ", 1)[-1].rstrip(".")
    if not prov:
        return "not recorded (written without `necoda compress`)" if _lossy_chunks(row.get("chunk_modes")) else "-"
    earlier = provenance.earlier_lossy(prov)
    if prov.get("lossy"):
        return ("LOSSY: " + (", ".join(provenance.fidelity_bits(prov)) or "no figures")
                + ("; LOSSY before: " + "; ".join(map(_earlier_text, earlier)) if earlier else ""))
    return "bit-exact (checked)" + ("; LOSSY before: " + "; ".join(map(_earlier_text, earlier)) if earlier else "")


def _jsonable(v):
    import numpy as np

    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _chunk_headers(buffer, n: int, max_chunks: int) -> dict:
    """Modes, models and learned quality levels from the necoda headers of ``max_chunks`` of the ``n``
    chunks (evenly spread; all when ``max_chunks`` <= 0); ``buffer(i)`` gives chunk i's stored bytes, or
    None for a chunk never written (zarr: fill value)."""
    from .. import chunk, modes

    take = range(n) if max_chunks <= 0 or n <= max_chunks else sorted({int(i * (n - 1) / (max_chunks - 1)) for i in range(max_chunks)})
    seen, models, qualities, bad, sampled = {}, set(), set(), 0, 0
    for i in take:
        try:
            buf = buffer(i)
            if buf is None:
                continue
            sampled += 1
            h = chunk.info(buf)
            name = modes.MODE_NAMES.get(h.mode_id, f"id{h.mode_id}")
            seen[name] = seen.get(name, 0) + 1
            if h.model_id:
                models.add(h.model_id)
            if name == "learned" and isinstance(h.params.get("q"), int):
                qualities.add(h.params["q"])  # the level coded (the model's default when none was asked)
        except Exception:  # noqa: BLE001 — report, keep going
            bad += 1
    out = {"chunk_modes": seen, "chunks_sampled": sampled, "chunks_total": n, "models": sorted(models)}
    if qualities:
        out["qualities"] = sorted(qualities)
    if bad:
        out["unreadable_chunk_headers"] = bad
    return out


def zarr_info(path, include_all=False, max_chunks=8) -> list[dict]:
    """:func:`file_info` for a zarr store (v2 or v3) on disk: its arrays coded with necoda (the numcodecs
    codec as compressor, or :class:`necoda_filter.zarr3.NecodaZarrCodec` as serializer, also inside a
    sharding codec, whose shards are then not opened to sample chunk headers)."""
    import os

    import zarr

    def is_ours(c):
        return getattr(c, "codec_id", None) == "necoda" or type(c).__name__ == "NecodaZarrCodec"

    if not os.path.isfile(os.path.join(str(path), "zarr.json")):
        return _zarr2_info(path, include_all, max_chunks)  # format 2: read from its JSON, without zarr
    root = zarr.open(path, mode="r")
    arrays = [root] if isinstance(root, zarr.Array) else [a for _, a in root.members(max_depth=None)
                                                          if isinstance(a, zarr.Array)]
    rows = []
    for a in arrays:
        m = a.metadata
        codecs = list(m.codecs) if m.zarr_format == 3 else [c for c in (*(m.filters or ()), m.compressor) if c]
        holder = next((c for c in codecs if is_ours(c) or any(map(is_ours, getattr(c, "codecs", ())))), None)
        if holder is None and not include_all:
            continue
        stored = a.nbytes_stored()
        row = {"path": "/" + a.path if a.path else "/", "shape": list(a.shape), "dtype": str(a.dtype),
               "chunks": list(a.chunks),
               "filters": ["necoda" if c is holder else getattr(c, "codec_id", None) or type(c).__name__
                           for c in codecs],
               "raw_bytes": int(a.nbytes), "stored_bytes": int(stored),
               "ratio": round(a.nbytes / stored, 3) if stored else None}
        if holder is not None:
            ours = holder if is_ours(holder) else next(filter(is_ours, holder.codecs))
            cfg = ours.get_config() if hasattr(ours, "get_config") else ours.to_dict().get("configuration", {})
            row["requested"] = {k: v for k, v in cfg.items() if k not in ("id", "name") and v is not None}
        if holder is not None and holder is not ours:
            row["sharded"] = True
        elif holder is not None and codecs[-1] is not ours:  # crc32c, zstd ... after necoda: not undone here
            row["headers_not_sampled"] = "necoda is followed by " + ", ".join(
                getattr(c, "codec_id", None) or type(c).__name__ for c in codecs[codecs.index(ours) + 1:])
        elif holder is not None:
            row.update(_chunk_file_headers(os.path.join(str(path), a.path), a.shape, a.chunks,
                                           m.encode_chunk_key, max_chunks))
        rows.append(row)
    return rows


def _chunk_file_headers(folder, shape, chunks, key_of, max_chunks, undo=()) -> dict:
    """:func:`_chunk_headers` of a zarr array stored as one file per chunk in ``folder`` (``key_of``: a
    chunk's grid index -> its file name, "/" separating sub-folders); a missing file is a chunk never
    written (the fill value). ``undo``: the numcodecs codecs that follow necoda (format 2: later filters,
    the compressor), last first."""
    import itertools
    import os

    grid = list(itertools.product(*(range(math.ceil(n / c)) for n, c in zip(shape, chunks))))

    def buffer(i):
        f = os.path.join(folder, *key_of(grid[i]).split("/"))
        if not os.path.isfile(f):
            return None
        with open(f, "rb") as fh:
            buf = fh.read()
        for c in undo:
            buf = c.decode(buf)
        return buf

    return _chunk_headers(buffer, len(grid), max_chunks)


def _zarr2_info(path, include_all=False, max_chunks=8) -> list[dict]:
    """:func:`zarr_info` for a zarr format-2 store, read from its ``.zarray`` files and chunk files alone:
    the same under zarr-python 2 and 3, and for stores zarr-python 3 cannot open (hdmf-zarr's NWB files hold
    object arrays whose metadata it refuses)."""
    import os
    import re

    import numpy as np

    root = os.path.abspath(str(path))
    rows = []
    for folder, subdirs, files in sorted(os.walk(root)):
        subdirs.sort()
        if ".zarray" not in files:
            continue
        subdirs[:] = []  # an array's sub-folders hold its chunks ("/" separator), not other nodes
        with open(os.path.join(folder, ".zarray")) as fh:
            meta = json.load(fh)
        codecs = [c for c in (*(meta.get("filters") or ()), meta.get("compressor")) if c]
        ours = next((c for c in codecs if c.get("id") == "necoda"), None)
        if ours is None and not include_all:
            continue
        shape, chunks, sep = meta["shape"], meta["chunks"], meta.get("dimension_separator") or "."
        try:
            dt = np.dtype(meta["dtype"])
            raw = int(np.prod(shape, dtype=np.int64)) * dt.itemsize if dt.kind != "O" else None
        except TypeError:  # structured dtypes given as lists
            dt, raw = None, None
        key = re.compile(r"^\d+(" + re.escape(sep) + r"\d+)*$")
        stored = 0
        for sub, _, names in os.walk(folder):
            for n in names:
                rel = os.path.relpath(os.path.join(sub, n), folder).replace(os.sep, "/")
                if key.match(rel if sep == "/" else n):
                    stored += os.path.getsize(os.path.join(sub, n))
        rel = os.path.relpath(folder, root)
        row = {"path": "/" if rel == "." else "/" + rel.replace(os.sep, "/"), "shape": list(shape),
               "dtype": str(dt) if dt is not None else str(meta["dtype"]), "chunks": list(chunks),
               "filters": [c.get("id") for c in codecs], "raw_bytes": raw, "stored_bytes": int(stored),
               "ratio": round(raw / stored, 3) if raw and stored else None}
        if ours is not None:
            row["requested"] = {k: v for k, v in ours.items() if k != "id" and v is not None}
            after = codecs[codecs.index(ours) + 1:]  # what zarr applied to necoda's bytes before storing them
            try:
                import numcodecs

                undo = [numcodecs.get_codec(dict(c)) for c in reversed(after)]
            except Exception as e:  # noqa: BLE001 — a codec not installed here: its chunks cannot be opened
                why = "a codec not installed here" if type(e).__name__ == "UnknownCodecError" else str(e)
                row["headers_not_sampled"] = f"necoda is followed by {', '.join(c.get('id', '?') for c in after)}: {why}"
            else:
                row.update(_chunk_file_headers(folder, shape, chunks, lambda idx, sep=sep: sep.join(map(str, idx)),
                                               max_chunks, undo))
        rows.append(row)
    return rows


def file_info(path, include_all=False, max_chunks=8) -> list[dict]:
    import h5py

    from .. import FILTER_ID  # noqa: F401  (registers the filter so headers can be inspected)

    from ..nwb.atomic import open_input  # a file locked by a writer: the hint compress gives

    rows = []
    with open_input(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks is not None:
                r = dataset_info(obj, max_chunks)
                if include_all or "necoda" in r["filters"] or "provenance" in r:  # also decoded copies
                    rows.append(r)
        f.visititems(visit)
    return rows


def run(args) -> int:
    import os

    import h5py

    if not os.path.exists(args.file):
        raise FileNotFoundError(f"no such file: {args.file}")
    if os.path.isdir(args.file) and any(os.path.isfile(os.path.join(args.file, m))
                                        for m in ("zarr.json", ".zarray", ".zgroup")):
        from . import missing

        if missing(["zarr"]):
            raise ValueError(f"{args.file} is a zarr store; reading it needs zarr: pip install zarr")
        rows = zarr_info(args.file, args.all, args.chunks)
    elif os.path.isdir(args.file):
        raise IsADirectoryError(f"{args.file} is a folder, not an HDF5/NWB file or a zarr store")
    elif not os.path.isfile(args.file) or not h5py.is_hdf5(args.file):
        raise ValueError(f"{args.file} is not an HDF5/NWB file or a zarr store")
    else:
        rows = file_info(args.file, args.all, args.chunks)
    if args.json:
        from ..bench import json_safe

        for r in rows:  # the ids, with the name of the installed package they belong to
            if r.get("models"):
                r["model_names"] = [_model_label(m) for m in r["models"]]
        print(json.dumps(json_safe(rows, nonfinite="name"), indent=2))  # "inf", as report.json: standard JSON
        return 0
    if not rows:
        print(f"{args.file}: no necoda-compressed datasets" + ("" if args.all else " (use --all to list others)"))
        return 0
    print("| dataset | shape | dtype | chunks | filters | mode (chunks) | model | ratio | fidelity at write time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        modes_ = ", ".join(f"{k}×{v}" for k, v in r.get("chunk_modes", {}).items()) or "-"
        if r.get("sharded"):
            modes_ = "(in shards: chunk headers not sampled)"
        elif r.get("headers_not_sampled"):
            modes_ = f"(chunk headers not sampled: {r['headers_not_sampled']})"
        if r.get("chunks_in_grid"):
            modes_ += f"; {r['chunks_total']} of {r['chunks_in_grid']} chunks written (ratio over those)"
        if r.get("chunks_sampled", 0) < r.get("chunks_total", 0):  # "lossless×8" alone read as "8 chunks"
            modes_ += f" in {r['chunks_sampled']} of {r['chunks_total']} chunks sampled"
        if r.get("qualities"):
            modes_ += f" (quality {', '.join(map(str, r['qualities']))})"
        if r.get("unreadable_chunk_headers"):
            modes_ += (f"; {r['unreadable_chunk_headers']} chunk header(s) UNREADABLE (damaged chunks: reading "
                       "them fails)")
        req = r.get("requested", {})
        opts = ", ".join(f"{k}={v}" for k, v in req.items() if k != "mode")
        mode_txt = f"{req.get('mode', '-')}{' (' + opts + ')' if opts else ''}: {modes_}" if req else "-"
        ratio = _fmt(r["ratio"]) + "×" if r["ratio"] else "-"
        cells = [r["path"], tuple(r["shape"]), r["dtype"], tuple(r["chunks"]), "+".join(r["filters"]) or "-", mode_txt,
                 ", ".join(map(_model_label, r.get("models", []))) or "-", ratio, fidelity_text(r)]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.provenance:
        for r in rows:
            if r.get("provenance"):
                print(f"\n{r['path']}:")
                for k, v in r["provenance"].items():
                    print(f"  {k}: {v}")
    elif any(r.get("provenance") for r in rows):
        print("\n(every stored necoda_* attribute: --provenance or --json)")
    return 0
