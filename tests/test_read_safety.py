"""``necoda_filter.read`` on damaged and hostile files, and what it must not change (QA round 13):
only a chunk never written reads as the fill value (a stored chunk HDF5 cannot read raises, as h5py does);
a stored chunk whose header does not fit the dataset raises before any decode work; reads in a file open
for writing leave a lossy dataset's chunks to be encoded once; the process executor's shared-memory
output leaves nothing behind when the reader is killed."""
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from necoda_filter import Necoda, chunk, read, reader
from necoda_filter.container import CorruptChunk

EXECUTORS = ["serial", "thread", "process"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_unreadable_stored_chunk_raises_not_fill(tmp_path, executor):
    """A stored chunk whose address lies past the end of the file (a damaged chunk index): h5py raises
    OSError ("addr overflow"); read() returned the fill value for it, silently. A chunk never written
    still reads as the fill value."""
    a = np.random.default_rng(0).integers(0, 30000, (64, 32)).astype("<i2")
    p = tmp_path / "d.h5"
    with h5py.File(p, "w", libver="earliest") as f:  # v1 B-tree chunk index: no checksum over addresses
        f.create_dataset("x", data=a, chunks=(8, 32), compression=Necoda(mode="lossless"), fillvalue=-1)
        h = f.create_dataset("holes", shape=(64, 32), dtype="<i2", chunks=(8, 32),
                             compression=Necoda(mode="lossless"), fillvalue=-1)
        h[8:16] = 5
        f.create_dataset("empty", shape=(16, 8), dtype="<u2", chunks=(4, 8), compression=Necoda(mode="lossless"),
                         fillvalue=7)  # no chunk index: read_direct_chunk raises MemoryError
        addr = f["x"].id.get_chunk_info_by_coord((56, 0)).byte_offset
    raw = bytearray(p.read_bytes())
    key = struct.pack("<Q", addr)
    assert raw.count(key) == 1
    i = raw.index(key)
    raw[i:i + 8] = struct.pack("<Q", len(raw) + 4096)
    p.write_bytes(bytes(raw))
    with h5py.File(p, "r") as f:
        with pytest.raises(OSError):
            f["x"][...]
        with pytest.raises(OSError, match=r"chunk at offset \(56, 0\) of dataset '/x'"):
            read(f["x"], executor=executor, workers=2)
        assert np.array_equal(read(f["x"], np.s_[:56], executor=executor, workers=2), a[:56])
        want = np.full((64, 32), -1, "<i2")
        want[8:16] = 5
        assert np.array_equal(read(f["holes"], executor=executor, workers=2), want)
        assert np.array_equal(f["holes"][...], want)
        assert np.array_equal(read(f["empty"], executor=executor, workers=2), np.full((16, 8), 7, "<u2"))


FOREIGN = [
    ("<i2", np.arange(60000, 60008, dtype="<u2")),          # 60000 read as -5536
    ("<i2", np.arange(100000, 100008, dtype="<i4")),       # same count, other size
    ("<f4", np.arange(16777217, 16777225, dtype="<i4")),   # int bits as float
    ("<i4", np.linspace(0.5, 3.5, 8).astype("<f4")),
    ("u1", np.arange(-4, 4, dtype="i1")),
]


@pytest.mark.parametrize("dt,arr", FOREIGN, ids=[f"{a.dtype}-in-{np.dtype(d)}" for d, a in FOREIGN])
def test_chunk_of_another_dtype_raises_like_h5py(tmp_path, dt, arr):
    """A valid necoda chunk of another element type put in place with write_direct_chunk: h5py raises
    OSError (the filter checks the header's kind and size); read() returned it cast to the dataset's type."""
    with h5py.File(tmp_path / "f.h5", "w") as f:
        d = f.create_dataset("d", shape=(16,), dtype=dt, chunks=(8,), compression=Necoda(mode="lossless"))
        d[:] = 1
        d.id.write_direct_chunk((8,), chunk.encode(arr, "lossless"), filter_mask=0)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        with pytest.raises(OSError):
            f["d"][...]
        for ex in EXECUTORS:
            with pytest.raises(OSError, match=rf"chunk at offset \(8,\) of dataset '/d'.*{arr.dtype} data"):
                read(f["d"], executor=ex, workers=2)
            with pytest.raises(CorruptChunk):
                read(f["d"], executor=ex, workers=2)
            assert np.array_equal(read(f["d"], np.s_[:8], executor=ex, workers=2), np.ones(8, dt))


def test_oversized_chunk_refused_before_decoding(tmp_path, monkeypatch):
    """A chunk whose header holds many more samples than the dataset's chunk (a few KB can claim GBs):
    refused from its header, before anything is decoded — read() decoded it whole first."""
    big = np.zeros((64, 64), "<i2")
    with h5py.File(tmp_path / "b.h5", "w") as f:
        d = f.create_dataset("x", data=np.ones((8, 4), "<i2"), chunks=(4, 4), compression=Necoda(mode="lossless"))
        d.id.write_direct_chunk((4, 0), chunk.encode(big, "lossless"), filter_mask=0)

    def refusing(fn):
        def decode(buf, *a, **k):
            if chunk.info(buf).shape != (4, 4):
                raise AssertionError("decoded a chunk whose header does not fit the dataset")
            return fn(buf, *a, **k)
        return decode

    monkeypatch.setattr(chunk, "decode", refusing(chunk.decode))
    monkeypatch.setattr(chunk, "decode_box", refusing(chunk.decode_box))
    with h5py.File(tmp_path / "b.h5", "r") as f:
        for ex in ("serial", "thread"):
            for sel in (Ellipsis, np.s_[4:6, 1:3], np.s_[::2]):
                with pytest.raises(OSError, match=r"chunk at offset \(4, 0\).*\(64, 64\) samples"):
                    read(f["x"], sel, executor=ex, workers=2)


@pytest.mark.parametrize("nbytes", [32, 74])
def test_raw_chunk_of_wrong_size_names_the_chunk(tmp_path, nbytes):
    """A chunk stored with the filter skipped (filter_mask=1) and of the wrong size: an error naming the
    chunk, not numpy's "cannot reshape"."""
    with h5py.File(tmp_path / "m.h5", "w") as f:
        d = f.create_dataset("x", data=np.zeros((16, 4), "<i2"), chunks=(8, 4),
                             compression=Necoda(mode="lossless"))
        d.id.write_direct_chunk((8, 0), bytes(range(nbytes)), filter_mask=1)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        for ex in EXECUTORS:
            with pytest.raises(OSError, match=rf"chunk at offset \(8, 0\).*unfiltered.* {nbytes} bytes.* 64"):
                read(f["x"], executor=ex, workers=2)


def test_reads_while_writing_keep_lossy_bound(tmp_path):
    """A lossy dataset written frame by frame, each frame read back at once (a live-analysis loop): the
    chunk stays in HDF5's cache and is encoded once. read_direct_chunk flushed it at every read, each
    later frame then re-encoded it: errors added up past max_error (9 for 2)."""
    a = np.random.default_rng(0).normal(1000, 40, (32, 24, 24)).astype("<i2")
    mode, opts = "bounded", {"max_error": 2}
    p = tmp_path / "w.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("x", shape=a.shape, dtype="<i2", chunks=a.shape,
                             compression=Necoda(mode=mode, **opts))
        for t in range(a.shape[0]):
            d[t] = a[t]
            assert np.array_equal(read(d, np.s_[t], executor="serial"), d[t])
        assert np.array_equal(read(d, executor="thread", workers=2), d[...])
    with h5py.File(p, "r") as f:
        err = int(np.abs(f["x"][...].astype(int) - a).max())
    with h5py.File(tmp_path / "once.h5", "w") as f:
        f.create_dataset("x", data=a, chunks=a.shape, compression=Necoda(mode=mode, **opts))
    with h5py.File(tmp_path / "once.h5", "r") as f:
        once = int(np.abs(f["x"][...].astype(int) - a).max())
    assert err == once <= 2


