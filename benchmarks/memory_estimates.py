"""The memory guard's estimate of each quantity against its measured peak memory.

    python benchmarks/memory_estimates.py [--quick] [--dtype float64|float32]

For every guarded quantity (and, for comparison, the matrix-free ones) it runs the
quantity in a fresh process on a problem whose result is a few hundred MB: once to
compile, then again after resetting the kernel's peak-RSS mark (``/proc/self/clear_refs``);
"measured" is the peak RSS of that second call above the RSS just before it (inputs and
compiled code are already there). "estimate" is what the public function asks
:func:`fluxhess._memory.require` for before allocating, captured by wrapping it. The
ratio measured / estimate should lie within [0.5, 2].

Writes the table to stdout and to ``benchmarks/results/memory_estimates.txt``.
Linux only (it reads ``/proc``). Installs nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

#: case: (quantity, widths of a tanh MLP, N). The first ones are sized for results of a few
#: hundred MB in float64; the "-linear" ones are small results from many samples, where a
#: route's scratch that grows with N × P² (not with the result) would show.
PROBLEMS = {
    "hessian": ("hessian", [16, 64, 64, 8], 32),
    "ggn": ("ggn", [16, 64, 64, 8], 256),
    "empirical_fisher": ("empirical_fisher", [16, 64, 64, 8], 256),
    "kron": ("kron", [3000, 3000, 1], 32),
    "param_jacobian": ("param_jacobian", [16, 64, 64, 8], 1000),
    "input_hessian": ("input_hessian", [64, 64, 8], 1600),
    "hvp": ("hvp", [16, 64, 64, 8], 256),
    "diagonal": ("diagonal", [16, 64, 64, 8], 256),
    "laplacian": ("laplacian", [64, 64, 8], 20000),
    "ggn-linear": ("ggn", [500, 1], 3100),
    "hessian-linear": ("hessian", [600, 1], 4000),
    "ggn-linear-P1001": ("ggn", [1000, 1], 5000),
    "hessian-mlp-many-samples": ("hessian", [30, 30, 1], 20000),
    "ggn-generic": ("ggn", [16, 64, 64, 8], 256),
    "hessian-generic": ("hessian", [16, 64, 64, 8], 32),
}


def _model(case: str, widths: list[int]):
    """A tanh MLP; for the "-generic" cases a softmax after the first Dense layer, which the
    structured Dense-chain route does not cover (the generic route runs)."""
    import fluxhess as fh

    model = fh.Chain.mlp(widths, "tanh")
    if case.endswith("-generic"):
        model = fh.Chain(model.layers[0], fh.Activation("softmax"), *model.layers[1:])
    return model
#: --quick divides every width and N by this.
QUICK = 4


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)


def measure_one(case: str, quick: bool, dtype: str) -> dict:
    """Run ``case``'s quantity twice in this process; the second run's peak RSS above its start."""
    import numpy as np

    import fluxhess as fh
    from fluxhess import _memory as memory

    quantity, widths, N = PROBLEMS[case]
    if quick:
        widths = [max(2, w // QUICK) for w in widths]
        N = max(2, N // QUICK)
    model = _model(case, widths)
    rng = np.random.default_rng(0)
    theta = model.init(0)
    X = rng.normal(size=(N, model.in_features))
    Y = rng.normal(size=(N, model.out_features))
    V = rng.normal(size=(model.num_params, 8))
    calls = {
        "hessian": lambda: fh.hessian(model, theta, X, Y, backend="jax", dtype=dtype),
        "ggn": lambda: fh.ggn(model, theta, X, Y, backend="jax", dtype=dtype),
        "empirical_fisher": lambda: fh.empirical_fisher(model, theta, X, Y, backend="jax", dtype=dtype),
        "kron": lambda: fh.kron(model, theta, X, Y, backend="jax", dtype=dtype),
        "param_jacobian": lambda: fh.param_jacobian(model, theta, X, backend="jax", dtype=dtype),
        "input_hessian": lambda: fh.input_hessian(model, theta, X, backend="jax", dtype=dtype),
        "hvp": lambda: fh.hvp(model, theta, X, Y, V, backend="jax", dtype=dtype),
        "diagonal": lambda: fh.diagonal(model, theta, X, Y, backend="jax", dtype=dtype),
        "laplacian": lambda: fh.laplacian(model, theta, X, backend="jax", dtype=dtype),
    }
    asked = []
    require = memory.require

    def spy(q, nbytes, shape, **kw):
        asked.append(nbytes)
        return require(q, nbytes, shape, **kw)

    memory.require = spy
    out = calls[quantity]()  # compile and warm up
    del out
    gc.collect()
    asked.clear()
    start = _status("VmRSS")
    _reset_peak()
    out = calls[quantity]()
    peak = _status("VmHWM")
    result = out.nbytes if isinstance(out, np.ndarray) else sum(f.A.nbytes + f.G.nbytes for f in out)
    return {
        "quantity": case,
        "model": widths,
        "N": N,
        "P": model.num_params,
        "result": int(result),
        "estimate": int(sum(asked)) if asked else None,
        "measured": int(peak - start),
    }


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"widths and N divided by {QUICK} (a smoke test)")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--only", help="comma-separated cases")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one case, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.quick, args.dtype)))
        return 0
    if not Path("/proc/self/clear_refs").exists():
        print("needs Linux /proc (VmHWM and clear_refs)", file=sys.stderr)
        return 2
    names = args.only.split(",") if args.only else list(PROBLEMS)
    head = f"{'case':<26}{'model':<22}{'N':>7}{'P':>10}{'result MiB':>12}{'estimate MiB':>14}{'peak MiB':>10}{'peak/est':>10}"
    lines = [f"memory estimate vs measured peak RSS ({args.dtype}; peak above the RSS before the call)", head]
    print("\n".join(lines), flush=True)
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--dtype", args.dtype] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        ratio = "-" if not r["estimate"] else f"{r['measured'] / r['estimate']:.2f}"
        lines.append(
            f"{r['quantity']:<26}{str(r['model']):<22}{r['N']:>7}{r['P']:>10}{_mib(r['result']):>12}"
            f"{_mib(r['estimate']):>14}{_mib(r['measured']):>10}{ratio:>10}"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    out = Path(__file__).with_name("results") / "memory_estimates.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
