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

**Blocked variant.** ONNX Runtime runs these convolutions in its blocked NCHWc layout (8 channels per block
on AVX2 CPUs) and reorders to and from planar NCHW at every graph boundary: 45 of ~165 ms per 64x512x512
chunk on one thread went to the reorders after the head, before and after the tail. The blocked variant
is the head and tail as ONNX Runtime optimises them (its ``optimized_model_filepath``), with those
reorders removed: the head ends in, and the tail starts and ends in, the blocked layout, which the C
trunk and finishing kernels read and write directly. The convolutions are the same kernels on the same
values, so the bits are the same (the same bit-for-bit check decides). The layout depends on the CPU
(MLAS's block size: 8 with AVX2, 16 with AVX-512), so the graphs are shipped per block size
(``decoder_{head,tail}_b{8,16}.onnx``, listed in ``decoder_cut.json``) and a process uses one only after it
passed the check on that CPU (elsewhere, e.g. ARM, the planar cut runs). Where the block does not divide
the channels (16 against 24) the tail reads each frame pair's channels padded to whole blocks and the
trunk pass moves them there (:attr:`Trunk.padded`). ``NECODA_DECODER_CUT=planar`` skips the variant.
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
    #: 1: planar graphs. B > 1: ONNX Runtime-optimised graphs whose u (head output), tail input and tail
    #: output are in its blocked layout with B channels per block (run without further optimisation)
    block: int = 1

    @property
    def preoptimized(self) -> bool:
        return self.block > 1

    @property
    def padded(self) -> bool:
        """The block does not divide the channels (AVX-512's 16 against 24): the tail reads each frame
        pair's channels padded to whole blocks, and the trunk pass moves them there from the head's rows of
        blocks (``_kernels.learned_trunk_reblock``)."""
        return self.channels % self.block != 0

    @property
    def tail_channels(self) -> int:
        """Channels of the tail's input: the trunk's, padded to whole blocks."""
        return -(-self.channels // self.block) * self.block

    # session cache names: runtime keys sessions by (model, graph name), so a name that depends on the graph
    # bytes keeps a cut that failed its check from lending its sessions to the one that replaces it
    @cached_property
    def head_graph(self) -> str:
        return f"{HEAD}-{_sha(self.head)[:16]}"

    @cached_property
    def tail_graph(self) -> str:
        return f"{TAIL}-{_sha(self.tail)[:16]}"


_lock = threading.Lock()
_cache: dict[tuple, Trunk | None] = {}


def setting() -> str:
    """``NECODA_DECODER_CUT``: "0" (also off, false, no: no cut, the whole graph runs), "planar" (the cut
    without its blocked variant) or "1" (the default: the blocked variant where it passes its check)."""
    v = os.environ.get("NECODA_DECODER_CUT", "1").strip().lower()
    if v in ("0", "off", "false", "no"):
        return "0"
    if v not in ("", "1", "on", "true", "yes", "planar"):  # a typo must not stop decoding: same values
        import warnings

        warnings.warn(f"NECODA_DECODER_CUT={os.environ['NECODA_DECODER_CUT']!r} is not 1, planar or 0: "
                      f"using 1", RuntimeWarning, stacklevel=2)
    return "planar" if v == "planar" else "1"


def get(pkg) -> Trunk | None:
    """The cut of ``pkg``'s main decoder graph (its blocked variant when one shipped for this CPU passes
    the check), or None when it has no such trunk, ``onnx`` is missing or ``NECODA_DECODER_CUT=0`` (the
    whole graph then runs, with the same output)."""
    env = setting()
    if env == "0":
        return None
    key = (pkg.id, env)
    with _lock:
        if key in _cache:
            return _cache[key]
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
        if got is not None and env != "planar":
            for variant in load_blocked(pkg.path, pkg.decoder, got):
                if _self_check(pkg.decoder, split["input"], variant, pkg.id):
                    got = variant
                    break
    with _lock:
        _cache[key] = got
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


NCHWC = "com.microsoft.nchwc"  # ONNX Runtime's domain of its blocked-layout operators


def _attr(node, name, default=None):
    return next((a.i for a in node.attribute if a.name == name), default)


def _prune(graph) -> None:
    """Drop the nodes and initializers the graph's outputs do not need; name the nodes by position."""
    need = {o.name for o in graph.output}
    keep = []
    for n in reversed(list(graph.node)):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = [t for t in graph.initializer if t.name in need]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]  # shapes of renamed or removed tensors: ONNX Runtime infers its own
    for k, n in enumerate(graph.node):  # ORT names some nodes differently from run to run: same bytes
        n.name = f"{n.op_type}_{k}"


def _rename(graph, old: str, new: str) -> None:
    for n in graph.node:
        for k, x in enumerate(n.input):
            if x == old:
                n.input[k] = new
        for k, x in enumerate(n.output):
            if x == old:
                n.output[k] = new


def _is_reorder(node, op) -> bool:
    return node is not None and node.op_type == op and node.domain == NCHWC and _attr(node, "channels_last", 0) == 0


def _head_blocked(model) -> bool:
    """Make each output of the optimised head the blocked tensor that its reorder to planar read (dropping
    the reorder and the reshapes after it). False when an output does not end that way."""
    import onnx

    g = model.graph
    for k, out in enumerate(list(g.output)):
        prod = {o: n for n in g.node for o in n.output}
        t, chain = out.name, []
        while prod.get(t) is not None and prod[t].op_type == "Reshape":
            chain.append(prod[t])
            t = prod[t].input[0]
        ro = prod.get(t)
        if not _is_reorder(ro, "ReorderOutput"):
            return False
        src = ro.input[0]
        for n in chain + [ro]:
            g.node.remove(n)
        _rename(g, src, out.name)
        g.output[k].CopyFrom(onnx.helper.make_tensor_value_info(out.name, onnx.TensorProto.FLOAT, [None] * 4))
    _prune(g)
    return True


def _tail_blocked(model) -> bool:
    """Make the optimised tail take its input and give its output in the blocked layout (dropping the
    reorders at both ends). False when the graph does not start and end that way."""
    g = model.graph
    if len(g.input) != 1 or len(g.output) != 1:
        return False
    import onnx

    x, p = g.input[0].name, g.output[0].name
    users = [n for n in g.node if x in n.input]
    prod = {o: n for n in g.node for o in n.output}
    ro = prod.get(p)
    if len(users) != 1 or not _is_reorder(users[0], "ReorderInput") or not _is_reorder(ro, "ReorderOutput"):
        return False
    ri = users[0]
    g.node.remove(ri)
    _rename(g, ri.output[0], x)
    # the blocked input has the channels padded to whole blocks (24 -> 32 in blocks of 16): any count
    g.input[0].CopyFrom(onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [None] * 4))
    g.node.remove(ro)
    _rename(g, ro.input[0], p)
    _prune(g)
    return True