_KILLED_READER = r"""
import sys
import h5py
from necoda_filter import read
with h5py.File(sys.argv[1], "r") as f:
    d = f["x"]
    read(d, executor="process", workers=2)
    print("reading", flush=True)
    while True:
        read(d, executor="process", workers=2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, /dev/shm")
@pytest.mark.parametrize("sig", ["SIGKILL"])  # SIGTERM: the same (its default action)
def test_killed_process_read_leaves_no_shared_memory_file(tmp_path, sig):
    """A reader killed during read(executor="process"): its output file in /dev/shm (RAM) was left behind."""
    p = tmp_path / "k.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.random.default_rng(0).integers(0, 4000, (256, 64, 64)).astype("<u2"),
                         chunks=(4, 64, 64), compression=Necoda(mode="lossless"))
    folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    if folder is None:
        pytest.skip("no writable /dev/shm")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED_READER), str(p)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "reading"
        # it reads in a loop: kill it as soon as an output file shows up by name (a read is running), or
        # (the file has no name) after half a second of reading
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and not any(
                n.startswith(f"necoda-read-{child.pid}-") for n in os.listdir(folder)):
            time.sleep(0.002)
        os.kill(child.pid, getattr(signal, sig))
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    time.sleep(0.2)
    left = [n for n in os.listdir(folder) if n.startswith(f"necoda-read-{child.pid}-")]
    for n in left:  # do not leave what this test caused
        os.unlink(os.path.join(folder, n))
    assert left == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, /dev/shm")
def test_pool_start_sweeps_outputs_of_dead_readers(tmp_path):
    """Output files named by readers that died (older versions, or where workers open them by name)
    are removed when a pool starts; a live process's file is kept."""
    folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    if folder is None:
        pytest.skip("no writable /dev/shm")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(folder, f"necoda-read-{dead.pid}-{'0' * 32}")
    live = os.path.join(folder, f"necoda-read-{os.getppid()}-{'1' * 32}")
    fresh_dead = os.path.join(folder, f"necoda-read-{dead.pid}-{'2' * 32}")
    for path in (stale, live, fresh_dead):
        with open(path, "wb") as fh:
            fh.write(b"x" * 100)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    try:
        with h5py.File(tmp_path / "s.h5", "w") as f:
            f.create_dataset("x", data=np.ones((8, 8, 8), "<u2"), chunks=(2, 8, 8),
                             compression=Necoda(mode="lossless"))
        reader.shutdown_pool()
        with h5py.File(tmp_path / "s.h5", "r") as f:
            assert np.array_equal(read(f["x"], executor="process", workers=2), np.ones((8, 8, 8), "<u2"))
        assert not os.path.exists(stale)
        assert os.path.exists(live)
        assert os.path.exists(fresh_dead)  # too recent to be swept (a reader of another PID namespace)
    finally:
        for path in (stale, live, fresh_dead):
            if os.path.exists(path):
                os.unlink(path)


