"""`necoda evaluate` uses what the original NWB file already knows about its series: ROI-trace fidelity
on the ROIs it holds (a lab's segmentation, or a simulation's true footprints) and against the traces
stored for them (necoda_filter.nwb.rois; ROIs are detected only when the file has none), and the share of
its Units' spikes that detection still finds (necoda_filter.nwb.units)."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from necoda_filter import cli, simulate
from necoda_filter.nwb.rois import MASK_THRESHOLD, find_rois
from necoda_filter.simulate_nwb import write_nwb

pynwb = pytest.importorskip("pynwb")


@pytest.fixture(scope="module")
def sim():
    return simulate.simulate_imaging(n_frames=96, height=48, width=40, n_cells=6, seed=3)


def _expected_masks(footprints):
    mx = footprints.reshape(len(footprints), -1).max(axis=1)
    return footprints > MASK_THRESHOLD * mx[:, None, None]


def test_evaluate_uses_the_files_rois_and_stored_traces(sim, tmp_path, capsys):
    src, out, rep = tmp_path / "sim.nwb", tmp_path / "out.nwb", tmp_path / "rep"
    write_nwb(src, imaging=sim)
    assert cli.main(["compress", str(src), str(out), "--imaging", "lossless", "--quiet"]) == 0
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep), "--no-figures"]) == 0
    d = json.loads((rep / "report.json").read_text())["datasets"][0]
    assert "GroundTruthROIs (6 of its 6 ROIs)" in d["roi_source"] and d["n_rois"] == 6
    assert d["roi_r_median"] == pytest.approx(1.0)  # lossless: the same traces
    by_path = {t["path"]: t for t in d["file_traces"]}
    truth = by_path["/processing/ophys/Fluorescence/GroundTruthTraces"]
    assert truth["n_rois"] == 6 and truth["r_median_dec"] == truth["r_median_orig"] > 0.5
    assert "/processing/ophys/Fluorescence/GroundTruthSpikeCounts" not in by_path  # spikes: not fluorescence
    assert "GroundTruthTraces" in capsys.readouterr().out  # and the report says so
    md = (rep / "report.md").read_text()  # QA 20: two 5th percentiles of different comparisons, named apart
    assert "ROI traces, decoded vs original movie: r median" in md and "decoded movie vs stored" in md


def test_no_rois_in_the_file_means_detected(sim, tmp_path):
    src, out, rep = tmp_path / "sim.nwb", tmp_path / "out.nwb", tmp_path / "rep"
    write_nwb(src, imaging=sim, ground_truth=False)
    with h5py.File(src, "r") as f:
        assert find_rois(f["acquisition/TwoPhotonSeries/data"]) is None
    assert cli.main(["compress", str(src), str(out), "--imaging", "lossless", "--quiet"]) == 0
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep), "--no-figures"]) == 0
    d = json.loads((rep / "report.json").read_text())["datasets"][0]
    assert d["roi_source"] == "detected on the original" and "file_traces" not in d


def test_image_and_pixel_masks_give_the_same_rois_and_rows_are_spread(sim, tmp_path):
    from pynwb.ophys import ImageSegmentation

    src = tmp_path / "sim.nwb"
    write_nwb(src, imaging=sim)  # image_mask: the true footprints
    with pynwb.NWBHDF5IO(str(src), "a") as io:  # a second segmentation of the same plane, as pixel masks
        nwb = io.read()
        plane = nwb.imaging_planes["ImagingPlane"]
        seg = ImageSegmentation(name="PixelSegmentation")
        nwb.processing["ophys"].add(seg)
        ps = seg.create_plane_segmentation(name="PixelROIs", imaging_plane=plane, description="pixel masks")
        for fp in sim.footprints:  # as pynwb writes them (x: the first axis of a frame)
            ps.add_roi(pixel_mask=[tuple(p) for p in ps.image_to_pixel(fp)])
        io.write(nwb)
    with h5py.File(src, "r") as f:
        data = f["acquisition/TwoPhotonSeries/data"]
        first = find_rois(data)  # candidates in path order: ImageSegmentation/GroundTruthROIs first
        assert first.path.endswith("GroundTruthROIs") and np.array_equal(first.masks, _expected_masks(sim.footprints))
        assert [p for p, _, _ in first.traces] == ["/processing/ophys/Fluorescence/GroundTruthTraces"]
        ps = f["processing/ophys/PixelSegmentation/PixelROIs"]
        from necoda_filter.nwb.rois import _masks

        assert np.array_equal(_masks(ps, np.arange(6), (48, 40)), _expected_masks(sim.footprints))
        some = find_rois(data, max_rois=3)
        assert list(some.rows) == [0, 2, 5]  # evenly spread, both ends included
        assert np.array_equal(some.masks, _expected_masks(sim.footprints)[some.rows])
        _, have, cols = some.traces[0]
        assert list(have) == [0, 1, 2] and list(cols) == list(some.rows)


def test_rois_of_another_plane_or_frame_size_are_not_used(sim, tmp_path):
    from pynwb.ophys import ImageSegmentation, OpticalChannel

    src = tmp_path / "sim.nwb"
    write_nwb(src, imaging=sim, ground_truth=False)
    with pynwb.NWBHDF5IO(str(src), "a") as io:
        nwb = io.read()
        other = nwb.create_imaging_plane(
            name="OtherPlane", optical_channel=OpticalChannel(name="red", description="x", emission_lambda=600.0),
            description="another plane", device=nwb.devices["SimulatedDevice"], excitation_lambda=1040.0,
            indicator="x", location="VISp", imaging_rate=30.0)
        mod = nwb.create_processing_module(name="ophys", description="segmentations")
        seg = ImageSegmentation(name="ImageSegmentation")
        mod.add(seg)
        a = seg.create_plane_segmentation(name="OtherPlaneROIs", imaging_plane=other, description="other plane")
        a.add_roi(image_mask=sim.footprints[0])
        b = seg.create_plane_segmentation(name="WrongSize", imaging_plane=nwb.imaging_planes["ImagingPlane"],
                                          description="another frame size")
        b.add_roi(image_mask=np.ones((10, 10)))
        io.write(nwb)
    with h5py.File(src, "r") as f:
        assert find_rois(f["acquisition/TwoPhotonSeries/data"]) is None


def test_evaluate_finds_the_files_unit_spikes(tmp_path):
    ep = simulate.simulate_ephys(duration_s=0.5, n_channels=16, n_units=4, seed=2)
    src, out, rep = tmp_path / "sim.nwb", tmp_path / "out.nwb", tmp_path / "rep"
    write_nwb(src, ephys=ep)
    assert cli.main(["compress", str(src), str(out), "--quiet"]) == 0  # lossless
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep), "--no-figures"]) == 0
    u = json.loads((rep / "report.json").read_text())["datasets"][0]["file_units"]
    assert u["path"] == "/units" and u["n_spikes"] == ep.spike_times.size
    assert u["found_orig"] == u["found_dec"] > 0.9  # lossless: the same detections; the truth is found
    assert "Units table" in (rep / "report.md").read_text()


def test_unit_spikes_are_matched_in_time_and_only_on_spike_band_series(tmp_path):
    from necoda_filter import metrics
    from necoda_filter.nwb.units import spike_samples

    ep = simulate.simulate_ephys(duration_s=0.5, n_channels=8, n_units=3, seed=4)
    src = tmp_path / "sim.nwb"
    write_nwb(src, ephys=ep)
    with h5py.File(src, "r") as f:
        data = f["acquisition/ElectricalSeries/data"]
        path, s = spike_samples(data, ep.fs, data.shape[0])
        assert path == "/units" and np.array_equal(s, np.sort(ep.spike_times))
        assert np.array_equal(spike_samples(data, ep.fs, 5000)[1], np.sort(ep.spike_times[ep.spike_times < 5000]))
        assert spike_samples(data, 2500.0, data.shape[0]) is None  # an LFP rate: no spike band
        orig = data[:]
    fid = metrics.ephys_fidelity(orig, orig, ep.fs, true_times=s)
    assert fid["true_recall_orig"] == fid["true_recall_dec"] > 0.9
    moved = metrics.ephys_fidelity(orig, orig, ep.fs, true_times=s + int(0.003 * ep.fs))  # 3 ms late
    assert moved["true_recall_orig"] < fid["true_recall_orig"] / 2
    flat = metrics.ephys_fidelity(orig, np.zeros_like(orig), ep.fs, true_times=s)  # nothing left to detect
    assert flat["true_recall_dec"] == 0.0 and flat["n_true"] == s.size


def test_rois_come_from_the_rows_with_stored_traces_and_the_series_plane(sim, tmp_path):
    """QA: ROI rows were spread over the whole table, so traces stored for a few rows were dropped; a series
    with no (or a dangling) imaging-plane link took another plane's segmentation."""
    from pynwb.ophys import Fluorescence, ImageSegmentation, OpticalChannel

    src = tmp_path / "sim.nwb"
    write_nwb(src, imaging=sim, ground_truth=False)
    with pynwb.NWBHDF5IO(str(src), "a") as io:
        nwb = io.read()
        plane = nwb.imaging_planes["ImagingPlane"]
        mod = nwb.create_processing_module(name="ophys", description="segmentation")
        seg = ImageSegmentation(name="ImageSegmentation")
        mod.add(seg)
        ps = seg.create_plane_segmentation(name="Lab", imaging_plane=plane, description="60 ROIs")
        rng = np.random.default_rng(0)
        for _ in range(60):
            m = np.zeros(sim.movie.shape[1:], np.float32)
            y, x = rng.integers(0, 40, 2)
            m[y:y + 6, x:x + 6] = 1
            ps.add_roi(image_mask=m)
        fl = Fluorescence(name="Fluorescence")
        mod.add(fl)
        fl.create_roi_response_series(name="Few", data=rng.normal(size=(sim.movie.shape[0], 3)), rate=30.0,
                                      rois=ps.create_roi_table_region(region=[14, 3, 8], description="three"),
                                      unit="a.u.")
        other = nwb.create_imaging_plane(
            name="Other", optical_channel=OpticalChannel(name="r", description="r", emission_lambda=600.0),
            description="another plane", device=nwb.devices["SimulatedDevice"], excitation_lambda=1040.0,
            indicator="x", location="VISp", imaging_rate=30.0)
        seg.create_plane_segmentation(name="OnOther", imaging_plane=other, description="x").add_roi(
            image_mask=np.ones(sim.movie.shape[1:]))
        io.write(nwb)
    with h5py.File(src, "r") as f:
        r = find_rois(f["acquisition/TwoPhotonSeries/data"])
        assert r.path.endswith("/Lab") and list(r.rows) == [3, 8, 14]  # the rows with traces, not 0, 30, 59
        assert [(p, list(h), list(c)) for p, h, c in r.traces] == [("/processing/ophys/Fluorescence/Few",
                                                                      [0, 1, 2], [1, 2, 0])]
    with h5py.File(src, "r+") as f:  # the series loses its plane link: two planes' segmentations match
        del f["acquisition/TwoPhotonSeries/imaging_plane"]
    with h5py.File(src, "r") as f:
        assert find_rois(f["acquisition/TwoPhotonSeries/data"]) is None  # ambiguous: none taken


