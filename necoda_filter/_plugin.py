"""Find the plugin library, register the filter with h5py's HDF5, and teach h5py the name "necoda"."""
from __future__ import annotations

import ctypes
import functools
import os

from .constants import FILTER_ID, FILTER_NAME

#: Folder holding ``libh5necoda.so``; point ``HDF5_PLUGIN_PATH`` here to read necoda data from any
#: HDF5 application running inside Python (h5py, pynwb, nwbinspector, dandi) without importing us.
PLUGIN_PATH = os.path.dirname(os.path.abspath(__file__))
LIBRARY_NAME = "libh5necoda.so"


class FilterUnavailable(RuntimeError):
    """The necoda HDF5 filter could not be registered; writing with it would not compress."""


def library_path() -> str:
    path = os.path.join(PLUGIN_PATH, LIBRARY_NAME)
    if not os.path.exists(path):
        raise FilterUnavailable(
            f"{LIBRARY_NAME} is missing from {PLUGIN_PATH}: necoda-filter was not built/installed with "
            "its C shim (reinstall with `pip install necoda-filter`)")
    return path


def is_registered() -> bool:
    import h5py

    return bool(h5py.h5z.filter_avail(FILTER_ID))


def register() -> None:
    """Register the filter with the HDF5 library h5py uses (idempotent) and the name "necoda"."""
    import h5py

    if not is_registered():
        lib = ctypes.CDLL(library_path())
        rc = lib.necoda_h5_init(h5py.h5z.__file__.encode())
        if rc != 0 or not is_registered():
            raise FilterUnavailable(f"registering the necoda HDF5 filter failed (code {rc})")
    _teach_h5py_the_name()


def _teach_h5py_the_name() -> None:
    """Make ``compression="necoda"`` work in h5py (and hence hdmf's H5DataIO), narrowly.

    h5py only accepts its built-in filter names. We add "necoda" to its encode/decode tuples, map it
    to the filter id and cd_values in ``fill_dcpl`` (``compression_opts`` may be a dict of Necoda options)
    and name the id in ``get_filter_name`` (so ``Dataset.compression == "necoda"``).
    Guarded by h5py's major version; tests check the patch still works on the pinned version.
    """
    import h5py
    from h5py._hl import filters as hf

    if int(h5py.__version__.split(".")[0]) != 3 or not hasattr(hf, "fill_dcpl"):
        return
    if FILTER_NAME not in hf.encode:
        hf.encode = (*hf.encode, FILTER_NAME)
    if FILTER_NAME not in hf.decode:
        hf.decode = (*hf.decode, FILTER_NAME)
    if getattr(hf.fill_dcpl, "_necoda", False):
        return
    original = hf.fill_dcpl

    @functools.wraps(original)
    def fill_dcpl(plist, shape, dtype, chunks, compression, compression_opts, *args, **kwargs):
        if compression == FILTER_NAME or compression == FILTER_ID or getattr(compression, "filter_id", None) == FILTER_ID:
            from .dtypes import code_of

            code_of(dtype)  # refuse e.g. strings or compounds here, with a clear error
        if compression == FILTER_NAME:
            from .filters import Necoda

            if compression_opts is None:
                f = Necoda()
            elif isinstance(compression_opts, dict):
                f = Necoda(**compression_opts)
            else:
                f = None
                compression_opts = tuple(compression_opts)
            compression, compression_opts = FILTER_ID, (f.filter_options if f else compression_opts)
        return original(plist, shape, dtype, chunks, compression, compression_opts, *args, **kwargs)

    fill_dcpl._necoda = True
    hf.fill_dcpl = fill_dcpl

    original_name = hf.get_filter_name

    @functools.wraps(original_name)
    def get_filter_name(code):
        return FILTER_NAME if code == FILTER_ID else original_name(code)

    hf.get_filter_name = get_filter_name
