"""``necoda evaluate ORIGINAL.nwb COMPRESSED.nwb [--report DIR]``: what recompression preserved.

For every necoda-compressed dataset of COMPRESSED with a dataset of the same path and shape in ORIGINAL:

- over the whole dataset (streamed in blocks, never all in memory): ``max_abs``, ``rmse``, ``psnr``
  (dB over max - min of the original), ``mean_error`` (bias) — the definitions of
  :func:`necoda_filter.metrics.error_stats` — and ``rmse_noise`` (:func:`metrics.noise_sse`; sigma from
  the photon-transfer fit for imaging, per-channel MAD of the 300–6000 Hz band for ephys, estimated on
  the original's first block exactly as ``necoda compress`` does, so the figure equals the write-time
  record's; channels without a noise level are left out); ``ratio`` = raw bytes / stored chunk bytes, ``ratio_vs_original`` =
  the original dataset's stored bytes / the compressed one's;
- on a leading window (imaging: up to ``--window-frames`` (500) frames; ephys: up to ``--window-seconds``
  (5) seconds; both capped at ``--window-mb`` (256) MB of raw data; the fidelity metrics need about
  10x the window in memory): imaging ``roi_r_median`` / ``roi_r_p05`` (ROI mean traces; the ROIs
  are the file's own when it holds a segmentation of the series (:func:`necoda_filter.nwb.rois.find_rois`:
  a lab's suite2p/CaImAn output, or a simulation's true footprints), and then ``file_traces`` gives r
  of the original's and the decoded movie's ROI traces against the traces the file stores for them;
  otherwise ROIs are detected on the original with :func:`metrics.detect_rois`), ephys (with the share
  of the file's Units spikes found by detection, ``file_units``, :mod:`necoda_filter.nwb.units`) ``spike_f1`` /
  ``waveform_r_median`` / ``n_spikes`` (:func:`metrics.ephys_fidelity`) — the ``necoda bench`` metrics (a
  series sampled below ``SPIKE_BAND_MIN_FS``, e.g. LFP, has no spike band: ``no_spike_band`` says so);
- PNG figures: imaging — an example frame original / decoded / error map and ROI traces overlaid;
  ephys — a spike snippet (raw and 300–6000 Hz) overlaid on neighbouring channels, with the error;
- ``report.json`` and ``report.md`` in the report folder (default ``<COMPRESSED>.necoda-report``).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

BLOCK_BYTES = 64 << 20
ROI_MAX_FRAMES = 200
#: spike-band metrics need the 300-6000 Hz band: ``metrics.bandpass`` caps its top at 0.45 fs, so below this
#: rate (an LFP or behaviour-rate ElectricalSeries) there is no band of at least an octave to detect spikes in
SPIKE_BAND_LO = 300.0
SPIKE_BAND_MIN_FS = 2 * SPIKE_BAND_LO / 0.45


def add_arguments(p) -> None:
    p.add_argument("original", metavar="ORIGINAL.nwb", help="the file before recompression")
    p.add_argument("compressed", metavar="COMPRESSED.nwb", help="the output of `necoda compress`")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="folder for report.md, report.json and PNG figures (default: COMPRESSED.necoda-report): new, "
                        "empty, or an earlier necoda report, which is replaced whole (a folder holding anything "
                        "else is refused); the folder that holds it must exist (missing folders are not created: "
                        "a mistyped path is an error)")
    p.add_argument("--window-frames", type=int, default=500,
                   help="imaging frames used for ROI fidelity (default %(default)s)")
    p.add_argument("--window-seconds", type=float, default=5.0,
                   help="ephys seconds used for spike fidelity (default %(default)g)")
    p.add_argument("--window-mb", type=float, default=256.0,
                   help="cap on the window's size in MB (default %(default)g)")
    p.add_argument("--no-figures", action="store_true", help="metrics only")


def _stored_bytes(dset) -> int:
    if dset.chunks is None:
        return int(dset.id.get_storage_size())
    total = 0
    dsid = dset.id
    if hasattr(dsid, "chunk_iter"):
        try:
            sizes = []
            dsid.chunk_iter(lambda info: sizes.append(info.size))
            return int(sum(sizes))
        except Exception:  # noqa: BLE001
            pass
    for i in range(dsid.get_num_chunks()):
        total += dsid.get_chunk_info(i).size
    return int(total)


def _pairs(orig, comp):
    import h5py

    from ..nwb import necoda_filter_info

    out = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset) or obj.chunks is None:
            return
        if not necoda_filter_info(obj)[0]:
            return
        path = "/" + name
        o = orig.get(path)
        if isinstance(o, h5py.Dataset) and o.shape == obj.shape and o.dtype == obj.dtype:
            out.append(path)
        else:
            print(f"necoda evaluate: {path}: no dataset of the same shape and dtype in the original; skipped",
                  file=sys.stderr)

    comp.visititems(visit)
    return out


def _necoda_paths(f) -> list[str]:
    import h5py

    from ..nwb import necoda_filter_info

    found = []
    f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and obj.chunks is not None
                 and necoda_filter_info(obj)[0] else None)
    return found


def _check_source(res: dict, o, c, original) -> None:
    """Compare the measured max error with the one recorded at write time (against the real source): a
    larger one means ORIGINAL is not (or no longer) the data COMPRESSED was made from; a much smaller one
    (0 for a lossy dataset) means ORIGINAL is a decoded copy of it, e.g. made by ``necoda decompress``."""
    from .. import provenance

    prov = provenance.read(c) or {}
    rec = prov.get("max_abs_error")
    mx = res.get("max_abs")
    if rec is None or mx is None or not math.isfinite(rec) or not math.isfinite(mx):
        return
    res["recorded_max_abs"] = rec
    # data compressed lossily before (necoda_history): ORIGINAL may be the source of any run of the chain,
    # and the errors of the runs add up to at most the sum of their maxima
    earlier = [h.get("max_abs_error") for h in provenance.earlier_lossy(prov)]
    chain = rec + sum(e for e in earlier if isinstance(e, (int, float)) and math.isfinite(e))
    if earlier:
        res["earlier_lossy_runs"] = len(earlier)
        res["recorded_max_abs_chain"] = chain
    res["source_mismatch"] = bool(mx > chain * (1 + 1e-6) + 1e-9)
    res["original_is_decoded"] = bool(rec > 0 and mx < rec / 2)
    if res["source_mismatch"]:
        print(f"necoda evaluate: warning: {c.name}: max error {mx:.6g} here but {rec:.6g} measured when it was "
              f"compressed: {original} is not the file it was compressed from (or was modified)", file=sys.stderr)
    elif res["original_is_decoded"]:
        how = " (it was written by necoda decompress)" if "necoda_decompressed_by" in o.attrs else ""
        print(f"necoda evaluate: warning: {c.name}: max error {mx:.6g} here but {rec:.6g} measured against the data "
              f"it was compressed from: {original} holds decoded data{how}, not that original; these figures "
              "say nothing about what compression changed", file=sys.stderr)


def _kind(o, c) -> str:
    from .. import provenance
    from ..nwb import target_kind

    p = provenance.read(c) or {}
    k = p.get("kind") or target_kind(o)
    if k:
        return k
    return "imaging" if o.ndim >= 3 else "ephys"


def _fmt(v, spec=".4g"):
    if v is None:
        return "n/a"
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return format(v, spec)


def _clean(v):
    """JSON-safe report values; NaN/inf by name (a lossless PSNR is "inf")."""
    from ..bench import json_safe

    return json_safe(v, nonfinite="name")


def evaluate_dataset(o, c, kind, report_dir: Path | None, window_frames=500, window_seconds=5.0,
                     window_mb=256.0, figures=True) -> dict:
    from .. import metrics, provenance
    from ..nwb import finite_pair, sampling_rate
    from ..nwb.rois import find_rois
    from ..nwb.units import spike_samples
    from ..reader import read

    res: dict = {"path": o.name, "kind": kind, "shape": list(o.shape), "dtype": str(o.dtype)}
    prov = provenance.read(c) or {}
    res["mode"] = prov.get("mode")
    res["model_id"] = prov.get("model_id")
    res["options"] = prov.get("options")
    raw = int(np.prod(o.shape, dtype=np.int64)) * o.dtype.itemsize
    stored = _stored_bytes(c)
    res["raw_bytes"], res["stored_bytes"] = raw, stored
    res["ratio"] = raw / stored if stored else math.nan
    ostored = _stored_bytes(o)
    res["original_stored_bytes"] = ostored
    res["ratio_vs_original"] = ostored / stored if stored else math.nan
    fs = sampling_rate(o.parent) if kind == "ephys" else None
    if fs:
        res["fs"] = fs

    T = o.shape[0]
    row_bytes = max(1, int(np.prod(o.shape[1:], dtype=np.int64)) * o.dtype.itemsize)
    cap_rows = max(2, int(window_mb * 1e6) // row_bytes)
    if kind == "imaging":
        wrows = min(T, window_frames, cap_rows)
    else:
        wrows = min(T, max(2, int(window_seconds * (fs or 30000.0))), cap_rows)
    res["window_rows"] = int(wrows)
    ow = o[:wrows]
    dw = read(c, np.s_[:wrows])

    # the noise level as necoda compress measures it (the same window and estimator), so that the noise-unit
    # RMSE here and the one recorded at write time are the same figure
    from ..nwb.plan import DEFAULT_FS, _attr_str
    from ..nwb.recompress import estimate_noise_sigma

    events = _attr_str(o.parent, "neurodata_type") == "SpikeEventSeries"
    with np.errstate(all="ignore"):
        sigma, res["noise"] = estimate_noise_sigma(o, kind, fs or DEFAULT_FS, events)

    # whole-dataset error statistics, streamed
    n = 0
    sse = s1 = 0.0
    mx = 0.0
    lo, hi = math.inf, -math.inf
    nsse = 0.0
    nn = 0  # samples counted in nsse: those of channels with a noise level (metrics.noise_sse)
    brows = max(1, BLOCK_BYTES // row_bytes)
    for t in range(0, T, brows):
        t1 = min(T, t + brows)
        inside = t1 <= wrows  # block already read for the fidelity window
        ob = ow[t:t1] if inside else o[t:t1]
        db = dw[t:t1] if inside else read(c, np.s_[t:t1])
        ob, db, mismatch, blo, bhi = finite_pair(ob, db)  # NaN/inf: compared as themselves, not as NaN errors
        es = metrics.error_stats(ob, db)
        k = ob.size
        n += k
        sse += math.inf if mismatch else es["rmse"] ** 2 * k
        s1 += es["mean_error"] * k
        mx = max(mx, math.inf if mismatch else es["max_abs"])
        lo = min(lo, blo)
        hi = max(hi, bhi)
        if sigma is not None:
            bsse, bn = metrics.noise_sse(ob, db, sigma)
            nsse += math.inf if mismatch else bsse
            nn += bn
    rmse = math.sqrt(sse / n)
    rng = hi - lo if hi >= lo else math.nan
    res["max_abs"] = mx
    res["rmse"] = rmse
    res["mean_error"] = s1 / n
    res["data_range"] = rng
    res["psnr"] = math.inf if rmse == 0 else (20 * math.log10(rng / rmse) if rng > 0 and math.isfinite(rmse)
                                              else math.nan)
    res["rmse_noise"] = math.sqrt(nsse / nn) if sigma is not None and nn else math.nan

    figs = []
    with np.errstate(all="ignore"):
        if kind == "imaging" and ow.ndim == 3:
            file_rois = find_rois(o)
            if file_rois is not None:  # the file's own segmentation (a lab's, or a simulation's truth)
                masks = file_rois.masks
                res["roi_source"] = (f"{file_rois.path} ({len(file_rois.rows)} of its {file_rois.n_total} ROIs)")
            else:  # ROI detection works on a temporally binned copy; <= 200 binned frames bounds its memory
                masks = metrics.detect_rois(ow, max_frames=ROI_MAX_FRAMES)
                res["roi_source"] = "detected on the original"
            fid = metrics.imaging_fidelity(ow, dw, masks=masks)
            res.update({k: fid[k] for k in ("roi_r_median", "roi_r_p05", "n_rois")})
            if file_rois is not None:
                res["file_traces"] = _against_file_traces(o.file, file_rois, ow, dw, wrows)
            if figures and report_dir is not None:
                figs += _figures(res, lambda: _imaging_figures(
                    ow, dw, masks, report_dir, o.name, res["roi_source"],
                    None if file_rois is None else file_rois.ids))
        elif kind == "ephys" and ow.ndim in (1, 2) and fs:
            band = fs >= SPIKE_BAND_MIN_FS
            if band:
                units = spike_samples(o, fs, wrows)  # the file's Units (sorted units, or a simulation's truth)
                fid = metrics.ephys_fidelity(ow, dw, fs, true_times=None if units is None else units[1])
                res.update({k: fid[k] for k in ("spike_f1", "waveform_r_median", "n_spikes", "n_spikes_dec")})
                if units is not None:
                    res["file_units"] = {"path": units[0], "n_spikes": fid["n_true"],
                                         "found_orig": fid["true_recall_orig"], "found_dec": fid["true_recall_dec"]}
            else:
                res["no_spike_band"] = (f"sampled at {fs:g} Hz: no 300-6000 Hz spike band (needs "
                                        f">= {SPIKE_BAND_MIN_FS:.0f} Hz), so no spike metrics")
            if figures and report_dir is not None:
                figs += _figures(res, lambda: _ephys_figures(
                    ow if ow.ndim == 2 else ow[:, None], dw if dw.ndim == 2 else dw[:, None],
                    fs, report_dir, o.name, band))
    res["figures"] = [str(p.name) for p in figs]
    return res


def _figures(res: dict, make) -> list[Path]:
    """The figures ``make()`` draws; a figure that fails is reported in ``res["figure_error"]`` instead of
    ending the whole evaluation (the metrics of every dataset are still written)."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001
        import matplotlib.pyplot as plt

        plt.close("all")
        res["figure_error"] = f"{type(e).__name__}: {e}"
        print(f"necoda evaluate: warning: no figure for {res['path']}: {res['figure_error']}", file=sys.stderr)
        return []


