"""Tests of mode="learned" (ONNX model, pcodec-coded integer latents, safeguard, registry)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from necoda_filter import chunk, container, modes
from necoda_filter.models import registry

pytest.importorskip("onnxruntime")
L = modes.get("learned")


def _movie(T=48, H=40, W=56, seed=0, gain=100.0, offset=100.0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    lam = 3 + 2 * np.sin(yy / 7.0) * np.cos(xx / 5.0) ** 2
    cells = np.exp(-((yy - H / 2) ** 2 + (xx - W / 3) ** 2) / 20.0)
    tr = 1 + 2 * (np.sin(np.arange(T) / 4.0) > 0.7)
    clean = lam[None] + 4 * cells[None] * tr[:, None, None]
    x = gain * rng.poisson(clean) + offset
    return x.astype(dtype), (gain * clean + offset).astype(np.float32)


BUILTINS = sorted(p.name for p in registry.BUILTIN_DIR.iterdir() if (p / "tables.json").is_file())


def _on_cpu() -> bool:
    """ONNX Runtime decodes on the CPU here (not with onnxruntime-gpu on a GPU machine)."""
    from necoda_filter.models import runtime

    return runtime.providers() == ["CPUExecutionProvider"]


#: the decoder cut (models/trunk.py) and the cropped box decodes are CPU paths: a GPU runs the whole graph
cpu_paths = pytest.mark.skipif(not _on_cpu(), reason="the decoder cut and box crops are CPU paths")


def test_default_model_is_builtin():
    assert registry.DEFAULT_NAME in BUILTINS
    assert registry.default().path.name == registry.DEFAULT_NAME


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_model_is_content_addressed(name):
    pkg = registry.resolve(str(registry.BUILTIN_DIR / name))
    assert pkg.id == registry.model_id_of_dir(pkg.path)
    assert pkg.id.startswith("necoda-") and len(pkg.id) == 7 + 16
    card = json.loads((pkg.path / "card.json").read_text())
    assert card["model_id"] == pkg.id


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_model_still_decodes(name):
    """Older built-in models stay in the wheel so chunks written with them keep decoding."""
    x, clean = _movie(32, 40, 48, seed=2)
    pkg = registry.resolve(str(registry.BUILTIN_DIR / name))
    buf = chunk.encode(x, mode="learned", quality=4, model=pkg.id)
    assert chunk.info(buf).model_id == pkg.id
    y = chunk.decode(buf)
    err = np.abs(y.astype(np.float64) - clean).mean()
    assert err < np.abs(x.astype(np.float64) - clean).mean()  # quality 4 denoises this movie


@pytest.mark.parametrize("shape", [(48, 40, 56), (37, 45, 51), (1, 33, 17), (9, 16, 16)])
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_round_trip_shapes_dtypes(shape, dtype):
    x, _ = _movie(*shape, dtype=dtype)
    buf = chunk.encode(x, mode="learned", quality=4)
    assert chunk.info(buf).mode_id == 3  # not the raw fallback
    y = chunk.decode(buf)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.isfinite(y.astype(np.float64)).all()


def test_2d_frame():
    x, _ = _movie(1, 40, 40)
    y = chunk.decode(chunk.encode(x[0], mode="learned"))
    assert y.shape == (40, 40)


def test_rate_decreases_with_quality():
    x, _ = _movie(64, 64, 64)
    sizes = [len(chunk.encode(x, mode="learned", quality=q)) for q in (1, 2, 3, 4)]
    assert sizes[0] <= sizes[-1]
    assert x.nbytes / sizes[0] > 50


def test_determinism_across_threads():
    x, _ = _movie(64, 48, 48, seed=3)
    e1 = L.encode(x, quality=3, threads=1)
    e2 = L.encode(x, quality=3, threads=2)
    la = L.latents(e1.payload, x.shape, e1.params, e1.model_id)
    lb = L.latents(e2.payload, x.shape, e2.params, e2.model_id)
    assert all(np.array_equal(a, b) for a, b in zip(la, lb))
    # decoding on another thread count reads back exactly the integers the encoder wrote
    d1 = L.decode(e1.payload, x.shape, x.dtype, e1.params, e1.model_id, threads=1)
    d2 = L.decode(e1.payload, x.shape, x.dtype, e1.params, e1.model_id, threads=2)
    assert np.abs(d1.astype(np.int64) - d2.astype(np.int64)).max() <= 1


def test_corrupt_latents_raise():
    x, _ = _movie()
    e = L.encode(x, quality=3)
    p = bytearray(e.payload)
    for pos in (len(p) // 2, len(p) - 3, 9):
        q = bytearray(p)
        q[pos] ^= 0x5A
        with pytest.raises(ValueError):
            L.decode(bytes(q), x.shape, x.dtype, e.params, e.model_id)
    with pytest.raises(ValueError):
        L.decode(bytes(p[: len(p) // 2]), x.shape, x.dtype, e.params, e.model_id)
    buf = bytearray(chunk.encode(x, mode="learned"))
    buf[-10] ^= 0xFF
    with pytest.raises(container.CorruptChunk):
        chunk.decode(bytes(buf))


def test_missing_model_names_id():
    x, _ = _movie()
    e = L.encode(x)
    fake = "necoda-00000000deadbeef"
    buf = container.pack(3, x.dtype, x.shape, e.payload, e.params, fake)
    with pytest.raises(LookupError, match=fake):
        chunk.decode(buf)


def test_user_model_path(tmp_path, monkeypatch):
    import shutil

    pkg = registry.default()
    dst = tmp_path / "mine"
    shutil.copytree(pkg.path, dst)
    (dst / "tables.json").write_text((dst / "tables.json").read_text() + " ")  # new bytes, new id
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path))
    mid = registry.model_id_of_dir(dst)
    assert mid != pkg.id and mid in registry.available()
    x, _ = _movie()
    buf = chunk.encode(x, mode="learned", model=str(dst))
    assert chunk.info(buf).model_id == mid
    assert chunk.decode(buf).shape == x.shape


@pytest.mark.parametrize("bound", [{"max_error": 150.0}, {"max_error_noise": 1.0}])
def test_safeguard_bound(bound):
    try:
        modes.get("bounded")
    except ImportError:
        pytest.skip("bounded mode not available yet")
    x, _ = _movie(32, 40, 40, seed=5)
    e = L.encode(x, quality=1, **bound)
    y = L.decode(e.payload, x.shape, x.dtype, e.params, e.model_id, threads=2)
    err = np.abs(y.astype(np.int64) - x.astype(np.int64)).max()
    assert err <= e.params["sg"]["me"] + 1e-9


def test_torch_not_imported_by_codec():
    code = textwrap.dedent("""
        import sys, numpy as np
        from necoda_filter import chunk
        x = (np.random.default_rng(0).poisson(5, (16, 32, 32)) * 100 + 100).astype(np.uint16)
        y = chunk.decode(chunk.encode(x, mode="learned"))
        assert y.shape == x.shape
        assert "torch" not in sys.modules, "torch imported"
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_fidelity_top_quality_denoises():
    sim = pytest.importorskip("necoda_filter.simulate")
    s = sim.simulate_imaging(n_frames=64, height=64, width=64, n_cells=8, seed=11)
    x = s.movie
    y = chunk.decode(chunk.encode(x, mode="learned", quality=4)).astype(np.float64)
    clean = s.clean.astype(np.float64)
    raw_err = np.sqrt(np.mean((x.astype(np.float64) - clean) ** 2))
    dec_err = np.sqrt(np.mean((y - clean) ** 2))
    assert dec_err < raw_err, (dec_err, raw_err)


