"""``jit(grad(PINN loss))`` with the Laplacian from fluxhess.jax, folx, and vmap(hessian) + trace.

The loss is a PINN residual, ``L(θ) = mean_n (Δu_θ(x_n) − 1)²``, for a tanh MLP; its gradient
in θ is compiled once per route (``jax.jit(jax.grad(L))``) and timed: the median of
``--repeats`` interleaved rounds (each route once per round) after one warm-up call. The
three routes differ only in how ``Δu_θ`` is computed:

- ``fluxhess.jax``: ``fluxhess.jax.laplacian(model)(θ, X)``, the forward Laplacian;
- ``folx``: ``jax.vmap(folx.forward_laplacian(u_θ))`` over the samples (``sparsity_threshold=0``);
- ``vmap(hessian)+trace``: ``jnp.trace(jax.vmap(jax.hessian(u_θ))(X))``.

The same θ and data feed all three; the gradients are checked to agree (the relative
difference is printed). Run: ``python benchmarks/pinn_loss.py [--dtype float32] [--repeats 20]``.
Needs folx (``pip install folx``) for its row; installs nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fluxhess as fh
import fluxhess.jax as fhj

#: (name, widths, samples): a PINN-sized network in 2-D, and the Laplacian problem of run.py.
PROBLEMS = [("PINN [2, 64, 64, 64, 1]", [2, 64, 64, 64, 1], 1024), ("[100, 128, 128, 128, 1]", [100, 128, 128, 128, 1], 256)]


def _mlp(model: fh.Chain):
    """``u(θ, x)`` for one sample ``x`` ``(d,)``, written out in jax.numpy (W from θ column-major)."""
    shapes = [(l.in_features, l.out_features) for _, l in model.dense_layers]

    def u(theta, x):
        offset = 0
        for k, (n_in, n_out) in enumerate(shapes):
            w_t = theta[offset : offset + n_in * n_out].reshape(n_in, n_out)
            b = theta[offset + n_in * n_out : offset + n_in * n_out + n_out]
            offset += n_in * n_out + n_out
            x = x @ w_t + b
            if k < len(shapes) - 1:
                x = jnp.tanh(x)
        return x[0]

    return u


def routes(model: fh.Chain) -> dict:
    """Each route's Laplacian ``(θ, X) -> (N,)``."""
    u = _mlp(model)
    lap = fhj.laplacian(model)
    out = {
        "fluxhess.jax": lambda theta, X: lap(theta, X)[:, 0],
        "vmap(hessian)+trace": lambda theta, X: jnp.trace(jax.vmap(jax.hessian(u, argnums=1), (None, 0))(theta, X), axis1=1, axis2=2),
    }
    if importlib.util.find_spec("folx") is not None:
        from folx import forward_laplacian

        out["folx"] = lambda theta, X: jax.vmap(lambda x: forward_laplacian(lambda z: u(theta, z), sparsity_threshold=0)(x).laplacian)(X)
    return out


def measure(name, widths, n, dtype, repeats):
    model = fh.Chain.mlp(widths, "tanh")
    rng = np.random.default_rng(0)
    theta = jnp.asarray(model.init(0) + 0.05 * rng.normal(size=model.num_params), dtype=dtype)
    X = jnp.asarray(rng.uniform(-1, 1, size=(n, widths[0])), dtype=dtype)
    grads = {}
    for route, laplacian in routes(model).items():
        loss = lambda theta, laplacian=laplacian: jnp.mean((laplacian(theta, X) - 1.0) ** 2)  # noqa: E731
        grads[route] = jax.jit(jax.grad(loss))
    values = {route: np.asarray(g(theta)) for route, g in grads.items()}  # warm-up: compiles
    times = {route: [] for route in grads}
    for _ in range(repeats):
        for route, g in grads.items():
            start = time.perf_counter()
            g(theta).block_until_ready()
            times[route].append(time.perf_counter() - start)
    ref = values["fluxhess.jax"]
    rows = []
    for route in grads:
        diff = np.max(np.abs(values[route] - ref)) / np.max(np.abs(ref))
        rows.append((name, n, dtype, route, statistics.median(times[route]), diff))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float64", "float32", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)
    print("| problem | N | dtype | route | seconds per jit(grad(loss)) call | vs fluxhess.jax | grad rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for dtype in dtypes:
        with jax.enable_x64(dtype == "float64"):
            for name, widths, n in PROBLEMS:
                rows = measure(name, widths, n, dtype, args.repeats)
                base = rows[0][4]
                for name_, n_, dt, route, sec, diff in rows:
                    print(f"| {name_} | {n_} | {dt} | {route} | {sec:.4f} | {sec / base:.2f}× | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
