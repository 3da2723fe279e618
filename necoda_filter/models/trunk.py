"""The elementwise trunk of a split decoder's main graph, run as one fused C pass between two ONNX graphs.

imaging-v2.1's main graph (``decoder.onnx`` of a split package: inputs ``zs``, ``ctx``, ``base``) adds the
spatial pathway ``u`` (n, t2, C, h, w), the context ``ctx`` (same shape) and the baseline pathway's two
feature maps ``s0``, ``s1`` (n, 1, C, h, w) as::

    v = ((u + ctx) + s0) + ctx * s1          # Add, Add, Mul, Add
    LeakyRelu(reshape(v, (n * t2, C, h, w)))  # then the full-rate 3x3 convolution and the output 1x1

ONNX Runtime runs those five operators as five passes over memory: 45 of the 224 ms a 64x512x512 chunk
takes on one thread (profiled). This module cuts the graph around them: a *head* graph (``zs``, ``base``
-> ``u`` and the baseline features ``s`` = [s0, s1] along channels) and a *tail* graph (the LeakyRelu
output -> ``p``), with exactly the nodes and weights of the original, and ``_kernels.learned_trunk`` does
the five operations in one pass, each rounded to float32 in the same order, so ``p`` is the same bits
(checked when the cut is made, and in tests/test_learned.py against the whole graph at 1-4 threads).

The cut is found by matching that pattern in the graph (any package whose main graph has it gets the fast
path; others run whole). Cutting needs the ``onnx`` package (0.26 s to import); the built-in packages ship
their cut (``decoder_cut.json``, ``decoder_head.onnx``, ``decoder_tail.onnx``, written by
``python -m necoda_filter.models.trunk PACKAGE_DIR``). Those files are derived, not part of the model's
identity: they name the sha256 of the ``decoder.onnx`` they were cut from and are ignored when it
differs, and every cut, shipped or made, must pass the bit-for-bit check against the whole graph before
it is used in a process. Without a cut the whole graph runs, with the same output.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

#: graph names of the cut graphs (prefixes of their names in runtime's session cache)
HEAD, TAIL = "decoder_head", "decoder_tail"


@dataclass(frozen=True)
class Trunk:
    head: bytes  #: inputs ``zs``, ``base``; outputs ``u`` (n, t2, C, h, w) and ``s`` (n, 1, 2C, h, w)
    tail: bytes  #: input ``tail_input`` (n * t2, C, h, w); the main graph's outputs
    tail_input: str
    channels: int
    alpha: float

    # session cache names: runtime keys sessions by (model, graph name), so a name that depends on the graph
    # bytes keeps a cut that failed its check from lending its sessions to the one that replaces it
    @cached_property
    def head_graph(self) -> str:
        return f"{HEAD}-{_sha(self.head)[:16]}"

    @cached_property
    def tail_graph(self) -> str:
        return f"{TAIL}-{_sha(self.tail)[:16]}"


_lock = threading.Lock()
_cache: dict[str, Trunk | None] = {}


def get(pkg) -> Trunk | None:
    """The cut of ``pkg``'s main decoder graph, or None when it has no such trunk, ``onnx`` is missing or
    ``NECODA_DECODER_CUT=0`` (the whole graph then runs, with the same output)."""
    if os.environ.get("NECODA_DECODER_CUT", "1") == "0":
        return None
    with _lock:
        if pkg.id in _cache:
            return _cache[pkg.id]
    split = pkg.tables.get("decoder_split") or {}
    got = None
    if split.get("input"):
        got = load(pkg.path, pkg.decoder)  # shipped with the package (no onnx import)
        if got is None or not _self_check(pkg.decoder, split["input"], got, pkg.id):
            try:
                got = cut(pkg.decoder, split["input"])
            except ImportError:  # no onnx package: the whole graph runs
                got = None
            if got is not None and not _self_check(pkg.decoder, split["input"], got, pkg.id):
                got = None
    with _lock:
        _cache[pkg.id] = got
    return got


def _const(graph, name):
    """Value of a Constant node's output or an initializer, or None."""
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def _match(graph, ctx: str):
    """(u, s, leaky node, C, alpha) of the trunk pattern, or None."""
    prod = {o: n for n in graph.node for o in n.output}
    users: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def node(name, op):
        n = prod.get(name)
        return n if n is not None and n.op_type == op else None

    def single_use(name):
        return len(users.get(name, [])) == 1

    for leaky in (n for n in graph.node if n.op_type == "LeakyRelu"):
        r = node(leaky.input[0], "Reshape")
        a2 = r and node(r.input[0], "Add")
        if not a2:
            continue
        ins = list(a2.input)
        mul = next((node(i, "Mul") for i in ins if node(i, "Mul")), None)
        a1 = next((node(i, "Add") for i in ins if node(i, "Add")), None)
        if not (mul and a1) or {mul.output[0], a1.output[0]} != set(ins) or ctx not in mul.input:
            continue
        s1 = node([i for i in mul.input if i != ctx][0], "Slice") if list(mul.input).count(ctx) == 1 else None
        a0 = next((node(i, "Add") for i in a1.input if node(i, "Add")), None)
        if not (s1 and a0) or list(a0.input).count(ctx) != 1:
            continue
        s0 = node([i for i in a1.input if i != a0.output[0]][0], "Slice")
        u = [i for i in a0.input if i != ctx][0]
        if not s0 or s0.input[0] != s1.input[0] or len(s0.input) < 4 or len(s1.input) < 4:
            continue
        b = s0.input[0]
        p0 = [_const(graph, i) for i in s0.input[1:5]] + [None] * (5 - len(s0.input))
        p1 = [_const(graph, i) for i in s1.input[1:5]] + [None] * (5 - len(s1.input))
        try:
            st0, en0, ax0 = (int(np.asarray(v).ravel()[0]) for v in p0[:3])
            st1, en1, ax1 = (int(np.asarray(v).ravel()[0]) for v in p1[:3])
            steps = [1 if v is None else int(np.asarray(v).ravel()[0]) for v in (p0[3], p1[3])]
        except (TypeError, ValueError, IndexError):
            continue
        C = en0
        if (st0, ax0, st1, ax1, steps) != (0, 2, C, 2, [1, 1]) or C < 1 or en1 < 2 * C:
            continue
        # every intermediate feeds only the next operator, and ctx feeds only the trunk
        inner = [a0.output[0], a1.output[0], mul.output[0], a2.output[0], r.output[0], s0.output[0], s1.output[0]]
        if not all(single_use(x) for x in inner) or len(users.get(ctx, [])) != 2:
            continue
        alpha = next((a.f for a in leaky.attribute if a.name == "alpha"), 0.01)
        return u, b, leaky, C, float(alpha)
    return None


