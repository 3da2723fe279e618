"""Acceptance-scale run of the NWB workflow (issue 6, acceptance 1).

    python benchmarks/nwb_scale.py --dir /tmp/necoda_scale [--frames 4096] [--size 512]
        [--ephys-seconds 10] [--imaging lossless|bounded|learned] [--ephys lossless|bounded]
        [--max-error-noise K] [--workers N] [--keep] [--json OUT.json]

1. Writes IN.nwb with pynwb, streaming (H5DataIO + DataChunkIterator, never the whole movie in memory):
   a TwoPhotonSeries of ``frames`` x ``size`` x ``size`` uint16 (4096 x 512 x 512 = 2.1 GB) and a
   384-channel ElectricalSeries (int16, 30 kHz). The movie is a simulated 256-frame block
   (:func:`necoda_filter.simulate.simulate_imaging`) whose expected photon counts are re-drawn with fresh
   Poisson/read noise (and a time shift) for every 256 frames; the ephys is
   :func:`necoda_filter.simulate.simulate_ephys`.
2. Runs ``necoda compress IN.nwb OUT.nwb`` as a subprocess and samples the resident memory (RSS) of the
   whole process tree (the command and its worker processes, summed: an upper bound, shared pages are
   counted once per process) every 50 ms; also reports /usr/bin/time's max RSS of the command itself.
3. Opens OUT.nwb with pynwb in a fresh interpreter whose only link to the filter is
   ``HDF5_PLUGIN_PATH`` and compares frames and ephys samples with IN (exact for lossless datasets).
4. Runs nwbinspector on OUT.nwb (in a fresh interpreter with only HDF5_PLUGIN_PATH) and counts
   CRITICAL/ERROR-level messages; runs ``dandi validate`` when the dandi client is installed (on PATH,
   or named by ``--dandi``: e.g. a separate environment's client, which needs necoda-filter installed in
   that environment to read the data). The file is validated as it would be uploaded: linked into a
   temporary Dandiset folder (``dandiset.yaml``, ``sub-<id>/sub-<id>_ses-<id>_ecephys+ophys.nwb``), as
   ``dandi validate`` reports a lone file outside a Dandiset as an error. Its exit status and "No errors
   found" count in the verdict when it ran.
5. ``necoda decompress OUT.nwb PLAIN.nwb`` and a full comparison of PLAIN against IN: every object and
   attribute, and the data of every lossless dataset bit for bit.
Big files are deleted at the end unless ``--keep``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_input(path: Path, frames: int, size: int, ephys_seconds: float, seed: int = 0) -> dict:
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.data_utils import DataChunkIterator
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries
    from pynwb.file import Subject
    from pynwb.ophys import OpticalChannel, TwoPhotonSeries

    from necoda_filter.simulate import simulate_ephys, simulate_imaging

    block = min(256, frames)
    t = time.perf_counter()
    sim = simulate_imaging(n_frames=block, height=size, width=size, n_cells=max(20, size * size // 1300), seed=seed)
    gain, offset, rn = sim.params["gain"], sim.params["offset"], sim.params["read_noise"]
    lam = np.maximum((sim.clean - offset) / gain, 0).astype(np.float32)
    del sim
    log(f"simulated a {block} x {size} x {size} block in {time.perf_counter() - t:.0f} s")
    rng = np.random.default_rng(seed + 1)

    def frames_iter():
        done = 0
        k = 0
        while done < frames:
            n = min(block, frames - done)
            lam_k = np.roll(lam, shift=37 * k, axis=0)[:n]
            mv = offset + gain * rng.poisson(lam_k) + gain * rn * rng.standard_normal(lam_k.shape, dtype=np.float32)
            mv = np.clip(np.rint(mv), 0, 65535).astype(np.uint16)
            for i in range(n):
                yield mv[i]
            done += n
            k += 1

    eph = simulate_ephys(duration_s=ephys_seconds, n_channels=384, seed=seed)
    nwbf = NWBFile(session_description="necoda scale test", identifier="necoda-scale",
                   session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc), experimenter=["Doe, Jane"],
                   lab="lab", institution="institution", experiment_description="acceptance-scale test",
                   subject=Subject(subject_id="sim1", species="Mus musculus", sex="U", age="P90D"))
    scope = nwbf.create_device(name="scope", description="simulated two-photon microscope")
    ch = OpticalChannel(name="green", description="green", emission_lambda=520.0)
    plane = nwbf.create_imaging_plane(name="plane", optical_channel=ch, description="simulated plane",
                                      device=scope, excitation_lambda=920.0, imaging_rate=30.0,
                                      indicator="GCaMP6f", location="VISp")
    it = DataChunkIterator(data=frames_iter(), maxshape=(frames, size, size), dtype=np.dtype("uint16"),
                           buffer_size=64)
    nwbf.add_acquisition(TwoPhotonSeries(name="TwoPhotonSeries", imaging_plane=plane, rate=30.0, unit="n.a.",
                                         data=H5DataIO(it, chunks=(64, size, size))))
    probe = nwbf.create_device(name="probe", description="simulated Neuropixels-like probe")
    grp = nwbf.create_electrode_group(name="shank0", description="shank", location="CA1", device=probe)
    pos = eph.channel_positions
    for i in range(eph.data.shape[1]):
        nwbf.add_electrode(group=grp, location="CA1", x=float(pos[i, 0]), y=float(pos[i, 1]), z=0.0)
    region = nwbf.create_electrode_table_region(list(range(eph.data.shape[1])), "all electrodes")
    nwbf.add_acquisition(ElectricalSeries(name="ElectricalSeries", data=H5DataIO(eph.data, chunks=(30000, 64)),
                                          electrodes=region, rate=float(eph.fs), conversion=eph.params["uv_per_bit"] * 1e-6))
    t = time.perf_counter()
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbf)
    log(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    return {"frames": frames, "size": size, "ephys_shape": list(eph.data.shape), "fs": float(eph.fs)}


def tree_rss(pid: int) -> tuple[int, int, dict]:
    """(summed VmRSS, summed PSS, {pid: VmRSS}) in bytes of ``pid`` and all its descendants. The RSS sum
    counts pages shared by forked workers once per process (an upper bound); PSS splits them."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    total = pss = 0
    per = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        per[p] = int(line.split()[1]) * 1024
                        total += per[p]
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total, pss, per


