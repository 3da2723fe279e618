"""pynwb/hdmf WRITE path: H5DataIO with the necoda filter, as a lab writes NWB files, read back in a fresh
process that has only HDF5_PLUGIN_PATH; bad compression arguments fail clearly instead of storing raw data."""
import warnings
from datetime import datetime, timezone

import h5py
import numpy as np
import pytest

pytest.importorskip("pynwb")
pytest.importorskip("hdmf")

import necoda_filter  # noqa: E402
from conftest import run_fresh  # noqa: E402
from hdmf.backends.hdf5.h5_utils import H5DataIO  # noqa: E402
from hdmf.data_utils import DataChunkIterator, GenericDataChunkIterator  # noqa: E402
from necoda_filter import FILTER_ID, Necoda  # noqa: E402
from pynwb import NWBHDF5IO, NWBFile, TimeSeries  # noqa: E402
from pynwb.ecephys import ElectricalSeries  # noqa: E402
from pynwb.ophys import OpticalChannel, TwoPhotonSeries  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*compression may not be available:UserWarning")

PLUGIN_ENV = {"HDF5_PLUGIN_PATH": necoda_filter.PLUGIN_PATH}


@pytest.fixture(scope="module")
def movie():
    from necoda_filter.simulate import simulate_imaging

    return simulate_imaging(n_frames=40, height=64, width=64, seed=0).movie.astype(np.uint16)


@pytest.fixture(scope="module")
def ephys():
    rng = np.random.default_rng(1)
    return (np.cumsum(rng.normal(size=(30000, 32)), axis=0) * 3 + rng.normal(size=(30000, 32)) * 10).astype(np.int16)


class _ArrayIterator(GenericDataChunkIterator):
    def __init__(self, array, **kwargs):
        self.array = array
        super().__init__(**kwargs)

    def _get_data(self, selection):
        return self.array[selection]

    def _get_maxshape(self):
        return self.array.shape

    def _get_dtype(self):
        return self.array.dtype


def _nwbfile():
    nwb = NWBFile(session_description="necoda write test", identifier="necoda-write",
                  session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    return nwb, nwb.create_device(name="scope", description="2p + probe")


def _write(path, nwb):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hdmf: "necoda compression may not be available on all installations"
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)


def _write_series(path, imaging_io, ephys_io, n_channels):
    nwb, dev = _nwbfile()
    ch = OpticalChannel(name="green", description="GCaMP", emission_lambda=520.0)
    plane = nwb.create_imaging_plane(name="plane", optical_channel=ch, description="L2/3", device=dev,
                                     excitation_lambda=920.0, indicator="GCaMP6s", location="VISp", imaging_rate=30.0)
    nwb.add_acquisition(TwoPhotonSeries(name="TwoPhotonSeries", imaging_plane=plane, rate=30.0, unit="n.a.",
                                        data=imaging_io))
    group = nwb.create_electrode_group(name="shank", description="probe", location="VISp", device=dev)
    for _ in range(n_channels):
        nwb.add_electrode(group=group, location="VISp")
    region = nwb.create_electrode_table_region(list(range(n_channels)), "all")
    nwb.add_acquisition(ElectricalSeries(name="ElectricalSeries", electrodes=region, rate=30000.0,
                                         conversion=1.95e-7, data=ephys_io))
    _write(path, nwb)


def _fresh_max_errors(path, tmp_path, movie, ephys):
    """Max |error| of both series read by pynwb in a new interpreter with only HDF5_PLUGIN_PATH set."""
    np.save(tmp_path / "m.npy", movie)
    np.save(tmp_path / "e.npy", ephys)
    r = run_fresh(f"""
        import sys, numpy as np
        assert "necoda_filter" not in sys.modules
        from pynwb import NWBHDF5IO
        with NWBHDF5IO({str(path)!r}, "r") as io:
            acq = io.read().acquisition
            for name, ref in (("TwoPhotonSeries", "m.npy"), ("ElectricalSeries", "e.npy")):
                a = np.load({str(tmp_path)!r} + "/" + ref)
                got = acq[name].data[:]
                assert got.dtype == a.dtype and got.shape == a.shape, (name, got.dtype, got.shape)
                print("ERR", name, int(np.abs(got.astype(np.int64) - a).max()))
    """, PLUGIN_ENV)
    assert r.returncode == 0, r.stderr
    return {line.split()[1]: int(line.split()[2]) for line in r.stdout.splitlines() if line.startswith("ERR")}


def _storage(path, name):
    with h5py.File(path, "r") as f:
        d = f["acquisition"][name]["data"]
        plist = d.id.get_create_plist()
        return ([plist.get_filter(i)[0] for i in range(plist.get_nfilters())], d.nbytes / d.id.get_storage_size(),
                d.chunks, d.maxshape)


LOSSLESS = Necoda(mode="lossless").filter_options


