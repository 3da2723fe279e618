"""Export a trained :class:`~necoda_filter.train.model.Codec` to the ONNX model package the codec loads.

A package is a folder with ``encoder.onnx``, ``decoder.onnx`` and ``tables.json`` (everything decoding
needs besides the graphs: strides, channels, per-quality gains and baseline settings). The model id is
``"necoda-" + sha256(encoder + decoder + tables)[:16]`` (see :mod:`necoda_filter.models.registry`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.registry import model_id_of_dir
from .model import S_STRIDE, T_STRIDE, Codec


class _EncWrap(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, x, base):
        return self.enc(x, base)


class _DecWrap(torch.nn.Module):
    """Decoder graph ending before the final pixel shuffle: output "p" (N*T/2, 32, H/4, W/4), unpacked by
    the codec's C kernel together with the baseline and the inverse VST (tables "decoder_output")."""

    def __init__(self, dec):
        super().__init__()
        self.dec = dec

    def forward(self, zs, zt, base):
        return self.dec(zs, zt, base, packed=True)


def quality_levels(log_gains, baseline: list[dict], levels) -> tuple[list, list]:
    """Per-quality gains and baseline settings at ``levels`` (1-based positions on the trained levels;
    fractional positions interpolate the gains log-linearly -- the variable-rate "gain interpolation" of
    gained autoencoders -- and take the baseline settings of the nearest trained level, ties upward).
    Gains are rounded to 7 significant digits, so the tables are the same on every machine."""
    import numpy as np

    lg = np.asarray(log_gains, np.float64)
    n = lg.shape[0]
    gains, base = [], []
    for p in levels:
        p = float(p)
        if not 1.0 <= p <= n:
            raise ValueError(f"quality level position {p} outside the trained levels 1..{n}")
        i = min(int(np.floor(p)) - 1, n - 2) if n > 1 else 0
        f = p - 1 - i if n > 1 else 0.0
        row = np.exp((1 - f) * lg[i] + f * lg[min(i + 1, n - 1)])
        gains.append([float(f"{v:.7g}") for v in row])
        base.append(dict(baseline[min(int(np.floor(p - 1 + 0.5)), n - 1)]))
    return gains, base


def export(model: Codec, out_dir, baseline: list[dict], extra_tables: dict | None = None, levels=None,
           default_level: int | None = None) -> str:
    """Write the package into ``out_dir``; returns the model id.

    ``levels``: the quality levels to publish, as 1-based positions on the trained levels (default: the
    trained levels themselves); ``default_level``: the quality (1-based index into ``levels``) used when a
    user gives none."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    cs, ct = model.cfg["cs"], model.cfg["ct"]
    N, T, H, W = 1, 16, 32, 32
    x = torch.zeros(N, 1, T, H, W)
    b0 = torch.zeros(N, 1, 1, H, W)
    dyn = {"x": {0: "n", 2: "t", 3: "h", 4: "w"}, "zs": {0: "n", 2: "t8", 3: "h4", 4: "w4"},
           "zt": {0: "n", 2: "t2", 3: "h16", 4: "w16"}, "base": {0: "n", 3: "h", 4: "w"},
           "p": {0: "nt2", 2: "h4", 3: "w4"}}
    with torch.no_grad():
        torch.onnx.export(_EncWrap(model.enc), (x, b0), str(out / "encoder.onnx"), input_names=["x", "base"],
                          output_names=["zs", "zt"], dynamic_axes={k: dyn[k] for k in ("x", "base", "zs", "zt")},
                          opset_version=17, dynamo=False)
        zs = torch.zeros(N, cs, T // 8, H // 4, W // 4)
        zt = torch.zeros(N, ct, T // 2, H // 16, W // 16)
        base = torch.zeros(N, 1, 1, H, W)
        torch.onnx.export(_DecWrap(model.dec), (zs, zt, base), str(out / "decoder.onnx"),
                          input_names=["zs", "zt", "base"], output_names=["p"],
                          dynamic_axes={k: dyn[k] for k in ("zs", "zt", "base", "p")},
                          opset_version=17, dynamo=False)
    nq = model.cfg["n_quality"]
    levels = [float(v) for v in (levels or range(1, nq + 1))]
    gzs, base = quality_levels(model.log_gain_s.detach().double().numpy(), baseline, levels)
    gzt, _ = quality_levels(model.log_gain_t.detach().double().numpy(), baseline, levels)
    tables = {
        "format": "necoda-learned-1",
        "decoder_output": "packed",
        "t_stride": T_STRIDE, "s_stride": S_STRIDE,
        "latents": {"zs": {"channels": cs, "down": [8, 4, 4]}, "zt": {"channels": ct, "down": [2, 16, 16]}},
        "base_scale": 0.2,
        "n_quality": len(levels),
        "trained_levels": nq,
        "level_positions": levels,
        "default_quality": int(default_level or min(2, len(levels))),
        "gain_zs": gzs,
        "gain_zt": gzt,
        "baseline": base,
        **(extra_tables or {}),
    }
    (out / "tables.json").write_text(json.dumps(tables, indent=1, sort_keys=True) + "\n")
    return model_id_of_dir(out)
