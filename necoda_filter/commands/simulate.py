"""``necoda simulate imaging|ephys|both OUT``: write a simulated recording with its ground truth.

OUT.npz holds every field of :class:`~necoda_filter.simulate.ImagingSim` /
:class:`~necoda_filter.simulate.EphysSim` as arrays plus ``params_json`` (the params dict as
JSON). OUT.npy holds only the recording (the movie, or the (T, C) ephys data). OUT.nwb is an NWB file
with the recording(s) as a TwoPhotonSeries and/or an ElectricalSeries and the ground truth beside them
(:mod:`necoda_filter.simulate_nwb`); ``both`` puts a movie and a recording in one NWB file (each with its
default data type: ``--dtype`` is refused with ``both``).

Every option is checked before anything is simulated (an error names the option). OUT's suffix may be in any
letter case (``x.NWB``); its folder must exist (missing folders are not created, as by every necoda command
that writes: a mistyped path is an error, not a new folder tree). OUT is written to a
temporary file next to it that is removed on any error, Ctrl-C, SIGTERM or SIGHUP, and is then published
as OUT without ever replacing a file (also one that appeared during the run, or a dangling symbolic link)
unless ``--force`` is given.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

from . import OUTPUT_FOLDER_RULE, check_dtype, check_output_folder

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("kind", choices=["imaging", "ephys", "both"],
                        help="what to simulate (both: a movie and a recording, into one .nwb)")
    parser.add_argument("out", help="output path: .npz (all fields), .npy (the recording only) or .nwb (the "
                                    "recording as an NWB series, ground truth included), in any letter case; "
                                    f"{OUTPUT_FOLDER_RULE}")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists (never a folder)")
    g = parser.add_argument_group("imaging")
    g.add_argument("--frames", type=int, default=500, help="movie frames (default %(default)s)")
    g.add_argument("--height", type=int, default=128, help="frame height in pixels (default %(default)s)")
    g.add_argument("--width", type=int, default=128, help="frame width in pixels (default %(default)s)")
    g.add_argument("--cells", type=int, default=40, help="number of cells (default %(default)s)")
    g.add_argument("--fps", type=float, default=30.0, help="frame rate, Hz (default %(default)g)")
    g.add_argument("--gain", type=float, default=100.0, help="raw units per photon (default %(default)g)")
    g.add_argument("--offset", type=float, default=100.0, help="zero-photon level, raw units (default %(default)g)")
    g.add_argument("--read-noise", type=float, default=0.5, help="read noise sd in photons (default %(default)g)")
    g.add_argument("--photons", type=float, default=4.0,
                   help="cell resting fluorescence, photons/pixel/frame (default %(default)g)")
    g.add_argument("--background", choices=["2p", "1p"], default="2p",
                   help="background model: two-photon or one-photon (default %(default)s)")
    g.add_argument("--no-nucleus", action="store_true", help="cells without a dark nucleus (default: with)")
    g.add_argument("--motion", type=float, default=0.0, help="rigid jitter sd in pixels (default %(default)g)")
    g.add_argument("--dtype", default=None,
                   help="data type of the recording: imaging an integer type (default uint16), ephys an integer or "
                        "float type (default int16); not with `both` (simulate imaging and ephys separately to "
                        "choose their types)")
    g.add_argument("--bit-depth", type=int, default=None,
                   help="imaging: samples are clipped to this many bits of --dtype (default 16, or the type's width "
                        "if smaller)")
    g.add_argument("--pixel-um", type=float, default=1.0, help="pixel size in micrometres (default %(default)g)")
    e = parser.add_argument_group("ephys")
    e.add_argument("--duration", type=float, default=2.0, help="seconds (default %(default)g)")
    e.add_argument("--channels", type=int, default=384, help="number of channels (default %(default)s)")
    e.add_argument("--units", type=int, default=30, help="number of units (neurons) (default %(default)s)")
    e.add_argument("--fs", type=float, default=30000.0, help="sampling rate, Hz (default %(default)g)")
    e.add_argument("--noise-uv", type=float, default=7.0,
                   help="background noise, uV rms per channel (default %(default)g)")
    e.add_argument("--uv-per-bit", type=float, default=2.34, help="ADC resolution, uV per bit (default %(default)g)")
    e.add_argument("--no-lfp", action="store_true", help="no local field potential (default: with)")


def _simulate(args, kind):
    from .. import simulate as sim

    if kind == "imaging":
        return sim.simulate_imaging(
            n_frames=args.frames, height=args.height, width=args.width, n_cells=args.cells, fps=args.fps,
            gain=args.gain, offset=args.offset, read_noise=args.read_noise, photons_baseline=args.photons,
            background=args.background, nucleus=not args.no_nucleus, motion_px=args.motion,
            dtype=args.dtype or "uint16", bit_depth=_bit_depth(args), seed=args.seed, pixel_um=args.pixel_um)
    return sim.simulate_ephys(
        duration_s=args.duration, n_channels=args.channels, fs=args.fs, n_units=args.units,
        lfp=not args.no_lfp, noise_uv=args.noise_uv, uv_per_bit=args.uv_per_bit,
        dtype=args.dtype or "int16", seed=args.seed)


def _bit_depth(args) -> int:
    """--bit-depth, by default 16 or the imaging type's width if smaller."""
    import numpy as np

    width = 8 * np.dtype(args.dtype or "uint16").itemsize
    return min(16, width) if args.bit_depth is None else args.bit_depth


