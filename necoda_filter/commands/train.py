"""``necoda train``: reproduce the learned mode's built-in weights (optional extra ``[train]``)."""
from __future__ import annotations


#: what ``pip`` installs for training (pyproject's ``train`` extra)
TRAIN_PACKAGES = ("torch", "onnx")


def add_arguments(p):
    p.add_argument("recordings", nargs="*",
                   help="extra recordings to train on: .npy, .npz (array 'data'), an HDF5/NWB dataset as "
                        "file.h5:/path/to/dataset (as in necoda bench) or file.h5::path/to/dataset, or file.h5 "
                        "(its dataset 'data')")
    p.add_argument("--out", default="necoda_model", help="output package folder (default ./necoda_model); written "
                                                         "complete or not at all (a temporary folder renamed at the end); "
                                                         "the folder that holds it must exist (missing folders are not "
                                                         "created: a mistyped path is an error)")
    p.add_argument("--force", action="store_true", help="replace an earlier model package at --out (never a folder "
                   "that is not one, the current folder, or one holding a recording)")
    p.add_argument("--simulator", default="necoda_filter.simulate:simulate_imaging", help="module:function of the simulator")
    p.add_argument("--sims", type=int, default=10, help="number of simulated movies (default 10)")
    p.add_argument("--minutes", type=float, default=20.0, help="training time budget in minutes (default 20)")
    p.add_argument("--steps", type=int, default=100000, help="maximum steps (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--width", type=int, default=24, help="feature channels of the network's first layers (default %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (default %(default)g)")
    p.add_argument("--init", default=None, help="warm start from a weights.pt written by an earlier run")
    p.add_argument("--lambdas", default=None, help="fixed rate-distortion weights, one per quality (comma-separated); "
                                                   "default: steered toward the built-in rate targets")
    p.add_argument("--patch", default="32,64,64",
                   help="training patch T,H,W (T a multiple of 8, H and W of 16; default 32,64,64)")
    p.add_argument("--trace-weight", type=float, default=None,
                   help="weight of the soma-trace error in the loss (simulations; default 3, 0 = off)")


def _require_train_extra() -> None:
    """torch and onnx come with the optional [train] extra: say so before any work. (The trainer imports
    torch only inside train(), so without this check a plain install got past every argument check, made
    the output folder and died in train() with a ModuleNotFoundError traceback.)"""
    from . import missing as missing_packages

    missing = missing_packages(TRAIN_PACKAGES)
    if missing:
        raise ValueError(f"necoda train needs the [train] extra ({', '.join(missing)} not installed here): "
                         'pip install "necoda-filter[train]"')


def split_recording(spec: str):
    """A recording argument -> (file, dataset or None). HDF5/NWB datasets may be named as ``necoda bench``
    does, ``file.h5:/path/to/dataset``, or as ``file.h5::path/to/dataset``; a file name that holds ':'
    still works (the longest prefix that is an existing file wins)."""
    import os

    if "::" in spec:
        head, _, tail = spec.partition("::")
        if os.path.isfile(head) or not os.path.isfile(spec):
            return head, tail.strip("/") or None
    i = spec.rfind(":")
    while i > 0:
        head, tail = spec[:i], spec[i + 1:]
        if tail and os.path.isfile(head):
            return head, tail.strip("/") or None
        i = spec.rfind(":", 0, i)
    return spec, None


def _check_recording(spec: str) -> str:
    """Check one recording argument and return it in the trainer's form (``file.h5::dataset``)."""
    import os

    import re

    f, ds = split_recording(spec)
    if os.path.isdir(f):
        raise ValueError(f"recording {f} is a folder, not a file: use .npy, .npz or an HDF5/NWB dataset "
                         "file.h5:/path/to/dataset")
    if not os.path.isfile(f):
        m = re.match(r"(.+?\.(?:h5|hdf5|nwb)):", f)  # missing.nwb:/acquisition/X/data -> missing.nwb
        raise FileNotFoundError(f"no such file: {m.group(1) if m else f}")
    h5 = f.endswith((".h5", ".hdf5", ".nwb"))  # the suffixes train.data.load_recording reads
    if ds is None and f.endswith((".npy", ".npz")):
        return f
    if ds is None and not h5:
        raise ValueError(f"unsupported recording {spec}: use .npy, .npz or an HDF5/NWB dataset "
                         "file.h5:/path/to/dataset")
    import h5py

    if not h5py.is_hdf5(f):
        raise ValueError(f"{f} is not an HDF5 file (recording {spec})")
    if not h5:
        raise ValueError(f"unsupported recording {spec}: HDF5 files must be named .h5, .hdf5 or .nwb")
    from ..nwb.atomic import open_input  # a file locked by a writer: the hint compress gives

    with open_input(f) as h:
        if not isinstance(h.get(ds or "data"), h5py.Dataset):
            raise ValueError(f"{f} has no dataset /{ds or 'data'} (recording {spec}; name the dataset as "
                             f"{f}:/path/to/dataset)")
    return f if ds is None else f"{f}::{ds}"