def run_measured(cmd: list[str]) -> dict:
    tcmd = ["/usr/bin/time", "-v"] + cmd if os.path.exists("/usr/bin/time") else cmd
    t = time.perf_counter()
    proc = subprocess.Popen(tcmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = peak_pss = 0
    per_peak: dict[int, int] = {}
    stop = threading.Event()

    def sample():
        nonlocal peak, peak_pss
        while not stop.is_set():
            rss, pss, per = tree_rss(proc.pid)
            peak = max(peak, rss)
            peak_pss = max(peak_pss, pss)
            for k, v in per.items():
                per_peak[k] = max(per_peak.get(k, 0), v)
            stop.wait(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t
    res = {"cmd": " ".join(cmd), "rc": proc.returncode, "wall_s": wall, "peak_tree_rss_mb": peak / 1e6,
           "peak_tree_pss_mb": peak_pss / 1e6,
           "peak_rss_per_process_mb": sorted((round(v / 1e6) for v in per_peak.values()), reverse=True),
           "stdout": out[-4000:]}
    for line in err.splitlines():
        if "Maximum resident set size" in line:
            res["time_max_rss_mb"] = int(line.split(":")[1]) * 1024 / 1e6
    if proc.returncode != 0:
        res["stderr"] = err[-4000:]
    return res


def plugin_env() -> dict:
    import necoda_filter

    env = {k: v for k, v in os.environ.items() if not k.startswith("HDF5_PLUGIN")}
    env["HDF5_PLUGIN_PATH"] = necoda_filter.PLUGIN_PATH
    return env


def dandi_validate(dandi: str, nwb_file: Path, workdir) -> dict:
    """``dandi validate`` on ``nwb_file`` as part of a minimal Dandiset (a temporary folder holding
    ``dandiset.yaml`` and a link to the file under a DANDI-style name)."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir, prefix="dandiset-") as d:
        sub = Path(d) / "sub-sim1"
        sub.mkdir()
        (Path(d) / "dandiset.yaml").write_text("identifier: DANDI:000000\nname: necoda nwb_scale\n"
                                               "description: necoda-filter acceptance run\n")
        link = sub / "sub-sim1_ses-1_ecephys+ophys.nwb"
        try:
            os.link(nwb_file, link)
        except OSError:
            link.symlink_to(Path(nwb_file).resolve())
        dv = subprocess.run([dandi, "validate", d], env=plugin_env(), capture_output=True, text=True)
    out = dv.stdout + dv.stderr
    return {"rc": dv.returncode, "no_errors": dv.returncode == 0 and "No errors found" in out, "output": out[-3000:]}


FRESH_READ = r"""
import sys, json, numpy as np, h5py
assert "necoda_filter" not in sys.modules
from pynwb import NWBHDF5IO
out, inp, lossless = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
res = {}
with NWBHDF5IO(out, "r") as io, h5py.File(inp, "r") as fi:
    nwbf = io.read()
    tps = nwbf.acquisition["TwoPhotonSeries"].data
    es = nwbf.acquisition["ElectricalSeries"].data
    T = tps.shape[0]
    sel = [0, 1, T // 2, T - 1]
    a = np.stack([tps[i] for i in sel]); b = np.stack([fi["acquisition/TwoPhotonSeries/data"][i] for i in sel])
    res["imaging_frames_equal"] = bool(np.array_equal(a, b))
    res["imaging_max_abs"] = float(np.abs(a.astype(np.int64) - b).max())
    x = es[:60000]; y = fi["acquisition/ElectricalSeries/data"][:60000]
    res["ephys_equal"] = bool(np.array_equal(x, y))
    res["shape"] = [list(tps.shape), list(es.shape)]
print(json.dumps(res))
"""

INSPECT = r"""
import sys, json
from nwbinspector import inspect_nwbfile
msgs = list(inspect_nwbfile(nwbfile_path=sys.argv[1]))
print(json.dumps([{"importance": m.importance.name, "check": m.check_function_name, "message": m.message,
                   "location": m.location} for m in msgs]))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/necoda_scale")
    p.add_argument("--frames", type=int, default=4096)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--ephys-seconds", type=float, default=10.0)
    p.add_argument("--imaging", default="lossless")
    p.add_argument("--ephys", default="lossless")
    p.add_argument("--max-error-noise", type=float, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--reuse-input", action="store_true", help="keep an existing IN.nwb")
    p.add_argument("--json", default=None)
    p.add_argument("--dandi", default=None,
                   help="dandi executable for `dandi validate` (default: `dandi` on PATH, skipped when absent)")
    a = p.parse_args(argv)

    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(d).free
    need = a.frames * a.size * a.size * 2 * 3.2
    if free < need:
        print(f"not enough disk in {d}: {free / 1e9:.1f} GB free, need ~{need / 1e9:.1f} GB", file=sys.stderr)
        return 2
    src, out, plain = d / "IN.nwb", d / "OUT.nwb", d / "PLAIN.nwb"
    results: dict = {"args": vars(a), "loadavg_start": os.getloadavg(), "cpus": os.cpu_count()}
    try:
        if not (a.reuse_input and src.exists()):
            results["input"] = write_input(src, a.frames, a.size, a.ephys_seconds)
        results["input_bytes"] = src.stat().st_size
        in_stat = src.stat()
        for f in (out, plain):
            if f.exists():
                f.unlink()

        cmd = [sys.executable, "-m", "necoda_filter.cli", "compress", str(src), str(out),
               "--imaging", a.imaging, "--ephys", a.ephys, "--quiet"]
        if a.max_error_noise is not None:
            cmd += ["--max-error-noise", str(a.max_error_noise)]
        if a.workers:
            cmd += ["--workers", str(a.workers)]
        log("compress: " + " ".join(cmd[2:]))
        results["compress"] = r = run_measured(cmd)
        log(f"compress rc={r['rc']} wall {r['wall_s']:.0f} s, peak tree RSS {r['peak_tree_rss_mb']:.0f} MB "
            f"(PSS {r['peak_tree_pss_mb']:.0f} MB; per process {r['peak_rss_per_process_mb']} MB), "
            f"time max RSS {r.get('time_max_rss_mb', float('nan')):.0f} MB")
        if r["rc"] != 0:
            print(r.get("stderr", ""), file=sys.stderr)
            return 1
        print(r["stdout"])
        results["output_bytes"] = out.stat().st_size
        results["input_unchanged"] = (src.stat().st_mtime_ns, src.stat().st_size) == (in_stat.st_mtime_ns, in_stat.st_size)
        raw = a.frames * a.size * a.size * 2
        results["imaging_raw_bytes"] = raw

        lossless = a.imaging == "lossless"
        fr = subprocess.run([sys.executable, "-c", FRESH_READ, str(out), str(src), "1" if lossless else "0"],
                            env=plugin_env(), capture_output=True, text=True)
        results["fresh_read"] = json.loads(fr.stdout) if fr.returncode == 0 else {"error": fr.stderr[-3000:]}
        log(f"fresh pynwb read (HDF5_PLUGIN_PATH only): {results['fresh_read']}")

        ins = subprocess.run([sys.executable, "-c", INSPECT, str(out)], env=plugin_env(), capture_output=True, text=True)
        if ins.returncode == 0:
            msgs = json.loads(ins.stdout)
            results["nwbinspector"] = {
                "n_messages": len(msgs),
                "n_errors": sum(m["importance"] in ("CRITICAL", "ERROR", "PYNWB_VALIDATION") for m in msgs),
                "messages": msgs[:50]}
        else:
            results["nwbinspector"] = {"error": ins.stderr[-3000:]}
        log(f"nwbinspector: {({k: v for k, v in results['nwbinspector'].items() if k != 'messages'})}")
        dandi = a.dandi or shutil.which("dandi")
        if dandi:
            results["dandi_validate"] = dandi_validate(dandi, out, a.dir)
            dv = results["dandi_validate"]
            errs = [ln for ln in dv["output"].splitlines() if ln.startswith("[") and "INFO]" not in ln]
            log(f"dandi validate: rc={dv['rc']}, no errors found: {dv['no_errors']}; other messages: {errs[:5]}")
        else:
            results["dandi_validate"] = "dandi client not installed"

        cmd = [sys.executable, "-m", "necoda_filter.cli", "decompress", str(out), str(plain), "--quiet"]
        log("decompress: " + " ".join(cmd[2:]))
        results["decompress"] = r = run_measured(cmd)
        log(f"decompress rc={r['rc']} wall {r['wall_s']:.0f} s, peak tree RSS {r['peak_tree_rss_mb']:.0f} MB")
        if r["rc"] != 0:
            print(r.get("stderr", ""), file=sys.stderr)
            return 1
        from necoda_filter import nwb, provenance

        t = time.perf_counter()
        lossy_paths = set()
        if a.imaging != "lossless":
            lossy_paths.add("/acquisition/TwoPhotonSeries/data")
        if a.ephys != "lossless":
            lossy_paths.add("/acquisition/ElectricalSeries/data")

        def ignore(path, name):
            return name.startswith(provenance.PREFIX) or (name == "comments" and bool(lossy_paths))

        diffs = nwb.structure_diff(src, plain, compare_data=True, ignore_attrs=ignore)
        diffs = [x for x in diffs if not any(x.startswith(lp + ":") and "values differ" in x for lp in lossy_paths)]
        results["roundtrip_diffs"] = diffs
        log(f"decompress round trip vs IN: {len(diffs)} differences ({time.perf_counter() - t:.0f} s) {diffs[:5]}")
        results["plain_bytes"] = plain.stat().st_size
    finally:
        results["loadavg_end"] = os.getloadavg()
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2, default=str))
        if not a.keep:
            for f in (src, out, plain):
                if f.exists():
                    f.unlink()
    fresh = results["fresh_read"]
    fresh_ok = ("error" not in fresh and (fresh["imaging_frames_equal"] or a.imaging != "lossless")
                and (fresh["ephys_equal"] or a.ephys != "lossless"))
    ok = (results["compress"]["peak_tree_rss_mb"] < 2000 and not results["roundtrip_diffs"]
          and results.get("nwbinspector", {}).get("n_errors", 1) == 0 and fresh_ok and results["input_unchanged"]
          and (not isinstance(results["dandi_validate"], dict) or results["dandi_validate"]["no_errors"]))
    log("ACCEPTANCE " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
