"""Rate/fidelity/speed evaluation of ``mode="learned"`` (numpy + the codec only; no torch).

    python -m necoda_filter.train.evaluate [--chunk 128] [--out results.json]

Movies: two simulations unlike the training set (seeds and settings outside ``data.sim_configs``) and
the shared real two-photon movie (when ``../shared/data`` is present). For each quality level: ratio
over the whole movie (container bytes included), PSNR and RMSE against the clean movie (simulations) or
the original, median ROI trace r against the true traces (and the raw data's own r), median r against
the original's ROI traces, encode/decode MB/s of raw data through ``chunk.encode``/``chunk.decode``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .. import chunk, metrics

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ophys_2p_cortex_300x200x200_int16.npz"


def test_movies(real_path=REAL):
    from ..simulate import simulate_imaging

    out = []
    s = simulate_imaging(n_frames=512, height=128, width=128, n_cells=40, seed=7001)
    out.append(("sim-2p-default", s.movie, s.clean, s))
    s = simulate_imaging(n_frames=512, height=160, width=160, n_cells=60, seed=7002, gain=60.0, offset=300.0,
                         photons_baseline=3.0, pixel_um=0.8, background="1p")
    out.append(("sim-1p-160px", s.movie, s.clean, s))
    if Path(real_path).is_file():
        out.append(("real-2p-shared", np.load(real_path)["data"], None, None))
    return out


def run_codec(x, chunk_frames, **opts):
    bufs, t0 = [], time.perf_counter()
    for s in range(0, x.shape[0], chunk_frames):
        bufs.append(chunk.encode(x[s:s + chunk_frames], **opts))
    te = time.perf_counter() - t0
    t0 = time.perf_counter()
    dec = np.concatenate([chunk.decode(b) for b in bufs])
    td = time.perf_counter() - t0
    return dec, sum(len(b) for b in bufs), te, td


def evaluate(chunk_frames=128, qualities=(1, 2, 3, 4), log=print, movies=None, model=None):
    rows = []
    masks_cache = {}
    for name, x, clean, sim in movies or test_movies():
        mb = x.size * 2 / 1e6  # MB of raw uint16
        ref = clean if clean is not None else x
        if sim is None and name not in masks_cache:
            masks_cache[name] = metrics.detect_rois(x)
        for q in qualities:
            extra = {"model": model} if model else {}
            dec, nbytes, te, td = run_codec(x, chunk_frames, mode="learned", quality=q, **extra)
            es = metrics.error_stats(ref, dec, data_range=float(ref.max() - ref.min()))
            row = {"movie": name, "quality": q, "chunk_frames": chunk_frames, "ratio": round(x.nbytes / nbytes, 1),
                   "psnr_vs_clean" if clean is not None else "psnr_vs_orig": round(es["psnr"], 2),
                   "rmse": round(es["rmse"], 2), "enc_MBps": round(mb / te, 1), "dec_MBps": round(mb / td, 1)}
            if sim is not None:
                f = metrics.imaging_fidelity(x, dec, true_traces=sim.traces, footprints=sim.footprints)
                row.update(true_r_median_dec=round(f["true_r_median_dec"], 4),
                           true_r_median_raw=round(f["true_r_median_orig"], 4),
                           roi_r_median_vs_orig=round(f["roi_r_median"], 4))
                es_raw = metrics.error_stats(clean, x, data_range=float(ref.max() - ref.min()))
                row["psnr_raw_vs_clean"] = round(es_raw["psnr"], 2)
            else:
                f = metrics.imaging_fidelity(x, dec, masks=masks_cache[name])
                row.update(roi_r_median_vs_orig=round(f["roi_r_median"], 4), roi_r_p05_vs_orig=round(f["roi_r_p05"], 4),
                           n_rois=f["n_rois"])
            log(json.dumps(row))
            rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--out", default=None, help="write the rows as JSON")
    p.add_argument("--card", default=None, help="model package folder: write card.json (training summary + these metrics)")
    p.add_argument("--qualities", default="1,2,3,4")
    p.add_argument("--model", default=None, help="model package folder or id (default: the built-in model)")
    a = p.parse_args(argv)
    rows = evaluate(a.chunk, tuple(int(q) for q in a.qualities.split(",")), model=a.model)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    if a.card:
        write_card(a.card, rows)


def write_card(pkg_dir, rows):
    from ..models.registry import model_id_of_dir

    d = Path(pkg_dir)
    summ = json.loads((d / "train_summary.json").read_text()) if (d / "train_summary.json").is_file() else {}
    card = {
        "model_id": model_id_of_dir(d),
        "name": d.name,
        "task": "lossy compression of functional-imaging movies (T, H, W), mode='learned'",
        "architecture": "spatiotemporal hourglass: spatial pathway latent (T/8, H/4, W/4), temporal pathway latent "
                        "(T/2, H/16, W/16), decoder conditioned on the coded baseline image; see docs/LEARNED.md",
        "inputs": "per-chunk generalised-Anscombe noise units minus the coded temporal-mean baseline",
        "entropy_coding": "integer latents (round(y * gain[quality, channel])), one pcodec block per channel",
        "training": summ,
        "evaluation": rows,
        "evaluate_command": "python -m necoda_filter.train.evaluate --chunk 128",
    }
    (d / "card.json").write_text(json.dumps(card, indent=1) + "\n")


if __name__ == "__main__":
    main()
