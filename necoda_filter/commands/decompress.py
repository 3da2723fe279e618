"""``necoda decompress IN.nwb OUT.nwb``: a plain NWB file readable by any HDF5 tool without the plugin."""
from __future__ import annotations

import re

from . import OUTPUT_FOLDER_RULE, positive_int

#: HDF5's gzip level when ``--gzip`` is given without one
DEFAULT_GZIP_LEVEL = 4
_LEVEL = re.compile(r"[+-]?\d+")


def add_arguments(p) -> None:
    p.add_argument("input", metavar="IN.nwb", help="file with necoda-compressed datasets; never modified")
    p.add_argument("output", metavar="OUT.nwb",
                   help="file to write (atomically: a temporary published as OUT when complete; without "
                        "--overwrite never replacing a file, also not one that appears meanwhile); "
                        f"{OUTPUT_FOLDER_RULE}")
    p.add_argument("--gzip", nargs="?", type=int, const=DEFAULT_GZIP_LEVEL, default=None, metavar="LEVEL",
                   help="store the data with HDF5's standard gzip filter instead of uncompressed: level 0-9 "
                        "(default %(const)s when --gzip is given without a number right after it; --gzip may "
                        "come anywhere, e.g. before IN.nwb)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="parallel decoder processes (default: CPUs available, no more than three quarters of the "
                        "memory available holds at 0.8 GB each; 1 = no pool)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never IN)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def normalize_argv(argv: list[str]) -> list[str]:
    """The arguments after ``decompress`` with each ``--gzip`` that is not followed by a level made
    ``--gzip=4``: argparse took the next word as the level (``--gzip IN.nwb OUT.nwb`` failed with "invalid
    int value: 'IN.nwb'"). ``--gzip 6`` keeps its level. (Called by :func:`necoda_filter.cli.main`.)"""
    out = list(argv)
    for i, tok in enumerate(out):
        if tok == "--":
            break
        if tok == "--gzip" and not (i + 1 < len(out) and _LEVEL.fullmatch(out[i + 1])):
            out[i] = f"--gzip={DEFAULT_GZIP_LEVEL}"
    return out


def run(args) -> int:
    from . import note_stale_temps

    rc = _run(args)
    if rc == 0:
        note_stale_temps(args.output)
    return rc


def _run(args) -> int:
    from ..nwb import decompress_file

    if args.gzip is not None and not 0 <= args.gzip <= 9:
        raise ValueError("--gzip level must be 0..9")
    done = decompress_file(args.input, args.output, gzip_level=args.gzip, workers=args.workers,
                           overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {args.output}: {len(done)} dataset(s) decompressed"
          + (f" to gzip level {args.gzip}" if args.gzip is not None else ""))
    for p in done:
        print(f"  {p}")
    return 0
