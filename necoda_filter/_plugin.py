"""Find the plugin library, register the filter with h5py's HDF5, and teach h5py the name "necoda"."""
from __future__ import annotations

import ctypes
import functools
import inspect
import numbers
import os
import sys
import threading
import time

from .constants import FILTER_ID, FILTER_NAME

#: Folder holding ``libh5necoda.so``; point ``HDF5_PLUGIN_PATH`` here to read necoda data from any
#: HDF5 application running inside Python (h5py, pynwb, nwbinspector, dandi) without importing us.
PLUGIN_PATH = os.path.dirname(os.path.abspath(__file__))
LIBRARY_NAME = "libh5necoda.so"


class FilterUnavailable(RuntimeError):
    """The necoda HDF5 filter could not be registered; writing with it would not compress."""


def missing_library(name: str, what: str, folder: str = PLUGIN_PATH) -> str:
    """Why the C library ``name`` (the ``what``) is not in the package ``folder``, and what to do."""
    if os.path.exists(os.path.join(os.path.dirname(folder), "CMakeLists.txt")):
        # a source checkout: its package folder comes first on sys.path when Python runs from the repository
        # root (or PYTHONPATH names it), shadowing the installed package; only an editable install builds here
        return (f"{name} is missing from {folder}: Python imported necoda_filter from the source checkout "
                f"{os.path.dirname(folder)} (the current folder or PYTHONPATH puts it first), not from the "
                f"installed package, and the C {what} is built into a checkout only by an editable install. Run "
                "Python from another folder, or build in place: pip install scikit-build-core && "
                "pip install --no-build-isolation -e .")
    return (f"{name} is missing from {folder}: necoda-filter was not built/installed with its C {what} "
            "(reinstall with `pip install necoda-filter`)")


def library_path() -> str:
    path = os.path.join(PLUGIN_PATH, LIBRARY_NAME)
    if not os.path.exists(path):
        raise FilterUnavailable(missing_library(LIBRARY_NAME, "HDF5 filter shim"))
    return path


def is_registered() -> bool:
    import h5py

    return bool(h5py.h5z.filter_avail(FILTER_ID))


def register() -> None:
    """Register the filter with the HDF5 library h5py uses (idempotent) and the name "necoda"."""
    import h5py
    from h5py._objects import phil

    path = library_path()
    if not _lock_h5py(phil):
        threading.Thread(target=_register_later, args=(phil,), name="necoda-register", daemon=True).start()
        _teach_h5py_the_name()
        return
    try:  # under h5py's lock: HDF5 must not run in another thread meanwhile
        if not is_registered():
            lib = ctypes.CDLL(path)
            rc = lib.necoda_h5_init(h5py.h5z.__file__.encode())
            if rc != 0 or not is_registered():
                raise FilterUnavailable(f"registering the necoda HDF5 filter failed (code {rc})")
    finally:
        phil.release()
    _teach_h5py_the_name()


def _lock_h5py(phil) -> bool:
    """Acquire h5py's lock to register the filter, or return False where waiting for it would never end.

    ``import necoda_filter`` registers the filter last. Another thread may hold h5py's lock inside HDF5,
    running this filter loaded through HDF5_PLUGIN_PATH: its first call imports ``necoda_filter._bridge``,
    which waits for the package's import to finish — while the import waited for the lock, so both threads
    hung forever. The import then leaves the registration to a thread of its own (:func:`_register_later`);
    the filter that thread's HDF5 runs is the plugin, already registered."""
    if phil.acquire(False):
        return True
    spec = getattr(sys.modules.get(__package__), "__spec__", None)
    if not getattr(spec, "_initializing", False):  # not importing the package: nothing waits for us
        phil.acquire()
        return True
    while not phil.acquire(False):
        if _import_awaited():
            return False
        time.sleep(0.001)
    return True


def _import_awaited() -> bool:
    """Whether a thread waits for this package's import to finish (on importlib's module lock)."""
    try:
        from importlib import _bootstrap

        ref = _bootstrap._module_locks.get(__package__)
        lock = ref() if ref is not None else None
        return bool(lock is not None and lock.waiters)
    except Exception:  # noqa: BLE001 — importlib internals of another Python version
        return False


def _register_later(phil) -> None:
    with phil:  # held by the thread whose filter call waits for the import, until that call returns
        register()


