"""``necoda compress IN.nwb OUT.nwb``: copy an NWB file, recompressing its neural datasets with necoda."""
from __future__ import annotations

import math
import sys

from . import OUTPUT_FOLDER_RULE, check_learned_bound, positive_int


def add_arguments(p) -> None:
    p.add_argument("input", metavar="IN.nwb", help="NWB (HDF5) file to read; never modified")
    p.add_argument("output", metavar="OUT.nwb",
                   help="file to write (atomically: a temporary published as OUT when complete; without "
                        "--overwrite never replacing a file, also not one that appears meanwhile); "
                        f"{OUTPUT_FOLDER_RULE}")
    p.add_argument("--imaging", choices=["learned", "bounded", "lossless"], default="lossless",
                   help="mode for TwoPhotonSeries/OnePhotonSeries/ImageSeries data (default: lossless). learned "
                        "codes only T x H x W integer movies (>= 8 frames, >= 16 px per side, as mode auto; not "
                        "/stimulus): other image data (RGB video, line scans, single frames, volumes, floats) is "
                        "coded losslessly, or bounded when an imaging bound is given; the output says which")
    p.add_argument("--ephys", choices=["lossless", "bounded"], default="lossless",
                   help="mode for ElectricalSeries/SpikeEventSeries data (default: lossless)")
    p.add_argument("--quality", type=int, default=None, help="learned: rate/quality level, 1 = smallest files (built-in model: 1..9, default 6)")
    p.add_argument("--model", default=None, metavar="NAME|ID|FOLDER",
                   help="--imaging learned: the model, a built-in name (default imaging-v2.1), a model id "
                        "(necoda-<16 hex>, on NECODA_MODEL_PATH) or a package folder (the output of `necoda train`). "
                        "Its id is stored in the dataset's filter options, so later h5py appends use it too; "
                        "readers need the folder on NECODA_MODEL_PATH (docs/LEARNED.md)")
    p.add_argument("--max-error", type=float, default=None,
                   help="bounded/learned: every sample within this many raw units of the original, for every kind "
                        "whose mode takes a bound (imaging: counts of the movie; ephys: the stored sample units, "
                        "ADC counts for integer data; the two scales are unrelated, see --ephys-max-error). "
                        "With --imaging learned --ephys bounded, name the kind instead")
    p.add_argument("--max-error-noise", type=float, default=None,
                   help="bounded/learned: error bound in noise sigmas, for every kind whose mode takes a bound. "
                        "bounded: K times the noise sigma at each sample's brightness (a photon-transfer fit per "
                        "chunk: brighter samples have more shot noise, so a larger bound in raw units; ephys: the "
                        "chunk's noise; SpikeEventSeries: the noise within the snippets); learned: K times the "
                        "chunk's noise sigma")
    p.add_argument("--imaging-max-error", type=float, default=None, metavar="E",
                   help="like --max-error, for imaging only (raw counts of the movie; for --imaging learned: its "
                        "safeguard). Either --imaging-* option replaces the shared ones for imaging")
    p.add_argument("--imaging-max-error-noise", type=float, default=None, metavar="K",
                   help="like --max-error-noise, for imaging only (noise sigmas of the movie)")
    p.add_argument("--ephys-max-error", type=float, default=None, metavar="E",
                   help="like --max-error, for ephys only, in the stored sample units (ADC counts for integer "
                        "data, before NWB's conversion to volts; volts/µV when stored as float). Either --ephys-* "
                        "option replaces the shared ones for ephys")
    p.add_argument("--ephys-max-error-noise", type=float, default=None, metavar="K",
                   help="like --max-error-noise, for ephys only (noise sigmas of the recording)")
    p.add_argument("--level", type=int, default=None, help="lossless: entropy-coder effort, 1..12 (pcodec levels; default 8)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="parallel encoder processes (default: CPUs available, no more than three quarters of the "
                        "memory available holds at 0.8 GB each; 1 = no pool)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never IN)")
    p.add_argument("--only", action="append", default=None, metavar="PATH",
                   help="recompress only this series (path of its data or of the series group; repeatable); "
                        "other data is copied unchanged. A path that names no series data is an error")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _fmt(v, spec=".3g"):
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return format(v, spec)


def run(args) -> int:
    from . import note_stale_temps

    rc = _run(args)
    if rc == 0:
        note_stale_temps(args.output)
    return rc


def _run(args) -> int:
    from ..nwb import Settings, recompress_file

    # an option no chosen mode uses would be ignored: the user expected it to change something
    used = {args.imaging, args.ephys}
    modes_now = f"--imaging {args.imaging} --ephys {args.ephys}"
    if args.quality is not None and args.imaging != "learned":
        raise ValueError(f"--quality applies to --imaging learned only (here: {modes_now})")
    if args.model is not None and args.imaging != "learned":
        raise ValueError(f"--model applies to --imaging learned only (here: {modes_now})")
    for opt, val in (("--max-error", args.max_error), ("--max-error-noise", args.max_error_noise)):
        if val is not None and not used & {"bounded", "learned"}:
            raise ValueError(f"{opt} applies to the bounded and learned modes only, and {modes_now} is lossless: "
                             f"add --imaging bounded|learned or --ephys bounded")
    for kind, mode in (("imaging", args.imaging), ("ephys", args.ephys)):
        for suffix in ("max_error", "max_error_noise"):
            opt = f"--{kind}-{suffix.replace('_', '-')}"
            if getattr(args, f"{kind}_{suffix}") is not None and mode == "lossless":
                raise ValueError(f"{opt} applies to --{kind} bounded" + ("|learned" if kind == "imaging" else "")
                                 + f" only (here: {modes_now})")
    if args.level is not None and "lossless" not in used:
        raise ValueError(f"--level applies to the lossless mode only (here: {modes_now})")
    if args.level is not None:
        from ..modes.lossless import MAX_LEVEL

        if not 1 <= args.level <= MAX_LEVEL:
            raise ValueError(f"--level must be 1..{MAX_LEVEL} (pcodec compression levels), got {args.level}")
    settings = Settings(imaging=args.imaging, ephys=args.ephys, quality=args.quality, max_error=args.max_error,
                        max_error_noise=args.max_error_noise, level=args.level, model=args.model,
                        imaging_max_error=args.imaging_max_error,
                        imaging_max_error_noise=args.imaging_max_error_noise,
                        ephys_max_error=args.ephys_max_error, ephys_max_error_noise=args.ephys_max_error_noise)
    for kind, mode in (("imaging", args.imaging), ("ephys", args.ephys)):
        if mode == "bounded" and settings.bounds(kind) == (None, None):
            raise ValueError(f"the bounded mode needs a bound: --max-error E (raw units) or --max-error-noise K "
                             f"(noise sigmas), or --{kind}-max-error E / --{kind}-max-error-noise K for {kind} only")
    if args.model is not None:  # resolved now (a clear error naming it, before any file is touched)
        from .. import options
        from ..models.registry import ModelNotFound

        try:
            options.check_model("learned", args.model)
        except (ModelNotFound, TypeError) as e:
            raise ValueError(f"--model: {e}") from None
    if args.imaging == "learned":
        try:
            check_learned_bound(*settings.bounds("imaging"), "--imaging lossless")
        except ValueError as e:
            if settings.own_bounds("imaging") == (None, None):
                raise
            raise ValueError(str(e).replace("--max-error", "--imaging-max-error")) from None
    skipped: list[str] = []  # why series the filter cannot code were copied as they were
    reports = recompress_file(args.input, args.output, settings, workers=args.workers,
                              overwrite=args.overwrite, progress=not args.quiet, only=args.only, skipped=skipped)
    if not reports:
        if skipped:
            more = len(skipped) - SKIPPED_SHOWN
            print(f"necoda compress: no series data in {args.input} can be recompressed; copied it unchanged to "
                  f"{args.output}: " + "; ".join(skipped[:SKIPPED_SHOWN]) + (f"; and {more} more" if more > 0 else ""))
            return 0
        print(f"necoda compress: no TwoPhotonSeries/OnePhotonSeries/ImageSeries/ElectricalSeries/"
              f"SpikeEventSeries data found in {args.input}; copied it unchanged to {args.output}. "
              "(necoda compress recognises NWB series by their neurodata_type; to compress datasets of another "
              "HDF5 file, write them with h5py and compression=necoda_filter.Necoda(...), see README)")
        return 0
    print(f"wrote {args.output}")
    for r in reports:
        p = r.provenance
        mode = p["mode"] + (f" ({r.mode_reason})" if r.mode_reason else "")
        print(f"  {r.path}: {p['kind']} {r.shape} {r.dtype}, mode {mode}, chunks {tuple(r.chunks)}, "
              f"ratio {_fmt(p['ratio'])}, max error {_fmt(p['max_abs_error'], '.6g')}, PSNR {_fmt(p['psnr_db'], '.2f')} dB, "
              f"noise-unit RMSE {_fmt(p['noise_rmse'])}, {r.seconds:.1f} s")
        for note in r.notes:
            print(f"    note: {note}")
        other = {m: n for m, n in p["chunk_modes"].items() if m != p["mode"]}
        if other and "raw" not in other:  # raw chunks are explained by a note (with the encoder's reason)
            print(f"    note: chunks stored with other modes: {other}", file=sys.stderr)
    for why in skipped[:SKIPPED_SHOWN]:
        print(f"  copied as it was: {why}")
    if len(skipped) > SKIPPED_SHOWN:
        more = len(skipped) - SKIPPED_SHOWN
        print(f"  and {more} more series copied as {'it was' if more == 1 else 'they were'}")
    return 0


#: reasons for series left as they were that compress prints (then how many more)
SKIPPED_SHOWN = 5
