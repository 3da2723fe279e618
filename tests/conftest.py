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
    """Run ``code`` in a new interpreter with a clean environment (plus env_extra)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HDF5_PLUGIN", "PYTHON"))}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)