def _check_args(args):
    """Reject bad values with one clear line (ValueError/FileNotFoundError) before anything is written."""
    import importlib
    import os

    for name, v, ok, what in (("--minutes", args.minutes, args.minutes > 0, "> 0"),
                              ("--steps", args.steps, args.steps >= 1, ">= 1"),
                              ("--sims", args.sims, args.sims >= 0, ">= 0"),
                              ("--threads", args.threads, args.threads >= 1, ">= 1"),
                              ("--width", args.width, args.width >= 1, ">= 1"),
                              ("--lr", args.lr, args.lr > 0, "> 0"),
                              ("--trace-weight", args.trace_weight,
                               args.trace_weight is None or args.trace_weight >= 0, ">= 0")):
        if not ok or v != v:  # v != v: NaN
            raise ValueError(f"{name} must be {what}, got {v}")
    if args.sims == 0 and not args.recordings:
        raise ValueError("nothing to train on: --sims 0 and no recordings")
    try:
        patch = tuple(int(v) for v in args.patch.split(","))
    except ValueError:
        patch = ()
    if len(patch) != 3 or min(patch) < 1 or patch[0] % 8 or patch[1] % 16 or patch[2] % 16:
        raise ValueError(f"--patch must be T,H,W with T a multiple of 8 and H, W of 16, got {args.patch!r}")
    lambdas = None
    if args.lambdas:
        try:
            lambdas = [float(v) for v in args.lambdas.split(",")]
        except ValueError:
            raise ValueError(f"--lambdas must be comma-separated numbers, got {args.lambdas!r}") from None
        if any(not (v >= 0) for v in lambdas):
            raise ValueError(f"--lambdas must be >= 0, got {args.lambdas!r}")
    mod, sep, fn = args.simulator.partition(":")
    try:
        if not (mod and sep and fn) or not callable(getattr(importlib.import_module(mod), fn, None)):
            raise ImportError
    except ImportError:
        raise ValueError(f"--simulator must name an importable module:function, got {args.simulator!r}") from None
    args.recordings = [_check_recording(r) for r in args.recordings]
    if args.init and not os.path.isfile(args.init):
        raise FileNotFoundError(f"no such file: {args.init}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise FileExistsError(f"--out {args.out} exists and is not a folder")
    from . import check_output_folder

    check_output_folder(os.path.abspath(args.out), f"--out {args.out}")  # before any training
    if os.path.isdir(args.out) and os.listdir(args.out):
        if not getattr(args, "force", False):
            raise FileExistsError(f"--out {args.out} exists and is not empty (--force replaces it)")
        _check_replaceable(args.out, args.recordings)
    return patch, lambdas


def _check_replaceable(out: str, recordings) -> None:
    """``--force`` replaces an earlier model package, and nothing else: not a folder without one (the
    current folder, a data folder), not the folder the command runs in or one of its parents, not a folder
    holding a recording to train on."""
    import os
    from pathlib import Path

    here = Path.cwd().resolve()
    o = Path(out).resolve()
    if o == here or o in here.parents:
        raise ValueError(f"--out {out} is the current folder or holds it: --force would delete it; "
                         "give a new folder or an earlier model package")
    if not (o / "tables.json").is_file():
        raise ValueError(f"--out {out} is not a model package (no tables.json): --force replaces only an "
                         "earlier `necoda train` output; give a new folder")
    for rec in recordings:
        path = Path(split_recording(rec)[0]).resolve()
        if o in path.parents:
            raise ValueError(f"--out {out} holds the recording {rec}: --force would delete it")


def run(args) -> int:
    import sys
    from pathlib import Path

    patch, lambdas = _check_args(args)  # a wrong argument first: it is the user's to fix whatever is installed
    _require_train_extra()
    import shutil

    from ..train.train import train

    out = Path(args.out).absolute()
    # the package is built in a temporary folder next to --out and renamed at the end: an interrupted or
    # failed run leaves no half-written model (and an existing one, with --force, stays until then)
    from ..nwb.atomic import claim_temp, clean_stale_temps, replace_folder, sigterm_as_exit

    clean_stale_temps(out)  # left by runs that were killed (SIGKILL)
    tmp = claim_temp(out, folder=True)
    with sigterm_as_exit():  # SIGTERM/SIGHUP: an exit that runs the clean-up below
        try:
            with open(tmp / "train_log.txt", "w") as logf:
                def log(msg):
                    msg = msg.replace(str(tmp), str(out))  # "exported ... to OUT", not to the temporary
                    print(msg, flush=True)
                    logf.write(msg + "\n")
                    logf.flush()

                log("necoda " + " ".join(sys.argv[1:]))
                mid = train(tmp, simulator=args.simulator, n_sims=args.sims, recordings=args.recordings,
                            minutes=args.minutes, max_steps=args.steps, threads=args.threads, seed=args.seed,
                            width=args.width, lr=args.lr, init=args.init, lambdas=lambdas, patch=patch,
                            **({} if args.trace_weight is None else {"trace_weight": args.trace_weight}), log=log)
                log(f"model id {mid}, package {out}")
            replace_folder(tmp, out)  # an earlier package there: checked replaceable (--force) by _check_args
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return 0