def test_quality_range_comes_from_the_model():
    from necoda_filter import Necoda

    nq = int(registry.default().tables["n_quality"])
    Necoda(mode="learned", quality=nq)
    for bad in (nq + 1, 1000):
        with pytest.raises(ValueError, match=f"1..{nq}"):
            Necoda(mode="learned", quality=bad)
    x, _ = _movie(16, 32, 32)
    with pytest.raises(ValueError, match="quality"):
        L.encode(x, quality=nq + 1)
    e = L.encode(x)  # no quality: the model's default level
    assert e.params["q"] == int(registry.default().tables.get("default_quality", 2))


BOXES = [((0, 0, 0), None), ((3, 5, 7), (20, 30, 41)), ((47, 39, 55), (1, 1, 1)), ((10, 0, 0), (1, 40, 56)),
         ((0, 12, 30), (48, 1, 26))]


@pytest.mark.parametrize("dtype, options", [(np.uint16, {}), (np.float32, {}), (np.int32, {}),
                                            (np.uint16, {"max_error": 400})])
def test_decode_box_equals_box_of_decode(dtype, options):
    """chunk.decode_box (straight into a view of the reader's array where the kernel can, else through a
    full decode) gives exactly the box of chunk.decode; nothing outside the view is written."""
    x, _ = _movie(dtype=dtype)
    buf = chunk.encode(x, mode="learned", quality=3, **options)
    full = chunk.decode(buf)
    for start, shape in BOXES:
        shape = shape or x.shape
        big = np.full((60, 50, 70), 9, dtype)
        view = big[4:4 + shape[0], 2:2 + shape[1], 3:3 + shape[2]]
        chunk.decode_box(buf, view, start)
        box = tuple(slice(s, s + n) for s, n in zip(start, shape))
        assert np.array_equal(view, full[box]), (start, shape)
        big[4:4 + shape[0], 2:2 + shape[1], 3:3 + shape[2]] = 9
        assert (big == 9).all()


