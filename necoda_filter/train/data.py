"""Training data: simulated movies (ground-truth clean movie available) plus optional recordings.

Each movie is cut into chunks exactly like the codec sees them (``chunk_frames`` × full frame) and
normalised with the codec's own numpy code (:mod:`necoda_filter.models.prep`): per-chunk gain/offset
estimate, generalised Anscombe, temporal-mean baseline quantised per quality level.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from ..models import prep


@dataclass
class Chunk:
    v: np.ndarray            # (T, H, W) float32 noisy movie in noise units
    clean: np.ndarray        # (T, H, W) float32 target (clean movie in noise units, or v for recordings)
    bq: list                 # per quality: decoded baseline image (H, W) float32
    rois: np.ndarray | None = None  # (N, H, W) bool soma masks (footprint > 0.3 of max), simulations only


def load_simulator(spec: str):
    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)


def sim_configs(n: int, seed: int = 1000):
    """Varied simulation settings (sizes, cell counts, gains, offsets, photon levels, 2p and 1p)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        out.append(dict(n_frames=int(rng.choice([128, 256])), height=int(rng.choice([96, 128, 160])),
                        width=int(rng.choice([96, 128, 160])), n_cells=int(rng.integers(15, 80)),
                        fps=float(rng.choice([15.0, 30.0])), gain=round(float(rng.uniform(30, 200)), 2),
                        offset=round(float(rng.uniform(0, 600)), 1), read_noise=round(float(rng.uniform(0.2, 1.0)), 2),
                        photons_baseline=round(float(rng.uniform(1.0, 6.0)), 2),
                        background="1p" if i % 4 == 3 else "2p", pixel_um=round(float(rng.uniform(0.7, 1.5)), 2),
                        motion_px=float(rng.choice([0.0, 0.0, 0.5])), rate_hz=round(float(rng.uniform(0.3, 1.5)), 2),
                        nucleus=bool(rng.random() < 0.7), seed=int(seed + i)))
    return out


def roi_masks(footprints, thresh=0.3, min_px=12):
    """Soma masks from simulated footprints, as :func:`necoda_filter.metrics.imaging_fidelity` builds them."""
    fp = np.asarray(footprints, np.float32)
    peak = fp.reshape(len(fp), -1).max(axis=1)[:, None, None]
    m = fp > thresh * np.maximum(peak, 1e-12)
    return m[m.reshape(len(m), -1).sum(axis=1) >= min_px]


def chunks_of(movie, clean, baseline_cfg, chunk_frames=128, footprints=None):
    out = []
    rois = roi_masks(footprints) if footprints is not None else None
    T = movie.shape[0]
    for s in range(0, T - chunk_frames // 2 + 1, chunk_frames):
        x = movie[s:s + chunk_frames]
        if x.shape[0] < 32:
            continue
        g, o = prep.estimate_gain_offset(x)
        v = prep.vst(x, g, o)
        c = prep.vst(clean[s:s + chunk_frames], g, o) if clean is not None else v
        base = v.mean(0)
        bq = [prep.dequantize_baseline(prep.quantize_baseline(base, b["step"], b["factor"]), b["step"],
                                       b["factor"], base.shape) for b in baseline_cfg]
        out.append(Chunk(v.astype(np.float32), c.astype(np.float32), bq, rois))
    return out


def load_recording(path: str) -> np.ndarray:
    if path.endswith(".npz"):
        z = np.load(path)
        return z["data"] if "data" in z else z[list(z.keys())[0]]
    if path.endswith(".npy"):
        return np.load(path)
    file, _, key = path.partition("::")  # the suffix is the file's, not that of "file.h5::dataset"
    if file.endswith((".h5", ".hdf5", ".nwb")):
        import h5py
        with h5py.File(file, "r") as f:
            return f[key or "data"][()]
    raise ValueError(f"unsupported recording {path!r} (use .npz/.npy or file.h5::dataset)")


def sample_batch(chunks, rng, patch=(32, 64, 64), qualities=(0, 1, 2, 3), base_scale=0.2, min_roi_px=12):
    """One patch per quality level: returns x (N,2,T,H,W), target (N,1,T,H,W), quality indices and, per
    patch, the soma masks (K, h, w) float32 of the cells with at least ``min_roi_px`` pixels inside it
    (K = 0 for recordings)."""
    xs, ys, ms = [], [], []
    for q in qualities:
        c = chunks[rng.integers(len(chunks))]
        T, H, W = c.v.shape
        pt, ph, pw = min(patch[0], T // 8 * 8), min(patch[1], H // 16 * 16), min(patch[2], W // 16 * 16)
        t0, h0, w0 = rng.integers(0, T - pt + 1), rng.integers(0, H - ph + 1), rng.integers(0, W - pw + 1)
        sl = (slice(t0, t0 + pt), slice(h0, h0 + ph), slice(w0, w0 + pw))
        b = c.bq[q][sl[1:]]
        v = c.v[sl] - b
        tg = c.clean[sl] - b
        m = np.zeros((0, ph, pw), bool) if c.rois is None else c.rois[:, sl[1], sl[2]]
        m = m[m.reshape(len(m), ph * pw).sum(axis=1) >= min_roi_px]  # (len 0: a recording, no ROIs)
        if rng.random() < 0.5:  # augment: flips
            v, tg, b, m = v[:, :, ::-1], tg[:, :, ::-1], b[:, ::-1], m[:, :, ::-1]
        if rng.random() < 0.5:
            v, tg, b, m = v[:, ::-1], tg[:, ::-1], b[::-1], m[:, ::-1]
        ms.append(np.ascontiguousarray(m, dtype=np.float32))
        x = np.stack([v, np.broadcast_to(b * base_scale, v.shape)])
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(tg)[None])
    # equal patch shapes within a batch: crop to the smallest
    t = min(a.shape[1] for a in xs); h = min(a.shape[2] for a in xs); w = min(a.shape[3] for a in xs)
    xs = [a[:, :t, :h, :w] for a in xs]
    ys = [a[:, :t, :h, :w] for a in ys]
    ms = [np.ascontiguousarray(a[:, :h, :w]) for a in ms]
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32), np.asarray(qualities), ms
