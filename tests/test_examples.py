"""Every script in examples/ runs to completion (exit 0) with an output folder, as `python examples/NAME.py OUTDIR`.

The scripts check what they demonstrate themselves (bit-exact lossless, bounded within its bound, read()
equal to h5py slicing, ...) and exit non-zero otherwise; here we also check the files they should leave.
A new example is picked up automatically (glob); list its outputs in EXPECTED to have them checked too.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))

# files (relative to OUTDIR) each script must leave
EXPECTED = {
    "h5py_filter.py": ["h5py_filter.h5"],
    "pynwb_write.py": ["pynwb_write.nwb"],
    "zarr_codec.py": ["ephys_v2.zarr/.zarray", "movie_v3.zarr/zarr.json", "movie_v3_lossless.zarr/zarr.json"],
    "recompress_nwb.py": ["raw.nwb", "small.nwb", "plain.nwb", "report/report.md", "report/report.json",
                          "report/acquisition__TwoPhotonSeries__data_frames.png",
                          "report/acquisition__TwoPhotonSeries__data_roi_traces.png",
                          "report/acquisition__ElectricalSeries__data_snippet.png"],
    "fast_read.py": ["fast_read.h5"],
}
# optional packages a script needs (not dependencies of necoda-filter itself)
NEEDS = {"zarr_codec.py": ["zarr"]}


def test_examples_are_found():
    assert {p.name for p in SCRIPTS} >= set(EXPECTED), "an example listed in EXPECTED is missing"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    for module in NEEDS.get(script.name, []):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{script.name} needs {module}")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HDF5_PLUGIN", "PYTHONPATH"))}
    # cwd: a scratch folder, never the repository root (see conftest.py); OUTDIR relative to it, as a user
    # types it (scripts that run subprocesses in another folder must not lose it)
    r = subprocess.run([sys.executable, str(script), "out"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, f"{script.name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-5000:]
    missing = [p for p in EXPECTED.get(script.name, []) if not (out / p).is_file()]
    assert not missing, f"{script.name} did not write {missing}"
    assert any(out.iterdir()), f"{script.name} wrote nothing into OUTDIR"