def test_decode_box_zero_padded_edge_chunk_and_bad_boxes():
    x, _ = _movie()
    x[40:] = 0  # HDF5 edge chunks arrive padded with zeros: only the core is coded
    x[:, 33:] = 0
    buf = chunk.encode(x, mode="learned", quality=3)
    assert chunk.container.unpack(buf)[0].params.get(chunk.CORE_KEY) == [40, 33, 56]
    full = chunk.decode(buf)
    for start, shape in [((0, 0, 0), x.shape), ((30, 20, 5), (15, 20, 40)), ((41, 0, 0), (3, 40, 56))]:
        out = np.full(shape, 5, x.dtype)
        chunk.decode_box(buf, out, start)
        assert np.array_equal(out, full[tuple(slice(s, s + n) for s, n in zip(start, shape))])
    lossless = chunk.encode(x, mode="lossless")
    out = np.empty((10, 10, 10), x.dtype)
    chunk.decode_box(lossless, out, (1, 2, 3))
    assert np.array_equal(out, x[1:11, 2:12, 3:13])
    for bad_out, start in [(np.empty((10, 10, 10), x.dtype), (40, 0, 0)), (np.empty((2, 2), x.dtype), (0, 0)),
                           (np.empty((2, 2, 2), np.int16), (0, 0, 0)), (np.empty((2, 2, 2), x.dtype), (-1, 0, 0))]:
        with pytest.raises(ValueError):
            chunk.decode_box(buf, bad_out, start)


# ------------------------------------------------------------------------------------------ split decoder
def _package(name):
    return registry.resolve(str(registry.BUILTIN_DIR / name))


def test_split_default_decodes_exactly_like_its_source():
    """imaging-v2.1 is imaging-v2 with the decoder split into context + main graphs and the encoder's
    temporal pathway pruned. Its encoder gives imaging-v2's spatial latents and all-zero temporal ones;
    its decoder gives the same values as imaging-v2's on the same payload (zero or non-zero zt; one tile,
    tiled frames, a short chunk)."""
    new, old = _package("imaging-v2.1"), _package("imaging-v2")
    assert new.tables.get("decoder_split") and new.context and new.id != old.id
    assert new.tables["latents"]["zt"].get("pruned") and len(new.encoder) < len(old.encoder)
    for shape in [(40, 48, 56), (16, 600, 530), (3, 33, 47)]:
        x, _ = _movie(*shape, seed=sum(shape))
        e = L.encode(x, quality=4, model=new.id)
        e_old = L.encode(x, quality=4, model=old.id)
        la, lb = (L.latents(p.payload, x.shape, p.params, p.model_id) for p in (e, e_old))
        assert all(np.array_equal(a, b) for a, b in zip(la[:8], lb[:8]))  # zs: the same integers
        assert not any(a.any() for a in la[8:])  # zt: pruned, coded as zeros
        for payload, params in ((e.payload, e.params), (e_old.payload, e_old.params)):
            a = L.decode(payload, x.shape, x.dtype, params, new.id)
            b = L.decode(payload, x.shape, x.dtype, params, old.id)
            assert np.array_equal(a, b), shape
        assert np.array_equal(L.decode(e.payload, x.shape, x.dtype, e.params, new.id),
                              L.decode(e.payload, x.shape, x.dtype, e.params, old.id))  # cached context


def test_split_decoder_with_nonzero_temporal_latents():
    """Tiles whose zt integers are not all zero run the context graph on them (no cache): still equal."""
    from necoda_filter.modes import learned

    new, old = _package("imaging-v2.1"), _package("imaging-v2")
    rng = np.random.default_rng(8)
    x, _ = _movie(32, 64, 48)
    e = L.encode(x, quality=5, model=new.id)
    qs, qt = (np.stack([c.reshape(s) for c in lat], axis=1) for lat, s in (
        (L.latents(e.payload, x.shape, e.params, new.id)[:8], (1, 4, 16, 12)),
        (L.latents(e.payload, x.shape, e.params, new.id)[8:], (1, 16, 4, 3))))
    qt = rng.integers(-3, 4, qt.shape).astype(np.int32)
    bq = np.full(x.shape[1:], 20.0, np.float32)
    args = (qs, qt, bq, x.shape, e.params)
    a = L._reconstruct(*args, new, np.dtype(np.uint16))
    b = L._reconstruct(*args, old, np.dtype(np.uint16))
    assert np.array_equal(a, b)
    zero = L._reconstruct(qs, np.zeros_like(qt), bq, x.shape, e.params, new, np.dtype(np.uint16))
    assert not np.array_equal(a, zero)  # the temporal latents do reach the output
    assert learned._context_cache  # the all-zero case was cached


