"""Recompress a whole existing NWB file with the `necoda` command line, check it, and undo it.

    python examples/recompress_nwb.py [OUTDIR]

The steps a lab takes with files it already has:
    necoda compress raw.nwb small.nwb --imaging learned    imaging: learned (lossy); ephys: lossless (default)
    necoda info small.nwb                                  mode, ratio, write-time fidelity per dataset
    necoda evaluate raw.nwb small.nwb --report report/     metrics + PNG figures against the original
    necoda decompress small.nwb plain.nwb                  plain HDF5 again, for readers without the plugin
Here "raw.nwb" is first made with pynwb: an uncompressed TwoPhotonSeries and a gzip ElectricalSeries.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
from hdmf.backends.hdf5.h5_utils import H5DataIO
from pynwb import NWBHDF5IO, NWBFile
from pynwb.ecephys import ElectricalSeries
from pynwb.ophys import OpticalChannel, TwoPhotonSeries

from necoda_filter.simulate import simulate_ephys, simulate_imaging

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="necoda-example-"))
out.mkdir(parents=True, exist_ok=True)
raw, small, plain, report = out / "raw.nwb", out / "small.nwb", out / "plain.nwb", out / "report"

# --- 1. an ordinary NWB file, as an acquisition system or converter would write it --------------------
movie = simulate_imaging(n_frames=128, height=128, width=128, n_cells=20, seed=0).movie
ephys = simulate_ephys(duration_s=2.0, n_channels=32, n_units=5, seed=0).data
nwb = NWBFile(session_description="necoda example", identifier="necoda-recompress",
              session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
scope = nwb.create_device(name="scope", description="two-photon microscope")
plane = nwb.create_imaging_plane(
    name="plane", optical_channel=OpticalChannel(name="green", description="GCaMP", emission_lambda=520.0),
    description="L2/3", device=scope, excitation_lambda=920.0, imaging_rate=30.0, indicator="GCaMP6f", location="V1")
nwb.add_acquisition(TwoPhotonSeries(name="TwoPhotonSeries", imaging_plane=plane, rate=30.0, unit="n.a.", data=movie))
probe = nwb.create_device(name="probe", description="silicon probe")
group = nwb.create_electrode_group(name="shank0", description="shank", location="CA1", device=probe)
for _ in range(ephys.shape[1]):
    nwb.add_electrode(group=group, location="CA1")
nwb.add_acquisition(ElectricalSeries(
    name="ElectricalSeries", electrodes=nwb.create_electrode_table_region(list(range(ephys.shape[1])), "all"),
    rate=30000.0, conversion=2.34e-6, data=H5DataIO(ephys, compression="gzip")))
with NWBHDF5IO(str(raw), "w") as io:
    io.write(nwb)

# --- 2. the `necoda` console script installed next to this Python (or the module, which is the same) ---
exe = shutil.which("necoda", path=os.path.dirname(sys.executable))
necoda = [exe] if exe else [sys.executable, "-m", "necoda_filter.cli"]


def run(*args):
    print(f"\n$ necoda {' '.join(map(str, args))}", flush=True)
    subprocess.run(necoda + [str(a) for a in args], check=True, cwd=out, timeout=600)  # raises on failure


# --quiet: no progress bars; --overwrite: OUT may exist from an earlier run (IN is never modified)
run("compress", raw, small, "--imaging", "learned", "--quiet", "--overwrite")
run("info", small)
run("evaluate", raw, small, "--report", report)
run("decompress", small, plain, "--quiet", "--overwrite")

# --- 3. what each step produced -----------------------------------------------------------------------
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
    assert np.array_equal(p["acquisition/ElectricalSeries/data"][:], ephys)  # ephys was kept lossless
print("OK")
