"""``necoda bench DATA``: compare necoda's modes with reference codecs on your own data."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EPILOG = """\
DATA is one of
  movie.npy | movie.npz (--key K) | movie.tif       T x H x W = imaging, T x C = ephys (channels last)
  file.nwb:/acquisition/TwoPhotonSeries/data        any HDF5/NWB dataset (rate read from the file)
  recording.raw --dtype int16 --channels 4 --fs 15000   interleaved raw binary
  sim:imaging[:n_frames=300,height=128,...]         a fresh simulation with ground truth
  sim:ephys[:duration_s=3,n_channels=384,...]

--codecs takes 'all' (default) or a comma list of families: necoda (every mode; or necoda-lossless,
necoda-bounded, necoda-learned), zstd, lzma, blosc, pcodec, flac, mtscomp, jpegxl, jpeg2k, anscombe,
sz3, zfp, h264, h265, av1. Families that do not apply to the data kind are left out; codecs whose
package is missing are reported as skipped.

Writes OUT/results.json, OUT/results.md (the table) and OUT/rate_distortion.png.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("data", metavar="DATA", help="data file, HDF5 'file:/dataset', or sim:imaging|sim:ephys[:k=v,...]")
    p.add_argument("--codecs", default="all", help="'all' or a comma-separated list of codec families (see below)")
    p.add_argument("--out", default=None, help="output folder (default: ./necoda-bench-<data name>)")
    p.add_argument("--key", default=None, help="array name inside an .npz file")
    p.add_argument("--dtype", default=None, help="sample type of a raw binary file, e.g. int16")
    p.add_argument("--channels", type=int, default=None, help="channel count of a raw binary file")
    p.add_argument("--fs", type=float, default=None,
                   help="sampling rate in Hz (ephys) or frame rate (imaging); default from the file or simulation")
    p.add_argument("--chunk-frames", type=int, default=None,
                   help="chunk length along time: frames (imaging, default 64) or samples (ephys, default ~1 s)")
    p.add_argument("--max-frames", "--max-samples", dest="max_frames", type=int, default=None,
                   help="only use the first N frames/samples")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from .. import bench
    logging.basicConfig(level=logging.WARNING, format="necoda bench: %(message)s")
    data = bench.load_data(args.data, key=args.key, dtype=args.dtype, channels=args.channels, fs=args.fs,
                           max_frames=args.max_frames)
    out = Path(args.out) if args.out else Path(f"necoda-bench-{data.name}")
    print(f"necoda bench: {data.kind} {data.array.shape} {data.array.dtype} from {data.source} -> {out}/",
          file=sys.stderr)
    res = bench.run_bench(data, args.codecs, chunk=args.chunk_frames, out_dir=out,
                          progress=not args.no_progress, plots=not args.no_plots)
    print(bench.describe(res))
    print()
    print(bench.format_table(res))
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}"
          + ("" if args.no_plots else f", {out / 'rate_distortion.png'}"), file=sys.stderr)
    return 0


if __name__ == "__main__":  # python -m necoda_filter.commands.bench DATA ... (same as `necoda bench`)
    _p = argparse.ArgumentParser(prog="necoda bench", description=__doc__)
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
