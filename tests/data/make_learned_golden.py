"""Write ``learned_golden.npz``: learned-mode chunks and how they decoded on the machine that wrote them.

    python tests/data/make_learned_golden.py

tests/test_learned.py::test_learned_chunks_decode_alike_on_every_machine decodes these chunks wherever the
suite runs and compares with the decode recorded here, so a machine with other CPU kernels (AVX2 against
AVX-512, another ONNX Runtime build, a GPU) is checked against the one that wrote the file. The movie is a
simulation (necoda_filter.simulate); its exact values travel as a
lossless chunk, and the float32 movie is computed from them (exact IEEE operations).

Written on: AMD EPYC with AVX-512 (MLAS blocks of 16 channels: the planar decoder cut), onnxruntime 1.31.1,
model imaging-v2.1 (necoda-249d97b35184e84b), 2026-11-22.
"""
from pathlib import Path

import numpy as np

from necoda_filter import chunk
from necoda_filter.simulate import simulate_imaging


def original() -> np.ndarray:
    sim = simulate_imaging(n_frames=24, height=56, width=48, n_cells=6, seed=11)
    return np.ascontiguousarray(sim.movie[:24, :50, :44]).astype(np.uint16)  # not a whole number of tiles


def movies(x16: np.ndarray):
    """The uint16 movie and its float32 version (exact IEEE operations: the same bits everywhere)."""
    return x16, (x16.astype(np.float32) - np.float32(100)) * np.float32(0.37)


def main() -> None:
    x16, xf = movies(original())
    chunks = {
        "original_u2": chunk.encode(x16, mode="lossless"),
        "learned_u2": chunk.encode(x16, mode="learned", quality=4),
        "learned_u2_me3": chunk.encode(x16, mode="learned", quality=2, max_error=3),
        "learned_f4_me": chunk.encode(xf, mode="learned", quality=2, max_error=2.5),
    }
    out = {k: np.frombuffer(v, np.uint8) for k, v in chunks.items()}
    out["decoded_learned_u2"] = chunk.decode(chunks["learned_u2"])  # the safeguarded ones: checked on the bound
    np.savez_compressed(Path(__file__).with_name("learned_golden.npz"), **out)


if __name__ == "__main__":
    main()
