"""Recompress a whole existing NWB file with the `necoda` command line, check it, and undo it.

    python examples/recompress_nwb.py [OUTDIR]

The steps a lab takes with files it already has:
    necoda compress raw.nwb small.nwb --imaging learned    imaging: learned (lossy); ephys: lossless (default)
    necoda info small.nwb                                  mode, ratio, write-time fidelity per dataset
    necoda evaluate raw.nwb small.nwb --report report/     metrics + PNG figures against the original
    necoda decompress small.nwb plain.nwb                  plain HDF5 again, for readers without the plugin
Here "raw.nwb" is first made with `necoda simulate both`: a simulated uncompressed TwoPhotonSeries and
ElectricalSeries, with their ground truth (a stand-in for the files a lab already has).
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

import necoda_filter  # noqa: F401  registers the filter: reading small.nwb below needs it (or HDF5_PLUGIN_PATH)

out = (Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="necoda-example-"))).resolve()
out.mkdir(parents=True, exist_ok=True)
raw, small, plain, report = out / "raw.nwb", out / "small.nwb", out / "plain.nwb", out / "report"

# --- 1. the `necoda` console script installed next to this Python (or the module, which is the same) ---
exe = shutil.which("necoda", path=os.path.dirname(sys.executable))
necoda = [exe] if exe else [sys.executable, "-m", "necoda_filter.cli"]


def run(*args):
    print(f"\n$ necoda {' '.join(map(str, args))}", flush=True)
    subprocess.run(necoda + [str(a) for a in args], check=True, cwd=out, timeout=600)  # raises on failure


# --- 2. an ordinary, uncompressed NWB file: 128 frames of 128x128 and 2 s x 32 channels, simulated -----
run("simulate", "both", raw, "--frames", 128, "--height", 128, "--width", 128, "--cells", 20,
    "--duration", 2, "--channels", 32, "--units", 5, "--force")

# --- 3. recompress, look, compare, undo ---------------------------------------------------------------
# --quiet: no progress bars; --overwrite: OUT may exist from an earlier run (IN is never modified)
run("compress", raw, small, "--imaging", "learned", "--quiet", "--overwrite")
run("info", small)
run("evaluate", raw, small, "--report", report)
run("decompress", small, plain, "--quiet", "--overwrite")

# --- 4. what each step produced -----------------------------------------------------------------------
print()
for p in (raw, small, plain):
    print(f"{p.name:10} {p.stat().st_size / 1e6:7.2f} MB")
pngs = sorted(report.glob("*.png"))
print(f"report: {report / 'report.md'} and {len(pngs)} figures ({', '.join(p.name for p in pngs)})")
assert (report / "report.md").is_file() and (report / "report.json").is_file() and pngs
assert small.stat().st_size < raw.stat().st_size / 2, "the recompressed file is not smaller"
with h5py.File(small, "r") as s, h5py.File(plain, "r") as p:
    for name in ("TwoPhotonSeries", "ElectricalSeries"):
        a, b = s[f"acquisition/{name}/data"], p[f"acquisition/{name}/data"]
        assert b.compression is None and np.array_equal(a[:], b[:])  # decompress is exact, no filter left
    with h5py.File(raw, "r") as r:
        assert np.array_equal(p["acquisition/ElectricalSeries/data"][:], r["acquisition/ElectricalSeries/data"][:])
print("ElectricalSeries: bit-exact after compress + decompress (lossless)")
print("OK")
