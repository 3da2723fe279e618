"""Split a learned model's decoder into a *context* graph and a *main* graph (same weights, same ops).

The decoder's temporal pathway turns the temporal latent ``zt`` into a full-rate context tensor that the
rest of the decoder adds to the spatial pathway. When every ``zt`` integer of a tile is zero (imaging-v2's
temporal pathway collapsed in training: all its ``zt`` integers are zero on the simulations at every
level and on the shared real movie at levels 1-7; 1.3 % are non-zero at level 9), that context depends
only on the tile geometry, so the codec computes it once per geometry and caches it
(``modes/learned.py:_context``) instead of running a third of the decoder for every chunk.

    python -m necoda_filter.train.split_decoder SRC_PACKAGE OUT_PACKAGE [--name NAME] [--prune-temporal]

writes ``OUT_PACKAGE`` with the same encoder, ``decoder.onnx`` = the main graph (inputs ``zs``, ``ctx``,
``base``), ``decoder_context.onnx`` (inputs ``zs``, ``zt``; ``zs`` is read for its shape only) and the
tables plus ``"decoder_split"``. It checks on random latents that main(context(...)) equals the whole
decoder bit for bit. ``--prune-temporal`` also cuts the temporal pathway out of the *encoder* (it then
outputs ``zs`` only, checked bit-identical to the whole encoder's ``zs``) and marks ``zt`` pruned in the
tables: the codec writes all-zero ``zt`` (as imaging-v2's encoder did nearly everywhere; see
docs/LEARNED.md for what that changes at the top levels) and saves that pathway's share of the encoder. The new package has a new content id (the graphs are hashed); chunks written with
the source package keep decoding with it. Needs the ``onnx`` package (``pip install necoda-filter[train]``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..models.registry import model_id_of_dir

CONTEXT_FILE = "decoder_context.onnx"
CONTEXT_INPUT = "ctx"


def _rename(graph, old: str, new: str) -> None:
    for n in graph.node:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


def context_tensor(model) -> str:
    """Name of the decoder's context tensor: the reshape of the temporal pathway's DepthToSpace output."""
    d2s = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
    if len(d2s) != 1:
        raise ValueError(f"expected one DepthToSpace (the temporal pathway's upsampling), found {len(d2s)}")
    users = [n for n in model.graph.node if n.op_type == "Reshape" and n.input[0] == d2s[0].output[0]]
    if len(users) != 1:
        raise ValueError("the temporal pathway's DepthToSpace output is not reshaped exactly once")
    return users[0].output[0]


def split(decoder: bytes) -> tuple[bytes, bytes]:
    """(main graph, context graph) of a packed decoder graph."""
    import onnx
    from onnx.utils import Extractor

    m = onnx.shape_inference.infer_shapes(onnx.load_from_string(decoder))
    ctx = context_tensor(m)
    ex = Extractor(m)
    main = ex.extract_model(["zs", ctx, "base"], ["p"])
    context = ex.extract_model(["zs", "zt"], [ctx])
    if any("zt" in n.input for n in main.graph.node):
        raise ValueError("the main graph still reads zt")
    zs_users = {n.op_type for n in context.graph.node if "zs" in n.input}
    if zs_users - {"Shape"}:
        raise ValueError(f"the context graph reads zs values ({sorted(zs_users)}), not only its shape")
    if any("base" in n.input for n in context.graph.node):
        raise ValueError("the context graph reads the baseline image")
    _rename(main.graph, ctx, CONTEXT_INPUT)
    _rename(context.graph, ctx, CONTEXT_INPUT)
    for g in (main, context):
        onnx.checker.check_model(g)
    return main.SerializeToString(), context.SerializeToString()


def _session(blob: bytes):
    """A single-threaded CPU session with the codec's optimisation level (models/runtime.py)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(blob, sess_options=so, providers=["CPUExecutionProvider"])