@pytest.mark.parametrize("how", ["opts_tuple", "mapping_bounded", "data_chunk_iterator", "generic_iterator"])
def test_h5dataio_write_reads_back_in_fresh_process(tmp_path, movie, ephys, how):
    if how == "opts_tuple":
        def io(a):
            return H5DataIO(a, compression="necoda", compression_opts=LOSSLESS, chunks=(8,) + a.shape[1:])
        bound = 0
    elif how == "mapping_bounded":
        def io(a):
            return H5DataIO(a, **Necoda(mode="bounded", max_error=2), allow_plugin_filters=True)
        bound = 2
    elif how == "data_chunk_iterator":
        def io(a):
            return H5DataIO(DataChunkIterator(data=iter(list(a[:4000])), buffer_size=8), compression="necoda",
                            compression_opts=LOSSLESS)
        bound = 0
        ephys = ephys[:4000]
    else:
        def io(a):
            return H5DataIO(_ArrayIterator(a, buffer_gb=0.001), compression="necoda", compression_opts=LOSSLESS)
        bound = 0
    p = tmp_path / f"{how}.nwb"
    _write_series(p, io(movie), io(ephys), ephys.shape[1])
    for name in ("TwoPhotonSeries", "ElectricalSeries"):
        filters, ratio, _, _ = _storage(p, name)
        assert filters == [FILTER_ID] and ratio > 1.05, (name, filters, ratio)
    errs = _fresh_max_errors(p, tmp_path, movie, ephys)
    assert errs["TwoPhotonSeries"] <= bound and errs["ElectricalSeries"] <= bound, errs
    if bound:
        assert max(errs.values()) > 0  # really lossy, so the bound was what held


def test_maxshape_append_lossless(tmp_path, ephys):
    p = tmp_path / "append.nwb"
    nwb, dev = _nwbfile()
    nwb.add_acquisition(TimeSeries(name="ts", unit="V", rate=30000.0, data=H5DataIO(
        ephys[:10000], compression="necoda", compression_opts=LOSSLESS, chunks=(4096, 32), maxshape=(None, 32))))
    _write(p, nwb)
    with NWBHDF5IO(str(p), "a") as io:
        d = io.read().acquisition["ts"].data
        d.resize((15000, 32))
        d[10000:] = ephys[10000:15000]
    np.save(tmp_path / "e.npy", ephys[:15000])
    r = run_fresh(f"""
        import numpy as np
        from pynwb import NWBHDF5IO
        with NWBHDF5IO({str(p)!r}, "r") as io:
            got = io.read().acquisition["ts"].data[:]
        assert np.array_equal(got, np.load({str(tmp_path / 'e.npy')!r})), "data differ"
        print("OK")
    """, PLUGIN_ENV)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_compression_by_filter_id_uses_default_options(tmp_path, movie):
    """``compression=FILTER_ID`` without options (the hdf5plugin habit) once gave the C shim empty cd_values,
    whose defaults meant max_error=0: every imaging chunk of mode "auto" was stored raw (ratio 1.0)."""
    p = tmp_path / "id.nwb"
    nwb, dev = _nwbfile()
    nwb.add_acquisition(TimeSeries(name="ts", unit="n.a.", rate=30.0, data=H5DataIO(
        movie, compression=FILTER_ID, chunks=(8, 64, 64), allow_plugin_filters=True)))
    _write(p, nwb)
    with h5py.File(p, "r") as f:
        d = f["acquisition/ts/data"]
        assert tuple(d.id.get_create_plist().get_filter(0)[2][:8]) == Necoda().filter_options
        assert d.nbytes / d.id.get_storage_size() > 2, "stored raw"


def _write_ts(path, **io_kwargs):
    nwb, _ = _nwbfile()
    data = io_kwargs.pop("data", np.arange(4000, dtype=np.int16).reshape(1000, 4))
    nwb.add_acquisition(TimeSeries(name="ts", unit="V", rate=10.0, data=H5DataIO(data, **io_kwargs)))
    _write(path, nwb)


def _cause_chain(exc):
    text = []
    while exc is not None:
        text.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(text)


@pytest.mark.parametrize("opts, words", [
    ((), None),                               # empty: defaults, like no options
    (4, "compression_opts must be"),          # a gzip-style level
    ((1, 2), "too short"),                    # truncated cd_values: padded with zeros before
    ((1, 2, 0, 0x7FF80000, 0, 0x7FF80000, 0, 0), "needs max_error"),  # bounded, no bound
    ((1, 77, 0, 0, 0, 0, 0, 0), "unknown mode"),
])
def test_compression_opts_forms(tmp_path, opts, words):
    p = tmp_path / "o.nwb"
    if words is None:
        _write_ts(p, compression="necoda", compression_opts=opts)
        with h5py.File(p, "r") as f:
            assert tuple(f["acquisition/ts/data"].id.get_create_plist().get_filter(0)[2][:8]) == Necoda().filter_options
        return
    with pytest.raises(Exception) as ei:
        _write_ts(p, compression="necoda", compression_opts=opts)
    assert words in _cause_chain(ei.value), _cause_chain(ei.value)


@pytest.mark.parametrize("data", [np.zeros(100, bool), np.array(["a", "bb"] * 50), [True, False] * 50],
                         ids=["bool", "str", "list_bool"])
def test_unsupported_dtype_is_a_clear_error(tmp_path, data):
    with pytest.raises(Exception) as ei:
        _write_ts(tmp_path / "d.nwb", data=data, compression="necoda")
    assert "necoda cannot compress dtype" in _cause_chain(ei.value), _cause_chain(ei.value)


def test_typo_in_filter_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="necodaa"):
        _write_ts(tmp_path / "t.nwb", compression="necodaa", allow_plugin_filters=True)
