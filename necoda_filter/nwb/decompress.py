"""Decompression: a copy of a file with every necoda-compressed dataset replaced by a plain (or
gzip-compressed) one (:func:`decompress_file`)."""
from __future__ import annotations

import itertools
from collections import deque

import h5py
import numpy as np

from .. import provenance
from ..mainthread import check, result
from .atomic import check_paths, open_input
from .plan import necoda_filter_info
from .rewrite import _rewrite_file
from .workers import _chunk_grid, _decode_chunk, _decode_slot, _progress, shared_slots


def _allocated_chunks(dset: h5py.Dataset) -> list[tuple[tuple, int]]:
    """(offset, filter_mask) of every allocated chunk, in file-index order."""
    out = []
    dsid = dset.id
    if hasattr(dsid, "chunk_iter"):
        try:
            dsid.chunk_iter(lambda info: out.append((tuple(info.chunk_offset), info.filter_mask)))
            return out
        except Exception:  # noqa: BLE001 — older HDF5: fall back to probing the grid
            out.clear()
    for off in itertools.product(*_chunk_grid(dset.shape, dset.chunks)):
        info = dsid.get_chunk_info_by_coord(off)
        if info.byte_offset is not None:
            out.append((tuple(off), info.filter_mask))
    return out


def decompress_dataset(src: h5py.Dataset, dg: h5py.Group, name: str, gzip_level: int | None, executor,
                       workers: int, progress: bool = True, stop=None) -> None:
    from .. import __version__

    kw = {}
    if gzip_level is not None:
        kw = dict(compression="gzip", compression_opts=gzip_level)
    dst = dg.create_dataset(name, shape=src.shape, dtype=src.dtype, chunks=src.chunks, maxshape=src.maxshape,
                            fillvalue=src.fillvalue, **kw)
    _, sole, _ = necoda_filter_info(src)
    raw_bytes = int(np.prod(src.shape, dtype=np.int64)) * src.dtype.itemsize
    bar = _progress(raw_bytes, src.name, progress)
    chunks = src.chunks
    file_dtype = dst.dtype.str
    try:
        if sole:
            window: deque = deque()
            depth = max(2, 2 * workers)
            # worker processes hand plain chunks back through a shared array of depth + 1 slots (chunk i
            # in slot i % (depth + 1), written after chunk i - depth - 1 was drained), not through a pipe
            shared = spec = None
            if gzip_level is None:  # deflated chunks are small: they come back through the pipe
                shared, spec = shared_slots(executor, (depth + 1, int(np.prod(chunks)) * dst.dtype.itemsize),
                                            np.uint8, src.name)

            def drain(limit):
                while len(window) > limit:
                    off, nb, slot, fut = window[0]
                    got = result(fut, stop)
                    window.popleft()  # only now: a stop raised by result() leaves the running chunk in the window
                    if slot is not None:
                        got = shared.arr[slot, :got]
                    dst.id.write_direct_chunk(off, got, filter_mask=0)
                    bar.update(nb)

            try:
                for i, (off, mask) in enumerate(_allocated_chunks(src)):
                    check(stop)
                    _, buf = src.id.read_direct_chunk(off)
                    nb = int(np.prod([min(c, s - o) for o, s, c in zip(off, src.shape, chunks)])) * src.dtype.itemsize
                    if shared is not None:
                        slot = i % (depth + 1)
                        fut = executor.submit(_decode_slot, spec, slot, buf, mask, chunks, file_dtype)
                    else:
                        slot = None
                        fut = executor.submit(_decode_chunk, buf, mask, chunks, file_dtype, gzip_level)
                    window.append((off, nb, slot, fut))
                    drain(depth)
                drain(0)
            finally:
                for *_, fut in window:
                    fut.cancel()
                if shared is not None and all(fut.done() for *_, fut in window):
                    shared.discard()  # its space freed now: no worker uses a slot any more
                elif shared is not None:
                    shared.close()
                shared = None
        else:  # necoda combined with other filters: let HDF5 run the whole pipeline
            for off in itertools.product(*_chunk_grid(src.shape, chunks)):
                check(stop)
                sel = tuple(slice(o, min(s, o + c)) for o, s, c in zip(off, src.shape, chunks))
                block = src[sel]
                dst[sel] = block
                bar.update(block.nbytes)
    finally:
        bar.close()
    return dst


def has_necoda_data(path) -> bool:
    """Whether the HDF5 file at ``path`` has a dataset stored with the necoda filter (hard links only:
    what an external link points to is not part of the file, and decompress copies the link)."""
    with open_input(path) as f:
        return bool(f.visititems(lambda name, obj: True if isinstance(obj, h5py.Dataset)
                                 and necoda_filter_info(obj)[0] else None))


def decompress_file(src_path, dst_path, gzip_level: int | None = None, workers: int | None = None,
                    overwrite: bool = False, progress: bool = True) -> list[str]:
    """Copy ``src_path`` to ``dst_path`` replacing every necoda-compressed dataset by a plain (or
    gzip-compressed) one with the same chunking, readable by any HDF5 tool. Returns the dataset paths.
    A file without any necoda-compressed dataset is refused (ValueError; nothing is written): it is
    readable without the plugin as it is, and a copy would be made for nothing."""
    from .. import __version__

    check_paths(src_path, dst_path, overwrite)
    if not has_necoda_data(src_path):
        raise ValueError(f"{src_path} holds no necoda-compressed dataset: nothing to decompress, {dst_path} not "
                         "written (necoda decompress decodes the datasets a file itself stores with "
                         "compression=Necoda(...) or through necoda compress; data it reaches through external "
                         "links or virtual datasets lives in other files: decompress those)")
    done: list[str] = []

    def handler(sds, dg, name, copier, executor, nworkers):
        has, _, _ = necoda_filter_info(sds)
        if not has:
            return False
        decompress_dataset(sds, dg, name, gzip_level, executor, nworkers, progress, stop=copier.stop)
        copier.copy_attrs(sds, dg[name])
        by = f"necoda-filter {__version__}"
        if provenance.attr_name("mode") in sds.attrs:
            provenance.write(dg[name], {"decompressed_by": by})
        else:  # written through the filter: what its chunks were, so a lossy past is not lost with them
            written = provenance.filter_written(sds)
            if written:
                provenance.write(dg[name], {**written, "decompressed_by": by})
                if written["lossy"] and name == "data" and "comments" in dg.attrs:  # a TimeSeries' own comments
                    provenance.append_comment(dg, provenance.filter_comment(written, sds.name, f"decoded by {by}"))
        done.append(sds.name)
        return True

    _rewrite_file(src_path, dst_path, overwrite, workers, handler)
    return done
