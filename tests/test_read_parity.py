"""``necoda_filter.read(ds, sel)`` against plain h5py slicing ``ds[sel]``: same values (bit for bit), dtype,
shape and type (0-d results are numpy scalars), or the same kind of error — for every executor, for
necoda datasets of each mode and for datasets read through plain slicing (gzip, contiguous, compact, ...)."""
import ctypes
import io
import os
import time

import h5py
import numpy as np
import pytest

from necoda_filter import Necoda, read, reader
from necoda_filter.constants import FILTER_ID

EXECUTORS = ["auto", "thread", "process", "serial"]


def _selections(shape):
    n = len(shape)
    sels = [Ellipsis, (), 0, -1, np.int64(2), np.uint8(1), np.int32(-2), slice(None, None, 2), slice(1, 10**6),
            slice(-10**6, 3), slice(5, 2), slice(3, 3), slice(np.int64(1), np.int64(9), np.int64(4)),
            (Ellipsis, 3), (Ellipsis, -1), [0, 2, 3], np.array([1, 4]), [], np.array([], dtype=np.int64),
            np.newaxis, (slice(None), None), (None, Ellipsis), (Ellipsis, Ellipsis),
            [3, 1], [1, 1, 2], [0, -1], 10**6, -10**6, [10**6], slice(None, None, -1), slice(None, None, 0),
            (0, 0), (0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0, 0), np.array(2), np.array([2]), True, 1.0, [1.0, 2.0], "a",
            (slice(1, 19, 3), slice(None), 2), ([0, 2], [0, 2]), (slice(None), [0, 2, 4], slice(1, None, 3)),
            (-1, slice(2, None), slice(None, None, 7)), (Ellipsis, [0, 3]),
            (slice(2, 15), Ellipsis, slice(None, None, 3))]
    if n:
        sels += [np.arange(shape[0]) % 2 == 0, np.zeros(shape[0], bool), np.ones(shape, bool)]
    if n > 1:
        # a boolean list / a mask after "..." on a 1-D dataset: h5py raises an internal TypeError ("Use other
        # code for boolean selection on 1D dataset") where read returns numpy's answer, as h5py does for
        # the same mask given as an array; not compared
        sels += [[True] * shape[0], (Ellipsis, np.arange(shape[-1]) % 3 == 1)]
    return sels


def _outcome(fn):
    try:
        return "ok", fn()
    except Exception as e:  # noqa: BLE001 — the kind of error is what is compared
        return "err", e


def _describe(o):
    if o[0] == "err":
        return f"{type(o[1]).__name__}: {str(o[1])[:80]}"
    return f"{type(o[1]).__name__} {np.asarray(o[1]).dtype} {np.shape(o[1])}"


def _same(ref, got) -> bool:
    if ref[0] != got[0]:
        return False
    if ref[0] == "err":
        return type(ref[1]) is type(got[1])
    x, y = ref[1], got[1]
    if type(x) is not type(y):
        return False
    x, y = np.asarray(x), np.asarray(y)
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _mismatches(ds, executor, selections=None):
    bad = []
    for s in (_selections(ds.shape) if selections is None else selections):
        ref = _outcome(lambda: ds[s])
        got = _outcome(lambda: read(ds, s, executor=executor, workers=2))
        if not _same(ref, got):
            bad.append(f"{ds.name} {s!r:.60}: h5py {_describe(ref)} | read {_describe(got)}")
    return bad