def test_workers_check_they_opened_the_readers_shared_file(tmp_path):
    """The workers open the reader's unnamed output through /proc/<pid>/fd/<fd>; through another PID
    namespace's /proc that path could be some other process's file, which they would overwrite. They
    compare the file's identity with the reader's before writing."""
    from necoda_filter import reader

    out = reader.SharedArray((4,), np.uint8, by_fd=False)
    try:
        with reader._open_shared(out.worker_path, out.ident):
            pass
        other = tmp_path / "someone-elses"
        other.write_bytes(b"\0" * 4)
        with pytest.raises(OSError, match="not the parent's shared array"):
            reader._open_shared(str(other), out.ident)
        assert other.read_bytes() == b"\0" * 4
    finally:
        out.close()


def _no_room_in(monkeypatch, full):
    """posix_fallocate fails with ENOSPC for files in the folders ``full`` (as a 64 MB /dev/shm would for a
    larger shared array: writing into its unreserved pages would kill the process with SIGBUS)."""
    import errno

    real = os.posix_fallocate

    def fallocate(fd, offset, length):
        where = os.path.dirname(os.readlink(f"/proc/self/fd/{fd}"))
        if any(where == os.path.realpath(f) for f in full):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd")
def test_shared_array_moves_to_the_temporary_folder_when_shm_is_full(tmp_path, monkeypatch):
    """Bug: the shared array's file was never reserved, so a /dev/shm smaller than it (Docker's 64 MB
    default) killed the process writing into it by SIGBUS: read(executor="process") ended in
    BrokenProcessPool, a compress would have died without an error. The space is now reserved when the
    file is made; where /dev/shm has no room the array goes to the temporary folder; where neither has,
    OSError (ENOSPC) names both."""
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir()
    tmp.mkdir()
    monkeypatch.setattr(reader, "_shared_folders", lambda: [str(shm), str(tmp)])
    _no_room_in(monkeypatch, [shm])
    out = reader.SharedArray((1000,), np.int32, by_fd=False)
    try:
        assert os.path.dirname(out.path) == str(tmp)
        out.arr[:] = 7
    finally:
        out.close()
    _no_room_in(monkeypatch, [shm, tmp])
    with pytest.raises(OSError, match=f"no room for a .* shared array in {shm} or {tmp}"):
        reader.SharedArray((1000,), np.int32, by_fd=True)
    assert list(shm.iterdir()) == [] and list(tmp.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd")
def test_compress_and_decompress_without_room_for_shared_chunks_use_pipes(tmp_path, monkeypatch):
    """With no room for the shared chunk slots anywhere, compress and decompress hand chunks to and from
    their worker processes through pipes instead: the same bytes as with room."""
    from necoda_filter import nwb

    from conftest import series_file

    src = tmp_path / "in.h5"
    movie = np.random.default_rng(4).integers(0, 3000, (150, 40, 36)).astype(np.uint16)
    series_file(src, {"ts": ("TwoPhotonSeries", movie, 30.0)})
    nwb.recompress_file(src, tmp_path / "ref.h5", workers=2, progress=False)
    nwb.decompress_file(tmp_path / "ref.h5", tmp_path / "ref_plain.h5", workers=2, progress=False)
    folders = reader._shared_folders()
    _no_room_in(monkeypatch, folders)
    nwb.recompress_file(src, tmp_path / "out.h5", workers=2, progress=False)
    nwb.decompress_file(tmp_path / "out.h5", tmp_path / "plain.h5", workers=2, progress=False)
    for a, b in (("ref.h5", "out.h5"), ("ref_plain.h5", "plain.h5")):
        with h5py.File(tmp_path / a, "r") as fa, h5py.File(tmp_path / b, "r") as fb:
            da, db = fa["ts/data"], fb["ts/data"]
            assert da.id.get_num_chunks() == db.id.get_num_chunks() > 1
            for i in range(da.id.get_num_chunks()):
                off = da.id.get_chunk_info(i).chunk_offset
                assert da.id.read_direct_chunk(off) == db.id.read_direct_chunk(off), (a, off)
    with h5py.File(tmp_path / "plain.h5", "r") as f:
        assert np.array_equal(f["ts/data"][...], movie)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd")
def test_auto_read_without_room_for_the_shared_output_reads_serially(tmp_path, monkeypatch):
    """QA 16: with no room for the shared output anywhere, read()'s default executor (which picks worker
    processes for large lossless reads) and so `necoda evaluate` failed with ENOSPC; "auto" now reads in
    the calling thread instead. An explicit executor="process" still raises."""
    a = np.random.default_rng(6).integers(0, 3000, (256, 64, 64)).astype(np.uint16)
    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("d", data=a, chunks=(16, 64, 64), compression=Necoda(mode="lossless"))
    _no_room_in(monkeypatch, reader._shared_folders())
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 1)
    with h5py.File(p, "r") as f:
        assert np.array_equal(read(f["d"], workers=2), a)
        with pytest.raises(OSError, match="no room for a"):
            read(f["d"], executor="process", workers=2)


