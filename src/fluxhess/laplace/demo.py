"""The Laplace step of ``fluxhess demo``: MAP, a marginal-likelihood prior, predictive with and without Laplace."""

from __future__ import annotations

import time

import numpy as np

from ..api import forward
from ..model import Chain
from ..train import fit_map
from .core import Laplace
from .predictive import link


def _three_blobs(n: int, rng: np.random.Generator):
    """``n`` points ``(n, 2)`` around three centres, with their labels ``(n,)``."""
    centres = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    y = rng.integers(0, 3, n)
    return centres[y] + 0.9 * rng.normal(size=(n, 2)), y


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(probs[np.arange(len(y)), y])))


def laplace_step(backend: str = "auto") -> None:
    """Train a small classifier to its MAP, fit a full-GGN Laplace, tune its prior, compare predictives."""
    rng = np.random.default_rng(0)
    X, y = _three_blobs(150, rng)
    X_test, y_test = _three_blobs(300, rng)
    model = Chain.mlp([2, 16, 3], "tanh")
    print(f"\nLaplace: {model} (P = {model.num_params}) on 3 Gaussian blobs, {len(y)} training points")
    t = time.perf_counter()
    theta = fit_map(model, model.init(0), X, y, loss="logitcrossentropy", prior_precision=1.0, gtol=1e-6, backend=backend).params
    print(f"  MAP by L-BFGS in {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    la = Laplace(model, theta, "classification", curvature="ggn", structure="full", backend=backend).fit(X, y)
    before = float(la.log_marginal_likelihood())
    la.optimize_prior_precision(method="marglik")
    print(
        f"  Laplace (GGN, full, all weights) in {time.perf_counter() - t:.2f} s; prior precision 1 -> "
        f"{float(la.prior_precision[0]):.4g} by marginal likelihood ({before:.2f} -> {float(la.log_marginal_likelihood()):.2f})"
    )
    map_test = link(forward(model, theta, X_test, backend=backend))
    la_test = la.predictive(X_test).mean
    print(f"  held-out NLL: MAP {_nll(map_test, y_test):.4f}, Laplace {_nll(la_test, y_test):.4f}")
    probes = np.array([[0.0, 0.8], [2.0, 0.0], [8.0, -6.0], [-10.0, 10.0]])
    map_p = link(forward(model, theta, probes, backend=backend))
    la_p = la.predictive(probes)
    print("  confidence (max class probability) at probe points:")
    for x, m, p, v in zip(probes, map_p.max(1), la_p.mean.max(1), la_p.function_variance.max(1)):
        print(f"    x = ({x[0]:5.1f}, {x[1]:5.1f}):  MAP {m:.3f}   Laplace {p:.3f}   (largest logit variance {v:.3g})")
