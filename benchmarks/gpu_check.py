"""GPU check of the JAX backend: every quantity on the GPU against the same call on JAX's CPU device.

Needs a CUDA build of JAX; run from the repository root:
``PYTHONPATH=src python benchmarks/gpu_check.py [--sizes 5000,20000]``. Prints one line per
quantity, model and dtype (GPU seconds of a warm call, relative error against the CPU result)
and exits non-zero when an error exceeds its bound (1e-10 in float64, 2e-4 in float32). With
the GPU as JAX's default device the P×P quantities take the device-resident route (assembled
by XLA on the GPU, :mod:`fluxhess._backends.jax.sharded`); the CPU reference, under
``jax.default_device(cpu)``, the host route.

Then, for P ≈ each of ``--sizes`` (N = 1000, float64): the Hessian, GGN and EF by the
device-resident route (``as_jax=True``, timed to ``block_until_ready``) against the host
route on the CPU cores (``jax.default_device(cpu)``), warm calls, with the ratio.
"""

import argparse
import sys
import time

import jax
import numpy as np

import fluxhess as fh

parser = argparse.ArgumentParser()
parser.add_argument("--sizes", default="5000,20000", help="approximate P of the device-vs-CPU timings; '' for none")
args = parser.parse_args()
print("jax", jax.__version__, jax.devices(), flush=True)
gpu, cpu = jax.devices()[0], jax.devices("cpu")[0]
rng = np.random.default_rng(0)
cases = [
    (fh.Chain.mlp([4, 16, 16, 3], "tanh"), "logitcrossentropy", 64),
    (fh.Chain(fh.Dense(3, 8, "gelu"), fh.Dense(8, 2), fh.Activation("softmax")), "crossentropy", 32),
    (fh.Chain.mlp([16, 64, 64, 3], "tanh"), "mse", 1000),
]
worst = 0.0
for model, loss, N in cases:
    th = model.init(0) + 0.1 * rng.normal(size=model.num_params)
    X = rng.normal(size=(N, model.in_features))
    C = model.out_features
    y = rng.integers(0, C, size=N) if "crossentropy" in loss else rng.normal(size=(N, C))
    if loss == "crossentropy":
        y = np.eye(C)[y]
    V = rng.normal(size=(model.num_params, 2))
    calls = {
        "hessian": lambda d: fh.hessian(model, th, X, y, loss=loss, agg="mean", dtype=d),
        "ggn": lambda d: fh.ggn(model, th, X, y, loss=loss, agg="mean", dtype=d),
        "empirical_fisher": lambda d: fh.empirical_fisher(model, th, X, y, loss=loss, agg="mean", dtype=d),
        "hvp": lambda d: fh.hvp(model, th, X, y, V, loss=loss, agg="mean", kind="hessian", dtype=d),
        "diagonal": lambda d: fh.diagonal(model, th, X, y, loss=loss, agg="mean", kind="ggn", dtype=d),
        "input_hessian": lambda d: fh.input_hessian(model, th, X, dtype=d),
        "laplacian": lambda d: fh.laplacian(model, th, X, dtype=d),
    }
    for name, f in calls.items():
        for dt, tol in (("float64", 1e-10), ("float32", 2e-4)):
            with jax.default_device(cpu):
                ref = f(dt)
            f(dt)
            t = time.perf_counter(); out = f(dt); sec = time.perf_counter() - t
            err = float(np.max(np.abs(out - ref)) / max(np.max(np.abs(ref)), 1e-300))
            ok = err <= tol
            worst = max(worst, err / tol)
            print(f"P={model.num_params:5d} N={N:4d} {loss:18s} {name:17s} {dt}  gpu {sec:7.4f}s  rel err vs cpu {err:.1e} {'ok' if ok else 'FAIL'}", flush=True)


def mlp_of_size(P: int) -> fh.Chain:
    """[16, w, w, 10] with w chosen so that the parameter count is near P."""
    w = int((-(16 + 1 + 1 + 10) + ((16 + 1 + 1 + 10) ** 2 + 4 * (P - 10)) ** 0.5) / 2)
    return fh.Chain.mlp([16, w, w, 10], "tanh")


def timed(f, repeat=2):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter(); f(); best = min(best, time.perf_counter() - t)
    return best


sizes = [int(p) for p in args.sizes.split(",") if p]
for P_target in sizes:
    model = mlp_of_size(P_target)
    P, N = model.num_params, 1000
    th = model.init(0)
    X, y = rng.normal(size=(N, 16)), rng.integers(0, 10, size=N)
    for name in ("hessian", "ggn", "empirical_fisher"):
        fn = getattr(fh, name)
        kw = dict(loss="logitcrossentropy", agg="mean", backend="jax")
        device = lambda: fn(model, th, X, y, as_jax=True, **kw).block_until_ready()
        device()  # compile
        sec_device = timed(device)
        with jax.default_device(cpu):
            ref = fn(model, th, X, y, **kw)  # compiles for the same chunks of samples
            sec_cpu = timed(lambda: fn(model, th, X, y, **kw), repeat=1)
        err = float(np.max(np.abs(np.asarray(fn(model, th, X, y, as_jax=True, **kw)) - ref)) / np.max(np.abs(ref)))
        ok = err <= 1e-10
        worst = max(worst, err / 1e-10)
        print(f"P={P:6d} N={N} {name:17s} device-resident {sec_device:8.3f}s  cpu host route {sec_cpu:8.3f}s  "
              f"ratio {sec_cpu / sec_device:6.1f}x  rel err {err:.1e} {'ok' if ok else 'FAIL'}", flush=True)
        del ref
print("worst err/tol", worst)
sys.exit(0 if worst <= 1 else 1)
