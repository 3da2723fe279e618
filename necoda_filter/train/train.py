"""Training loop for the learned mode (CPU-friendly: small model, small patches, 2 threads by default).

Loss per quality level q:  λ_q · (MSE + 0.35 · MSE of the temporal derivative + α · trace MSE) + rate,
with MSE in noise units (the noise variance is 1 after variance stabilisation, so this is an NMSE relative
to the noise power) and rate in bits per voxel from the factorized Laplace prior. λ_q is steered during
training (a dual update on log λ_q) so that each quality level lands near its target rate.

Trace term (simulations): the soma masks of the simulated cells (footprint > 0.3 of its maximum, the
ROIs ``necoda bench`` scores) give each cell's mean trace in the patch, for the decoded and the clean
movie; the trace MSE (each trace's temporal mean removed: correlation ignores offsets) weighs what a
neuroscientist reads out of a movie — single-cell traces — above the background voxels.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

#: per quality index (0 = smallest file): baseline image settings and latent-rate targets (bits/voxel)
BASELINE = [{"factor": 4, "step": 1.0}, {"factor": 2, "step": 1.0}, {"factor": 2, "step": 1.0},
            {"factor": 1, "step": 0.5}]
RATE_TARGET = [0.005, 0.010, 0.028, 0.11]
LAMBDA0 = [0.05, 0.15, 0.5, 2.0]
#: published quality levels (positions on the trained levels 1..4, fractional = interpolated gains) and
#: the default one (1-based index): level 6 = position 2.75, ~1000x on a typical two-photon movie
EXPORT_LEVELS = [1.0, 1.5, 1.75, 2.0, 2.5, 2.75, 3.0, 3.5, 4.0]
DEFAULT_LEVEL = 6
#: weight of the soma-trace MSE (α) relative to the voxel MSE
TRACE_WEIGHT = 3.0


def trace_mse(out, target, masks):
    """Mean over cells and frames of the squared error of mean-removed soma traces, per batch item.

    out, target: (N, 1, T, H, W) tensors; masks: list of N float arrays (K_i, H, W)."""
    import torch

    vals = []
    for i, m in enumerate(masks):
        if len(m) == 0:
            vals.append(out.new_zeros(()))
            continue
        mt = torch.from_numpy(m)
        area = mt.sum(dim=(1, 2)).clamp_min(1.0)
        e = out[i, 0] - target[i, 0]                                  # (T, H, W)
        tr = torch.einsum("thw,khw->kt", e, mt) / area[:, None]       # (K, T) trace errors
        tr = tr - tr.mean(dim=1, keepdim=True)
        vals.append(tr.pow(2).mean())
    return torch.stack(vals)


def train(out_dir, simulator="necoda_filter.simulate:simulate_imaging", n_sims=10, recordings=(),
          minutes=20.0, max_steps=100000, threads=2, seed=0, width=24, cs=8, ct=8, patch=(32, 64, 64),
          lr=2e-3, init=None, lambdas=None, trace_weight=TRACE_WEIGHT, log=print):
    import torch

    from .data import chunks_of, load_recording, load_simulator, sample_batch, sim_configs
    from .export import export
    from .model import Codec

    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sim = load_simulator(simulator)
    chunks = []
    cfgs = sim_configs(n_sims, seed=1000 + seed)
    used = []
    for cfg in cfgs:
        try:
            s = sim(**cfg)
        except Exception as e:  # noqa: BLE001 — a simulator corner case must not stop training
            log(f"simulation {cfg} failed ({type(e).__name__}: {e}); skipped")
            continue
        used.append(cfg)
        chunks += chunks_of(np.asarray(s.movie), np.asarray(s.clean), BASELINE,
                            footprints=getattr(s, "footprints", None))
    cfgs = used
    for path in recordings:
        chunks += chunks_of(load_recording(path), None, BASELINE)
    log(f"data: {len(chunks)} chunks from {n_sims} simulations ({simulator}) and {len(recordings)} recordings "
        f"in {time.time() - t0:.1f}s")
    model = Codec(width, cs, ct, n_quality=len(BASELINE))
    if init:
        ck = torch.load(init, map_location="cpu")
        model.load_state_dict(ck["state"])
        log(f"warm start from {init}")
    log(f"model: {sum(p.numel() for p in model.parameters())} parameters, {model.cfg}")
    ent = [model.log_gain_s, model.log_gain_t, model.log_scale_s, model.log_scale_t]
    ent_ids = {id(p) for p in ent}
    net = [p for p in model.parameters() if id(p) not in ent_ids]
    # the entropy-model parameters (gains, scales) move fast; the network at lr
    opt = torch.optim.Adam([{"params": net, "lr": lr, "base": lr}, {"params": ent, "lr": 5 * lr, "base": 5 * lr}])
    log_lam = np.log(np.asarray(lambdas or LAMBDA0, dtype=np.float64))
    steer = lambdas is None  # fixed λ when given, else steered toward RATE_TARGET
    rate_ema = np.asarray(RATE_TARGET, dtype=np.float64)
    budget = minutes * 60.0
    t_train = time.time()
    hist = []
    step = 0
    while step < max_steps and time.time() - t_train < budget:
        # schedule by steps when a step count is given (reproducible runs), else by the time budget
        frac = step / max_steps if max_steps < 100000 else (time.time() - t_train) / budget
        for gparam in opt.param_groups:
            gparam["lr"] = gparam["base"] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        x, y, qi, masks = sample_batch(chunks, rng, patch)
        x, y, qi_t = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(qi).long()
        out_, bits, _ = model(x, qi_t, training=True)
        nvox = y[0].numel()
        mse = (out_ - y).pow(2).mean(dim=(1, 2, 3, 4))
        dmse = (out_.diff(dim=2) - y.diff(dim=2)).pow(2).mean(dim=(1, 2, 3, 4))
        tmse = trace_mse(out_, y, masks) if trace_weight else torch.zeros_like(mse)
        dist = mse + 0.35 * dmse + trace_weight * tmse
        rate = bits / nvox
        lam = torch.from_numpy(np.exp(log_lam[qi])).float()
        loss = (lam * dist + rate).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        r = rate.detach().numpy().astype(np.float64)
        rate_ema[qi] = 0.95 * rate_ema[qi] + 0.05 * r
        if steer:
            log_lam[qi] += 0.02 * (np.log(RATE_TARGET)[qi] - np.log(np.maximum(rate_ema[qi], 1e-6)))
            log_lam = np.clip(log_lam, math.log(1e-3), math.log(1e3))
        step += 1
        if step % 25 == 0 or step == 1:
            rec = {"step": step, "t": round(time.time() - t_train, 1), "loss": round(float(loss.detach()), 5),
                   "mse": [round(float(v), 4) for v in mse],
                   "trace_mse": [round(float(v), 4) for v in tmse.detach()], "rate_bpv": [round(float(v), 5) for v in r],
                   "lambda": [round(float(v), 4) for v in np.exp(log_lam)]}
            hist.append(rec)
            log(json.dumps(rec))
    train_s = time.time() - t_train
    torch.save({"state": model.state_dict(), "cfg": model.cfg, "log_lambda": log_lam.tolist()}, out / "weights.pt")
    mid = export(model, out, BASELINE, levels=EXPORT_LEVELS, default_level=DEFAULT_LEVEL)
    summary = {"model_id": mid, "steps": step, "train_seconds": round(train_s, 1), "threads": threads,
               "patch": list(patch), "batch": len(BASELINE), "lr": lr, "n_sims": n_sims, "simulator": simulator,
               "recordings": list(recordings), "sim_configs": cfgs, "baseline": BASELINE,
               "rate_target_bpv": RATE_TARGET, "export_levels": EXPORT_LEVELS, "default_level": DEFAULT_LEVEL, "final_lambda": np.exp(log_lam).tolist(),
               "params": sum(p.numel() for p in model.parameters()), "model_cfg": model.cfg, "seed": seed,
               "init": str(init) if init else None, "trace_weight": trace_weight, "lambdas_fixed": list(lambdas) if lambdas else None}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "train_history.json").write_text(json.dumps(hist) + "\n")
    log(f"exported {mid} to {out} after {step} steps, {train_s:.0f}s")
    return mid