@pytest.fixture(scope="module")
def parity_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    a = rng.poisson(20, (21, 13, 11)).astype(np.uint16)
    path = tmp_path_factory.mktemp("parity") / "p.h5"
    with h5py.File(path, "w") as f:
        ch = dict(chunks=(8, 5, 4))  # partial edge chunks on every axis
        f.create_dataset("lossless", data=a, compression=Necoda(mode="lossless"), **ch)
        f.create_dataset("bounded", data=a, compression=Necoda(mode="bounded", max_error=2.0), **ch)
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass
        else:
            from necoda_filter.simulate import simulate_imaging

            m = simulate_imaging(n_frames=40, height=96, width=80, n_cells=6, seed=3).movie
            f.create_dataset("learned", data=m, chunks=(16, 96, 80), compression=Necoda(mode="learned"))
        f.create_dataset("gzip", data=a, compression="gzip", **ch)
        f.create_dataset("chunked", data=a, **ch)
        f.create_dataset("contiguous", data=a)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        f.create_dataset("compact", data=a[:3, :3], dcpl=dcpl)
        f.create_dataset("scalar", data=np.int32(7))
        f.create_dataset("empty", shape=(0, 5), dtype="i4", chunks=(4, 5), maxshape=(None, 5),
                         compression=Necoda(mode="lossless"))
        f.create_dataset("shuffle_necoda", data=a, shuffle=True, compression=Necoda(mode="lossless"), **ch)
        d = f.create_dataset("sparse", shape=a.shape, dtype="i2", fillvalue=-9, compression=Necoda(mode="lossless"),
                             **ch)
        d[8:16, 5:10] = a[8:16, 5:10]  # the other chunks are never written: fill value
        f.create_dataset("big_endian", data=(a.astype("i2") - 20).astype(">i2"), dtype=">i2",
                         compression=Necoda(mode="lossless"), **ch)
        f.create_dataset("float16", data=(a / 7).astype("f2"), compression=Necoda(mode="lossless"), **ch)
        f.create_dataset("bool", data=a > 20, compression="gzip", **ch)
        f.create_dataset("one_d", data=np.arange(100, dtype="i4"), chunks=(16,),
                         compression=Necoda(mode="lossless"))
        f.create_dataset("four_d", data=rng.integers(0, 100, (5, 6, 7, 3)).astype("u1"), chunks=(2, 4, 3, 2),
                         compression=Necoda(mode="lossless"))
    assert h5py.File(path, "r")["big_endian"].dtype == np.dtype(">i2")
    return path


@pytest.mark.parametrize("executor", EXECUTORS)
def test_read_matches_h5py_for_all_selections(parity_file, executor, monkeypatch):
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)  # "auto" picks processes / threads for small reads too
    bad = []
    with h5py.File(parity_file, "r") as f:
        for name in f:
            bad += _mismatches(f[name], executor)
    assert not bad, "\n".join(bad)


def _garbage(shape, dtype, order="C"):
    buf = np.empty(shape, dtype, order=order)
    buf.fill(np.nan if buf.dtype.kind == "f" else np.iinfo(buf.dtype).max - 3)
    return buf


@pytest.mark.parametrize("executor", EXECUTORS)
def test_read_into_out_matches_h5py(parity_file, executor, monkeypatch):
    """``read(ds, sel, out=buf)`` writes ``ds[sel]`` into ``buf`` (every value overwritten, whatever
    ``buf`` held) and returns ``buf`` itself — for every mode, the fill value of unwritten chunks, datasets
    read through plain slicing, and buffers that are not C-ordered (Fortran order, reversed views, boxes of
    a bigger array), which the learned mode's direct decoding cannot write into."""
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    sels = [Ellipsis, np.s_[1::3, 2], np.s_[[0, 9, 17], :, 1:], np.s_[-1, -1, -1], np.s_[3:19, 1:12, 2:9],
            np.s_[5]]
    bad = []
    with h5py.File(parity_file, "r") as f:
        for name in ("lossless", "bounded", "learned", "sparse", "big_endian", "gzip", "contiguous", "float16"):
            if name not in f:
                continue
            ds = f[name]
            for s in sels:
                ref = ds[s]
                bufs = [_garbage(ref.shape, ds.dtype), _garbage(ref.shape, ds.dtype, order="F")]
                if ref.ndim:
                    bufs.append(_garbage(ref.shape, ds.dtype)[::-1][::-1][..., ::-1][..., ::-1])
                    rev = _garbage(ref.shape, ds.dtype)[::-1]
                    bufs.append(rev)
                    big = _garbage(tuple(n + 3 for n in ref.shape), ds.dtype)
                    bufs.append(big[tuple(slice(1, n + 1) for n in ref.shape)])
                for buf in bufs:
                    got = read(ds, s, out=buf, executor=executor, workers=2)
                    if got is not buf or got.tobytes() != np.ascontiguousarray(ref, dtype=buf.dtype).tobytes():
                        bad.append(f"{name} {s!r:.50} strides {buf.strides}")
    assert not bad, "\n".join(bad)


