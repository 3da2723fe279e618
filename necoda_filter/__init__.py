"""necoda-filter: compression for neuroscience data inside HDF5, NWB and Zarr.

Importing this package registers the ``necoda`` HDF5 filter with h5py's HDF5 library (and the name
``compression="necoda"``) and the numcodecs codec. See README.md.
"""
from __future__ import annotations

from . import exitflush as _exitflush  # noqa: F401  (flushes files left open at exit: exitflush.py)
from ._plugin import PLUGIN_PATH, FilterUnavailable, register
from .constants import FILTER_ID, FILTER_NAME, FORMAT_VERSION
from .codec import NecodaCodec
from .container import CorruptChunk
from .filters import Necoda, require_necoda

__version__ = "0.1.0"

__all__ = [
    "FILTER_ID", "FILTER_NAME", "FORMAT_VERSION", "PLUGIN_PATH", "Necoda", "NecodaCodec",
    "CorruptChunk", "FilterUnavailable", "register", "require_necoda", "read", "fast", "FastDataset",
    "__version__",
]


def __getattr__(name):
    if name in ("read", "fast", "FastDataset"):  # the parallel reader (reader.py), imported on first use
        from . import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'necoda_filter' has no attribute {name!r}")


def _register_all() -> None:
    import numcodecs

    numcodecs.register_codec(NecodaCodec)
    register()


_register_all()
