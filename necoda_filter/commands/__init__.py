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


def whole_number(minimum: int, meaning: str = ""):
    """An argparse type: an integer of at least ``minimum`` (``meaning`` says what the minimum means)."""
    def parse(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum}{meaning} or more, not {value}")
        return value

    return parse


#: argparse type of counts such as ``--workers``: an integer of at least 1 (0 or -2 were taken as 1)
positive_int = whole_number(1)


def missing(packages) -> list[str]:
    """The ones of ``packages`` that cannot be imported here (checked without importing them), so that a
    command can say what to install before any work instead of failing halfway with a traceback."""
    import importlib.util

    out = []
    for name in packages:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: sys.modules[name] is None (import blocked)
            found = False
        if not found:
            out.append(name)
    return out


def check_learned_bound(max_error, max_error_noise, exact: str) -> None:
    """Refuse a learned-mode safeguard bound below one raw unit (``--max-error`` < 1, ``--max-error-noise``
    0): the safeguard codes the residual within the bound less a one-unit margin (docs/LEARNED.md), so every
    chunk would be stored raw, a file larger than its input. ``exact``: the option that asks for a copy."""
    if max_error_noise == 0 or (max_error is not None and max_error < 1):
        raise ValueError("the learned mode's safeguard needs a bound of at least one raw unit (--max-error >= 1, "
                         "or --max-error-noise > 0: K times the chunk's noise sigma, itself at least one unit); "
                         f"for an exact copy use {exact}")
