"""GPU check of the JAX backend: every quantity on the GPU against the same call on JAX's CPU device.

Needs a CUDA build of JAX; run from the repository root:
``PYTHONPATH=src python benchmarks/gpu_check.py``. Prints one line per quantity, model
and dtype (GPU seconds of a warm call, relative error against the CPU result) and exits
non-zero when an error exceeds its bound (1e-10 in float64, 2e-4 in float32).
"""

import sys
import time

import jax
import numpy as np

import fluxhess as fh

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
print("worst err/tol", worst)
sys.exit(0 if worst <= 1 else 1)
