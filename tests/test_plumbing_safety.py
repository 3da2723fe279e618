"""Robustness of the plumbing (QA round 13): no crash at exit after a failed HDF5 close, one-line errors for
a full disk, codecs that check a chunk's header before decoding it, and the package's own option messages."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import h5py
import numcodecs
import numpy as np
import pytest

import necoda_filter
from necoda_filter import Necoda, chunk
from necoda_filter.codec import NecodaCodec
from necoda_filter.container import CorruptChunk

HDF5_ENOSPC = ("Disable slist on flush dest failure failed (file write failed: time = Sun Nov 22 12:27:45 2026\n"
               ", filename = '{tmp}', file descriptor = 3, errno = 28, error message = 'No space left on "
               "device', buf = 0x555c9aa4c570, total write size = 4096, bytes this sub-write = 4096, offset = 2954632)")


def _python(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)


# ------------------------------------------------------------------------------------ exit after a failed close

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE/SIGXFSZ as on Linux")
def test_failed_close_then_exit_does_not_crash(tmp_path):
    """A file whose close fails for want of space (here: the file-size limit, EFBIG, as a full disk would)
    keeps an id HDF5 has half freed; the exit handler touched it (H5Iget_file_id) and the process died with
    SIGSEGV after the error had been reported. It must now exit normally."""
    r = _python("""
        import resource, signal
        import h5py
        import necoda_filter  # the exit handler
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
        f = h5py.File("e.h5", "w")
        for i in range(10):
            f.create_group(f"g{i}").attrs["x"] = i
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        try:
            f.close()
        except Exception as e:
            print("CLOSE FAILED", type(e).__name__)
        print("END")
    """, tmp_path)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    assert "CLOSE FAILED" in r.stdout and "END" in r.stdout, r.stdout + r.stderr
    assert "Segmentation fault" not in r.stderr


def test_exit_flush_still_flushes_files_left_open(tmp_path):
    """The guard does not turn the handler off for healthy processes: a file left open is flushed."""
    p = tmp_path / "open.h5"
    r = _python(f"""
        import h5py, numpy as np
        import necoda_filter
        f = h5py.File({str(p)!r}, "w")
        f.create_dataset("x", data=np.arange(4096, dtype="i2").reshape(64, 64), chunks=(32, 64),
                         compression="necoda", compression_opts={{"mode": "lossless"}})
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    with h5py.File(p, "r") as f:
        assert np.array_equal(f["x"][...], np.arange(4096, dtype="i2").reshape(64, 64))


def test_a_failed_close_or_encode_keeps_the_exit_handler_off_hdf5_ids(monkeypatch):
    from necoda_filter import exitflush

    monkeypatch.setattr(exitflush, "_broken", None)
    assert getattr(h5py.File.close, "_necoda_watch", False)  # installed when the filter was registered
    touched = []
    monkeypatch.setattr(exitflush, "_open_files", lambda *a: touched.append(a) or {})
    exitflush.flush_open_files()
    assert touched  # healthy: the handler looks at the open files
    touched.clear()
    from necoda_filter import _bridge

    with pytest.raises(ValueError):  # the filter's encode fails (here: cd_values of an unknown layout)
        _bridge.filter(0, (99,), memoryview(b"\0" * 8))
    assert exitflush._broken is not None
    assert exitflush.flush_open_files() == 0 and not touched


def test_failing_file_close_is_noted(tmp_path, monkeypatch):
    from necoda_filter import exitflush

    monkeypatch.setattr(exitflush, "_broken", None)
    f = h5py.File(tmp_path / "c.h5", "w")
    real = f.id
    monkeypatch.setattr(h5py.File, "flush", lambda self: None)

    class Failing:
        valid = True

        def __getattr__(self, name):
            raise RuntimeError("Can't close file (file write failed: errno = 28, error message = 'No space')")

    f._id = Failing()  # h5py's File.close reaches self.id first
    with pytest.raises(RuntimeError):
        f.close()
    assert "closing an HDF5 file failed" in exitflush._broken
    f._id = real
    h5py.File.close.__wrapped__(f)


