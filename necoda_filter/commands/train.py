"""``necoda train``: reproduce the learned mode's built-in weights (optional extra ``[train]``)."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("recordings", nargs="*", help="extra recordings to train on (.npz key 'data', .npy, file.h5::dataset)")
    p.add_argument("--out", default="necoda_model", help="output package folder (default ./necoda_model); written "
                                                         "complete or not at all (a temporary folder renamed at the end)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.add_argument("--simulator", default="necoda_filter.simulate:simulate_imaging", help="module:function of the simulator")
    p.add_argument("--sims", type=int, default=10, help="number of simulated movies (default 10)")
    p.add_argument("--minutes", type=float, default=20.0, help="training time budget in minutes (default 20)")
    p.add_argument("--steps", type=int, default=100000, help="maximum steps")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--init", default=None, help="warm start from a weights.pt written by an earlier run")
    p.add_argument("--lambdas", default=None, help="fixed rate-distortion weights, one per quality (comma-separated); "
                                                   "default: steered toward the built-in rate targets")
    p.add_argument("--patch", default="32,64,64",
                   help="training patch T,H,W (T a multiple of 8, H and W of 16; default 32,64,64)")
    p.add_argument("--trace-weight", type=float, default=None,
                   help="weight of the soma-trace error in the loss (simulations; default 3, 0 = off)")


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
    for r in list(args.recordings) + ([args.init] if args.init else []):
        f = r.partition("::")[0]
        if not os.path.isfile(f):
            raise FileNotFoundError(f"no such file: {f}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise FileExistsError(f"--out {args.out} exists and is not a folder")
    if os.path.isdir(args.out) and os.listdir(args.out) and not getattr(args, "force", False):
        raise FileExistsError(f"--out {args.out} exists and is not empty (--force replaces it)")
    return patch, lambdas


def run(args) -> int:
    import sys
    from pathlib import Path

    patch, lambdas = _check_args(args)
    try:
        from ..train.train import train
    except ImportError as e:  # torch missing
        print(f"necoda train needs the [train] extra (torch, onnx): {e}", file=sys.stderr)
        return 1
    import os
    import shutil

    out = Path(args.out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    # the package is built in a temporary folder next to --out and renamed at the end: an interrupted or
    # failed run leaves no half-written model (and an existing one, with --force, stays until then)
    tmp = out.parent / f".{out.name}.necoda-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with open(tmp / "train_log.txt", "w") as logf:
            def log(msg):
                print(msg, flush=True)
                logf.write(msg + "\n")
                logf.flush()

            log("necoda " + " ".join(sys.argv[1:]))
            mid = train(tmp, simulator=args.simulator, n_sims=args.sims, recordings=args.recordings,
                        minutes=args.minutes, max_steps=args.steps, threads=args.threads, seed=args.seed,
                        width=args.width, lr=args.lr, init=args.init, lambdas=lambdas, patch=patch,
                        **({} if args.trace_weight is None else {"trace_weight": args.trace_weight}), log=log)
            log(f"model id {mid}, package {out}")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.necoda-old-{os.getpid()}"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return 0