def test_stale_output_files_are_swept_from_every_shared_folder(tmp_path, monkeypatch):
    """QA 16: a killed reader's named output in the fallback (temporary) folder was never swept: the sweep
    looked in /dev/shm only."""
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir()
    tmp.mkdir()
    monkeypatch.setattr(reader, "_shared_folders", lambda: [str(shm), str(tmp)])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = [d / f"{reader._OUTPUT_PREFIX}{pid}-{'a' * 32}" for d in (shm, tmp)]
    # QA 17: names not exactly a shared array's (a pid too large for os.kill raised OverflowError and broke
    # every process read; int() also read "+5379", "53_79", " 5379"), and a link, are left alone
    other = [tmp / f"{reader._OUTPUT_PREFIX}{n}" for n in
             ("99999999999999999999-x", f"{pid}", f"+{pid}-{'a' * 32}", f"{pid}_0-{'a' * 32}", f"{pid}-x")]
    link = tmp / f"{reader._OUTPUT_PREFIX}{pid}-{'b' * 32}"
    for s in stale + other:
        s.write_bytes(b"\0" * 16)
        os.utime(s, (time.time() - 3600, time.time() - 3600))
    link.symlink_to(stale[0])
    reader._sweep_stale_outputs()
    assert [s.exists() for s in stale] == [False, False]
    assert all(s.exists() for s in other) and link.is_symlink()