def blocked(trunk: Trunk, main: bytes, ctx: str, model_id: str = "check") -> Trunk | None:
    """The blocked variant of planar cut ``trunk`` for this CPU (needs ``onnx``), or None when ONNX Runtime
    does not run these graphs in a blocked layout here. Its block size is the one whose variant passes
    the bit-for-bit check against the whole graph."""
    import tempfile

    import onnx
    import onnxruntime as ort

    graphs = {}
    with tempfile.TemporaryDirectory() as d:
        for name, blob in (("head", trunk.head), ("tail", trunk.tail)):
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.optimized_model_filepath = os.path.join(d, name + ".onnx")
            so.log_severity_level = 3  # ORT warns that the result is CPU-specific: that is why it is checked
            ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
            graphs[name] = onnx.load(so.optimized_model_filepath)
    if not (_head_blocked(graphs["head"]) and _tail_blocked(graphs["tail"])):
        return None
    head, tail = graphs["head"].SerializeToString(), graphs["tail"].SerializeToString()
    for b in (8, 16, 4):  # the check fails (quietly) for a block size that is not this CPU's
        got = Trunk(head, tail, trunk.tail_input, trunk.channels, trunk.alpha, b)
        if _self_check(main, ctx, got, model_id):
            return got
    return None


CUT_FILE, HEAD_FILE, TAIL_FILE = "decoder_cut.json", "decoder_head.onnx", "decoder_tail.onnx"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _meta(path, decoder: bytes) -> dict | None:
    """``decoder_cut.json`` of package folder ``path`` when it was written for this ``decoder`` graph."""
    if path is None:
        return None
    try:
        meta = json.loads((Path(path) / CUT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("decoder_sha256") == _sha(decoder) else None


def _read(path, meta: dict, name: str) -> bytes:
    """The bytes of cut file ``name``, which must have the sha256 ``decoder_cut.json`` records for it: the
    bit-for-bit check runs on one small random input, which catches a wrong graph but not necessarily one
    damaged weight, so a file that changed after it was written is not used (ValueError)."""
    b = (Path(path) / name).read_bytes()
    if (meta.get("files_sha256") or {}).get(name) != _sha(b):
        raise ValueError(f"{name} does not have the sha256 {CUT_FILE} records")
    return b


def load(path, decoder: bytes) -> Trunk | None:
    """The cut shipped in package folder ``path``, if it was cut from this ``decoder`` graph and its files
    are the ones written with it."""
    meta = _meta(path, decoder)
    if meta is None:
        return None
    try:
        return Trunk(_read(path, meta, HEAD_FILE), _read(path, meta, TAIL_FILE), str(meta["tail_input"]),
                     int(meta["channels"]), float(meta["alpha"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _blocked_files(block: int) -> tuple[str, str]:
    return f"decoder_head_b{block}.onnx", f"decoder_tail_b{block}.onnx"


def load_blocked(path, decoder: bytes, planar: Trunk) -> list[Trunk]:
    """The blocked variants shipped in package folder ``path`` for this ``decoder`` graph (unchecked;
    entries that are not block sizes, or whose files are missing or changed, are skipped)."""
    meta = _meta(path, decoder)
    blocks = meta.get("blocked") if meta else None
    got = []
    for b in blocks if isinstance(blocks, list) else []:
        if type(b) is not int or b not in (4, 8, 16):
            continue
        try:
            head, tail = (_read(path, meta, f) for f in _blocked_files(b))
        except (OSError, ValueError, AttributeError):
            continue
        got.append(Trunk(head, tail, planar.tail_input, planar.channels, planar.alpha, b))
    return got


def save(path, decoder: bytes, trunk: Trunk, variants=()) -> None:
    """Write planar cut ``trunk`` (cut from ``decoder``) and its blocked ``variants`` into package folder
    ``path``, with the sha256 of every file. Blocked variants already there for other block sizes (written
    on other CPUs) are kept while they belong to the same decoder and their files are intact."""
    p = Path(path)
    every = {v.block: v for v in load_blocked(p, decoder, trunk)}  # intact ones already there
    every.update({v.block: v for v in variants})
    files = {HEAD_FILE: trunk.head, TAIL_FILE: trunk.tail}
    for v in every.values():
        files.update(zip(_blocked_files(v.block), (v.head, v.tail)))
    for name, b in files.items():
        (p / name).write_bytes(b)
    meta = {"decoder_sha256": _sha(decoder), "tail_input": trunk.tail_input, "channels": trunk.channels,
            "alpha": trunk.alpha, "blocked": sorted(every),
            "files_sha256": {name: _sha(files[name]) for name in sorted(files)},
            "written_by": "python -m necoda_filter.models.trunk"}
    (p / CUT_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def to_layout(trunk: Trunk, x: np.ndarray) -> np.ndarray:
    """Planar (n, t2, C, h, w) ``x`` in the trunk's layout: itself, or blocked (n, t2, Cp / B, h, w, B), the
    channels padded with zeros to Cp, whole blocks (the tail's layout)."""
    B = trunk.block
    if B == 1:
        return x
    n, t2, C, h, w = x.shape
    if C % B:
        x = np.concatenate([x, np.zeros((n, t2, -(-C // B) * B - C, h, w), x.dtype)], axis=2)
        C = x.shape[2]
    return np.ascontiguousarray(x.reshape(n, t2, C // B, B, h, w).transpose(0, 1, 2, 4, 5, 3), dtype=np.float32)


def run(trunk: Trunk, call, feeds: dict, ctx: np.ndarray, threads: int = 1, scratch=None) -> np.ndarray:
    """The main graph's packed output through the cut: the head, the fused trunk in place (``threads`` C
    threads), the tail. ``ctx``: the context, in the trunk's layout (:func:`to_layout`).
    ``call(graph_name, blob, feeds, outs)`` runs a graph and returns its outputs (written into ``outs`` when
    not None); ``scratch(shape, slot)`` (runtime.scratch), when given, supplies those outputs. Returns
    (N, 32, h, w) planar, or (N, 32 / B, h, w, B) for a blocked variant."""
    from .. import _kernels

    zs = feeds["zs"]
    n, t8, lat = zs.shape[0], zs.shape[2], tuple(zs.shape[3:])
    t2, C, B = ctx.shape[1], trunk.channels, trunk.block
    # ONNX Runtime's shapes of the head's outputs: planar u (n, t2, C, h, w) and s (n, 1, 2C, h, w); blocked,
    # the convolutions' outputs before the reshapes the variant dropped: (n * t8, t2 / t8 * C, h, w) and
    # (n, 2C, h, w), in blocks of B channels
    shapes = ([(n, t2, C) + lat, (n, 1, 2 * C) + lat] if B == 1 else
              [(n * t8, t2 // t8 * C) + lat, (n, 2 * C) + lat])
    outs = None if scratch is None else [scratch(shapes[0], "trunk"), scratch(shapes[1], "trunk_base")]
    u, s = call(trunk.head_graph, trunk.head, {"zs": zs, "base": feeds["base"]}, outs)
    ctx = np.ascontiguousarray(ctx, dtype=np.float32)
    if B == 1:
        x = _kernels.learned_trunk(u.reshape(shapes[0]), ctx, s.reshape(shapes[1]), trunk.alpha, threads)
    elif not trunk.padded:  # in place: the head's rows of blocks are whole frame pairs of the tail's
        x = _kernels.learned_trunk(u.reshape((n, t2, C // B) + lat + (B,)), ctx,
                                   s.reshape((n, 1, 2 * C // B) + lat + (B,)), trunk.alpha, threads)
    else:
        shape = (n, t2, trunk.tail_channels // B) + lat + (B,)
        x = _kernels.learned_trunk_reblock(u.reshape((n, t8, t2 // t8 * C // B) + lat + (B,)), ctx,
                                           s.reshape((n, 1, 2 * C // B) + lat + (B,)),
                                           np.empty(shape, np.float32) if scratch is None else
                                           scratch(shape, "trunk_tail"), C, trunk.alpha, threads)
    outs = None if scratch is None else [scratch((n * t2, 32) + lat)]
    tail_in = x.reshape((n * t2, trunk.tail_channels if B > 1 else C) + lat)
    p = call(trunk.tail_graph, trunk.tail, {trunk.tail_input: tail_in}, outs)[0]
    return p if B == 1 else p.reshape((p.shape[0], p.shape[1] // B) + p.shape[2:] + (B,))


def _self_check(main: bytes, ctx: str, trunk: Trunk, model_id: str = "check") -> bool:
    """True when head + fused trunk + tail give the whole graph's bits on a small random input (every
    weight takes part). Runs on the one-thread sessions ``read``'s decoders use anyway."""
    from . import runtime

    try:
        return _compare(main, ctx, trunk, model_id, runtime)
    except Exception:  # graphs that do not fit the pattern (ORT's own errors included): run the whole graph
        return False


def _compare(main, ctx, trunk, model_id, runtime) -> bool:
    import onnxruntime as ort

    if runtime.providers() != ["CPUExecutionProvider"]:
        return False  # the cut is a CPU path (GPU providers run the whole graph)
    whole = runtime.session(model_id, "decoder", main, 1)
    parts = {g: runtime.session(model_id, g, b, 1, preoptimized=trunk.preoptimized)
             for g, b in ((trunk.head_graph, trunk.head), (trunk.tail_graph, trunk.tail))}
    # a blocked variant shipped for another CPU's block size fails in its first convolution (AVX-512 runs
    # 16-channel blocks, the shipped variant 8): that is an answer, not an error, so ORT must not print it
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    rng = np.random.default_rng(0)
    zs_meta = whole.get_inputs()[[i.name for i in whole.get_inputs()].index("zs")]
    cz = int(zs_meta.shape[1])
    n, t8, h4, w4 = 2, 2, 6, 5
    zs = (rng.normal(0, 2, (n, cz, t8, h4, w4)) * (rng.random((n, cz, t8, h4, w4)) < 0.5)).astype(np.float32)
    base = rng.normal(0, 3, (n, 1, 1, 4 * h4, 4 * w4)).astype(np.float32)
    u0, s0 = parts[trunk.head_graph].run(None, {"zs": zs, "base": base}, quiet)
    C, B = trunk.channels, trunk.block  # decodes allocate the head's outputs from them: they must be the graph's
    if u0.size % (n * C * h4 * w4) or s0.size != n * 2 * C * h4 * w4:
        return False
    t2 = u0.size // (n * C * h4 * w4)
    if (t2 // t8 * C) % B or (2 * C) % B:  # the head's convolutions write whole blocks
        return False
    if (u0.shape, s0.shape) != (((n, t2, C, h4, w4), (n, 1, 2 * C, h4, w4)) if B == 1 else
                                ((n * t8, t2 // t8 * C, h4, w4), (n, 2 * C, h4, w4))):
        return False
    c = rng.normal(0, 1, (n, t2, C, h4, w4)).astype(np.float32)
    ref = whole.run(None, {"zs": zs, ctx: c, "base": base})[0]
    got = run(trunk, lambda g, b, f, outs: parts[g].run(None, f, quiet), {"zs": zs, "base": base},
              to_layout(trunk, c))
    if B > 1:  # back to planar to compare
        got = np.moveaxis(got, -1, 2).reshape(got.shape[0], -1, *got.shape[2:4])
    return got.shape == ref.shape and got.tobytes() == ref.tobytes()


def main(argv=None) -> int:
    """``python -m necoda_filter.models.trunk PACKAGE_DIR...``: write each package's cut, and its blocked
    variant for this CPU's block size when ONNX Runtime has one (needs onnx)."""
    from .registry import model_id_of_dir, _load

    args = sys.argv[1:] if argv is None else argv
    if not args or any(a in ("-h", "--help") for a in args):
        print(main.__doc__)
        return 0 if args else 2
    for d in args:
        pkg = _load(model_id_of_dir(d), Path(d))
        split = pkg.tables.get("decoder_split") or {}
        got = cut(pkg.decoder, split["input"]) if split.get("input") else None
        if got is None or not _self_check(pkg.decoder, split["input"], got, pkg.id):
            print(f"{d}: no elementwise trunk to cut (the whole graph runs)")
            continue
        variant = blocked(got, pkg.decoder, split["input"], pkg.id)
        save(d, pkg.decoder, got, [variant] if variant else [])
        extra = f" and the {variant.block}-channel blocked variant" if variant else " (no blocked variant on this CPU)"
        print(f"{d}: wrote {CUT_FILE}, {HEAD_FILE}, {TAIL_FILE}{extra} ({pkg.id}, {got.channels} channels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
