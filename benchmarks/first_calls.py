"""What a notebook user waits for first: Julia's start and the first call of each quantity.

    python benchmarks/first_calls.py                      # this checkout, 3 fresh processes
    python benchmarks/first_calls.py --src OLD/src        # another checkout's fluxhess (before/after)

Each measurement runs in a fresh Python process (nothing compiled yet in it): it starts Julia
and loads FluxHess (``backend.julia()``), then calls gradient, hessian, ggn,
empirical_fisher, input_hessian and laplacian once each on the julia backend, timing each.
The model is small (``Chain(Dense(2 => 5, tanh), Dense(5 => 1))``, 100 samples) so that
the times are compilation, not arithmetic. Needs a Julia runtime (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

QUANTITIES = ("gradient", "hessian", "ggn", "empirical_fisher", "input_hessian", "laplacian")

_CHILD = r"""
import json, time
import numpy as np
t0 = time.perf_counter()
import fluxhess as fh
from fluxhess._backends import REGISTRY
REGISTRY["julia"].julia()
out = {"start": time.perf_counter() - t0}
model = fh.Chain(fh.Dense(2, 5, "tanh"), fh.Dense(5, 1))
theta = model.init(seed=0)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(100, 2)), rng.normal(size=100)
for q in QUANTITIES:
    args = (model, theta, X) if q in ("input_hessian", "laplacian") else (model, theta, X, y)
    t = time.perf_counter()
    getattr(fh, q)(*args, backend="julia")
    out[q] = time.perf_counter() - t
print("RESULT " + json.dumps(out))
"""


def measure(src: Path | None) -> dict[str, float]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    code = f"QUANTITIES = {QUANTITIES!r}\n" + _CHILD
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the child process failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=None, help="a src/ folder whose fluxhess to measure")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes (default 3); medians reported")
    args = parser.parse_args(argv)
    runs = [measure(args.src) for _ in range(args.runs)]
    keys = ("start",) + QUANTITIES
    print(f"fluxhess from {args.src or 'this checkout'}; medians of {args.runs} fresh processes (s)")
    print("| " + " | ".join(keys) + " | total |")
    print("|" + "---|" * (len(keys) + 1))
    medians = [statistics.median(r[k] for r in runs) for k in keys]
    print("| " + " | ".join(f"{m:.2f}" for m in medians) + f" | {statistics.median(sum(r[k] for k in keys) for r in runs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
