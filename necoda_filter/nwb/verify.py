"""Verification: structural comparison of two HDF5 files (:func:`structure_diff`)."""
from __future__ import annotations

import posixpath

import h5py
import numpy as np


def structure_diff(a_path, b_path, compare_data: bool = True, ignore_attrs=None) -> list[str]:
    """Differences between two HDF5 files: links, objects, attribute types and values (references
    compared by the path of the object they point to), dataset dtypes/shapes and (optionally) values.
    Dataset storage (chunks, filters) is not compared; necoda provenance attributes and the NWB
    ``comments`` of recompressed series are ignored when ``ignore_attrs`` says so (a callable
    ``(path, attr_name) -> bool``). Returns human-readable lines, empty when equivalent."""
    diffs: list[str] = []
    ignore_attrs = ignore_attrs or (lambda path, name: False)

    def norm(f, v):
        if isinstance(v, h5py.Reference):
            return ("ref", f[v].name) if v else ("ref", None)
        if isinstance(v, np.ndarray) and v.dtype.kind == "O":
            return [norm(f, x) for x in v.ravel().tolist()] + [("shape", v.shape)]
        if isinstance(v, np.ndarray) and v.dtype.fields:
            return [tuple(norm(f, x) for x in row) for row in v.ravel().tolist()]
        if isinstance(v, np.ndarray):
            return ("arr", v.dtype.str, v.shape, v.tobytes())
        if isinstance(v, h5py.Empty):
            return ("empty", str(v.dtype))
        return v

    def attrs(fa, fb, oa, ob, path):
        na = set(oa.attrs)
        nb = set(ob.attrs)
        for n in sorted(na ^ nb):
            if not ignore_attrs(path, n):
                diffs.append(f"{path}: attribute {n!r} only in {'first' if n in na else 'second'}")
        for n in sorted(na & nb):
            if ignore_attrs(path, n):
                continue
            ta = oa.attrs.get_id(n).get_type()
            tb = ob.attrs.get_id(n).get_type()
            if not ta.equal(tb):
                diffs.append(f"{path}: attribute {n!r} type differs")
            if oa.attrs.get_id(n).shape != ob.attrs.get_id(n).shape:
                diffs.append(f"{path}: attribute {n!r} shape differs")
            if norm(fa, oa.attrs[n]) != norm(fb, ob.attrs[n]):
                diffs.append(f"{path}: attribute {n!r} value differs")

    with h5py.File(a_path, "r") as fa, h5py.File(b_path, "r") as fb:
        attrs(fa, fb, fa, fb, "/")

        def walk(ga, gb):
            la, lb = set(ga), set(gb)
            for n in sorted(la ^ lb):
                diffs.append(f"{posixpath.join(ga.name, n)}: only in {'first' if n in la else 'second'}")
            for n in sorted(la & lb):
                p = posixpath.join(ga.name, n)
                ka = ga.get(n, getlink=True)
                kb = gb.get(n, getlink=True)
                if type(ka) is not type(kb):
                    diffs.append(f"{p}: link kind differs ({type(ka).__name__} vs {type(kb).__name__})")
                    continue
                if isinstance(ka, h5py.SoftLink):
                    if ka.path != kb.path:
                        diffs.append(f"{p}: soft link target differs")
                    continue
                if isinstance(ka, h5py.ExternalLink):
                    if (ka.filename, ka.path) != (kb.filename, kb.path):
                        diffs.append(f"{p}: external link differs")
                    continue
                oa, ob = ga[n], gb[n]
                if type(oa) is not type(ob):
                    diffs.append(f"{p}: object kind differs")
                    continue
                attrs(fa, fb, oa, ob, p)
                if isinstance(oa, h5py.Group):
                    walk(oa, ob)
                elif isinstance(oa, h5py.Dataset):
                    if not oa.id.get_type().equal(ob.id.get_type()):
                        diffs.append(f"{p}: dtype differs")
                    if oa.shape != ob.shape or oa.maxshape != ob.maxshape:
                        diffs.append(f"{p}: shape/maxshape differs ({oa.shape}/{oa.maxshape} vs {ob.shape}/{ob.maxshape})")
                        continue
                    if compare_data and oa.shape is not None:
                        if oa.dtype.kind in "biuf" and oa.size:
                            rows = max(1, (32 << 20) // max(1, oa.dtype.itemsize * (oa.size // max(oa.shape[0], 1)))) if oa.ndim else 1
                            for i in range(0, oa.shape[0] if oa.ndim else 1, rows):
                                sel = np.s_[i:i + rows] if oa.ndim else ()
                                if not np.array_equal(oa[sel], ob[sel], equal_nan=oa.dtype.kind == "f"):
                                    diffs.append(f"{p}: values differ")
                                    break
                        elif norm(fa, oa[()]) != norm(fb, ob[()]):
                            diffs.append(f"{p}: values differ")
        walk(fa, fb)
    return diffs