def _against_file_traces(f, file_rois, ow, dw, wrows) -> list[dict]:
    """Per RoiResponseSeries the file stores over these ROIs: median (and 5th percentile) r of the ROI mean
    traces of the original and of the decoded window against the stored traces (for a simulation, the
    truth; for a lab's file, what its pipeline extracted from the original)."""
    from .. import metrics

    out = []
    for path, have, cols in file_rois.traces:
        stored = np.asarray(f[path]["data"][:wrows], dtype=np.float64).reshape(wrows, -1)[:, cols].T  # (n, T)
        fid = metrics.imaging_fidelity(ow, dw, masks=file_rois.masks[have], true_traces=stored)
        out.append({"path": path, "n_rois": int(len(have)), "r_median_orig": fid["true_r_median_orig"],
                    "r_median_dec": fid["true_r_median_dec"], "r_p05_dec": fid["true_r_p05_dec"]})
    return out


def _slug(path: str) -> str:
    return path.strip("/").replace("/", "__")


def _imaging_figures(ow, dw, masks, out: Path, name: str, roi_source: str, roi_ids=None) -> list[Path]:
    """Example frame original / decoded / error; the six most variable ROIs' traces (``roi_ids``: the
    labels of ``masks``' rows, e.g. the file's PlaneSegmentation ids; default their positions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import metrics

    paths = []
    t = ow.shape[0] // 2
    a = ow[t].astype(np.float64)
    b = dw[t].astype(np.float64)
    e = b - a
    vmin, vmax = np.percentile(a, [0.5, 99.8])
    lim = max(1.0, float(np.percentile(np.abs(e), 99.9)))
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.4))
    for k, (img, title) in enumerate([(a, f"original, frame {t}"), (b, "decoded (same grey scale)")]):
        im = ax[k].imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax[k].set_title(title)
        ax[k].axis("off")
        fig.colorbar(im, ax=ax[k], fraction=0.046, pad=0.03, label="raw units")  # equal panel sizes
    im = ax[2].imshow(e, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax[2].set_title(f"error (decoded - original), max |e| {np.abs(e).max():.3g}")
    ax[2].axis("off")
    fig.colorbar(im, ax=ax[2], fraction=0.046, pad=0.03, label="raw units")
    fig.suptitle(name)
    fig.subplots_adjust(left=0.02, right=0.95, top=0.86, bottom=0.04, wspace=0.25)
    p = out / f"{_slug(name)}_frames.png"
    fig.savefig(p, dpi=110, bbox_inches="tight", pad_inches=0.1)  # the last colour bar's label sits at the edge
    plt.close(fig)
    paths.append(p)

    if len(masks):
        to = metrics.roi_traces(ow, masks)
        td = metrics.roi_traces(dw, masks)
        r = metrics.trace_correlations(to, td)
        order = np.argsort(-np.nan_to_num(to.std(axis=1)))[:6]
        fig, ax = plt.subplots(len(order), 1, figsize=(12, 1.6 * len(order) + 0.8), sharex=True,
                               squeeze=False)
        for row, i in enumerate(order):
            axx = ax[row, 0]
            axx.plot(to[i], color="black", lw=1.0, label="original")
            axx.plot(td[i], color="tab:red", lw=0.9, ls="--", label="decoded")
            axx.set_ylabel(f"ROI {i if roi_ids is None else roi_ids[i]}\nr={r[i]:.4f}", fontsize=8)
            if row == 0:
                axx.legend(loc="upper right", fontsize=8)
        ax[-1, 0].set_xlabel("frame")
        fig.suptitle(f"{name}: ROI mean traces (ROIs: {roi_source})")
        fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.08, hspace=0.15)
        p = out / f"{_slug(name)}_roi_traces.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def _ephys_figures(ow, dw, fs, out: Path, name: str, band: bool = True) -> list[Path]:
    """The largest spike of the original (``band``: in its 300-6000 Hz band; otherwise, for a slow series
    without that band, the largest deviation from the channel's median) on up to five neighbouring
    channels, original and decoded overlaid (raw, and band-passed when there is a band), and the error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import metrics

    def feature(x):  # what "the largest spike" is measured on
        if band:
            return metrics.bandpass(x, fs)
        x = x.astype(np.float64)
        return -np.abs(x - np.median(x, axis=0))

    yo = feature(ow)
    t, ch = np.unravel_index(int(np.argmin(yo)), yo.shape)
    del yo
    h = max(int(0.01 * fs), 8)  # +-10 ms, at least 8 samples each side
    m = max(int(0.1 * fs), 4 * h)
    s0, s1 = max(0, t - m), min(ow.shape[0], t + m)
    ow, dw = ow[s0:s1], dw[s0:s1]
    t -= s0
    t0, t1 = max(0, t - h), min(ow.shape[0], t + h + 1)
    chans = list(range(max(0, ch - 2), min(ow.shape[1], ch + 3)))
    ms = (np.arange(t0, t1) - t) / fs * 1000
    views = [(ow, dw, "raw")]
    if band:
        views.append((metrics.bandpass(ow, fs), metrics.bandpass(dw, fs), "300-6000 Hz band"))
    fig, ax = plt.subplots(1, len(views) + 1, figsize=(4.7 * (len(views) + 1), 5.4))
    labels = [f"ch {c}" for c in chans]
    for k, (xo, xd, title) in enumerate(views):
        span = max(1.0, float(np.ptp(xo[t0:t1, chans])))
        for j, c in enumerate(chans):
            off = j * span
            ax[k].plot(ms, xo[t0:t1, c] - np.median(xo[t0:t1, c]) + off, color="black", lw=1.0,
                       label="original" if j == 0 else None)
            ax[k].plot(ms, xd[t0:t1, c] - np.median(xo[t0:t1, c]) + off, color="tab:red", lw=0.9, ls="--",
                       label="decoded" if j == 0 else None)
        ax[k].set_yticks([j * span for j in range(len(chans))], labels, fontsize=8)
        ax[k].set_title(f"{title}\n(channels {span:.3g} raw units apart)", fontsize=10)
        ax[k].set_xlabel("ms from the spike" if band else "ms from the largest deviation")
    err = dw[t0:t1, chans].astype(np.float64) - ow[t0:t1, chans].astype(np.float64)
    emax = float(np.abs(err).max())
    step = 2.5 * max(1.0, emax)
    for j, c in enumerate(chans):
        ax[-1].step(ms, err[:, j] + j * step, lw=0.8, where="mid")
    ax[-1].set_yticks([j * step for j in range(len(chans))], labels, fontsize=8)
    ax[-1].set_title(f"error (decoded - original), max |e| {emax:.3g}\n(channels {step:.3g} raw units apart)",
                     fontsize=10)
    ax[-1].set_xlabel(ax[0].get_xlabel())
    handles, names = ax[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper right", ncol=2, fontsize=9, frameon=False)
    what = "largest spike of the original" if band else \
        f"largest deviation of the original (sampled at {fs:g} Hz: no spike band)"
    fig.suptitle(f"{name}: {what} (ch {ch}, t = {(t + s0) / fs:.3f} s)")
    fig.subplots_adjust(left=0.05, right=0.98, top=0.83, bottom=0.1, wspace=0.22)
    p = out / f"{_slug(name)}_snippet.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def evaluate_files(original, compressed, report_dir=None, figures=True, **window) -> dict:
    import h5py

    from .. import __version__

    original, compressed = Path(original), Path(compressed)
    for p in (original, compressed):
        _check_input(p)
        if not h5py.is_hdf5(p):
            raise ValueError(f"{p} is not an HDF5/NWB file")
    if original.samefile(compressed):
        raise ValueError(f"ORIGINAL and COMPRESSED are the same file ({compressed}): give the file before "
                         "recompression first, then the output of `necoda compress`")
    report_dir = Path(report_dir) if report_dir else compressed.with_name(compressed.name + ".necoda-report")
    _check_report_dir(report_dir)
    from . import check_output_folder

    check_output_folder(report_dir, f"report folder {report_dir}")  # before the evaluation, not after it
    out = {"original": str(original), "compressed": str(compressed), "necoda_version": __version__,
           "original_file_bytes": original.stat().st_size, "compressed_file_bytes": compressed.stat().st_size,
           "datasets": []}
    from ..nwb import open_input

    with open_input(original) as fo, open_input(compressed) as fc:
        pairs = _pairs(fo, fc)
        if not pairs:  # nothing to evaluate: mismatched or swapped files, not an empty success
            n = len(_necoda_paths(fc))
            if n == 0:
                hint = (" (the first file has some: arguments swapped? ORIGINAL comes first)"
                        if _necoda_paths(fo) else "")
                raise ValueError(f"{compressed} has no necoda-compressed dataset to evaluate{hint}")
            raise ValueError(f"none of the {n} necoda-compressed dataset(s) of {compressed} has a counterpart of "
                             f"the same path, shape and dtype in {original}: is it the file it was compressed from?")
        # the report is made in a new folder next to DIR and then takes DIR's place: nothing in DIR is
        # written through (a link there to an input or to a user's file), no stale figure of an earlier
        # report stays, and an interrupted run leaves DIR as it was
        from ..nwb.atomic import claim_temp, clean_stale_temps, replace_folder, sigterm_as_exit

        clean_stale_temps(report_dir)  # left by runs that were killed (SIGKILL)
        tmp = claim_temp(report_dir, folder=True)
        try:
            with sigterm_as_exit():  # SIGTERM/SIGHUP: an exit that runs the clean-up below
                for path in pairs:
                    o, c = fo[path], fc[path]
                    res = evaluate_dataset(o, c, _kind(o, c), tmp, figures=figures, **window)
                    _check_source(res, o, c, original)
                    out["datasets"].append(res)
                out["file_ratio"] = out["original_file_bytes"] / max(1, out["compressed_file_bytes"])
                (tmp / "report.json").write_text(json.dumps(_clean(out), indent=2))
                (tmp / "report.md").write_text(markdown(out))
                replace_folder(tmp, report_dir)  # an earlier report, checked by _check_report_dir
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    out["report_dir"] = str(report_dir)
    return out


REPORT_FILES = ("report.json", "report.md")


def _check_input(p: Path) -> None:
    """ORIGINAL/COMPRESSED is an existing file; a folder (a zarr store) is named as what it is."""
    if p.is_dir():
        if any((p / m).is_file() for m in ("zarr.json", ".zarray", ".zgroup")):
            raise IsADirectoryError(f"{p} is a zarr store: evaluate compares HDF5/NWB files")
        raise IsADirectoryError(f"{p} is a folder, not an HDF5/NWB file")
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist" + (f" (a symbolic link to {os.readlink(p)}, which does "
                                                         "not exist)" if os.path.islink(p) else ""))
    if not p.is_file():
        raise ValueError(f"{p} is not a regular file (an HDF5/NWB file is expected)")


def _earlier_report(folder: Path) -> set | None:
    """The file names of an earlier ``necoda evaluate`` report in ``folder`` (its report.json and
    report.md and the figures that report.json lists), or None when ``folder`` holds no such report."""
    try:
        rep = json.loads((folder / "report.json").read_text())
        figs = {f for d in rep["datasets"] for f in d.get("figures", [])}
        if "necoda_version" not in rep or not all(isinstance(f, str) and "/" not in f for f in figs):
            return None
    except Exception:  # noqa: BLE001  (missing, unreadable, not JSON, not ours)
        return None
    return set(REPORT_FILES) | figs


def _check_report_dir(report_dir: Path) -> None:
    """``--report DIR`` may be new, empty, or an earlier necoda report (which the new one replaces whole);
    a folder holding anything else is refused: it is not ours to replace."""
    if os.path.islink(report_dir) and not report_dir.exists():
        raise FileExistsError(f"report folder {report_dir} is a broken symbolic link")
    if not report_dir.exists():
        return
    here = Path.cwd().resolve()
    if report_dir.resolve() == here or report_dir.resolve() in here.parents:
        raise ValueError(f"report folder {report_dir} is the current folder or holds it: the report replaces the "
                         "folder whole; give another folder")
    if not report_dir.is_dir():
        raise NotADirectoryError(f"report folder {report_dir} exists and is not a folder (--report names a folder)")
    names = {p.name for p in report_dir.iterdir()}
    if not names:
        return
    ours = _earlier_report(report_dir)
    other = sorted(names - (ours or set()))
    if ours is None or other:
        shown = ", ".join(other[:4]) + (", ..." if len(other) > 4 else "")
        raise FileExistsError(f"report folder {report_dir} holds files that are not an earlier necoda report "
                              f"({shown}): give a new or empty folder")


def markdown(res: dict) -> str:
    lines = [f"# necoda evaluate: {os.path.basename(res['compressed'])} vs {os.path.basename(res['original'])}", "",
             f"- original: `{res['original']}` ({res['original_file_bytes'] / 1e6:.1f} MB)",
             f"- compressed: `{res['compressed']}` ({res['compressed_file_bytes'] / 1e6:.1f} MB), "
             f"file size ratio {res['original_file_bytes'] / max(1, res['compressed_file_bytes']):.2f}",
             f"- necoda-filter {res['necoda_version']}", ""]
    if not res["datasets"]:
        lines.append("No necoda-compressed dataset with a counterpart in the original was found.")
        return "\n".join(lines) + "\n"
    lines += ["| dataset | kind | mode | ratio | vs original storage | max abs err | RMSE | PSNR dB | RMSE (noise σ) | fidelity |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for d in res["datasets"]:
        if d["kind"] == "imaging":
            src = "the file's" if d.get("file_traces") is not None else "detected"
            fid = (f"ROI traces, decoded vs original movie: r median {_fmt(d.get('roi_r_median'))}, 5th percentile "
                   f"{_fmt(d.get('roi_r_p05'))} ({d.get('n_rois', 0)} ROIs, {src})")
        elif d.get("no_spike_band"):
            fid = f"no spike metrics: {d['no_spike_band']}"
        else:
            fid = (f"spike F1 {_fmt(d.get('spike_f1'))}, waveform r {_fmt(d.get('waveform_r_median'))} "
                   f"({d.get('n_spikes', 0)} spikes)")
        lines.append(f"| `{d['path']}` | {d['kind']} | {d.get('mode')} | {_fmt(d['ratio'], '.3f')} | "
                     f"{_fmt(d['ratio_vs_original'], '.3f')} | {_fmt(d['max_abs'])} | {_fmt(d['rmse'])} | "
                     f"{_fmt(d['psnr'], '.2f')} | {_fmt(d['rmse_noise'])} | {fid} |")
    windows = ", ".join(f"`{d['path']}` {d['window_rows']}" for d in res["datasets"] if "window_rows" in d)
    lines += ["", "ratio: raw bytes / stored bytes; vs original storage: the original's stored bytes (after its own "
              "compression, if any) / the compressed file's. Errors are in raw units (RMSE (noise σ): in units of "
              "the noise estimated on the original). Error statistics cover every sample; ROI and spike fidelity "
              f"use a leading window (frames or samples: {windows}). ROI r: Pearson r of ROI mean traces, original "
              "vs decoded; spike F1 / waveform r: threshold (5σ) spike detection on the original vs the decoded "
              "data.", ""]
    units = [(d["path"], d["file_units"]) for d in res["datasets"] if d.get("file_units")]
    if units:
        lines += ["Spikes of the original file's Units table (sorted units, or a simulation's truth) that threshold "
                  "detection finds (any channel, ±0.5 ms) in the original and in the decoded recording:", "",
                  "| dataset | units | spikes in the window | original | decoded |", "|---|---|---|---|---|"]
        lines += [f"| `{p}` | `{u['path']}` | {u['n_spikes']} | {_fmt(u['found_orig'])} | {_fmt(u['found_dec'])} |"
                  for p, u in units]
        lines.append("")
    traces = [(d["path"], t) for d in res["datasets"] for t in d.get("file_traces") or []]
    if traces:
        lines += ["ROI mean traces against the traces *stored in the original file* (for the file's ROIs; a "
                  "simulation's are the truth), median r (5th percentile for the decoded movie). Not the "
                  "decoded-vs-original figures of the table above:", "",
                  "| dataset | stored traces | ROIs | original movie vs stored | decoded movie vs stored |",
                  "|---|---|---|---|---|"]
        lines += [f"| `{p}` | `{t['path']}` | {t['n_rois']} | {_fmt(t['r_median_orig'])} | "
                  f"{_fmt(t['r_median_dec'])} ({_fmt(t['r_p05_dec'])}) |" for p, t in traces]
        lines.append("")
    for d in res["datasets"]:
        if d.get("source_mismatch"):
            lines += [f"**Warning:** `{d['path']}`: max error {_fmt(d['max_abs'])} here but "
                      f"{_fmt(d['recorded_max_abs'])} when it was compressed: the original is not the file it was "
                      "compressed from (or was modified).", ""]
        elif d.get("original_is_decoded"):
            lines += [f"**Warning:** `{d['path']}`: max error {_fmt(d['max_abs'])} here but "
                      f"{_fmt(d['recorded_max_abs'])} against the data it was compressed from: the original given "
                      "holds decoded data (e.g. a `necoda decompress` copy), so these figures say nothing about what "
                      "compression changed.", ""]
    for d in res["datasets"]:
        if d.get("earlier_lossy_runs") and not d.get("source_mismatch"):
            lines += [f"`{d['path']}` was compressed lossily {d['earlier_lossy_runs'] + 1} times (`necoda info`); the "
                      f"maximum errors recorded at each run add up to {_fmt(d['recorded_max_abs_chain'])}, so an "
                      "original from any step of that chain is consistent with the error measured here.", ""]
    for d in res["datasets"]:
        if d.get("figure_error"):
            lines += [f"No figure for `{d['path']}`: {d['figure_error']}", ""]
    for d in res["datasets"]:
        for f in d.get("figures", []):
            lines.append(f"![{d['path']}]({f})")
    return "\n".join(lines) + "\n"


def _require_matplotlib() -> None:
    """Figures need matplotlib (a dependency; missing only in an environment installed without it): say so
    before any work, not with a traceback after the metrics of the first dataset."""
    from . import missing

    if missing(["matplotlib"]):
        raise ValueError("the PNG figures need matplotlib, which is not installed here: "
                         "pip install matplotlib, or pass --no-figures for the metrics only")


def run(args) -> int:
    if not args.no_figures:
        _require_matplotlib()
    # a negative window silently meant "all but the last frames" (o[:-n]); NaN failed deep inside
    if args.window_frames < 1:
        raise ValueError(f"--window-frames must be at least 1, got {args.window_frames}")
    for opt, v in (("--window-seconds", args.window_seconds), ("--window-mb", args.window_mb)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{opt} must be a number > 0, got {v}")
    res = evaluate_files(args.original, args.compressed, args.report, figures=not args.no_figures,
                         window_frames=args.window_frames, window_seconds=args.window_seconds,
                         window_mb=args.window_mb)
    print(markdown(res))
    print(f"report: {res['report_dir']}/report.md")
    return 0