def test_read_into_out_refuses_what_it_cannot_fill(parity_file):
    with h5py.File(parity_file, "r") as f:
        ds = f["lossless"]
        with pytest.raises(TypeError, match="dtype int32 but the dataset's is uint16"):
            read(ds, out=np.empty(ds.shape, np.int32))
        with pytest.raises(ValueError, match=r"shape \(21, 13\) but the selection has shape \(21, 13, 11\)"):
            read(ds, out=np.empty(ds.shape[:2], ds.dtype))
        with pytest.raises(ValueError, match=r"shape \(13, 11\) but the selection has shape \(1, 13, 11\)"):
            read(ds, np.s_[2:3], out=np.empty((13, 11), ds.dtype))
        ro = np.empty(ds.shape, ds.dtype)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            read(ds, out=ro)
        with pytest.raises(TypeError, match="numpy array, not list"):
            read(ds, out=[0] * 3)
        with pytest.raises(ValueError, match="shape"):  # plain slicing path checks the shape too
            read(f["gzip"], out=np.empty((2, 2), ds.dtype))


def test_read_takes_what_pynwb_hands_out_besides_h5py(tmp_path):
    """hdmf-zarr gives zarr arrays, in-memory NWB objects numpy arrays: read() slices them as they are
    (they used to fail with "'Array' object has no attribute 'id'"); anything else is a TypeError."""
    zarr = pytest.importorskip("zarr")

    from necoda_filter.codec import NecodaCodec

    a = (np.arange(6 * 20 * 24) % 251).astype(np.uint16).reshape(6, 20, 24)
    z = zarr.open_array(str(tmp_path / "z.zarr"), mode="w", shape=a.shape, chunks=(3, 20, 24), dtype=a.dtype,
                        compressor=NecodaCodec(mode="lossless"), zarr_format=2)
    z[:] = a
    for arr in (z, a):
        got = read(arr, np.s_[1:5, ::2, 3])
        assert np.array_equal(got, a[1:5, ::2, 3]) and not np.shares_memory(got, a)  # a copy, as from h5py
        buf = np.empty((6, 20, 24), a.dtype)
        assert read(arr, out=buf) is buf and np.array_equal(buf, a)
        with pytest.raises(TypeError, match="dtype int32"):
            read(arr, out=np.empty(a.shape, np.int32))
    with pytest.raises(TypeError, match="h5py.Dataset .* not list"):
        read([1, 2, 3])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_read_through_other_drivers(parity_file, executor, monkeypatch):
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    sels = [Ellipsis, np.s_[1::3, 2], np.s_[[0, 9, 17], :, 1:], np.s_[-1, -1, -1]]
    bio = io.BytesIO(parity_file.read_bytes())
    for kw in (dict(driver="core"), dict(driver="stdio")):
        with h5py.File(parity_file, "r", **kw) as f:
            assert not _mismatches(f["sparse"], executor, sels) + _mismatches(f["lossless"], executor, sels)
    with h5py.File(bio, "r") as f:
        assert not _mismatches(f["sparse"], executor, sels)


def _hdf5_library():
    """The HDF5 library h5py uses, for the one call h5py does not wrap (an undefined fill value)."""
    with open("/proc/self/maps") as fh:
        paths = {line.split()[-1] for line in fh if "/libhdf5" in line}
    paths = [p for p in paths if "_hl" not in p.rsplit("/", 1)[-1]]
    if not paths:
        pytest.skip("libhdf5 not found in /proc/self/maps")
    return ctypes.CDLL(paths[0])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_read_unwritten_chunks_like_h5py(tmp_path, executor, monkeypatch):
    """Chunks never written read as HDF5 returns them: the fill value, but zeros (h5py's zeroed buffer,
    left untouched by HDF5) when the fill time is "never" or the fill value undefined; a dataset with no
    chunk written at all reads as fill too (its chunk index does not exist yet)."""
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    a = np.arange(21 * 13 * 11, dtype="i2").reshape(21, 13, 11)
    opts = dict(shape=a.shape, dtype="i2", chunks=(8, 5, 4), compression=Necoda(mode="lossless"))
    with h5py.File(tmp_path / "u.h5", "w") as f:
        for ft in ("never", "ifset", "alloc"):
            f.create_dataset(f"fill_time_{ft}", fillvalue=-4, fill_time=ft, **opts)[8:16] = a[8:16]
        f.create_dataset("nothing_written", fillvalue=12, **opts)
        f.create_dataset("nothing_written_default_fill", **opts)
        f.create_dataset("single_chunk_unwritten", shape=a.shape, dtype="i2", chunks=a.shape, fillvalue=3,
                         compression=Necoda(mode="lossless"))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((8, 5, 4))
        dcpl.set_filter(FILTER_ID, h5py.h5z.FLAG_OPTIONAL, tuple(Necoda(mode="lossless").filter_options))
        tid = h5py.h5t.STD_I16LE.copy()
        assert _hdf5_library().H5Pset_fill_value(ctypes.c_int64(dcpl.id), ctypes.c_int64(tid.id), None) >= 0
        assert dcpl.fill_value_defined() == h5py.h5d.FILL_VALUE_UNDEFINED
        h5py.h5d.create(f.id, b"fill_undefined", tid, h5py.h5s.create_simple(a.shape), dcpl=dcpl)
        f["fill_undefined"][8:16] = a[8:16]
    sels = [Ellipsis, np.s_[2:19:3, 4], np.s_[[1, 9, 17], :, 3], np.s_[0, 0, 0]]
    with h5py.File(tmp_path / "u.h5", "r") as f:
        assert f["fill_time_never"][0, 0, 0] == 0 and f["fill_time_ifset"][0, 0, 0] == -4
        bad = []
        for name in f:
            bad += _mismatches(f[name], executor, sels)
    assert not bad, "\n".join(bad)