# ------------------------------------------------------------------------------ one-line errors for a full disk

def test_new_file_names_the_output_for_an_hdf5_runtime_error_with_errno(tmp_path):
    from necoda_filter.simulate_nwb import new_file

    out = tmp_path / "sim.nwb"
    with pytest.raises(OSError) as ei:
        with new_file(out, ".nwb") as tmp:
            raise RuntimeError(HDF5_ENOSPC.format(tmp=tmp))
    msg = str(ei.value)
    assert msg == f"writing {out} failed: No space left on device", msg
    assert ei.value.errno == 28
    assert sorted(os.listdir(tmp_path)) == []  # the temporary is removed, nothing named OUT
    with pytest.raises(RuntimeError, match="unrelated"):  # a RuntimeError that is no I/O error stays one
        with new_file(out, ".nwb"):
            raise RuntimeError("unrelated")


def test_cli_prints_one_line_for_a_write_failure(tmp_path, monkeypatch, capsys):
    from necoda_filter import cli
    from necoda_filter.commands import simulate

    tmp = tmp_path / ".sim.ab12cd34.tmp.nwb"

    def run(args):
        raise RuntimeError(HDF5_ENOSPC.format(tmp=tmp))

    monkeypatch.setattr(simulate, "run", run)
    out = tmp_path / "sim.nwb"
    assert cli.main(["simulate", "imaging", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"necoda simulate: error: writing {out} failed: Disable slist on flush dest failure failed: " \
                  "No space left on device\n", err

    def run2(args):  # compress: HDF5's two-line OSError naming the hidden temporary
        raise OSError(28, "Can't close file (file write failed: time = Sun Nov 22 12:27:21 2026\n, filename = "
                          "'.out.nwb.necoda-tmp-21571', file descriptor = 4, errno = 28, error message = 'No "
                          "space left on device', buf = 0x7f5edc31ac00)")

    monkeypatch.setattr(simulate, "run", run2)
    assert cli.main(["simulate", "imaging", "out.nwb"]) == 1
    err = capsys.readouterr().err
    assert err == "necoda simulate: error: writing out.nwb failed: Can't close file: No space left on device\n", err

    def run3(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(simulate, "run", run3)
    with pytest.raises(RuntimeError, match="a bug"):  # no errno: a bug keeps its traceback
        cli.main(["simulate", "imaging", "out.nwb"])


def test_error_message_maps_the_compress_temporary_to_its_output():
    from necoda_filter.cli import error_message

    assert error_message(OSError("cannot open /d/.out.nwb.necoda-tmp-123: denied")) == "cannot open /d/out.nwb: denied"
    assert error_message(FileExistsError("x.nwb exists (not overwritten)"), "x.nwb") == "x.nwb exists (not overwritten)"


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_unshare(),
                    reason="needs `unshare -rm` (a private mount namespace) for a small tmpfs")
def test_simulate_on_a_full_disk_prints_one_line(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    script = (f"mount -t tmpfs -o size=1m tmpfs {full} || exit 99; cd {full}; "
              f"{sys.executable} -m necoda_filter.cli simulate imaging sim.nwb --frames 64 --height 96 "
              "--width 96 --cells 5; echo rc=$?; ls -A")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    if "rc=99" in r.stdout:
        pytest.skip("cannot mount a tmpfs here")
    assert "rc=1\n" in r.stdout, r.stdout + r.stderr[-3000:]
    assert r.stdout.strip().endswith("rc=1"), r.stdout  # nothing left behind: no OUT, no temporary
    assert "Traceback" not in r.stderr and "Segmentation" not in r.stderr, r.stderr[-3000:]
    assert "necoda simulate: error: writing sim.nwb failed: No space left on device" in r.stderr, r.stderr


# --------------------------------------------------------------------- codecs check the header before decoding

def _bomb(n=1 << 20):
    z = np.zeros(n, "<i2")
    z[-1] = 1
    return chunk.encode(z, "lossless")


def _no_decoding(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("decoded a chunk whose header disagrees")

    monkeypatch.setattr(chunk, "decode", refuse)


def test_numcodecs_decode_checks_the_size_before_decoding(monkeypatch):
    bomb = _bomb()
    _no_decoding(monkeypatch)
    with pytest.raises(ValueError, match="output buffer has 2048 bytes"):
        NecodaCodec(mode="lossless").decode(bomb, out=np.empty((256, 4), "<i2"))


def test_zarr3_decode_checks_the_shape_before_decoding(monkeypatch):
    pytest.importorskip("zarr", minversion="3")
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.dtype import parse_dtype

    from necoda_filter.zarr3 import NecodaZarrCodec

    proto = default_buffer_prototype()
    spec = ArraySpec(shape=(256, 4), dtype=parse_dtype("int16", zarr_format=3), fill_value=0,
                     config=ArrayConfig.from_dict({}), prototype=proto)
    bomb = proto.buffer.from_bytes(_bomb())
    _no_decoding(monkeypatch)
    with pytest.raises(CorruptChunk, match="shape"):
        NecodaZarrCodec(mode="lossless")._decode_sync(bomb, spec)
    other = proto.buffer.from_bytes(chunk.encode(np.zeros((256, 4), "<u2"), "lossless"))
    with pytest.raises(CorruptChunk, match="uint16"):
        NecodaZarrCodec(mode="lossless")._decode_sync(other, spec)


@pytest.mark.parametrize("stored, array", [("<u2", "<i2"), ("<i4", "<f4"), ("<f4", "<i4"), ("|u1", "|i1")])
def test_numcodecs_decode_refuses_another_dtype_in_a_typed_output(stored, array):
    """zarr v2 hands decode the chunk's array: a chunk of another type was cast/reinterpreted silently
    (60000 read as -5536). Refused as the HDF5 shim does (kind and item size)."""
    data = np.arange(64).astype(stored)
    buf = NecodaCodec(mode="lossless").encode(data)
    with pytest.raises(CorruptChunk, match="holds"):
        NecodaCodec(mode="lossless").decode(buf, out=np.empty(64, array))


def test_numcodecs_decode_still_fills_bytes_and_matching_outputs():
    data = (np.arange(64) * 1000).astype("<u2")
    buf = NecodaCodec(mode="lossless").encode(data)
    out = np.empty(128, np.uint8)  # numcodecs' byte-level convention
    NecodaCodec(mode="lossless").decode(buf, out=out)
    assert np.array_equal(out.view("<u2"), data)
    out = np.empty((8, 8), ">u2")  # same kind and size, other byte order: zarr v2 reads it as such
    NecodaCodec(mode="lossless").decode(buf, out=out)
    assert out.tobytes() == data.tobytes()


# ------------------------------------------------------------------------------------------------ option messages

def test_compression_opts_takes_a_necoda_object(tmp_path):
    with h5py.File(tmp_path / "o.h5", "w") as f:
        d = f.create_dataset("x", data=np.arange(100, dtype="i2"), chunks=(50,), compression="necoda",
                             compression_opts=Necoda(mode="lossless"))
        assert np.array_equal(d[...], np.arange(100))
        cd = d.id.get_create_plist().get_filter_by_id(necoda_filter.FILTER_ID)[1]
        assert tuple(cd[:len(Necoda(mode="lossless").filter_options)]) == Necoda(mode="lossless").filter_options


def test_unknown_option_names_get_the_package_message(tmp_path):
    with h5py.File(tmp_path / "o.h5", "w") as f:
        with pytest.raises(TypeError, match="unknown necoda option 'mod'; options are mode, max_error"):
            f.create_dataset("x", data=np.arange(100, dtype="i2"), compression="necoda",
                             compression_opts={"mode": "lossless", "mod": 1})
    with pytest.raises(TypeError, match="unknown necoda option 'maxerror'; options are mode, max_error"):
        numcodecs.get_codec({"id": "necoda", "maxerror": 2})
    assert numcodecs.get_codec({"id": "necoda", "mode": "bounded", "max_error": 2}).options == {"max_error": 2.0}
