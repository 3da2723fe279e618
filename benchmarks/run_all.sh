#!/usr/bin/env bash
# Regenerate benchmarks/RESULTS.md (+ benchmarks/plots/*.png): `necoda bench --codecs all` on the two
# shared recordings and on one fresh simulation of each kind (with ground truth).
#
#   benchmarks/run_all.sh [IMAGING.npz [TETRODE.raw]]
#   benchmarks/run_all.sh DATA_DIR            # a folder holding both shared files
#
# Defaults: ../shared/data next to the repository. Environment: PYTHON (default python3),
# WORK (folder for the per-run results.json/results.md/PNG; default a fresh temporary folder, kept),
# SIM_EPHYS / SIM_IMAGING / SIM_IMAGING_1P (simulation specs, defaults below), SKIP_REAL=1 / SKIP_SIM=1
# to leave parts out. Only a full run replaces the committed benchmarks/RESULTS.md and benchmarks/plots/:
# a partial run (SKIP_REAL=1 or SKIP_SIM=1) writes its report to $WORK/RESULTS.md and $WORK/plots/ instead
# (the path is printed), unless REPLACE_RESULTS=1 asks for the committed report to be replaced by it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"
# arguments are paths relative to where the script is started: make them absolute before the cd below
abs() { if [[ -z "$1" || "$1" = /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "$1"; fi; }
ARG1="$(abs "${1:-}")" ; ARG2="$(abs "${2:-}")"
cd "$REPO"  # paths in the report are relative to the repository root where possible
DATA_DIR="../shared/data"
IMG="" ; EPH=""
if [[ -n "$ARG1" && -d "$ARG1" ]]; then
  DATA_DIR="$ARG1"
elif [[ -n "$ARG1" ]]; then
  IMG="$ARG1"; EPH="$ARG2"
fi
IMG="${IMG:-$DATA_DIR/ophys_2p_cortex_300x200x200_int16.npz}"
EPH="${EPH:-$DATA_DIR/ephys_locust_tetrode_15khz_4ch_int16.raw}"
SIM_IMAGING="${SIM_IMAGING:-sim:imaging:n_frames=500,height=128,width=128,n_cells=40,seed=0}"
SIM_IMAGING_1P="${SIM_IMAGING_1P:-sim:imaging:n_frames=500,height=128,width=128,n_cells=60,background=1p,seed=1}"
SIM_EPHYS="${SIM_EPHYS:-sim:ephys:duration_s=2,n_channels=384,n_units=30,seed=0}"
SKIP_REAL="${SKIP_REAL:-0}" ; SKIP_SIM="${SKIP_SIM:-0}" ; REPLACE_RESULTS="${REPLACE_RESULTS:-0}"
if [[ "$SKIP_REAL" == 1 && "$SKIP_SIM" == 1 ]]; then
  echo "SKIP_REAL=1 and SKIP_SIM=1 leave nothing to run" >&2; exit 1
fi
WORK="${WORK:-$(mktemp -d -t necoda-bench-XXXXXX)}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"  # absolute: the script runs from the repository root
# where the report goes: the committed one only for a full run (or when explicitly asked)
if [[ "$SKIP_REAL" != 1 && "$SKIP_SIM" != 1 ]] || [[ "$REPLACE_RESULTS" == 1 ]]; then
  REPORT="$HERE/RESULTS.md" ; PLOTS="$HERE/plots"
else
  REPORT="$WORK/RESULTS.md" ; PLOTS="$WORK/plots"
  echo "partial run (SKIP_REAL=$SKIP_REAL SKIP_SIM=$SKIP_SIM): the report goes to $REPORT, not benchmarks/RESULTS.md" \
       "(REPLACE_RESULTS=1 replaces that)" >&2
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
# `python -m necoda_filter.commands.bench` is `necoda bench` without needing the console script
BENCH=("$PYTHON" -m necoda_filter.commands.bench)

dirs=() ; titles=()
run() {  # run TITLE OUTNAME DATA [options...]
  local title="$1" name="$2"; shift 2
  echo "== $title: necoda bench $* (-> $WORK/$name)" >&2
  local t0=$SECONDS
  "${BENCH[@]}" "$@" --codecs all --out "$WORK/$name" > "$WORK/$name.log"
  echo "   done in $((SECONDS - t0)) s" >&2
  dirs+=("$WORK/$name"); titles+=("$title")
}

if [[ "$SKIP_REAL" != 1 ]]; then
  [[ -f "$IMG" ]] || { echo "missing $IMG (pass the shared data folder as the first argument)" >&2; exit 1; }
  [[ -f "$EPH" ]] || { echo "missing $EPH (pass the shared data folder as the first argument)" >&2; exit 1; }
  # movies: 128-frame chunks, the chunking docs/LEARNED.md recommends (every codec gets the same chunks)
  run "Two-photon movie, mouse cortex (real)" ophys "$IMG" --fs 30 --chunk-frames 128
  run "Tetrode, locust antennal lobe (real)" tetrode "$EPH" --dtype int16 --channels 4 --fs 15000
fi
if [[ "$SKIP_SIM" != 1 ]]; then
  run "Simulated two-photon movie (ground truth)" sim-imaging "$SIM_IMAGING" --chunk-frames 128
  run "Simulated one-photon-like movie, heavy background (ground truth)" sim-imaging-1p "$SIM_IMAGING_1P" --chunk-frames 128
  run "Simulated 384-channel Neuropixels-like recording (ground truth)" sim-ephys "$SIM_EPHYS"
fi

COMMAND="benchmarks/run_all.sh"
[[ "$SKIP_REAL" == 1 ]] && COMMAND="SKIP_REAL=1 $COMMAND"
[[ "$SKIP_SIM" == 1 ]] && COMMAND="SKIP_SIM=1 $COMMAND"
"$PYTHON" - "$REPORT" "$PLOTS" "$COMMAND" "${#dirs[@]}" "${dirs[@]}" "${titles[@]}" <<'PY'
import sys
from pathlib import Path
from necoda_filter.bench import write_summary
report, plots, command, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
dirs, titles = sys.argv[5:5 + n], sys.argv[5 + n:5 + 2 * n]
p = write_summary(dirs, report, plots, command=command, titles=titles)
print(f"wrote {p} and {plots}/*.png", file=sys.stderr)
PY
echo "per-run results (json, md, png, logs) in $WORK" >&2
