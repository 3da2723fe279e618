import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def run_fresh(code: str, env_extra: dict | None = None, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter with a clean environment (plus env_extra).

    The working directory defaults to the temp folder, never the repository root: there ``python -c``
    would import the source tree (no compiled plugin in a fresh clone) instead of the installed package."""
    import tempfile

    cwd = cwd or tempfile.gettempdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HDF5_PLUGIN", "PYTHON"))}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


@pytest.fixture(autouse=True, scope="session")
def _run_outside_the_repository(tmp_path_factory):
    """Run every test (and every subprocess it starts) from a scratch folder: from the repository root
    ``python -c``/``-m`` would import the source tree, which in a fresh clone lacks the compiled plugin."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


@pytest.fixture
def no_simulation(monkeypatch):
    """Argument errors must come before any work: simulating (necoda_filter.simulate) fails the test."""
    from necoda_filter import simulate

    def boom(*a, **k):
        raise AssertionError("simulated before the arguments were checked")
    monkeypatch.setattr(simulate, "simulate_imaging", boom)
    monkeypatch.setattr(simulate, "simulate_ephys", boom)


def series_file(path, groups: dict, **extra):
    """A plain HDF5 file with ``{name: (neurodata_type, data, rate or None)}`` TimeSeries-like groups (a rate
    writes ``starting_time`` with it), and ``extra`` objects at the root (``name=value``)."""
    import h5py

    with h5py.File(path, "w") as f:
        for name, (ntype, data, rate) in groups.items():
            g = f.create_group(name)
            g.attrs["neurodata_type"] = ntype
            g.create_dataset("data", data=data)
            if rate is not None:
                g.create_dataset("starting_time", data=0.0).attrs["rate"] = rate
        for k, v in extra.items():
            f[k] = v
