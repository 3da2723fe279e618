"""``necoda simulate imaging|ephys|both OUT``: write a simulated recording with its ground truth.

OUT.npz holds every field of :class:`~necoda_filter.simulate.ImagingSim` /
:class:`~necoda_filter.simulate.EphysSim` as arrays plus ``params_json`` (the params dict as
JSON). OUT.npy holds only the recording (the movie, or the (T, C) ephys data). OUT.nwb is an NWB file
with the recording(s) as a TwoPhotonSeries and/or an ElectricalSeries and the ground truth beside them
(:mod:`necoda_filter.simulate_nwb`); ``both`` puts a movie and a recording in one NWB file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from . import check_dtype

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("kind", choices=["imaging", "ephys", "both"],
                        help="what to simulate (both: a movie and a recording, into one .nwb)")
    parser.add_argument("out", help="output path: .npz (all fields), .npy (the recording only) or .nwb (the "
                                    "recording as an NWB series, ground truth included)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    g = parser.add_argument_group("imaging")
    g.add_argument("--frames", type=int, default=500)
    g.add_argument("--height", type=int, default=128)
    g.add_argument("--width", type=int, default=128)
    g.add_argument("--cells", type=int, default=40)
    g.add_argument("--fps", type=float, default=30.0)
    g.add_argument("--gain", type=float, default=100.0, help="raw units per photon")
    g.add_argument("--offset", type=float, default=100.0, help="zero-photon level, raw units")
    g.add_argument("--read-noise", type=float, default=0.5, help="read noise sd in photons")
    g.add_argument("--photons", type=float, default=4.0, help="cell resting fluorescence, photons/pixel/frame")
    g.add_argument("--background", choices=["2p", "1p"], default="2p")
    g.add_argument("--no-nucleus", action="store_true")
    g.add_argument("--motion", type=float, default=0.0, help="rigid jitter sd in pixels")
    g.add_argument("--dtype", default=None, help="imaging default uint16, ephys default int16")
    g.add_argument("--bit-depth", type=int, default=16)
    g.add_argument("--pixel-um", type=float, default=1.0)
    e = parser.add_argument_group("ephys")
    e.add_argument("--duration", type=float, default=2.0, help="seconds")
    e.add_argument("--channels", type=int, default=384)
    e.add_argument("--units", type=int, default=30)
    e.add_argument("--fs", type=float, default=30000.0)
    e.add_argument("--noise-uv", type=float, default=7.0)
    e.add_argument("--uv-per-bit", type=float, default=2.34)
    e.add_argument("--no-lfp", action="store_true")


def _simulate(args, kind):
    from .. import simulate as sim

    if kind == "imaging":
        return sim.simulate_imaging(
            n_frames=args.frames, height=args.height, width=args.width, n_cells=args.cells, fps=args.fps,
            gain=args.gain, offset=args.offset, read_noise=args.read_noise, photons_baseline=args.photons,
            background=args.background, nucleus=not args.no_nucleus, motion_px=args.motion,
            dtype=args.dtype or "uint16", bit_depth=args.bit_depth, seed=args.seed, pixel_um=args.pixel_um)
    return sim.simulate_ephys(
        duration_s=args.duration, n_channels=args.channels, fs=args.fs, n_units=args.units,
        lfp=not args.no_lfp, noise_uv=args.noise_uv, uv_per_bit=args.uv_per_bit,
        dtype=args.dtype or "int16", seed=args.seed)


def run(args) -> int:
    out = Path(args.out)
    if out.suffix not in (".npz", ".npy", ".nwb"):
        raise ValueError(f"OUT must end with .npz, .npy or .nwb, got {out.name!r}")
    if args.kind == "both" and out.suffix != ".nwb":
        raise ValueError(f"`both` writes one NWB file: OUT must end with .nwb, got {out.name!r}")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder")
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists (use --force to overwrite)")
    check_dtype(args.dtype)
    if args.kind in ("imaging", "both") and not args.fps > 0:
        raise ValueError(f"--fps must be > 0, got {args.fps}")
    kinds = ("imaging", "ephys") if args.kind == "both" else (args.kind,)
    t0 = time.perf_counter()
    sims = {k: _simulate(args, k) for k in kinds}
    dt = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".nwb":
        from ..simulate_nwb import write_nwb

        write_nwb(out, sims.get("imaging"), sims.get("ephys"))  # atomic: a temporary renamed over OUT
    else:
        _write_arrays(out, sims[args.kind])
    for k, res in sims.items():
        print(f"necoda simulate {k}: {_summary(k, res)}; simulated in {dt:.2f} s -> {out}")
    return 0


def _write_arrays(out: Path, res) -> None:
    main = res.movie if hasattr(res, "movie") else res.data
    # atomic: write a temporary file next to OUT, then rename it over OUT (never a half-written OUT)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if out.suffix == ".npy":
                np.save(fh, main)
            else:
                fields = {}
                for f in dataclasses.fields(res):
                    v = getattr(res, f.name)
                    if f.name == "params":
                        fields["params_json"] = np.array(json.dumps(v, default=float))
                    elif v is not None:
                        fields[f.name] = np.asarray(v)
                np.savez(fh, **fields)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give OUT the usual permissions
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _summary(kind: str, res) -> str:
    p = res.params
    if kind == "imaging":
        return (f"movie {res.movie.shape} {res.movie.dtype}, {p['n_cells']} cells, {int(res.spikes.sum())} spikes, "
                f"gain {p['gain']:g}/photon, offset {p['offset']:g}, saturated {p['saturated_fraction']:.2%}")
    return (f"data {res.data.shape} {res.data.dtype} at {p['fs']:g} Hz, {p['n_units']} units, "
            f"{res.spike_times.size} spikes, {p['uv_per_bit']:g} uV/bit")