def test_pixel_masks_of_another_field_of_view_are_not_used(sim, tmp_path):
    """QA: a pixel_mask has no frame shape of its own, so a segmentation of the full frame was applied to a
    binned (or cropped) movie on the same plane: its pixels were clipped to the smaller frame and its ROI
    traces compared with traces of other pixels. Pixels outside the frame, or reference_images that name a
    series of another frame shape, now rule it out; reference_images naming the series itself rule it in."""
    from pynwb.ophys import ImageSegmentation, TwoPhotonSeries

    src = tmp_path / "sim.nwb"
    write_nwb(src, imaging=sim, ground_truth=False)
    binned = sim.movie.reshape(96, 24, 2, 20, 2).mean(axis=(2, 4)).astype(sim.movie.dtype)
    with pynwb.NWBHDF5IO(str(src), "a") as io:
        nwb = io.read()
        plane = nwb.imaging_planes["ImagingPlane"]
        nwb.add_acquisition(TwoPhotonSeries(name="Binned", data=binned, imaging_plane=plane, rate=30.0,
                                            unit="n.a."))
        mod = nwb.create_processing_module(name="ophys", description="segmentations")
        seg = ImageSegmentation(name="ImageSegmentation")
        mod.add(seg)
        big = seg.create_plane_segmentation(name="A_FullFrameOfATwiceLargerMovie", imaging_plane=plane,
                                            description="drawn on a 96x80 frame")
        big.add_roi(pixel_mask=[(90, 70, 1.0), (91, 70, 1.0), (2, 3, 1.0)])
        small = seg.create_plane_segmentation(name="B_OnTheBinnedMovie", imaging_plane=plane,
                                              description="drawn on the binned movie",
                                              reference_images=nwb.acquisition["Binned"])
        small.add_roi(pixel_mask=[(5, 6, 1.0), (5, 7, 1.0)])  # inside both frames
        io.write(nwb)
    with h5py.File(src, "r") as f:
        assert find_rois(f["acquisition/TwoPhotonSeries/data"]) is None  # neither is this movie's
        on_binned = find_rois(f["acquisition/Binned/data"])
        assert on_binned.path.endswith("B_OnTheBinnedMovie") and on_binned.masks.shape == (1, 24, 20)
        assert on_binned.masks[0, 5, 6] and on_binned.masks.sum() == 2


