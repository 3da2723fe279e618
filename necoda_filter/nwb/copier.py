"""Object-by-object copy of an HDF5 file with re-pointed references (:class:`Copier`), and the
output file's creation and userblock."""
from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path

import h5py
import numpy as np

from ..mainthread import check
from .plan import is_series_data_link, object_key, series_data_index

log = logging.getLogger("necoda_filter")


def _vlen_base(dt: np.dtype) -> np.dtype | None:
    """Element dtype of a variable-length sequence type (not of a vlen string), else None."""
    base = h5py.check_vlen_dtype(dt)
    return base if isinstance(base, np.dtype) else None


def _has_ref(dt: np.dtype) -> bool:
    if dt.fields:
        return any(_has_ref(f[0]) for f in dt.fields.values())
    if dt.subdtype is not None:
        return _has_ref(dt.subdtype[0])
    base = _vlen_base(dt)  # e.g. DIMENSION_LIST of dimension scales: vlen sequences of references
    if base is not None:
        return _has_ref(base)
    return h5py.check_ref_dtype(dt) is not None


def _track_order(group) -> bool:
    try:
        return bool(group.id.get_create_plist().get_link_creation_order())
    except Exception:  # noqa: BLE001
        return False


def _naming(e: Exception, where: str) -> Exception:
    """``e`` with ``where`` (file:dataset) in front of its message, of the same class when possible."""
    msg = f"{where}: {e}"
    try:
        return type(e)(msg)
    except Exception:  # noqa: BLE001 — a class that wants other arguments
        return (OSError if isinstance(e, OSError) else ValueError)(msg)


