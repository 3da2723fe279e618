"""Issue 4, acceptance 3: lossless and bounded chosen per dataset through the HDF5 filter, the numcodecs
codec and pynwb/hdmf."""
import warnings

import h5py
import numpy as np
import pytest

import necoda_filter
from necoda_filter import Necoda, NecodaCodec
from necoda_filter.commands.info import file_info


def data():
    rng = np.random.default_rng(7)
    movie = (300 + rng.poisson(20, size=(40, 32, 32)) * 5).astype(np.uint16)
    ephys = (np.cumsum(rng.normal(size=(6000, 8)), axis=0) * 4 + rng.normal(size=(6000, 8)) * 20).astype(np.int16)
    return movie, ephys


@pytest.mark.parametrize("mode,opts,bound", [("lossless", {}, 0), ("bounded", {"max_error": 7}, 7),
                                             ("bounded", {"max_error_noise": 0.5}, None)])
def test_h5py_and_numcodecs(tmp_path, mode, opts, bound):
    movie, ephys = data()
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.create_dataset("movie", data=movie, chunks=(16, 32, 32), compression=Necoda(mode=mode, **opts))
        f.create_dataset("ephys", data=ephys, chunks=(2000, 8), compression=Necoda(mode="lossless"))
    with h5py.File(tmp_path / "m.h5") as f:
        got, e = f["movie"][()], f["ephys"][()]
    err = np.abs(got.astype(np.int64) - movie).max()
    if bound is not None:
        assert err <= bound
    else:
        assert 0 < err < movie.std()
    np.testing.assert_array_equal(e, ephys)
    modes_ = {r["path"]: r["chunk_modes"] for r in file_info(tmp_path / "m.h5")}
    assert modes_ == {"/movie": {mode: 3}, "/ephys": {"lossless": 3}}
    c = NecodaCodec(mode=mode, **opts)
    back = c.decode(c.encode(movie))
    assert np.abs(back.astype(np.int64) - movie).max() == err or mode != "lossless"


def test_pynwb_per_dataset_modes(tmp_path):
    from test_integration import _nwb_with_series  # noqa: F401  (same NWB layout as the other tests)
    from datetime import datetime, timezone

    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    movie, ephys = data()
    nwb = NWBFile(session_description="modes", identifier="modes", session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    nwb.add_acquisition(TimeSeries(name="bounded", unit="a.u.", rate=30.0,
                                   data=H5DataIO(movie, chunks=(16, 32, 32), compression="necoda",
                                                 compression_opts=Necoda(mode="bounded", max_error=4).filter_options)))
    nwb.add_acquisition(TimeSeries(name="lossless", unit="a.u.", rate=1000.0,
                                   data=H5DataIO(ephys, chunks=(2000, 8), **Necoda(mode="lossless"),
                                                 allow_plugin_filters=True)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(tmp_path / "m.nwb"), "w") as io:
            io.write(nwb)
    with NWBHDF5IO(str(tmp_path / "m.nwb"), "r") as io:
        f = io.read()
        assert np.abs(f.acquisition["bounded"].data[:].astype(np.int64) - movie).max() <= 4
        np.testing.assert_array_equal(f.acquisition["lossless"].data[:], ephys)
    modes_ = {r["path"].split("/")[-2]: r["chunk_modes"] for r in file_info(tmp_path / "m.nwb")}
    assert modes_ == {"bounded": {"bounded": 3}, "lossless": {"lossless": 3}}