def test_split_package_needs_its_context_graph(tmp_path):
    import shutil

    src = registry.BUILTIN_DIR / "imaging-v2.1"
    dst = tmp_path / "pkg"
    shutil.copytree(src, dst)
    assert registry.model_id_of_dir(dst) == _package("imaging-v2.1").id
    (dst / "decoder_context.onnx").unlink()
    with pytest.raises(registry.ModelNotFound):
        registry.resolve(str(dst))


def test_split_decoder_tool_reproduces_the_builtin(tmp_path):
    """`python -m necoda_filter.train.split_decoder SRC OUT --prune-temporal`, run on imaging-v2, writes
    imaging-v2.1 byte for byte."""
    pytest.importorskip("onnx")
    from necoda_filter.train import split_decoder

    mid = split_decoder.split_package(registry.BUILTIN_DIR / "imaging-v2", tmp_path / "imaging-v2.1",
                                      prune_temporal=True)
    assert mid == _package("imaging-v2.1").id
    with pytest.raises(ValueError):  # already split
        split_decoder.split_package(tmp_path / "imaging-v2.1", tmp_path / "again")


def test_clear_cache_drops_sessions_buffers_and_contexts():
    from necoda_filter.models import runtime
    from necoda_filter.modes import learned

    x, _ = _movie(16, 32, 32)
    buf = chunk.encode(x, mode="learned", quality=3)
    a = chunk.decode(buf)
    assert learned._context_cache and runtime._sessions
    runtime.clear_cache()
    assert not learned._context_cache and not runtime._sessions and runtime._local.scratch is None
    assert np.array_equal(chunk.decode(buf), a)  # rebuilt on demand, same values


def test_arena_shrink_is_per_thread_and_overridable(monkeypatch):
    """necoda compress's workers shrink ORT's arena after each run (runtime.arena_shrink); readers keep
    it; NECODA_ORT_ARENA forces either."""
    from necoda_filter.models import runtime

    key = "memory.enable_memory_arena_shrinkage"

    def shrinks():
        try:
            return runtime.run_options().get_run_config_entry(key) == "cpu:0"
        except RuntimeError:  # no such entry
            return False

    monkeypatch.delenv("NECODA_ORT_ARENA", raising=False)
    assert not shrinks()
    with runtime.arena_shrink():
        assert shrinks()
        monkeypatch.setenv("NECODA_ORT_ARENA", "keep")
        assert not shrinks()
    monkeypatch.setenv("NECODA_ORT_ARENA", "shrink")
    assert shrinks()
    monkeypatch.delenv("NECODA_ORT_ARENA")
    assert not shrinks()
    x, _ = _movie(16, 32, 32)
    with runtime.arena_shrink():  # the runs themselves accept the option
        assert np.array_equal(chunk.decode(chunk.encode(x, mode="learned", quality=2)),
                              chunk.decode(chunk.encode(x, mode="learned", quality=2)))


def test_ort_threads_do_not_spin_unless_asked(monkeypatch):
    """Sessions are built with intra-op spinning off (spinning pools steal cores from other readers);
    NECODA_ORT_SPIN=1 turns it back on, in a session of its own."""
    from necoda_filter.models import registry, runtime

    pkg = registry.resolve(None)
    key = "session.intra_op.allow_spinning"
    monkeypatch.delenv("NECODA_ORT_SPIN", raising=False)
    off = runtime.session(pkg.id, "decoder", pkg.decoder, 2)
    assert off.get_session_options().get_session_config_entry(key) == "0"
    monkeypatch.setenv("NECODA_ORT_SPIN", "1")
    on = runtime.session(pkg.id, "decoder", pkg.decoder, 2)
    assert on is not off
    assert on.get_session_options().get_session_config_entry(key) == "1"
    monkeypatch.delenv("NECODA_ORT_SPIN")
    assert runtime.session(pkg.id, "decoder", pkg.decoder, 2) is off


def test_default_ort_threads_follow_the_affinity_mask(monkeypatch):
    """Without NECODA_THREADS, sessions get as many intra-op threads as the process may use CPUs
    (cpus.available, the affinity mask), not ORT's count of the machine's cores."""
    from necoda_filter import cpus
    from necoda_filter.models import registry, runtime

    pkg = registry.resolve(None)
    monkeypatch.delenv("NECODA_THREADS", raising=False)
    monkeypatch.setattr(cpus, "available", lambda: 3)
    assert runtime._default_threads() == 3
    s = runtime.session(pkg.id, "decoder", pkg.decoder)
    assert s.get_session_options().intra_op_num_threads == 3
    monkeypatch.setenv("NECODA_THREADS", "1")
    assert runtime._default_threads() == 1
    with runtime.worker_threads(2):
        assert runtime._default_threads() == 2