class Copier:
    """Copy ``src`` (an open h5py.File) into ``dst`` object by object.

    ``handler(src_dataset, dst_group, name) -> bool`` may create the dataset itself (return True); other
    datasets, and committed datatypes, are copied with H5Ocopy (filters, chunking, fill value and
    attributes unchanged). Object references in attributes and datasets are re-pointed afterwards.
    ``stop``: a flag (``[bool]``) checked before each object; once set the copy raises ``Stopped``.

    Hard links: an object with several names is copied once, at the first name the walk reaches, and its
    other names become hard links to the copy, except for the ``data`` of an NWB series (see
    :func:`.plan.series_data_index`): it is copied (and handed to ``handler``) under its series
    (``.../<series>/data``, where ``handler`` finds the series' attributes as ``.parent``) even when
    another name (e.g. a root-level alias sorting before ``/acquisition``) comes first; those earlier
    names are linked to it once the walk is done.
    """

    def __init__(self, src: h5py.File, dst: h5py.File, handler=None, stop=None):
        self.src = src
        self.dst = dst
        self.handler = handler
        self.stop = stop
        self._seen: dict[tuple, str] = {}
        self._ref_attrs: list[tuple[str, str, str]] = []   # (src path, dst path, attribute name)
        self._ref_data: list[tuple[str, str]] = []         # (src path, dst path)
        self._map_cache: dict[str, object] = {}
        self._series: dict = {}                            # key of a series' data -> its path
        self._deferred: list[tuple] = []  # (dst group path, src group path, name, key): links made at the end

    @staticmethod
    def _key(obj) -> tuple:
        return object_key(obj)

    def run(self) -> None:
        self._series = series_data_index(self.src)
        self.copy_attrs(self.src, self.dst)
        self._seen[self._key(self.src)] = "/"
        self._group(self.src, self.dst)
        self._link_deferred()
        self._fix_refs()

    def _link_deferred(self) -> None:
        """The other names of series data reached first by a name outside its series: hard links to the
        copy made under the series (or, should the walk never have reached it there, a copy here). In a
        group that keeps link creation order, the links after the first deferred one are re-made in the
        source's order, so that the group lists its members as the source does."""
        groups: dict[str, str] = {}
        for dpath, spath, name, key in self._deferred:
            check(self.stop)
            dg = self.dst[dpath]
            groups.setdefault(dpath, spath)
            if key in self._seen:
                dg[name] = self.dst[self._seen[key]]
                continue
            sg = self.src[spath]  # not expected: the series' group is reached by the same walk
            self._seen[key] = posixpath.join(dpath, name)
            self._dataset(sg, sg[name], dg, name)
        for dpath, spath in groups.items():
            dg = self.dst[dpath]
            if not _track_order(dg):
                continue
            order = list(self.src[spath])
            deferred = {name for d, _, name, _ in self._deferred if d == dpath}
            start = min((order.index(n) for n in deferred if n in order), default=len(order))
            for i, name in enumerate(order[start:]):  # each re-made link goes last: the source's order
                if dg.get(name, getlink=True) is None:
                    continue
                tmp = f".necoda-reorder-{i}"
                while tmp in dg:
                    tmp += "_"
                dg.move(name, tmp)
                dg.move(tmp, name)

    def copy_attrs(self, s, d, skip=None) -> None:
        """Copy every attribute of ``s`` (but those ``skip(name)`` is true for) onto ``d`` with its exact
        type and shape (refs deferred)."""
        for name in s.attrs:
            if skip is not None and skip(name):
                continue
            aid = s.attrs.get_id(name)
            dt = aid.dtype
            if _has_ref(dt):
                self._ref_attrs.append((s.name, d.name, name))
                continue
            val = s.attrs[name]
            if isinstance(val, h5py.Empty):
                d.attrs.create(name, val)
            else:
                d.attrs.create(name, val, shape=aid.shape, dtype=dt)

    def _note_refs(self, s, d) -> None:
        """After H5Ocopy of ``s`` (a dataset) to ``d``: remember its reference-typed content."""
        for name in s.attrs:
            if _has_ref(s.attrs.get_id(name).dtype):
                self._ref_attrs.append((s.name, d.name, name))
        if isinstance(s, h5py.Dataset) and _has_ref(s.dtype):
            self._ref_data.append((s.name, d.name))

    def _group(self, sg: h5py.Group, dg: h5py.Group) -> None:
        for name in sg:
            check(self.stop)
            link = sg.get(name, getlink=True)
            if isinstance(link, h5py.SoftLink):
                dg[name] = h5py.SoftLink(link.path)
                continue
            if isinstance(link, h5py.ExternalLink):
                dg[name] = h5py.ExternalLink(self._link_file(link.filename, posixpath.join(dg.name, name)), link.path)
                continue
            obj = sg[name]
            key = self._key(obj)
            dpath = posixpath.join(dg.name, name)
            if key in self._seen:  # another hard link to an object already copied
                dg[name] = self.dst[self._seen[key]]
                continue
            if key in self._series and not is_series_data_link(sg, name):
                # a series' data reached by another name first: copied under its series, linked here later
                self._deferred.append((dg.name, sg.name, name, key))
                continue
            self._seen[key] = dpath
            if isinstance(obj, h5py.Group):
                ng = dg.create_group(name, track_order=_track_order(obj) or None)
                self.copy_attrs(obj, ng)
                self._group(obj, ng)
            elif isinstance(obj, h5py.Dataset):
                self._dataset(sg, obj, dg, name)
            else:  # committed datatype
                sg.copy(obj, dg, name)
                self._note_refs(obj, dg[name])

    def _dataset(self, sg: h5py.Group, obj: h5py.Dataset, dg: h5py.Group, name: str) -> None:
        try:
            if self.handler is not None and self.handler(obj, dg, name):
                return
            if not (obj.is_virtual and self._copy_virtual(obj, dg, name)):
                sg.copy(obj, dg, name)
        except (OSError, ValueError) as e:  # e.g. a corrupt chunk: say which dataset of which file
            raise _naming(e, f"{self.src.filename}:{obj.name}") from e
        self._note_refs(obj, dg[name])

    def _copy_virtual(self, obj: h5py.Dataset, dg: h5py.Group, name: str) -> bool:
        """A virtual dataset whose source files are named relative to IN's folder, re-created in OUT with
        the names re-based on OUT's folder (:meth:`_link_file`), as external links are: HDF5 resolves them
        against the virtual dataset's file, so a copy in another folder read fill values. False (nothing
        done) when no source name changes."""
        sp = obj.id.get_create_plist()
        n = sp.get_virtual_count()
        where = posixpath.join(dg.name, name)
        names = [sp.get_virtual_filename(i) for i in range(n)]
        new = [fn if fn == "." else self._link_file(fn, where, what="virtual dataset source") for fn in names]
        if new == names:
            return False
        srcs = []
        for i in range(n):
            space = sp.get_virtual_srcspace(i)
            if space.get_select_type() == h5py.h5s.SEL_ALL and space.get_simple_extent_ndims() == 0:
                # a whole source dataset: HDF5 gives its extent only once the source is opened
                shape = self._source_shape(names[i], sp.get_virtual_dsetname(i))
                if shape is None:  # the source cannot be opened here: copied as it is, like a dangling link
                    return False
                space = h5py.h5s.create_simple(shape)
            srcs.append(space)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        fill = np.zeros((1,), dtype=obj.dtype)
        sp.get_fill_value(fill)
        dcpl.set_fill_value(fill)
        for i in range(n):
            dcpl.set_virtual(sp.get_virtual_vspace(i), new[i].encode(), sp.get_virtual_dsetname(i).encode(), srcs[i])
        h5py.h5d.create(dg.id, name.encode(), obj.id.get_type(), obj.id.get_space(), dcpl=dcpl)
        self.copy_attrs(obj, dg[name])
        return True

    def _source_shape(self, fn: str, dset: str) -> tuple | None:
        """Shape of a virtual dataset's source ``dset`` in file ``fn`` (as named in IN), or None."""
        try:
            if fn == ".":
                return tuple(self.src[dset].shape)
            path = fn if os.path.isabs(fn) else os.path.join(os.path.dirname(os.path.abspath(self.src.filename)), fn)
            with h5py.File(path, "r") as f:
                return tuple(f[dset].shape)
        except (OSError, KeyError, ValueError):
            return None

    def _link_file(self, fn: str, where: str, what: str = "external link") -> str:
        """File name for an external link in OUT. HDF5 looks for a relative name in the linking file's
        folder: when OUT is written to another folder and the file exists next to IN, the name is
        re-based on OUT's folder so that the link still resolves (otherwise it is kept as it was)."""
        if os.path.isabs(fn):
            return fn
        sdir = os.path.dirname(os.path.abspath(self.src.filename))
        ddir = os.path.dirname(os.path.abspath(self.dst.filename))
        target = os.path.join(sdir, fn)
        if os.path.realpath(sdir) == os.path.realpath(ddir) or not os.path.exists(target):
            return fn
        new = os.path.relpath(target, ddir)
        log.warning("necoda: %s %s: file %r written as %r (relative to the output's folder)", what, where, fn, new)
        return new

    def _map_ref(self, ref):
        if not ref:
            return ref
        try:
            obj = self.src[ref]
        except Exception as e:  # noqa: BLE001
            log.warning("necoda: dangling object reference left null (%s)", e)
            return h5py.Reference()
        path = obj.name
        if path is None:
            log.warning("necoda: reference to an anonymous object left null")
            return h5py.Reference()
        if path not in self._map_cache:
            self._map_cache[path] = self.dst[path].ref
        return self._map_cache[path]

    def _map_regionref(self, ref, src_ds_path=None):
        if not ref:
            return ref
        obj = self.src[ref]
        space = h5py.h5r.get_region(ref, obj.id)
        dobj = self.dst[obj.name]
        return h5py.h5r.create(dobj.id, b".", h5py.h5r.DATASET_REGION, space)

    def remap(self, val, dt: np.dtype):
        if isinstance(val, h5py.Empty):
            return val
        if isinstance(val, h5py.Reference) and not isinstance(val, h5py.RegionReference):
            return self._map_ref(val)
        if isinstance(val, h5py.RegionReference):
            return self._map_regionref(val)
        arr = np.asarray(val)
        if arr.dtype.fields:
            out = arr.copy()
            for f, (fdt, *_) in arr.dtype.fields.items():
                if _has_ref(fdt):
                    out[f] = self.remap(arr[f], fdt)
            return out if arr.ndim else out[()]
        base = _vlen_base(arr.dtype)
        if base is not None:
            if not _has_ref(base):
                return val
            out = np.empty(arr.shape, dtype=arr.dtype)
            for idx in np.ndindex(arr.shape):
                out[idx] = self.remap(np.asarray(arr[idx], dtype=base), base)
            return out if arr.ndim else out[()]
        kind = h5py.check_ref_dtype(arr.dtype)
        if kind is None:
            return val
        out = np.empty(arr.shape, dtype=arr.dtype)
        fn = self._map_regionref if kind is h5py.RegionReference else self._map_ref
        for idx in np.ndindex(arr.shape):
            out[idx] = fn(arr[idx])
        return out

    def _fix_refs(self) -> None:
        for spath, dpath, name in self._ref_attrs:
            check(self.stop)
            s = self.src[spath]
            d = self.dst[dpath]
            aid = s.attrs.get_id(name)
            val = self.remap(s.attrs[name], aid.dtype)
            if isinstance(val, h5py.Empty):
                d.attrs.create(name, val)
            else:
                d.attrs.create(name, val, shape=aid.shape, dtype=aid.dtype)
        for spath, dpath in self._ref_data:
            check(self.stop)
            s = self.src[spath]
            d = self.dst[dpath]
            if s.shape is None or s.size == 0:
                continue
            if _vlen_base(s.dtype) is not None and s.ndim:
                # h5py's __setitem__ cannot convert vlen sequences of references; the low-level write can
                d.id.write(h5py.h5s.ALL, h5py.h5s.ALL, self.remap(s[...], s.dtype))
                continue
            d[...] = self.remap(s[...], s.dtype)


def _create_file(dst_path: Path, src: h5py.File, **kw) -> h5py.File:
    ub = src.userblock_size
    f = h5py.File(dst_path, "w", userblock_size=ub or None, track_order=_track_order(src) or None, **kw)
    return f


def _copy_userblock(src_path: Path, dst_path: Path, size: int) -> None:
    if not size:
        return
    with open(src_path, "rb") as s, open(dst_path, "r+b") as d:
        d.write(s.read(size))
