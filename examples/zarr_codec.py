"""Store imaging and ephys data in Zarr with the necoda codec: zarr v2 (numcodecs) and zarr v3.

    python examples/zarr_codec.py [OUTDIR]

Zarr v2 takes the numcodecs codec ``necoda`` as its compressor; ``numcodecs.get_codec`` finds it through
its entry point, no import of necoda_filter needed. Zarr v3 takes ``NecodaZarrCodec`` as the array->bytes
serializer (it codes typed samples itself, so no byte-level compressor or shuffle is put after/before it).
Both kinds of arrays open later in any process with necoda-filter installed, without an import.
"""
import sys
import tempfile
from pathlib import Path

import numcodecs
import numpy as np
import zarr

from necoda_filter.simulate import simulate_ephys, simulate_imaging
from necoda_filter.zarr3 import NecodaZarrCodec

out = (Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="necoda-example-"))).resolve()
out.mkdir(parents=True, exist_ok=True)
print(f"writing into {out}")

movie = simulate_imaging(n_frames=128, height=128, width=128, n_cells=20, seed=0).movie   # (T, H, W) uint16
ephys = simulate_ephys(duration_s=2.0, n_channels=32, n_units=5, seed=0).data              # (T, C) int16

# --- zarr v2: the numcodecs codec as compressor ------------------------------------------------------
codec = numcodecs.get_codec({"id": "necoda", "mode": "lossless"})
z2 = zarr.create_array(str(out / "ephys_v2.zarr"), shape=ephys.shape, chunks=(30000, 32), dtype=ephys.dtype,
                       compressors=codec, zarr_format=2, overwrite=True)
z2[:] = ephys

# --- zarr v3: NecodaZarrCodec as the serializer --------------------------------------------------------
# lossy modes: write whole chunks (a partial write decodes, modifies and re-encodes the chunk)
z3 = zarr.create_array(str(out / "movie_v3.zarr"), shape=movie.shape, chunks=(64, 128, 128), dtype=movie.dtype,
                       serializer=NecodaZarrCodec(mode="bounded", max_error=2), compressors=None, zarr_format=3,
                       overwrite=True)
z3[:] = movie
z3l = zarr.create_array(str(out / "movie_v3_lossless.zarr"), shape=movie.shape, chunks=(64, 128, 128),
                        dtype=movie.dtype, serializer=NecodaZarrCodec(mode="lossless"), compressors=None,
                        zarr_format=3, overwrite=True)
z3l[:] = movie

# --- read back from the stores (reopened, as another script would) ----------------------------------
print(f"{'array':24} {'codec':48} {'ratio':>7} {'max error':>9}")
for name, original, bound in (("ephys_v2.zarr", ephys, 0), ("movie_v3.zarr", movie, 2),
                              ("movie_v3_lossless.zarr", movie, 0)):
    z = zarr.open_array(str(out / name), mode="r")
    back = z[:]
    assert back.dtype == original.dtype and back.shape == original.shape
    err = int(np.abs(back.astype(np.int64) - original).max())
    ratio = original.nbytes / z.nbytes_stored()  # nbytes_stored includes the small metadata files
    codec_name = repr(z.compressors[0] if z.metadata.zarr_format == 2 else z.serializer)
    print(f"{name:24} {codec_name:48} {ratio:6.1f}x {err:9d}")
    assert err <= bound, f"{name}: max error {err} above {bound}"
    assert ratio > 1, f"{name} did not compress"

print("OK: lossless arrays are exact, the bounded one is within max_error=2")
