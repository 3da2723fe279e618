"""Write an NWB file with pynwb whose imaging and ephys data go through the necoda filter, read it back.

    python examples/pynwb_write.py [OUTDIR]

The TwoPhotonSeries uses ``H5DataIO(..., compression="necoda")`` (mode "auto": the LOSSY learned mode
for integer movies); the ElectricalSeries uses the lossless mode. The file is read back with NWBHDF5IO,
then again in a fresh Python process that only has HDF5_PLUGIN_PATH set and never imports
necoda_filter: this is how nwbinspector, dandi or a colleague's analysis script read such a file.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from hdmf.backends.hdf5.h5_utils import H5DataIO
from pynwb import NWBHDF5IO, NWBFile
from pynwb.ecephys import ElectricalSeries
from pynwb.ophys import OpticalChannel, TwoPhotonSeries

import necoda_filter  # registers the filter and the name "necoda" with h5py (and so with hdmf)
from necoda_filter import Necoda
from necoda_filter.simulate import simulate_ephys, simulate_imaging

out = (Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="necoda-example-"))).resolve()
out.mkdir(parents=True, exist_ok=True)
path = out / "pynwb_write.nwb"
print(f"writing {path}")

# hdmf warns that a plugin filter "may not be available on all installations": readers need the plugin
# (part 2 below) or a plain copy made with `necoda decompress` (recompress_nwb.py)
warnings.filterwarnings("ignore", message=".*compression may not be available")

movie = simulate_imaging(n_frames=128, height=128, width=128, n_cells=20, seed=0).movie   # (T, H, W) uint16
ephys = simulate_ephys(duration_s=2.0, n_channels=32, n_units=5, seed=0).data              # (T, C) int16

nwb = NWBFile(session_description="necoda example", identifier="necoda-example",
              session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
scope = nwb.create_device(name="scope", description="two-photon microscope")
plane = nwb.create_imaging_plane(
    name="plane", optical_channel=OpticalChannel(name="green", description="GCaMP", emission_lambda=520.0),
    description="L2/3", device=scope, excitation_lambda=920.0, imaging_rate=30.0, indicator="GCaMP6f", location="V1")
nwb.add_acquisition(TwoPhotonSeries(
    name="TwoPhotonSeries", imaging_plane=plane, rate=30.0, unit="n.a.",
    # 64 frames x full frame per chunk; for an exact archive use compression=Necoda(mode="lossless")
    data=H5DataIO(movie, chunks=(64, 128, 128), compression="necoda")))

probe = nwb.create_device(name="probe", description="silicon probe")
group = nwb.create_electrode_group(name="shank0", description="shank", location="CA1", device=probe)
for _ in range(ephys.shape[1]):
    nwb.add_electrode(group=group, location="CA1")
nwb.add_acquisition(ElectricalSeries(
    name="ElectricalSeries", electrodes=nwb.create_electrode_table_region(list(range(ephys.shape[1])), "all"),
    rate=30000.0, conversion=2.34e-6,
    # about one second x all channels per chunk, bit-exact
    data=H5DataIO(ephys, chunks=(30000, ephys.shape[1]), **Necoda(mode="lossless"), allow_plugin_filters=True)))

with NWBHDF5IO(str(path), "w") as io:
    io.write(nwb)

# 1. Read back in this process
with NWBHDF5IO(str(path), "r") as io:
    acq = io.read().acquisition
    movie_back = acq["TwoPhotonSeries"].data[:]
    ephys_back = acq["ElectricalSeries"].data[:]
    ratio = movie.nbytes / acq["TwoPhotonSeries"].data.id.get_storage_size()
assert np.array_equal(ephys_back, ephys), "lossless ephys differs"
err = np.abs(movie_back.astype(np.int64) - movie).max()
print("ElectricalSeries: equal to the original (lossless)")
print(f"TwoPhotonSeries: mode auto = learned (lossy), ratio {ratio:.0f}x, max error {err} raw units")

# 2. Read in a fresh process: no `import necoda_filter`, only HDF5_PLUGIN_PATH (HDF5 loads the plugin)
reader = """
import hashlib, sys
from pynwb import NWBHDF5IO
assert "necoda_filter" not in sys.modules
with NWBHDF5IO(sys.argv[1], "r") as io:
    acq = io.read().acquisition
    for name in ("TwoPhotonSeries", "ElectricalSeries"):
        print(name, hashlib.sha256(acq[name].data[:].tobytes()).hexdigest())
"""
env = {k: v for k, v in os.environ.items() if not k.startswith(("HDF5_PLUGIN", "PYTHONPATH"))}
env["HDF5_PLUGIN_PATH"] = necoda_filter.PLUGIN_PATH
print(f"export HDF5_PLUGIN_PATH={necoda_filter.PLUGIN_PATH}")
r = subprocess.run([sys.executable, "-c", reader, str(path)], env=env, cwd=out, capture_output=True, text=True,
                   timeout=300)
assert r.returncode == 0, r.stderr
fresh = dict(line.split() for line in r.stdout.splitlines())
assert fresh["TwoPhotonSeries"] == hashlib.sha256(movie_back.tobytes()).hexdigest()
assert fresh["ElectricalSeries"] == hashlib.sha256(ephys.tobytes()).hexdigest()
print("fresh process (plugin only): both series read, the same values as above")
print("OK")