def test_evaluate_of_a_slow_electrical_series_reports_no_spike_band_and_still_draws(tmp_path, monkeypatch):
    """QA: an ElectricalSeries sampled below 100 Hz ended the whole evaluation ("zero-size array to reduction
    operation maximum") in its snippet figure, losing every dataset's report; and spike metrics were
    computed on a band that does not exist below ~1.3 kHz. A figure that fails no longer ends the report."""
    from necoda_filter.commands import evaluate as ev

    ep = simulate.simulate_ephys(duration_s=0.5, n_channels=4, n_units=2, seed=1)
    src, out, rep = tmp_path / "slow.nwb", tmp_path / "out.nwb", tmp_path / "rep"
    write_nwb(src, ephys=ep)
    with h5py.File(src, "r+") as f:
        f["acquisition/ElectricalSeries/starting_time"].attrs["rate"] = 30.0
    assert cli.main(["compress", str(src), str(out), "--quiet"]) == 0
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep)]) == 0
    d = json.loads((rep / "report.json").read_text())["datasets"][0]
    assert "30 Hz" in d["no_spike_band"] and "spike_f1" not in d and "file_units" not in d
    assert d["figures"] == ["acquisition__ElectricalSeries__data_snippet.png"]
    assert (rep / d["figures"][0]).stat().st_size > 0 and "no spike metrics" in (rep / "report.md").read_text()

    def broken(*a, **k):
        raise RuntimeError("a figure went wrong")

    monkeypatch.setattr(ev, "_ephys_figures", broken)
    rep2 = tmp_path / "rep2"
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep2)]) == 0
    d = json.loads((rep2 / "report.json").read_text())["datasets"][0]
    assert d["figures"] == [] and "a figure went wrong" in d["figure_error"]
    assert "No figure for" in (rep2 / "report.md").read_text() and d["max_abs"] == 0


