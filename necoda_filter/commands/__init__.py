"""The ``necoda`` subcommands (one module each) and the argument checks they share."""
from __future__ import annotations


def check_dtype(value, option: str = "--dtype") -> None:
    """A clear one-line error for a data type numpy does not know (None: not given)."""
    import numpy as np

    if value is None:
        return
    try:
        np.dtype(value)
    except TypeError:
        raise ValueError(f"{option}: unknown data type {value!r}") from None