def _teach_h5py_the_name() -> None:
    """Make ``compression="necoda"`` work in h5py (and hence hdmf's H5DataIO), narrowly.

    h5py only accepts its built-in filter names. We add "necoda" to its encode/decode tuples, map it
    to the filter id and cd_values in ``fill_dcpl`` (``compression_opts`` may be a dict of Necoda options;
    ``compression=FILTER_ID`` gets the same defaults and checks, :func:`_cd_values`) and name the id in
    ``get_filter_name`` (so ``"necoda" in Dataset._filters``; h5py's ``Dataset.compression`` stays
    ``"unknown"``, as for every plugin filter).
    Guarded by h5py's major version; tests check the patch still works on the pinned version.
    """
    import h5py
    from h5py._hl import filters as hf

    from . import exitflush

    exitflush.watch_h5py(h5py)  # a failed File.close keeps the exit flush off HDF5's ids (exitflush.py)
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
        if compression == FILTER_NAME or (compression == FILTER_ID and not isinstance(compression, bool)):
            compression, compression_opts = FILTER_ID, _cd_values(compression_opts)
        if compression == FILTER_ID or getattr(compression, "filter_id", None) == FILTER_ID:
            bound = signature.bind_partial(plist, shape, dtype, chunks, compression, compression_opts, *args,
                                           **kwargs).arguments
            opts = compression_opts if compression == FILTER_ID else getattr(compression, "filter_options", ())
            _check_pipeline(opts, bool(bound.get("shuffle")), bound.get("scaleoffset"))
            from . import options

            mode, given = options.user_options(tuple(opts or ()))
            options.check_for_dtype(mode, given, dtype)
            if mode == "learned" and shape is not None and len(shape) == 2:  # QA 20: ephys coded as an image
                import warnings

                warnings.warn("necoda mode 'learned' codes each chunk of this 2-D dataset as one image (its model "
                              "is made for time x height x width movies); for ephys (time x channels) use mode "
                              "'lossless' or 'bounded'", UserWarning, stacklevel=4)
        return original(plist, shape, dtype, chunks, compression, compression_opts, *args, **kwargs)

    signature = inspect.signature(original)

    fill_dcpl._necoda = True
    hf.fill_dcpl = fill_dcpl

    original_name = hf.get_filter_name

    @functools.wraps(original_name)
    def get_filter_name(code):
        return FILTER_NAME if code == FILTER_ID else original_name(code)

    hf.get_filter_name = get_filter_name


def _check_pipeline(cd_values, shuffle: bool, scaleoffset) -> None:
    """h5py puts scaleoffset and shuffle *before* the compression filter. necoda codes the chunk as an
    array of the dataset's type: after scaleoffset it got a smaller buffer and every chunk written was
    unreadable; after shuffle (regrouped bytes) bounded mode broke its error bound (max error 767 for
    max_error=2) and the learned model saw noise. Refused here with a clear error (the C shim refuses the
    same pipelines for other writers); lossless and raw take shuffled bytes exactly, so they keep working."""
    from . import options

    if scaleoffset is not None and scaleoffset is not False:
        raise ValueError("necoda cannot follow HDF5's scaleoffset filter (it changes the bytes necoda codes): "
                         "drop scaleoffset=; for a bounded lossy store use Necoda(mode='bounded', max_error=...)")
    if shuffle:
        mode, _ = options.user_options(tuple(cd_values or ()))
        if mode not in ("lossless", "raw"):
            raise ValueError(f"shuffle=True regroups the bytes necoda mode {mode!r} codes (its error bound and model "
                             "would apply to shuffled bytes): drop shuffle=True, necoda does its own prediction")
        if mode == "lossless":  # exact all the same, but it predicts bytes instead of samples (QA 20: 1.57x -> 1.10x)
            import warnings

            warnings.warn("shuffle=True before necoda mode 'lossless': still bit-exact, but necoda then predicts "
                          "shuffled bytes instead of samples and compresses far less: drop shuffle=True",
                          UserWarning, stacklevel=4)


def _cd_values(compression_opts) -> tuple:
    """cd_values for ``compression="necoda"`` / ``compression=FILTER_ID`` from ``compression_opts``:
    None or () (defaults, as ``Necoda()``), a dict of :class:`Necoda` options, a ``Necoda(...)`` object, or
    the cd_values of a ``Necoda(...).filter_options``. Anything else is a clear error here, never a file whose chunks the
    filter stores raw: short tuples were padded with zeros (``max_error=0``: imaging in mode "auto" was then
    stored uncompressed); empty cd_values get the same defaults in the C shim too."""
    from collections.abc import Iterable, Mapping

    from . import options
    from .filters import Necoda

    if compression_opts is None:
        return Necoda().filter_options
    if isinstance(compression_opts, Necoda):  # the filter object itself (a Mapping too): its cd_values
        return compression_opts.filter_options
    if getattr(compression_opts, "filter_id", None) is not None:  # another plugin's filter object
        raise TypeError(f"necoda compression_opts must be a dict of Necoda options or a Necoda(...) object, got "
                        f"{compression_opts!r}; pass another filter as compression= (without compression='necoda')")
    if isinstance(compression_opts, Mapping):
        unknown = [k for k in compression_opts if k != "mode" and k not in options.OPTION_NAMES]
        if unknown:  # the package's own message (as the zarr v3 codec's), not Necoda.__init__'s TypeError
            raise TypeError(f"unknown necoda option {unknown[0]!r}; options are mode, "
                            f"{', '.join(options.OPTION_NAMES)}")
        return Necoda(**compression_opts).filter_options
    if isinstance(compression_opts, (str, bytes)) or not isinstance(compression_opts, Iterable):
        raise TypeError(f"necoda compression_opts must be a dict of Necoda options (e.g. {{'mode': 'lossless'}}) "
                        f"or Necoda(...).filter_options, got {compression_opts!r}")
    cd = tuple(compression_opts)
    if not cd:
        return Necoda().filter_options
    if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and 0 <= c < 2**32 for c in cd):
        raise TypeError(f"necoda compression_opts must be unsigned 32-bit integers (Necoda(...).filter_options), got {cd!r}")
    try:
        mode, opts = options.user_options(cd)
        options.check_options(mode, opts, stored=True)  # filter values as stored (by an earlier release, too)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid necoda compression_opts {cd!r}: {e}; use a dict of Necoda options "
                         "or Necoda(...).filter_options") from None
    return cd