def test_roi_trace_figure_names_where_its_rois_come_from(sim, tmp_path, monkeypatch):
    """QA: the ROI-trace figure always said "ROIs detected on the original" and labelled ROIs by position."""
    from necoda_filter.commands import evaluate as ev

    seen = {}
    real = ev._imaging_figures

    def spy(ow, dw, masks, out, name, roi_source, roi_ids=None):
        seen.update(source=roi_source, ids=None if roi_ids is None else list(roi_ids))
        return real(ow, dw, masks, out, name, roi_source, roi_ids)

    monkeypatch.setattr(ev, "_imaging_figures", spy)
    src, out, rep = tmp_path / "sim.nwb", tmp_path / "out.nwb", tmp_path / "rep"
    write_nwb(src, imaging=sim)
    with h5py.File(src, "r+") as f:  # ids a lab might have: not the row positions
        ids = f["processing/ophys/ImageSegmentation/GroundTruthROIs/id"]
        ids[...] = np.arange(100, 100 + len(ids))
    assert cli.main(["compress", str(src), str(out), "--imaging", "lossless", "--quiet"]) == 0
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep)]) == 0
    assert "GroundTruthROIs" in seen["source"] and seen["ids"] == list(range(100, 106))
    assert (rep / "acquisition__TwoPhotonSeries__data_roi_traces.png").is_file()


def test_evaluate_against_the_source_of_an_earlier_lossy_run_is_not_a_mismatch(sim, tmp_path, capsys):
    """QA: evaluating the acquired file against a learned copy of a learned copy warned that it "is not the
    file it was compressed from": the error of two lossy runs adds up. A file that matches no step still does."""
    src, l1, l2, rep = tmp_path / "a.nwb", tmp_path / "l1.nwb", tmp_path / "l2.nwb", tmp_path / "rep"
    write_nwb(src, imaging=sim, ground_truth=False)
    for a, b in ((src, l1), (l1, l2)):
        assert cli.main(["compress", str(a), str(b), "--imaging", "learned", "--quality", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(src), str(l2), "--report", str(rep), "--no-figures"]) == 0
    assert "warning" not in capsys.readouterr().err
    d = json.loads((rep / "report.json").read_text())["datasets"][0]
    assert d["earlier_lossy_runs"] == 1 and not d["source_mismatch"]
    assert d["recorded_max_abs"] < d["max_abs"] <= d["recorded_max_abs_chain"]
    assert "compressed lossily 2 times" in (rep / "report.md").read_text()
    with h5py.File(src, "r+") as f:  # now another movie: more than both runs' errors together
        f["acquisition/TwoPhotonSeries/data"][:] = 65535
    assert cli.main(["evaluate", str(src), str(l2), "--report", str(rep), "--no-figures"]) == 0
    assert "is not the file it was compressed from" in capsys.readouterr().err


