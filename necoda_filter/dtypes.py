"""The dtype table: the one place that maps numpy dtypes to the one-byte codes stored in chunk headers
and to HDF5's (class, size, sign) triple reported by the C shim's ``set_local``."""
from __future__ import annotations

import numpy as np

#: code -> numpy dtype (little endian). Codes are stored in the container; never renumber.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype("<u1"),
    2: np.dtype("<i1"),
    3: np.dtype("<u2"),
    4: np.dtype("<i2"),
    5: np.dtype("<u4"),
    6: np.dtype("<i4"),
    7: np.dtype("<u8"),
    8: np.dtype("<i8"),
    9: np.dtype("<f4"),
    10: np.dtype("<f8"),
    11: np.dtype("<f2"),
}
_CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}

# HDF5 type classes as passed by the shim (H5T_INTEGER = 0, H5T_FLOAT = 1 in every HDF5 release).
H5T_INTEGER = 0
H5T_FLOAT = 1


class UnsupportedDtype(TypeError):
    pass


def code_of(dtype) -> int:
    dt = np.dtype(dtype)
    try:
        return _CODE_OF[dt.newbyteorder("<") if dt.itemsize > 1 else dt]
    except (KeyError, TypeError, ValueError):  # TypeError: numpy's variable-width StringDType has no byte order
        raise UnsupportedDtype(
            f"necoda cannot compress dtype {np.dtype(dtype)}; supported: "
            + ", ".join(str(d) for d in DTYPE_CODES.values())
        ) from None


def dtype_of(code: int) -> np.dtype:
    try:
        return DTYPE_CODES[code]
    except KeyError:
        raise ValueError(f"unknown dtype code {code} in necoda chunk header") from None


def from_hdf5(type_class: int, size: int, signed: int) -> np.dtype:
    """numpy dtype for the HDF5 type described by the shim (little-endian view)."""
    if type_class == H5T_INTEGER:
        dt = np.dtype(f"<{'i' if signed else 'u'}{size}")
    elif type_class == H5T_FLOAT:
        dt = np.dtype(f"<f{size}")
    else:
        raise UnsupportedDtype(f"necoda supports integer and float datasets only (HDF5 type class {type_class})")
    code_of(dt)  # validates
    return dt