def test_no_room_for_a_worker_pool_reads_and_compresses_in_the_process(tmp_path, monkeypatch):
    """QA 17: a full /dev/shm fails the process pool's start itself (its semaphores live there) before any
    shared array is made: read()'s default executor then reads serially, and compress codes the chunks in
    its own process, instead of failing with ENOSPC."""
    import errno

    from necoda_filter import nwb

    from conftest import series_file

    def no_room(workers):
        raise OSError(errno.ENOSPC, "No space left on device")

    a = np.random.default_rng(7).integers(0, 3000, (256, 64, 64)).astype(np.uint16)
    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("d", data=a, chunks=(16, 64, 64), compression=Necoda(mode="lossless"))
    reader.shutdown_pool()
    monkeypatch.setattr(reader, "_new_process_pool", no_room)
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 1)
    with h5py.File(p, "r") as f:
        assert np.array_equal(read(f["d"], workers=2), a)
        with pytest.raises(OSError, match="No space left"):
            read(f["d"], executor="process", workers=2)
    src = tmp_path / "in.h5"
    series_file(src, {"ts": ("TwoPhotonSeries", a[:150], 30.0)})
    nwb.recompress_file(src, tmp_path / "out.h5", workers=2, progress=False)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert np.array_equal(f["ts/data"][...], a[:150])


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_a_nearly_full_dev_shm_is_found_before_multiprocessing_writes_there(tmp_path, monkeypatch):
    """QA 18: with 16 KiB free in /dev/shm, multiprocessing's own shared state (the pool's warm-up barrier)
    was written into a page its semaphores had taken: SIGBUS, no error to handle. A pool now needs 1 MiB
    free there: less is ENOSPC, which the default executor answers by reading serially."""
    import errno

    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 16384 // st.f_frsize

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)) if str(p) == "/dev/shm" else real(p))
    with pytest.raises(OSError) as e:
        reader._check_pool_room()
    assert e.value.errno == errno.ENOSPC and "16 KiB free" in str(e.value)
    a = np.random.default_rng(8).integers(0, 3000, (128, 32, 32)).astype(np.uint16)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("d", data=a, chunks=(16, 32, 32), compression=Necoda(mode="lossless"))
    reader.shutdown_pool()
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 1)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert np.array_equal(read(f["d"], workers=2), a)
        with pytest.raises(OSError, match="semaphores of worker processes"):
            read(f["d"], executor="process", workers=2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd")
def test_compress_and_decompress_free_their_shared_chunk_slots(tmp_path, monkeypatch):
    """The chunk slots compress and decompress share with their workers (reserved space in /dev/shm) are
    freed once every chunk of the dataset is back, although each worker keeps its map until its next
    dataset (which kept the whole file's space, 4 x 32 MB for a movie, until then or the end)."""
    from necoda_filter import nwb

    from conftest import series_file

    held = []  # a descriptor on each shared file, as a worker's map holds it
    real = reader.SharedArray._create

    def create(self, folder, by_fd):
        mm = real(self, folder, by_fd)
        if self.nbytes > 1:  # not the pools' 1-byte probes
            held.append(os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY))
        return mm

    monkeypatch.setattr(reader.SharedArray, "_create", create)
    src = tmp_path / "in.h5"
    movie = np.random.default_rng(5).integers(0, 3000, (150, 40, 36)).astype(np.uint16)
    series_file(src, {"ts": ("TwoPhotonSeries", movie, 30.0)})
    nwb.recompress_file(src, tmp_path / "out.h5", workers=2, progress=False)
    nwb.decompress_file(tmp_path / "out.h5", tmp_path / "plain.h5", workers=2, progress=False)
    try:
        assert len(held) == 2
        assert [(os.fstat(fd).st_size, os.fstat(fd).st_blocks) for fd in held] == [(0, 0), (0, 0)]
    finally:
        for fd in held:
            os.close(fd)
    with h5py.File(tmp_path / "plain.h5", "r") as f:
        assert np.array_equal(f["ts/data"][...], movie)


