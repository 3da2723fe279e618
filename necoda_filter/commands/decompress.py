"""``necoda decompress IN.nwb OUT.nwb``: a plain NWB file readable by any HDF5 tool without the plugin."""
from __future__ import annotations

from . import positive_int


def add_arguments(p) -> None:
    p.add_argument("input", metavar="IN.nwb", help="file with necoda-compressed datasets; never modified")
    p.add_argument("output", metavar="OUT.nwb",
                   help="file to write (atomically: a temporary published as OUT when complete; without "
                        "--overwrite never replacing a file, also not one that appears meanwhile)")
    p.add_argument("--gzip", nargs="?", type=int, const=4, default=None, metavar="LEVEL",
                   help="store the data with HDF5's standard gzip filter (level 0-9, default 4) instead of "
                        "uncompressed")
    p.add_argument("--workers", type=positive_int, default=None, help="parallel decoder processes")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never IN)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
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
