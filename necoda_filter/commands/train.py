"""``necoda train``: reproduce the learned mode's built-in weights (optional extra ``[train]``)."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("recordings", nargs="*", help="extra recordings to train on (.npz key 'data', .npy, file.h5::dataset)")
    p.add_argument("--out", default="necoda_model", help="output package folder (default ./necoda_model)")
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


def run(args) -> int:
    import sys
    from pathlib import Path

    try:
        from ..train.train import train
    except ImportError as e:  # torch missing
        print(f"necoda train needs the [train] extra (torch, onnx): {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train_log.txt", "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    log("necoda train " + " ".join(sys.argv[1:]))
    mid = train(out, simulator=args.simulator, n_sims=args.sims, recordings=args.recordings, minutes=args.minutes,
                max_steps=args.steps, threads=args.threads, seed=args.seed, width=args.width, lr=args.lr, init=args.init,
                lambdas=[float(v) for v in args.lambdas.split(",")] if args.lambdas else None,
                patch=tuple(int(v) for v in args.patch.split(",")),
                **({} if args.trace_weight is None else {"trace_weight": args.trace_weight}), log=log)
    log(f"model id {mid}")
    return 0