def test_read_closed_dataset_raises_like_h5py(tmp_path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        d = f.create_dataset("d", data=np.arange(40, dtype="u2").reshape(8, 5), chunks=(4, 5),
                             compression=Necoda(mode="lossless"))
        g = f.create_dataset("g", data=np.arange(40).reshape(8, 5), chunks=(4, 5), compression="gzip")
    for ds in (d, g):
        with pytest.raises(RuntimeError):  # what ds[...] raises
            ds[...]
        for executor in EXECUTORS:
            with pytest.raises(RuntimeError, match="closed"):
                read(ds, np.s_[1:3], executor=executor)


def test_process_workers_do_not_keep_the_file_locked(tmp_path):
    """Worker processes forked while an HDF5 file is open must not keep its flock() lock alive: after
    closing it the user can reopen it for writing (h5py slicing leaves nothing behind either)."""
    a = np.random.default_rng(3).poisson(20, (64, 13, 11)).astype(np.uint16)
    path = tmp_path / "l.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=a, chunks=(8, 13, 11), compression=Necoda(mode="lossless"))
    reader.shutdown_pool()  # the pool is forked by the read below, with the file open
    try:
        with h5py.File(path, "r") as f:
            assert np.array_equal(read(f["d"], executor="process", workers=2), a)
        assert reader._pool is not None
        with h5py.File(path, "a") as f:  # "unable to lock file" while a worker holds the descriptor
            f["d"][0, 0, 0] = 1
        with h5py.File(path, "r") as f:  # the workers still decode
            assert read(f["d"], np.s_[:2, 0, 0], executor="process", workers=2).tolist() == [1, a[1, 0, 0]]
    finally:
        reader.shutdown_pool()



def test_process_pool_is_handed_out_after_every_worker_closed_the_files(tmp_path, monkeypatch):
    """The pool's warm-up tasks could all run on the first worker to start, so _process_pool returned
    while a slower worker had not yet run its initializer and still held the parent's HDF5 files: a
    write to one of them then failed with "unable to lock file" (seen once in CI, under load). Here the
    second worker's initializer is made slow; the pool must not be handed out before it finishes."""
    import multiprocessing as mp

    path = tmp_path / "w.h5"
    reader.shutdown_pool()
    started = mp.get_context("fork").Value("i", 0)  # inherited by the forked workers
    original = reader._close_inherited_files

    def slow_second(keys):
        with started.get_lock():
            started.value += 1
            second = started.value == 2
        if second:
            time.sleep(1.5)
        original(keys)

    monkeypatch.setattr(reader, "_close_inherited_files", slow_second)
    try:
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(5)
            reader._process_pool(2)
        with h5py.File(path, "a") as f:
            f["x"][0] = 7
    finally:
        reader.shutdown_pool()


def test_workers_release_a_file_opened_while_they_were_forked(tmp_path, monkeypatch):
    """A file another thread opens while the pool's workers are being forked is not in the list made
    before the fork: the workers find its lock in /proc/locks and close their copies anyway (seen as a
    flaky 'unable to lock file' when threads wrote files while read() started its pool)."""
    if not os.path.exists("/proc/locks"):
        pytest.skip("no /proc/locks")
    path = tmp_path / "w.h5"
    reader.shutdown_pool()
    monkeypatch.setattr(reader, "_open_hdf5_files", lambda: frozenset())  # the file opened "meanwhile"
    try:
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(5)
            reader._process_pool(2)  # forks the workers with the file open
        with h5py.File(path, "a") as f:  # "unable to lock file" while a worker holds the descriptor
            f["x"][0] = 7
    finally:
        reader.shutdown_pool()