def _check_options(args, kinds) -> None:
    """Every option the simulation of ``kinds`` uses, checked before any work; a ValueError names the
    option. (The simulators check their sizes and names themselves, but name their parameters, and
    `both` would simulate the movie before the recording's sizes are checked.)"""
    import numpy as np

    def check(opt, value, ok, want):
        if not ok:
            raise ValueError(f"{opt} must be {want}, got {value:g}" if isinstance(value, (int, float))
                             else f"{opt} must be {want}, got {value!r}")

    def number(opt, value, low, strict=False):
        good = math.isfinite(value) and (value > low if strict else value >= low)
        check(opt, value, good, f"a finite number {'>' if strict else '>='} {low:g}")

    check("--seed", args.seed, args.seed >= 0, "a whole number >= 0")
    check_dtype(args.dtype)
    if args.dtype is not None and len(kinds) > 1:
        raise ValueError("--dtype applies to one kind of recording: with `both` the movie is uint16 and the "
                         "recording int16; to choose a type, simulate imaging and ephys separately")
    dt = None if args.dtype is None else np.dtype(args.dtype)
    if "imaging" in kinds:
        for opt, v in (("--frames", args.frames), ("--height", args.height), ("--width", args.width)):
            check(opt, v, v >= 1, "at least 1")
        check("--cells", args.cells, args.cells >= 0, "at least 0")
        number("--fps", args.fps, 0, strict=True)
        number("--gain", args.gain, 0, strict=True)
        check("--offset", args.offset, math.isfinite(args.offset), "a finite number")
        number("--read-noise", args.read_noise, 0)
        number("--photons", args.photons, 0)
        number("--motion", args.motion, 0)
        number("--pixel-um", args.pixel_um, 0, strict=True)
        if dt is not None and dt.kind not in "iu":
            raise ValueError(f"--dtype: imaging writes integer samples (e.g. uint16, int16, uint8), not {dt}")
        width = 8 * (dt or np.dtype("uint16")).itemsize
        if args.bit_depth is not None and not 1 <= args.bit_depth <= width:
            raise ValueError(f"--bit-depth must be 1..{width} for {dt or 'uint16'}, got {args.bit_depth}")
    if "ephys" in kinds:
        number("--duration", args.duration, 0, strict=True)
        check("--channels", args.channels, args.channels >= 1, "at least 1")
        check("--units", args.units, args.units >= 0, "at least 0")
        number("--fs", args.fs, 0, strict=True)
        if round(args.duration * args.fs) < 1:
            raise ValueError(f"--duration {args.duration:g} s at --fs {args.fs:g} Hz is less than one sample")
        number("--noise-uv", args.noise_uv, 0)
        number("--uv-per-bit", args.uv_per_bit, 0, strict=True)
        if dt is not None and not (dt.kind in "iu" or dt in (np.float32, np.float64)):  # NWB: no float16
            raise ValueError(f"--dtype: ephys writes integer (e.g. int16) or float32/float64 samples, not {dt}")