def check_equal(decoder: bytes, main: bytes, context: bytes, tables: dict, seed: int = 0) -> float:
    """Largest |whole - main(context)| over random latents (several geometries, zero and non-zero zt)."""
    whole, m, c = _session(decoder), _session(main), _session(context)
    cs, ct = tables["latents"]["zs"]["channels"], tables["latents"]["zt"]["channels"]
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n, t, h, w in [(1, 16, 32, 32), (2, 64, 128, 96), (1, 8, 256, 256)]:
        zs = (rng.normal(0, 2, (n, cs, t // 8, h // 4, w // 4)) * (rng.random((n, cs, t // 8, h // 4, w // 4)) < 0.2))
        for zero_zt in (True, False):
            zt = np.zeros((n, ct, t // 2, h // 16, w // 16)) if zero_zt else rng.normal(0, 1, (n, ct, t // 2, h // 16, w // 16))
            base = rng.normal(0, 3, (n, 1, 1, h, w))
            feeds = {"zs": zs.astype(np.float32), "zt": zt.astype(np.float32), "base": base.astype(np.float32)}
            ref = whole.run(None, feeds)[0]
            ctx = c.run(None, {"zs": np.zeros_like(feeds["zs"]), "zt": feeds["zt"]})[0]
            got = m.run(None, {"zs": feeds["zs"], CONTEXT_INPUT: ctx, "base": feeds["base"]})[0]
            worst = max(worst, float(np.abs(ref.astype(np.float64) - got).max()))
    return worst


def prune_encoder(encoder: bytes) -> bytes:
    """The encoder graph without its temporal pathway (output ``zs`` only)."""
    import onnx
    from onnx.utils import Extractor

    m = onnx.shape_inference.infer_shapes(onnx.load_from_string(encoder))
    if [o.name for o in m.graph.output] != ["zs", "zt"]:
        raise ValueError("expected an encoder with outputs zs, zt")
    pruned = Extractor(m).extract_model(["x", "base"], ["zs"])
    onnx.checker.check_model(pruned)
    return pruned.SerializeToString()


def check_encoder_equal(encoder: bytes, pruned: bytes, seed: int = 0) -> float:
    """Largest |zs(whole encoder) - zs(pruned encoder)| on random inputs (several geometries)."""
    whole, cut = _session(encoder), _session(pruned)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n, t, h, w in [(1, 16, 32, 32), (2, 64, 128, 96), (1, 8, 256, 256)]:
        feeds = {"x": rng.normal(0, 1, (n, 1, t, h, w)).astype(np.float32),
                 "base": rng.normal(0, 3, (n, 1, 1, h, w)).astype(np.float32)}
        a, b = whole.run(None, feeds)[0], cut.run(None, feeds)[0]
        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
    return worst


def split_package(src, out, name: str | None = None, prune_temporal: bool = False) -> str:
    """Write the split package ``out`` from ``src``; returns its model id."""
    src, out = Path(src), Path(out)
    tables = json.loads((src / "tables.json").read_text())
    if tables.get("decoder_output") != "packed" or tables.get("decoder_split"):
        raise ValueError(f"{src} is not an unsplit packed-output decoder package")
    decoder = (src / "decoder.onnx").read_bytes()
    main, context = split(decoder)
    worst = check_equal(decoder, main, context, tables)
    if worst != 0.0:
        raise ValueError(f"split decoder differs from the whole decoder by up to {worst:g}")
    encoder = (src / "encoder.onnx").read_bytes()
    if prune_temporal:
        pruned = prune_encoder(encoder)
        worst = check_encoder_equal(encoder, pruned)
        if worst != 0.0:
            raise ValueError(f"pruned encoder's zs differs from the whole encoder's by up to {worst:g}")
        encoder = pruned
        tables["latents"]["zt"]["pruned"] = True
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder.onnx").write_bytes(encoder)
    (out / "decoder.onnx").write_bytes(main)
    (out / CONTEXT_FILE).write_bytes(context)
    tables["decoder_split"] = {"graph": CONTEXT_FILE, "input": CONTEXT_INPUT, "zs_shape_only": True}
    (out / "tables.json").write_text(json.dumps(tables, indent=1, sort_keys=True) + "\n")
    mid = model_id_of_dir(out)
    card = json.loads((src / "card.json").read_text()) if (src / "card.json").is_file() else {}
    card.update({"model_id": mid, "name": name or out.name,
                 "derived_from": {"model_id": model_id_of_dir(src), "name": src.name,
                                  "how": "decoder split into context + main graphs (necoda_filter.train."
                                         "split_decoder); same weights, bit-identical reconstructions"
                                         + ("; encoder's temporal pathway pruned (zt coded as zeros)"
                                            if prune_temporal else "")}})
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    return mid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--name", default=None)
    p.add_argument("--prune-temporal", action="store_true", help="also cut the encoder's temporal pathway")
    a = p.parse_args(argv)
    print(split_package(a.src, a.out, a.name, a.prune_temporal))
    return 0


if __name__ == "__main__":
    sys.exit(main())