def test_learned_chunks_decoded_on_a_gpu_never_go_to_worker_processes(tmp_path, monkeypatch):
    """Seen on an H100 with onnxruntime-gpu: read(executor="process") forked workers after this process had
    set up CUDA; there ONNX Runtime failed ("CUDA failure 3: initialization error"), printed that for every
    session and decoded on the CPU instead, whose values are not the GPU's (bench_read.py stopped on the
    mismatch with h5py). With a GPU provider, learned chunks are now decoded in threads sharing this
    process's session; an explicit "process" says so."""
    from necoda_filter.models import runtime

    m = np.random.default_rng(8).integers(100, 900, (32, 24, 24)).astype(np.uint16)
    p = tmp_path / "g.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("l", data=m, chunks=(16, 24, 24), compression=Necoda(mode="learned"))
        f.create_dataset("z", data=m, chunks=(16, 24, 24), compression=Necoda(mode="lossless"))
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    gpu_decodes = reader._gpu_decodes  # the real one (replaced below)
    with h5py.File(p, "r") as f:
        learned_chunk, lossless_chunk = (f[k].id.read_direct_chunk((0, 0, 0)) for k in ("l", "z"))
        monkeypatch.setattr(runtime, "providers", lambda: ["CPUExecutionProvider"])
        assert not reader._gpu_decodes(learned_chunk) and not reader._gpu_decodes(lossless_chunk)
        monkeypatch.setattr(runtime, "providers", lambda: gpu)
        assert reader._gpu_decodes(learned_chunk) and not reader._gpu_decodes(lossless_chunk)
        monkeypatch.setattr(runtime, "providers", lambda: ["CPUExecutionProvider"])  # decode on this CPU
        ref = f["l"][...]
        monkeypatch.setattr(reader, "_gpu_decodes", lambda got: True)
        monkeypatch.setattr(reader, "_process_pool", lambda *a, **k: pytest.fail("a worker process was asked for"))
        with pytest.warns(RuntimeWarning, match="using threads"):
            assert np.array_equal(read(f["l"], executor="process", workers=2), ref)
        assert np.array_equal(read(f["l"], workers=2), ref)  # "auto": threads, without a word
    # review: a dataset whose first chunk was never written is known by its first written one
    with h5py.File(p, "a") as f:
        g = f.create_dataset("g", shape=(48, 24, 24), dtype=np.uint16, chunks=(16, 24, 24),
                             compression=Necoda(mode="learned"))
        g[16:48] = m[:32]
    monkeypatch.setattr(runtime, "providers", lambda: gpu)
    with h5py.File(p, "r") as f:
        plan = [((t, 0, 0), None, None) for t in (0, 16, 32)]
        got = reader._first_stored(plan, lambda off: f["g"].id.read_direct_chunk(off) if off[0] else None)
        assert got is not None and gpu_decodes(got)
        assert reader._first_stored(plan[:1], lambda off: None) is None