def _check_out(out: Path, force: bool) -> None:
    """OUT is a new file (or, with --force, not a folder) in a folder that exists and is writable (missing
    folders are not created, as by every necoda command that writes)."""
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder")
    if os.path.lexists(out) and not force:  # a dangling symbolic link counts: writing would follow or replace it
        raise FileExistsError(f"{out} exists (use --force to overwrite)")
    check_output_folder(out)


def run(args) -> int:
    out = Path(args.out)
    suffix = out.suffix.lower()  # x.NWB is an NWB file too
    if suffix not in (".npz", ".npy", ".nwb"):
        raise ValueError(f"OUT must end with .npz, .npy or .nwb, got {out.name!r}")
    if args.kind == "both" and suffix != ".nwb":
        raise ValueError(f"`both` writes one NWB file: OUT must end with .nwb, got {out.name!r}")
    kinds = ("imaging", "ephys") if args.kind == "both" else (args.kind,)
    _check_options(args, kinds)
    _check_out(out, args.force)
    t0 = time.perf_counter()
    sims = {k: _simulate(args, k) for k in kinds}
    dt = time.perf_counter() - t0
    if suffix == ".nwb":
        from ..simulate_nwb import write_nwb

        # atomic: a temporary published as OUT, never replacing a file without --force
        write_nwb(out, sims.get("imaging"), sims.get("ephys"), overwrite=args.force)
    else:
        _write_arrays(out, sims[args.kind], suffix, overwrite=args.force)
    for k, res in sims.items():
        print(f"necoda simulate {k}: {_summary(k, res)}; simulated in {dt:.2f} s -> {out}")
    if suffix == ".nwb" and "imaging" in sims and args.frames < max(args.height, args.width):
        print(f"note: the movie has fewer frames ({args.frames}) than pixels per side ({args.height}x{args.width}); "
              "nwbinspector's check_data_orientation guesses from the shape that such a series is transposed "
              "and reports it as CRITICAL, although it is time-first as NWB requires (use --frames >= "
              f"{max(args.height, args.width)} for a file it passes)", file=sys.stderr)
    return 0


def _write_arrays(out: Path, res, suffix: str, overwrite: bool = False) -> None:
    from ..simulate_nwb import new_file

    main = res.movie if hasattr(res, "movie") else res.data
    # atomic: a temporary next to OUT, published as OUT when complete (never a half-written OUT, never a
    # file replaced without --force); removed on an error, Ctrl-C, SIGTERM or SIGHUP
    with new_file(out, suffix, overwrite) as tmp, open(tmp, "wb") as fh:
        if suffix == ".npy":
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


def _summary(kind: str, res) -> str:
    p = res.params
    if kind == "imaging":
        return (f"movie {res.movie.shape} {res.movie.dtype}, {p['n_cells']} cells, {int(res.spikes.sum())} spikes, "
                f"gain {p['gain']:g}/photon, offset {p['offset']:g}, saturated {p['saturated_fraction']:.2%}")
    return (f"data {res.data.shape} {res.data.dtype} at {p['fs']:g} Hz, {p['n_units']} units, "
            f"{res.spike_times.size} spikes, {p['uv_per_bit']:g} uV/bit, saturated {p['saturated_fraction']:.2%}")