@pytest.mark.parametrize("by", ["electrodes", "electrode_group"])
def test_unit_spikes_are_matched_only_on_their_own_probe(tmp_path, by):
    """QA: every Units spike was looked for in every spike-band ElectricalSeries, so with two probes probe B
    reported the share of probe A's spikes found in its recording (0.015). Units now count on the series
    that holds their electrodes (or electrode group)."""
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    from necoda_filter.nwb.units import spike_samples

    ep = simulate.simulate_ephys(duration_s=0.2, n_channels=4, n_units=2, seed=5)
    nwb = NWBFile(session_description="two probes", identifier="x", session_start_time=datetime(2024, 1, 1,
                                                                                                 tzinfo=timezone.utc))
    dev = nwb.create_device(name="amp")
    groups = [nwb.create_electrode_group(name=f"probe{p}", description=p, location="CA1", device=dev) for p in "AB"]
    for g in groups:
        for _ in range(4):
            nwb.add_electrode(group=g, location="CA1")
    for k, p in enumerate("AB"):
        nwb.add_acquisition(ElectricalSeries(name=f"Probe{p}", data=ep.data, rate=ep.fs,
                                             electrodes=nwb.create_electrode_table_region(
                                                 list(range(4 * k, 4 * k + 4)), p)))
    times = np.sort(ep.spike_times) / ep.fs
    unit = {"electrodes": [0, 1]} if by == "electrodes" else {"electrode_group": groups[0]}
    nwb.add_unit(spike_times=times, **unit)
    src = tmp_path / "two.nwb"
    with NWBHDF5IO(str(src), "w") as io:
        io.write(nwb)
    with h5py.File(src, "r") as f:
        a = f["acquisition/ProbeA/data"]
        path, s = spike_samples(a, ep.fs, a.shape[0])
        assert path == "/units" and np.array_equal(s, np.round(times * ep.fs).astype(np.int64))
        assert spike_samples(f["acquisition/ProbeB/data"], ep.fs, a.shape[0]) is None


def test_evaluate_report_folder_is_replaced_whole_never_written_through(sim, tmp_path, capsys, monkeypatch):
    """QA: --report DIR was written in place: a report.json or figure there that was a symbolic link to
    ORIGINAL or COMPRESSED overwrote that input, a user's own report.md was replaced, figures of an earlier
    report stayed next to a report that did not mention them, and a failed run left a mix of old and new.
    The report is now made in a new folder that then takes DIR's place; DIR must be new, empty or an
    earlier necoda report."""
    import os

    from necoda_filter.commands import evaluate as ev

    src, out = tmp_path / "sim.nwb", tmp_path / "out.nwb"
    write_nwb(src, imaging=sim)
    assert cli.main(["compress", str(src), str(out), "--imaging", "lossless", "--quiet"]) == 0
    before = src.read_bytes()

    trap = tmp_path / "trap"
    trap.mkdir()
    os.symlink(src, trap / "report.json")
    assert cli.main(["evaluate", str(src), str(out), "--report", str(trap)]) == 1
    assert "not an earlier necoda report" in capsys.readouterr().err and src.read_bytes() == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert cli.main(["evaluate", str(src), str(out), "--report", str(mine)]) == 1
    assert (mine / "notes.txt").read_text() == "my notes" and sorted(os.listdir(mine)) == ["notes.txt"]

    rep = tmp_path / "rep"
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep)]) == 0
    first = sorted(os.listdir(rep))
    assert "report.md" in first and any(n.endswith(".png") for n in first)
    fig = next(n for n in first if n.endswith(".png"))
    (rep / fig).unlink()
    os.symlink(out, rep / fig)  # a link to COMPRESSED where a figure goes
    out_bytes = out.read_bytes()
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep), "--no-figures"]) == 0
    assert sorted(os.listdir(rep)) == ["report.json", "report.md"]  # no stale figure
    assert out.read_bytes() == out_bytes

    def boom(*a, **k):
        raise OSError("interrupted")

    monkeypatch.setattr(ev, "evaluate_dataset", boom)
    md = (rep / "report.md").read_text()
    assert cli.main(["evaluate", str(src), str(out), "--report", str(rep)]) == 1
    assert (rep / "report.md").read_text() == md and sorted(os.listdir(rep)) == ["report.json", "report.md"]
    assert [n for n in os.listdir(tmp_path) if "necoda-tmp" in n or "necoda-old" in n] == []
