"""``necoda demo``: the main job on built-in sample data.

Simulates a two-photon movie and a Neuropixels-like recording (``necoda_filter.simulate``), writes them
into an NWB file with ``H5DataIO(..., compression="necoda")``, reads the file back in a fresh Python
process that has only ``HDF5_PLUGIN_PATH`` set (as nwbinspector or dandi would), and prints per
dataset: mode, ratio, read speed and fidelity, with a legend of the columns.

Every argument (modes, bounds, ``--out``) is checked before anything is simulated. The file goes to a
temporary folder that is deleted at the end (also on Ctrl-C, SIGTERM or SIGHUP), unless ``--out`` names where
to keep it (``FILE.nwb``, or an existing folder to put ``necoda_demo.nwb`` in); an existing file is never
overwritten, not even one that appears while the demo runs.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time

from . import check_learned_bound, check_output_folder, positive_int

#: the file name used in a temporary folder, or inside an existing folder given as --out
DEMO_NAME = "necoda_demo.nwb"

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


def _seconds(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def ephys_mode_choices() -> tuple[str, ...]:
    """The modes that make sense for an extracellular recording: the registry's (``modes.MODE_CHOICES``)
    less the learned mode, whose network is trained on movies (``necoda compress --ephys`` offers
    lossless|bounded; auto picks lossless for ephys)."""
    from ..modes import MODE_CHOICES

    return tuple(m for m in MODE_CHOICES if m != "learned")


def add_arguments(p):
    from ..modes import MODE_CHOICES

    p.add_argument("--out", metavar="FILE.nwb",
                   help=f"keep the NWB file: write it to FILE.nwb, or to FOLDER/{DEMO_NAME} when an existing "
                        "folder is given; an existing file is never overwritten; its folder must exist (missing "
                        "folders are not created: a mistyped path is an error) (default: a temporary folder, "
                        "deleted when the demo ends)")
    p.add_argument("--frames", type=positive_int, default=300, help="movie frames (default 300)")
    p.add_argument("--size", type=positive_int, default=128, help="movie height and width in pixels (default 128)")
    p.add_argument("--seconds", type=_seconds, default=2.0, help="ephys duration in seconds (default 2)")
    p.add_argument("--channels", type=positive_int, default=384, help="ephys channels (default 384)")
    # --imaging / --ephys as in `necoda compress`
    p.add_argument("--imaging-mode", "--imaging", dest="imaging_mode", choices=MODE_CHOICES, default="auto",
                   help="necoda mode for the movie (default auto, which picks the lossy learned mode for movies)")
    p.add_argument("--ephys-mode", "--ephys", dest="ephys_mode", choices=ephys_mode_choices(), default="auto",
                   help="necoda mode for ephys (default auto, which picks lossless for ephys; the learned mode is "
                        "for movies only)")
    p.add_argument("--max-error", type=float, default=None, metavar="N",
                   help="bounded/learned modes: every sample within this many raw units of the original (learned: "
                        "at least 1)")
    p.add_argument("--max-error-noise", type=float, default=None, metavar="X",
                   help="bounded/learned modes: error bound in units of the estimated noise sigma (learned: > 0)")


def _io(mode: str, bounds: dict) -> dict:
    """H5DataIO keywords: the literal compression="necoda", with the Necoda cd_values when not plain "auto"
    (hdmf accepts only int/tuple compression_opts). Raises ValueError on a mode/bound combination the
    filter refuses, so that it is reported before any work."""
    from ..filters import Necoda

    opts = bounds if mode in ("bounded", "learned") else {}
    if mode == "auto" and not opts:
        return {"compression": "necoda"}
    return {"compression": "necoda", "compression_opts": Necoda(mode=mode, **opts).filter_options}


def _settings(args) -> tuple[dict, dict]:
    """(imaging_io, ephys_io), or a ValueError naming the command-line options."""
    bounds = {k: v for k, v in (("max_error", args.max_error), ("max_error_noise", args.max_error_noise))
              if v is not None}
    used = {args.imaging_mode, args.ephys_mode}
    if bounds and not used & {"bounded", "learned"}:
        raise ValueError("--max-error/--max-error-noise apply to the bounded and learned modes only: add "
                         "--imaging-mode bounded|learned or --ephys-mode bounded")
    out = []
    for opt, mode in (("--imaging-mode", args.imaging_mode), ("--ephys-mode", args.ephys_mode)):
        if mode == "bounded" and not bounds:
            raise ValueError(f"{opt} bounded needs a bound: --max-error N (raw units) or --max-error-noise X "
                             "(noise sigma, e.g. 0.5)")
        try:
            out.append(_io(mode, bounds))
        except ValueError as e:
            raise ValueError(f"{opt} {mode}: {e}") from None
    if args.imaging_mode == "learned":
        try:
            check_learned_bound(args.max_error, args.max_error_noise, "--imaging-mode lossless")
        except ValueError as e:
            raise ValueError(f"--imaging-mode learned: {e}") from None
    return out[0], out[1]


def _out_path(out: str) -> str:
    """The absolute path --out asks for; refused (before any work) when it is not a new .nwb file."""
    if not out.strip():
        raise ValueError("--out needs a file name, e.g. --out necoda_demo.nwb")
    path = os.path.abspath(os.path.expanduser(out))
    if os.path.isdir(path):
        path = os.path.join(path, DEMO_NAME)
    elif out.endswith(("/", os.sep)):
        raise FileNotFoundError(f"--out {out}: no such folder (create it first, or give a file name ending in .nwb)")
    elif not path.lower().endswith(".nwb"):
        raise ValueError(f"--out {out}: the NWB file name must end in .nwb (e.g. --out {out}.nwb), "
                         "or name an existing folder")
    if os.path.lexists(path):
        raise FileExistsError(f"{path} exists; the demo never overwrites files (choose another --out)")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder) and not os.path.lexists(folder):
        raise FileNotFoundError(f"--out {out}: folder {folder} does not exist")
    check_output_folder(path, f"--out {out}")  # a file in the way, a folder that cannot be written
    return path


def _learned_note(name: str, args, err: dict, noise: dict, vs_clean: dict, fid: dict) -> str:
    """The legend's note on a movie coded by the learned mode, true whatever the bound: the decoded movie
    differs from the original by about the noise only when that is what was measured (without a bound
    the network drops shot noise; a tight bound keeps the decoded movie close to the original, noise
    included). ``err``: decoded vs original; ``noise``: original vs the noise-free movie; ``vs_clean``:
    decoded vs the noise-free movie."""
    ratio = err["rmse"] / noise["rmse"] if noise["rmse"] > 0 else math.inf
    vs = (f"RMSE {err['rmse']:.3g}, max abs err {err['max_abs']:g} vs the original, which itself differs from the "
          f"simulation's noise-free movie by RMSE {noise['rmse']:.3g}, max {noise['max_abs']:.0f}")
    bound = ""
    if args.imaging_mode == "learned" and args.max_error is not None:  # (auto takes no bound in the demo)
        held = err["max_abs"] <= args.max_error
        bound = (f"--max-error {args.max_error:g} {'kept' if held else 'did NOT keep'} every sample within "
                 f"{args.max_error:g} raw units of the original")
    elif args.imaging_mode == "learned" and args.max_error_noise is not None:
        bound = (f"--max-error-noise {args.max_error_noise:g} bounds every sample's error by "
                 f"{args.max_error_noise:g} times the noise sigma estimated per chunk")
    a, n = vs_clean["rmse"], noise["rmse"]
    if 0.5 <= ratio <= 2:
        what = ("it removes shot noise, so " if a < 0.95 * n else "") + (
            f"the decoded movie differs from the original by about the noise: {vs}")
    elif ratio < 0.5:
        what = f"the decoded movie stays close to the original, noise included: {vs}"
    else:
        what = f"the decoded movie differs from the original by more than the noise: {vs}"
    closer = (f"is closer to the noise-free one (RMSE {a:.3g})" if a < 0.95 * n else
              f"differs from the noise-free one by more than the original does (RMSE {a:.3g})" if a > 1.05 * n else
              f"differs from the noise-free one by about as much as the original (RMSE {a:.3g})")
    roi = fid.get("roi_r_median")
    roi_txt = "" if roi is None or (isinstance(roi, float) and math.isnan(roi)) else (
        f"; the cells' traces in it correlate with the original's at ROI r {roi:.3f}")
    return (f"{name}: the learned mode is LOSSY{'; ' + bound if bound else ''}; {what}. The decoded movie {closer}"
            f"{roi_txt}. For a bit-exact movie: --imaging-mode lossless.")


def _size(nbytes: float) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= f:
            return f"{nbytes / f:.3g} {unit}"
    return f"{nbytes:.0f} B"


def _num(v, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def run(args) -> int:
    imaging_io, ephys_io = _settings(args)          # every argument is checked before any work
    keep = args.out is not None
    path = _out_path(args.out) if keep else None

    from ..nwb.atomic import sigterm_as_exit

    # SIGTERM and SIGHUP (main thread only) become an exit that runs the cleanup (the temporary folder, the
    # NWB file's temporary), as in `necoda compress`
    with sigterm_as_exit():
        return _run(args, keep, path, imaging_io, ephys_io)


def _run(args, keep: bool, path: str | None, imaging_io: dict, ephys_io: dict) -> int:
    import warnings

    import numpy as np

    from .. import PLUGIN_PATH, metrics, modes, simulate
    from ..simulate_nwb import write_nwb
    from .info import file_info

    print(f"necoda demo: simulating a two-photon movie ({args.frames} frames of {args.size}×{args.size} pixels) "
          f"and a {args.seconds:g} s, {args.channels}-channel Neuropixels-like recording ...", flush=True)
    ep = simulate.simulate_ephys(duration_s=args.seconds, n_channels=args.channels, seed=1)
    im = simulate.simulate_imaging(n_frames=args.frames, height=args.size, width=args.size, seed=1)
    workdir = None
    try:
        workdir = tempfile.mkdtemp(prefix="necoda-demo-")
        if not keep:
            path = os.path.join(workdir, DEMO_NAME)
        print('writing them into an NWB file with compression="necoda", then reading it back in a fresh '
              "Python process ...", flush=True)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # hdmf: a plugin filter "may not be available on all installations"; the read-back below shows
            # what a reader needs (necoda-filter installed and HDF5_PLUGIN_PATH)
            warnings.filterwarnings("ignore", message=".*may not be available")
            write_nwb(path, im, ep, imaging_io=imaging_io, ephys_io=ephys_io, ground_truth=False,
                      identifier="necoda-demo", overwrite=False)  # also not a file that appeared meanwhile
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
        where = f"wrote {path}" + ("" if keep else
                                    "\n  (a temporary file, deleted when the demo ends; to keep it: --out FILE.nwb)")
        print(f"\n{where}\n  {_size(total_raw)} of raw data written in {t_write:.1f} s "
              f"({total_raw / 1e6 / t_write:.1f} MB/s for the whole NWB write, compression included)")
        how = ("HDF5 loaded the necoda plugin by itself" if reads["necoda_imported"] else
               "necoda_filter was not loaded in it")
        print("  read back in a fresh Python process that only sets HDF5_PLUGIN_PATH (as nwbinspector or dandi "
              f"would):\n  {how}\n")
        print("| dataset | shape | mode | raw | stored | ratio | read MB/s | max abs err | PSNR dB | fidelity |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        notes = []
        for name, sim, orig in (("TwoPhotonSeries", im, im.movie), ("ElectricalSeries", ep, ep.data)):
            got = np.load(os.path.join(workdir, name + ".npy"))
            row = rows[name]
            err = metrics.error_stats(orig, got)
            if name == "TwoPhotonSeries":
                fid = metrics.imaging_fidelity(orig, got, footprints=im.footprints, true_traces=im.traces)
                fid_txt = (f"ROI r {_num(fid['roi_r_median'], '.3f')}; vs truth {_num(fid['true_r_median_dec'], '.3f')}"
                           f" (original {_num(fid['true_r_median_orig'], '.3f')})")
            else:
                fid = metrics.ephys_fidelity(orig, got, ep.fs)
                fid_txt = (f"spike F1 {_num(fid['spike_f1'], '.3f')}, "
                           f"waveform r {_num(fid['waveform_r_median'], '.3f')}")
            chunk_modes = list(row.get("chunk_modes", {}))
            lossy = [m for m in chunk_modes if m in modes.MODE_TABLE and modes.get(m).lossy]
            mode_txt = "+".join(chunk_modes) or "?"
            if lossy:
                mode_txt += " (lossy)"
            exact = err["max_abs"] == 0
            ratio = row["ratio"]
            ratio_txt = format(ratio, ".0f" if ratio >= 100 else ".3g")
            print(f"| {name} | {'×'.join(map(str, orig.shape))} {orig.dtype} | {mode_txt} | {_size(orig.nbytes)} "
                  f"| {_size(row['stored_bytes'])} | {ratio_txt}× | {orig.nbytes / 1e6 / reads[name]['seconds']:.0f} "
                  f"| {'0 (exact)' if exact else format(err['max_abs'], 'g')} | {err['psnr']:.1f} | {fid_txt} |")
            if not exact:
                # a lossy mode's error against the original includes the noise it removed: compare both with
                # the simulation's noise-free signal
                vs_clean = metrics.error_stats(sim.clean, got)
                noise = metrics.error_stats(sim.clean, orig)
                if name == "TwoPhotonSeries" and "learned" in lossy:
                    notes.append(_learned_note(name, args, err, noise, vs_clean, fid))
                else:
                    notes.append(f"{name} is coded LOSSY ({'+'.join(lossy) or mode_txt}): RMSE {err['rmse']:.3g} vs "
                                 f"the original; vs the simulation's noise-free signal {vs_clean['rmse']:.3g} "
                                 f"(the original: {noise['rmse']:.3g}).")
        print()
        legend = [
            "raw: size in memory; stored: size in the file; ratio = raw/stored; read MB/s: decoding in the fresh "
            "process.",
            "max abs err, PSNR: decoded vs original samples, in the data's raw units (ADC counts); 0 and inf = "
            "bit-exact.",
            "ROI r: median correlation of the simulated cells' ROI traces, decoded vs original; vs truth: decoded "
            "traces vs the cells' true activity (original: the same for the original movie).",
            "spike F1: agreement of the spikes detected in the decoded and the original data (1 = the same "
            "spikes); waveform r: median correlation of their waveforms.",
        ]
        for line in legend + notes:
            print(textwrap.fill(line, width=110, subsequent_indent="  ", break_on_hyphens=False))
        if keep:
            print(f"\nkept {path}; inspect it with: necoda info {path}")
    finally:
        import shutil

        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    if not keep:
        print(f"\ndeleted the temporary folder {workdir}; to keep the file: necoda demo --out {DEMO_NAME}")
    return 0
