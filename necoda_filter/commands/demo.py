"""``necoda demo``: the main job on built-in sample data.

Simulates a two-photon movie and a Neuropixels-like recording (``necoda_filter.simulate``), writes them
into an NWB file with ``H5DataIO(..., compression="necoda")``, reads the file back in a fresh Python
process that has only ``HDF5_PLUGIN_PATH`` set (as nwbinspector or dandi would), and prints per
dataset: mode, ratio, write/read speed and fidelity.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

READER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from pynwb import NWBHDF5IO
    out = {}
    with NWBHDF5IO(sys.argv[1], "r") as io:
        nwb = io.read()
        for name in ("TwoPhotonSeries", "ElectricalSeries"):
            t = time.perf_counter()
            data = nwb.acquisition[name].data[:]
            out[name] = {"seconds": time.perf_counter() - t}
            np.save(sys.argv[2] + "/" + name + ".npy", data)
    out["necoda_imported"] = "necoda_filter" in sys.modules
    print(json.dumps(out))
""")


def add_arguments(p):
    p.add_argument("--out", help="where to keep the NWB file (default: a temporary folder, removed afterwards)")
    p.add_argument("--frames", type=int, default=300, help="movie frames (default 300)")
    p.add_argument("--size", type=int, default=128, help="movie height and width (default 128)")
    p.add_argument("--seconds", type=float, default=2.0, help="ephys duration in seconds (default 2)")
    p.add_argument("--channels", type=int, default=384, help="ephys channels (default 384)")
    p.add_argument("--imaging-mode", default="auto", help="necoda mode for the movie (default auto)")
    p.add_argument("--ephys-mode", default="auto", help="necoda mode for ephys (default auto)")


def _io(mode: str) -> dict:
    """H5DataIO keywords: the literal compression="necoda", with the Necoda cd_values when not "auto"
    (hdmf accepts only int/tuple compression_opts)."""
    from ..filters import Necoda

    return {"compression": "necoda"} if mode == "auto" else {"compression": "necoda",
                                                              "compression_opts": Necoda(mode=mode).filter_options}


def run(args) -> int:
    import numpy as np

    from .. import PLUGIN_PATH, metrics, simulate
    from ..simulate_nwb import write_nwb
    from .info import file_info

    print(f"necoda demo: simulating a {args.frames}x{args.size}x{args.size} two-photon movie and a "
          f"{args.seconds:g} s x {args.channels}-channel recording ...", flush=True)
    im = simulate.simulate_imaging(n_frames=args.frames, height=args.size, width=args.size, seed=1)
    ep = simulate.simulate_ephys(duration_s=args.seconds, n_channels=args.channels, seed=1)
    keep = args.out is not None
    workdir = tempfile.mkdtemp(prefix="necoda-demo-")
    path = os.path.abspath(args.out) if keep else os.path.join(workdir, "necoda_demo.nwb")
    if keep and os.path.exists(path):
        raise FileExistsError(f"{path} exists; the demo never overwrites files (choose another --out)")
    try:
        t0 = time.perf_counter()
        write_nwb(path, im, ep, imaging_io=_io(args.imaging_mode), ephys_io=_io(args.ephys_mode), ground_truth=False,
                  identifier="necoda-demo")
        t_write = time.perf_counter() - t0
        import h5py

        from ..filters import require_necoda

        with h5py.File(path, "r") as f:
            for name in ("TwoPhotonSeries", "ElectricalSeries"):
                require_necoda(f["acquisition"][name]["data"])
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["HDF5_PLUGIN_PATH"] = PLUGIN_PATH
        # cwd: a scratch folder, so that `python -c` in a source checkout imports the installed package
        r = subprocess.run([sys.executable, "-c", READER, path, workdir], capture_output=True, text=True, env=env,
                           cwd=workdir)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            raise RuntimeError("reading the NWB file back in a fresh process failed")
        reads = json.loads(r.stdout.strip().splitlines()[-1])
        rows = {row["path"].split("/")[-2]: row for row in file_info(path)}
        total_raw = im.movie.nbytes + ep.data.nbytes
        print(f"\nwrote {path} in {t_write:.1f} s ({total_raw / 1e6 / t_write:.1f} MB/s of raw data, whole NWB write)")
        print("read back in a fresh process with only HDF5_PLUGIN_PATH set "
              f"(necoda_filter imported by user code: no; by the plugin: {reads['necoda_imported']})\n")
        print("| dataset | shape | mode | raw MB | stored MB | ratio | read MB/s | max abs err | PSNR dB | fidelity |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, orig in (("TwoPhotonSeries", im.movie), ("ElectricalSeries", ep.data)):
            got = np.load(os.path.join(workdir, name + ".npy"))
            row = rows[name]
            err = metrics.error_stats(orig, got)
            if name == "TwoPhotonSeries":
                fid = metrics.imaging_fidelity(orig, got, footprints=im.footprints, true_traces=im.traces)
                fid_txt = (f"ROI r {fid['roi_r_median']:.3f}; vs truth {fid['true_r_median_dec']:.3f} "
                           f"(raw {fid['true_r_median_orig']:.3f})")
            else:
                fid = metrics.ephys_fidelity(orig, got, ep.fs)
                fid_txt = f"spike F1 {fid['spike_f1']:.3f}, waveform r {fid['waveform_r_median']:.3f}"
            modes_ = "+".join(row.get("chunk_modes", {})) or "?"
            print(f"| {name} | {orig.shape} | {modes_} | {orig.nbytes / 1e6:.1f} | {row['stored_bytes'] / 1e6:.2f} "
                  f"| {row['ratio']:.2f}× | {orig.nbytes / 1e6 / reads[name]['seconds']:.0f} | {err['max_abs']:g} "
                  f"| {err['psnr']:.1f} | {fid_txt} |")
        if keep:
            print(f"\nkept {path}; inspect it with: necoda info {path}")
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0