def test_compress_workers_by_default_fit_the_memory_available(monkeypatch, tmp_path):
    """`necoda compress`/`decompress` (and read's decoders) start one per CPU by default, each up to ~0.7 GB
    when coding learned 512 x 512 movies: on a 64-core machine with 32 GB that was 45 GB. The default is now
    capped by the memory available (a cgroup limit included), at cpus.WORKER_BYTES each."""
    from necoda_filter import cpus
    from necoda_filter.nwb import workers

    real = cpus._memory_available()
    assert real is None or real > 0
    monkeypatch.setattr(cpus, "available", lambda: 64)
    monkeypatch.setattr(cpus, "_memory_available", lambda: 32 << 30)
    assert cpus.workers() == int((32 << 30) * 0.75) // cpus.WORKER_BYTES == 30
    monkeypatch.setattr(cpus, "_memory_available", lambda: 1 << 30)
    assert cpus.workers() == 1
    monkeypatch.setattr(cpus, "_memory_available", lambda: None)  # unknown: one per CPU
    assert cpus.workers() == 64
    monkeypatch.setattr(cpus, "available", lambda: 2)
    monkeypatch.setattr(cpus, "_memory_available", lambda: 64 << 30)
    assert cpus.workers() == 2
    ex, n = workers.make_executor(None)
    try:
        assert n == 2
    finally:
        ex.shutdown()


def test_cgroup_room_reads_the_limits_above_this_process_less_reclaimable_cache(tmp_path):
    """Under a container or SLURM job the limit may sit on a parent cgroup, and page cache is charged to the
    cgroup but reclaimed first: room = the least (limit - charged + inactive file cache) up the tree."""
    from necoda_filter import cpus

    top = tmp_path / "cg"
    job = top / "slurm" / "job_7"
    job.mkdir(parents=True)
    for d, limit, used, cache in ((top, "max", 50 << 30, 0), (top / "slurm", str(16 << 30), 14 << 30, 12 << 30),
                                  (job, "max", 13 << 30, 11 << 30)):
        (d / "memory.max").write_text(limit + "\n")
        (d / "memory.current").write_text(f"{used}\n")
        (d / "memory.stat").write_text(f"anon 123\ninactive_file {cache}\nactive_file 5\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/slurm/job_7\n")
    layout = ((str(top), "0::", "memory.max", "memory.current", "inactive_file"),)
    assert cpus._cgroup_room(layout, str(proc)) == (16 << 30) - (2 << 30)
    (top / "slurm" / "memory.max").write_text("max\n")
    assert cpus._cgroup_room(layout, str(proc)) is None  # no limit anywhere
    v1 = tmp_path / "v1"
    (v1 / "job").mkdir(parents=True)
    (v1 / "job" / "memory.limit_in_bytes").write_text(str(4 << 30))
    (v1 / "job" / "memory.usage_in_bytes").write_text(str(3 << 30))
    (v1 / "job" / "memory.stat").write_text(f"cache 9\ntotal_inactive_file {1 << 30}\n")
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712")  # v1's "no limit"
    proc.write_text("4:memory:/job\n0::/\n")
    layout = ((str(v1), None, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),)
    assert cpus._cgroup_room(layout, str(proc)) == 2 << 30