def cut(main: bytes, ctx: str) -> Trunk | None:
    """Cut the main decoder graph around its elementwise trunk (None when it has none), and check on a
    small random input that head + fused trunk + tail give the whole graph's bits."""
    import onnx
    from onnx.utils import Extractor

    m = onnx.shape_inference.infer_shapes(onnx.load_from_string(main))
    found = _match(m.graph, ctx)
    if found is None:
        return None
    u, b, leaky, C, alpha = found
    inputs = [i.name for i in m.graph.input]
    if set(inputs) != {"zs", ctx, "base"}:
        return None
    ex = Extractor(m)
    head = ex.extract_model(["zs", "base"], [u, b])
    tail = ex.extract_model([leaky.output[0]], [o.name for o in m.graph.output])
    if any(ctx in n.input for n in list(head.graph.node) + list(tail.graph.node)):
        return None
    return Trunk(head.SerializeToString(), tail.SerializeToString(), leaky.output[0], C, alpha)


CUT_FILE, HEAD_FILE, TAIL_FILE = "decoder_cut.json", "decoder_head.onnx", "decoder_tail.onnx"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def load(path, decoder: bytes) -> Trunk | None:
    """The cut shipped in package folder ``path``, if it was cut from this ``decoder`` graph."""
    if path is None:
        return None
    try:
        meta = json.loads((Path(path) / CUT_FILE).read_text())
        if meta.get("decoder_sha256") != _sha(decoder):
            return None
        return Trunk((Path(path) / HEAD_FILE).read_bytes(), (Path(path) / TAIL_FILE).read_bytes(),
                     str(meta["tail_input"]), int(meta["channels"]), float(meta["alpha"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path, decoder: bytes, trunk: Trunk) -> None:
    """Write ``trunk`` (cut from ``decoder``) into package folder ``path``."""
    p = Path(path)
    (p / HEAD_FILE).write_bytes(trunk.head)
    (p / TAIL_FILE).write_bytes(trunk.tail)
    meta = {"decoder_sha256": _sha(decoder), "tail_input": trunk.tail_input, "channels": trunk.channels,
            "alpha": trunk.alpha, "written_by": "python -m necoda_filter.models.trunk"}
    (p / CUT_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def run(trunk: Trunk, run_head, run_tail, feeds: dict, ctx: np.ndarray, threads: int = 1) -> np.ndarray:
    """The main graph's output through the cut: ``run_head(feeds) -> (u, s)``, the fused trunk on ``u`` in
    place (``threads`` C threads), then ``run_tail({tail_input: ...})``."""
    from .. import _kernels

    u, s = run_head({"zs": feeds["zs"], "base": feeds["base"]})
    _kernels.learned_trunk(u, np.ascontiguousarray(ctx, dtype=np.float32), s, trunk.alpha, threads)
    n, t2, c, h, w = u.shape
    return run_tail({trunk.tail_input: u.reshape(n * t2, c, h, w)})


def _self_check(main: bytes, ctx: str, trunk: Trunk, model_id: str = "check") -> bool:
    """True when head + fused trunk + tail give the whole graph's bits on a small random input (every
    weight takes part). Runs on the one-thread sessions ``read``'s decoders use anyway."""
    from . import runtime

    try:
        return _compare(main, ctx, trunk, model_id, runtime)
    except Exception:  # graphs that do not fit the pattern (ORT's own errors included): run the whole graph
        return False


def _compare(main, ctx, trunk, model_id, runtime) -> bool:
    if runtime.providers() != ["CPUExecutionProvider"]:
        return False  # the cut is a CPU path (GPU providers run the whole graph)
    whole, head, tail = (runtime.session(model_id, g, b, 1) for g, b in
                         (("decoder", main), (trunk.head_graph, trunk.head), (trunk.tail_graph, trunk.tail)))
    rng = np.random.default_rng(0)
    zs_meta = whole.get_inputs()[[i.name for i in whole.get_inputs()].index("zs")]
    cz = int(zs_meta.shape[1])
    n, t8, h4, w4 = 2, 2, 6, 5
    zs = (rng.normal(0, 2, (n, cz, t8, h4, w4)) * (rng.random((n, cz, t8, h4, w4)) < 0.5)).astype(np.float32)
    base = rng.normal(0, 3, (n, 1, 1, 4 * h4, 4 * w4)).astype(np.float32)
    u0, s0 = head.run(None, {"zs": zs, "base": base})
    C = trunk.channels  # decodes allocate the head's outputs from it: it must be the graph's
    if u0.shape[0] != n or u0.shape[2:] != (C, h4, w4) or s0.shape != (n, 1, 2 * C, h4, w4):
        return False
    c = rng.normal(0, 1, u0.shape).astype(np.float32)
    ref = whole.run(None, {"zs": zs, ctx: c, "base": base})[0]
    got = run(trunk, lambda f: head.run(None, f), lambda f: tail.run(None, f)[0], {"zs": zs, "base": base}, c)
    return got.shape == ref.shape and got.tobytes() == ref.tobytes()


def main(argv=None) -> int:
    """``python -m necoda_filter.models.trunk PACKAGE_DIR...``: write each package's cut (needs onnx)."""
    from .registry import model_id_of_dir, _load

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(main.__doc__)
        return 2
    for d in args:
        pkg = _load(model_id_of_dir(d), Path(d))
        split = pkg.tables.get("decoder_split") or {}
        got = cut(pkg.decoder, split["input"]) if split.get("input") else None
        if got is None or not _self_check(pkg.decoder, split["input"], got, pkg.id):
            print(f"{d}: no elementwise trunk to cut (the whole graph runs)")
            continue
        save(d, pkg.decoder, got)
        print(f"{d}: wrote {CUT_FILE}, {HEAD_FILE}, {TAIL_FILE} ({pkg.id}, {got.channels} channels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