#: shape -> whether the whole chunk, a one-frame box and a 9 x 11-pixel region over every frame run on
#: cropped latents
CROP_CASES = {(40, 50, 37): (False, False, False),  # tiles too small to crop (their GEMMs are narrow)
              (300, 48, 40): (False, False, False),  # the same, three tiles in time
              # 256-pixel tiles padded to 768 x 768: even the whole chunk skips the padding's latents (one
              # frame too, though it spans its 2 latent frames); the region touches 1 of 9 tiles
              (16, 600, 520): (True, True, True),
              (32, 512, 512): (False, True, True)}  # cropped in time, then in time and space


@pytest.mark.parametrize("shape", list(CROP_CASES))
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_box_decode_from_cropped_latents_is_exact(shape, dtype, monkeypatch):
    """decode_box runs the decoder on the tiles and latents around a small box only; the result is bit
    for bit the box of the whole-chunk decode — float32 included, where a last-bit difference would
    show — for single tiles, tiles in time (300 frames) and in space (600 x 520), 1 to 4 ONNX threads.
    Boxes spanning most of a chunk take the whole-chunk path."""
    from necoda_filter.models import runtime
    from necoda_filter.modes import learned

    T, H, W = shape
    x, _ = _movie(T, H, W, seed=3)
    x = x.astype(dtype)
    taken = []
    real = learned._box_crops

    def spy(*a, **k):
        got = real(*a, **k)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(learned, "_box_crops", spy)
    rng = np.random.default_rng(sum(shape))
    for q in (2, 7):
        buf = chunk.encode(x, mode="learned", quality=q)
        full = chunk.decode(buf)
        boxes = [((0, 0, 0), shape), ((T // 3, 0, 0), (1, H, W)), ((0, H // 2, W // 3), (T, 9, 11))]
        for _ in range(14):
            a = [int(rng.integers(0, s)) for s in shape]
            b = [int(rng.integers(lo + 1, min(s, lo + 1 + int(rng.choice([1, 3, 17, 600]))) + 1))
                 for lo, s in zip(a, shape)]
            boxes.append((tuple(a), tuple(hi - lo for lo, hi in zip(a, b))))
        for i, (start, size) in enumerate(boxes):
            out = np.zeros(size, full.dtype)
            taken.clear()
            with runtime.worker_threads(1 + i % 4):
                chunk.decode_box(buf, out, start)
            ref = full[tuple(slice(s, s + n) for s, n in zip(start, size))]
            assert np.array_equal(out, ref), (q, start, size, taken)
            if i < 3 and _on_cpu():  # a GPU decodes whole chunks (its values are compared above)
                assert taken == [CROP_CASES[shape][i]], (i, taken)
        assert full.any()


@pytest.mark.parametrize("shape", [(16, 32, 32), (64, 16, 32), (128, 16, 16), (24, 200, 200)])
def test_decoded_values_do_not_depend_on_the_thread_count(shape):
    """Small chunks: ONNX Runtime slices a single tile's 3-D convolution over its threads, and a slice of
    at most 64 positions is summed in a different order (MLAS widens the K stride of narrow GEMMs), so
    the decoded float32 values depended on the thread count (16x32x32: 298 voxels differed between 1 and 2
    threads) — h5py's filter and read()'s one-thread decoders could disagree. Now identical at 1-4."""
    from necoda_filter.models import runtime

    x, _ = _movie(*shape, seed=5)
    buf = chunk.encode(x.astype(np.float32), mode="learned")
    outs = []
    for t in (1, 2, 3, 4):
        with runtime.worker_threads(t):
            outs.append(chunk.decode(buf))
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


def _mlas_block() -> int | None:
    """Channels per block of ONNX Runtime's blocked layout on this CPU where the test knows it (x86-64 Linux:
    16 with AVX-512F, 8 with AVX2), else None."""
    import platform

    if platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"):
        return None
    flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else None


@cpu_paths
def test_default_decoder_is_cut_around_its_trunk():
    """The built-in model's main graph has the elementwise trunk the fused C pass replaces (if a new model
    loses the pattern, reads silently get slower: this says so); on a CPU whose blocked layout has 8 or 16
    channels a block, the blocked variant shipped for it is the one used."""
    from necoda_filter.models import trunk

    cut = trunk.get(registry.default())
    assert cut is not None and cut.channels == 24 and cut.alpha == pytest.approx(0.1)
    if _mlas_block():
        assert cut.block == _mlas_block() and cut.preoptimized
        assert cut.padded == (_mlas_block() == 16) and cut.tail_channels == (32 if cut.padded else 24)


@cpu_paths
def test_shipped_cut_is_the_cut_of_the_shipped_decoder():
    """The built-in package ships its cut (no onnx import at run time); it must be exactly what cutting
    its decoder.onnx gives now (regenerate with `python -m necoda_filter.models.trunk PACKAGE_DIR`), and
    so must the blocked variant shipped for this CPU's block size (ONNX Runtime's optimised graphs, pinned
    onnxruntime version)."""
    pytest.importorskip("onnx")
    from necoda_filter.models import trunk

    pkg = registry.default()
    ctx = pkg.tables["decoder_split"]["input"]
    shipped = trunk.load(pkg.path, pkg.decoder)
    assert shipped is not None and shipped == trunk.cut(pkg.decoder, ctx)
    made = trunk.blocked(shipped, pkg.decoder, ctx, pkg.id)
    variants = {v.block: v for v in trunk.load_blocked(pkg.path, pkg.decoder, shipped)}
    assert set(variants) == {8, 16}
    if _mlas_block():
        assert made == variants[_mlas_block()]
    elif made is not None:
        assert made.block not in variants or made == variants[made.block]


@cpu_paths
def test_trunk_tool_rewrites_the_shipped_cut(tmp_path, capsys):
    """`python -m necoda_filter.models.trunk PACKAGE_DIR` writes the cut files byte for byte as shipped
    (the blocked variant too, on a CPU with its block size), and says so for a package whose decoder has
    no trunk to cut (imaging-v2: not split)."""
    pytest.importorskip("onnx")
    import shutil

    from necoda_filter.models import trunk

    src = registry.BUILTIN_DIR / registry.DEFAULT_NAME
    d = tmp_path / "pkg"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("decoder_cut.json", "decoder_head*", "decoder_tail*"))
    assert trunk.main([str(d), str(registry.BUILTIN_DIR / "imaging-v2")]) == 0
    files = [trunk.HEAD_FILE, trunk.TAIL_FILE]
    if _mlas_block():  # the variant for this CPU's block size only
        files += [f"decoder_head_b{_mlas_block()}.onnx", f"decoder_tail_b{_mlas_block()}.onnx"]
    made, shipped = (json.loads((x / trunk.CUT_FILE).read_text()) for x in (d, src))
    assert made["blocked"] == ([_mlas_block()] if _mlas_block() else made["blocked"])
    for f in files:
        assert made["files_sha256"][f] == shipped["files_sha256"][f]
    for f in files:
        assert (d / f).read_bytes() == (src / f).read_bytes(), f
    out = capsys.readouterr().out
    assert "wrote decoder_cut.json" in out and "imaging-v2: no elementwise trunk" in out
    assert registry.model_id_of_dir(d) == registry.default().id  # derived files are not part of the id


@cpu_paths
def test_a_stale_or_wrong_cut_is_not_used(tmp_path, monkeypatch):
    """A cut made from another decoder is ignored, and a cut whose graphs do not give the whole graph's
    bits fails the check and is never used: the whole graph runs, and decoding gives the same values.
    A blocked variant that fails the check (wrong block size, wrong graphs) leaves the planar cut."""
    import dataclasses
    import shutil

    from necoda_filter.models import runtime, trunk

    pkg = registry.default()
    d = tmp_path / "pkg"
    shutil.copytree(pkg.path, d)
    meta = json.loads((d / trunk.CUT_FILE).read_text())
    (d / trunk.CUT_FILE).write_text(json.dumps(dict(meta, decoder_sha256="0" * 64)))
    assert trunk.load(d, pkg.decoder) is None
    good = trunk.load(pkg.path, pkg.decoder)
    assert trunk.load_blocked(d, pkg.decoder, good) == []
    # a file changed after it was written (one weight one ulp off can pass the check on random latents):
    # refused by the sha256 that decoder_cut.json records; other entries still load
    (d / trunk.CUT_FILE).write_text(json.dumps(dict(meta, blocked=["x", 8.0, 16, 8])))
    assert [v.block for v in trunk.load_blocked(d, pkg.decoder, good)] == [16, 8]
    for name in (trunk.HEAD_FILE, "decoder_head_b8.onnx", "decoder_tail_b16.onnx"):
        b = bytearray((d / name).read_bytes())
        b[len(b) // 2] ^= 1
        (d / name).write_bytes(bytes(b))
    assert trunk.load(d, pkg.decoder) is None and trunk.load_blocked(d, pkg.decoder, good) == []
    wrong = dataclasses.replace(good, alpha=0.2)
    assert trunk._self_check(pkg.decoder, "ctx", good, pkg.id)
    assert not trunk._self_check(pkg.decoder, "ctx", wrong, pkg.id)
    assert not trunk._self_check(pkg.decoder, "ctx", dataclasses.replace(good, head=good.tail), pkg.id)
    assert not trunk._self_check(pkg.decoder, "ctx", dataclasses.replace(good, channels=12), pkg.id)
    b8 = {v.block: v for v in trunk.load_blocked(pkg.path, pkg.decoder, good)}[8]
    for bad in (dataclasses.replace(b8, block=4), dataclasses.replace(b8, block=1),
                dataclasses.replace(b8, tail=good.tail), dataclasses.replace(b8, alpha=0.2)):
        assert not trunk._self_check(pkg.decoder, "ctx", bad, pkg.id)
    wrong = dataclasses.replace(good, tail=good.tail + b"\0")  # other bytes, other sessions
    x, _ = _movie(32, 64, 64, seed=9)
    buf = chunk.encode(x, mode="learned")
    ref = chunk.decode(buf)
    monkeypatch.setattr(trunk, "load_blocked", lambda path, decoder, planar: [dataclasses.replace(b8, block=4)])
    monkeypatch.setattr(trunk, "_cache", {})
    assert trunk.get(pkg) == good  # the blocked variant failed its check: the planar cut runs
    monkeypatch.setattr(trunk, "load_blocked", lambda path, decoder, planar: [])
    monkeypatch.setattr(trunk, "load", lambda path, decoder: wrong)
    monkeypatch.setattr(trunk, "_cache", {})
    if importlib.util.find_spec("onnx"):
        assert trunk.get(pkg) == good  # the wrong shipped cut is replaced by a fresh cut of the graph
    monkeypatch.setattr(trunk, "_cache", {})
    monkeypatch.setattr(trunk, "cut", lambda *a: (_ for _ in ()).throw(ImportError("no onnx")))
    assert trunk.get(pkg) is None
    with runtime.worker_threads(1):
        assert np.array_equal(chunk.decode(buf), ref)


@cpu_paths
def test_a_variant_for_another_cpu_fails_its_check_quietly(capfd):
    """Checking a blocked variant made for another CPU's block size is an ordinary answer, not an error:
    on an AVX-512 CPU the shipped 8-channel variant fails in its first convolution, and ONNX Runtime must
    not print that failure (it did, in red, in every process that decoded a learned chunk). Each shipped
    variant passes on the CPU whose block size it has and fails on the others."""
    import dataclasses

    from necoda_filter.models import trunk

    pkg = registry.default()
    good = trunk.load(pkg.path, pkg.decoder)
    shipped = {v.block: v for v in trunk.load_blocked(pkg.path, pkg.decoder, good)}
    capfd.readouterr()
    results = {b: trunk._self_check(pkg.decoder, "ctx", v, pkg.id) for b, v in shipped.items()}
    bad = [trunk._self_check(pkg.decoder, "ctx", v, pkg.id)
           for v in (dataclasses.replace(shipped[8], block=4), dataclasses.replace(shipped[16], tail=good.tail))]
    err = capfd.readouterr().err
    if _mlas_block():
        assert results == {b: b == _mlas_block() for b in shipped}
    assert bad == [False, False]
    assert "onnxruntime" not in err and "Non-zero status" not in err, err


def test_decoder_cut_setting(monkeypatch):
    """NECODA_DECODER_CUT: 0/off/false/no, planar, 1 (default); anything else warns and means 1."""
    from necoda_filter.models import trunk

    for v, want in (("0", "0"), (" Off", "0"), ("false", "0"), ("PLANAR", "planar"), ("1", "1"), ("", "1")):
        monkeypatch.setenv("NECODA_DECODER_CUT", v)
        assert trunk.setting() == want
    monkeypatch.setenv("NECODA_DECODER_CUT", "plana")
    with pytest.warns(RuntimeWarning, match="NECODA_DECODER_CUT='plana'"):
        assert trunk.setting() == "1"


@cpu_paths
@pytest.mark.parametrize("shape", [(16, 32, 32), (64, 200, 160), (300, 40, 56), (8, 600, 520)])
def test_cut_decoder_gives_the_whole_graphs_bits(shape, monkeypatch):
    """Head graph + fused C trunk + tail graph decode to the same bits as the whole main graph, float32
    included, at 1-3 threads, for whole chunks and cropped boxes, with the cached context of an all-zero
    temporal latent and with a context that varies everywhere (what a model with a live temporal
    pathway feeds it): the blocked variant (where this CPU has it), the planar cut, the whole graph."""
    from necoda_filter.models import runtime, trunk
    from necoda_filter.modes import learned

    calls = []
    real = trunk.run
    monkeypatch.setattr(trunk, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    real_context = learned._context

    def varied(pkg, zs, zt, zt_is_zero, threads, cut=None):
        c = real_context(pkg, zs, zt, zt_is_zero, threads)
        c = c + np.random.default_rng(c.size).normal(0, 1, c.shape).astype(np.float32)
        return trunk.to_layout(cut, c) if cut else c

    x, _ = _movie(*shape, seed=8)
    for q, ctx in ((3, None), (9, varied)):
        if ctx is not None:
            monkeypatch.setattr(learned, "_context", ctx)
        buf = chunk.encode(x.astype(np.float32), mode="learned", quality=q)
        T, H, W = shape
        box = (T // 2, H // 3, W // 4), (max(1, T // 4), max(1, H // 5), 7)
        outs = []
        for cut in ("1", "planar", "0"):
            monkeypatch.setenv("NECODA_DECODER_CUT", cut)
            used = trunk.get(registry.default())
            assert (used is None) == (cut == "0")
            if cut == "planar":
                assert used.block == 1
            elif cut == "1" and _mlas_block():
                assert used.block == _mlas_block()
            for t in (1, 2, 3):
                with runtime.worker_threads(t):
                    learned._context_cache.clear()
                    calls.clear()
                    full = chunk.decode(buf)
                    part = np.zeros(box[1], np.float32)
                    chunk.decode_box(buf, part, box[0])
                    assert bool(calls) == (cut != "0")
                    outs.append((full, part))
        for full, part in outs[1:]:
            assert full.tobytes() == outs[0][0].tobytes()
            assert part.tobytes() == outs[0][1].tobytes()


@pytest.mark.parametrize("shape", [(16, 32, 32), (64, 16, 32), (128, 16, 16)])
def test_encoder_outputs_do_not_depend_on_the_thread_count(shape, monkeypatch):
    """The encoder has the same narrow GEMMs (16x32x32: 769 of its float outputs differed between 1 and 2
    threads); rounding to integer latents hid it almost always, but `necoda compress`'s workers and the
    HDF5 filter pipeline must write the same bytes, so it follows the decoder's thread rule."""
    from necoda_filter.models import runtime

    got = []
    real = runtime.run

    def spy(model_id, graph, blob, feeds, threads=None):
        out = real(model_id, graph, blob, feeds, threads)
        if graph == "encoder":
            got.append(out[0].copy())
        return out

    monkeypatch.setattr(runtime, "run", spy)
    x, _ = _movie(*shape, seed=6)
    zs = []
    for t in (1, 2, 3):
        got.clear()
        with runtime.worker_threads(t):
            chunk.encode(x, mode="learned")
        zs.append(got[0])
    assert np.array_equal(zs[1], zs[0]) and np.array_equal(zs[2], zs[0])


@cpu_paths
def test_box_crop_can_be_turned_off(monkeypatch):
    from necoda_filter.modes import learned

    split = {"input": "ctx", "zs_shape_only": True}
    args = ((64, 512, 512), (1, 1), 1, (10, 0, 0), (1, 512, 512), split, (8, 4, 4))
    assert learned._box_crops(*args) == [(0, (0, 3), (0, 128), (0, 128))]  # latent frames 0..2 (frame 10 ± 8)
    assert learned._box_crops((64, 512, 512), (1, 1), 1, (0, 0, 0), (64, 512, 512), split, (8, 4, 4)) is None
    monkeypatch.setenv("NECODA_READ_CROP", "0")
    assert learned._box_crops(*args) is None
    monkeypatch.delenv("NECODA_READ_CROP")
    monkeypatch.setattr(learned, "CROP_MAX_FRACTION", 0)
    assert learned._box_crops(*args) is None
    assert learned._box_crops(*args[:5], {"input": "ctx"}, args[6]) is None  # context may depend on zs


GOLDEN = Path(__file__).parent / "data" / "learned_golden.npz"


@pytest.mark.parametrize("cut", ["1", "planar", "0"])
def test_learned_chunks_decode_alike_on_every_machine(cut, monkeypatch):
    """Chunks written on another machine (tests/data/make_learned_golden.py: AVX-512, planar cut) decode
    here to what they decoded to there, within the float rounding the format allows for (one raw unit of
    16-bit data, rarely reached), whichever decoder path this CPU takes, on 1 or 2 threads; the latents
    are integers, so only the network's last bits may differ. Safeguarded chunks keep their bound against
    the original whatever the drift (the margin that covers it: modes/learned.py:SAFEGUARD_DRIFT)."""
    from necoda_filter.models import runtime, trunk

    spec = importlib.util.spec_from_file_location("make_learned_golden", GOLDEN.with_name("make_learned_golden.py"))
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    z = np.load(GOLDEN)
    x16, xf = maker.movies(chunk.decode(z["original_u2"].tobytes()))
    assert x16.shape == z["decoded_learned_u2"].shape and x16.dtype == np.uint16
    monkeypatch.setenv("NECODA_DECODER_CUT", cut)
    monkeypatch.setattr(trunk, "_cache", {})
    for threads in (1, 2):
        with runtime.worker_threads(threads):
            got = chunk.decode(z["learned_u2"].tobytes())
            me3 = chunk.decode(z["learned_u2_me3"].tobytes())
            mef = chunk.decode(z["learned_f4_me"].tobytes())
        diff = np.abs(got.astype(np.int32) - z["decoded_learned_u2"].astype(np.int32))
        assert diff.max() <= 1 and np.mean(diff > 0) <= 0.01, (cut, threads, diff.max(), np.mean(diff > 0))
        assert np.abs(me3.astype(np.int32) - x16.astype(np.int32)).max() <= 3
        assert mef.dtype == np.float32 and np.abs(mef.astype(np.float64) - xf.astype(np.float64)).max() <= 2.5
