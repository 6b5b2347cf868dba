"""Tuning a Laplace approximation's prior precision (and σ): the marginal likelihood by L-BFGS,
or a grid of scalar priors scored on validation data.

Both work on a copy of the hyperparameters (:class:`~fluxhess.laplace.state.Hyper`) and
return the tuned copy; :meth:`Laplace.optimize_prior_precision` installs it in one step. The
object is never set to a candidate while they search, so other threads reading it meanwhile
see the values it had before.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .. import api, _memory as memory
from .. import _validate as check
from ..errors import ConvergenceWarning, FluxHessError, InputError
from .._progress import chunks
from ..train import lbfgs
from . import curvature as K
from . import likelihood as lik
from . import posterior
from . import predictive as pred
from .state import Fitted, Hyper


def _initial_prior(la, h: Hyper, prior_structure: str) -> np.ndarray:
    """The starting point of the marginal-likelihood search in the shape of ``prior_structure``:
    the geometric mean of the current prior precision over all parameters, or over each block."""
    sizes = la._subset.sizes
    with jax.enable_x64(True):
        p0 = np.array(posterior.prior_diagonal(jnp.asarray(h.prior), sizes))
    if prior_structure == "diag":
        return p0
    logs = np.log(p0)
    if prior_structure == "scalar":
        return np.array([np.exp(logs.mean())])
    bounds = np.cumsum([0] + sizes)
    return np.array([np.exp(logs[a:b].mean()) for a, b in zip(bounds[:-1], bounds[1:])])


def maximise_marglik(la, state: Fitted, h: Hyper, prior_structure: str, tune_sigma: bool, max_iter: int) -> Hyper:
    """The hyperparameters that maximise the log marginal likelihood, started from ``h``."""
    if la.curvature == "hessian" and state.clipped is None:
        h_min = la._factor(h) * K.most_negative_eigenvalue(state.curvature)
        if h_min < 0:
            raise InputError(
                f"the likelihood Hessian is indefinite (most negative eigenvalue {h_min:.6g}), so the marginal "
                "likelihood is undefined for small prior precisions and cannot be maximised. Use "
                "curvature='ggn', or clip_negative_eigenvalues=True to set those eigenvalues to 0"
            )
    x0 = np.log(_initial_prior(la, h, prior_structure))
    k = x0.size
    if tune_sigma:
        x0 = np.append(x0, np.log(h.sigma))

    def negative(x, curv):
        sigma = jnp.exp(x[k]) if tune_sigma else h.sigma
        return -la._log_marglik(state, h, jnp.exp(x[:k]), sigma, curv)

    with jax.enable_x64(True):
        value_and_grad = jax.jit(jax.value_and_grad(negative))

        def fun(x):
            v, g = value_and_grad(jnp.asarray(x), state.curvature)
            if not np.isfinite(float(v)):
                return np.inf, np.zeros_like(x)
            return float(v), np.asarray(g, dtype=np.float64)

        result = lbfgs(fun, x0, max_iter=max_iter, gtol=1e-9, desc="marginal likelihood (L-BFGS)")
    if not np.all(np.isfinite(result.x)):
        raise FluxHessError(f"the marginal likelihood optimisation diverged: {result.message}")
    sigma = float(np.exp(result.x[k])) if tune_sigma else h.sigma
    tuned = Hyper(la._check_prior(np.exp(result.x[:k])), la._check_sigma(sigma, h.temperature), h.temperature)
    if not result.success:
        warnings.warn(
            f"optimize_prior_precision stopped after {result.nit} iterations without converging "
            f"({result.message}); the prior precision it stores is where it stopped. Raise max_iter",
            ConvergenceWarning,
            stacklevel=3,
        )
    return tuned


def gridsearch(la, state: Fitted, h: Hyper, val, grid, pred_type, link_approx, n_samples) -> Hyper:
    """The hyperparameters with the grid's best scalar prior precision; the object is not touched."""
    if val is None or not isinstance(val, (tuple, list)) or len(val) != 2:
        raise InputError("method='gridsearch' needs validation data val=(X_val, y_val)")
    n_samples = check.positive_int("n_samples", n_samples)
    grid = np.logspace(-4, 4, 100) if grid is None else np.atleast_1d(np.array(check.numeric("grid", grid), dtype=np.float64))
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise InputError(f"grid must be a non-empty 1-D array of positive prior precisions; got {grid!r}")
    X_val, y_val = val
    link = pred.check_link(link_approx, pred_type, la.likelihood)
    features = la._features(X_val)
    Y = lik.targets(la.likelihood, y_val, features.shape[0], state.n_outputs)
    if pred_type == "glm":
        f_mu, J = _validation_jacobians(la, state, features)
        curv = state.curvature
        if la.structure == "full":
            # P = Q diag(c·e + λ) Qᵀ for every scalar λ: with the Jacobians rotated once, J P⁻¹ Jᵀ is a
            # diagonal solve per grid value instead of a Cholesky factorisation.
            e, Q = la._eigh(state)
            J = np.matmul(J, Q, out=J)
            curv = posterior.Diag(e)
    else:  # each grid value samples networks: their outputs (n_samples, N, C) are held at once
        draws = (n_samples, features.shape[0], state.n_outputs)
        memory.require("predictive", memory.needed_bytes("predictive", int(np.prod(draws)), 8), draws)
    scores = []
    for value in grid:
        candidate = dataclasses.replace(h, prior=la._check_prior(value))
        if pred_type == "glm":
            with jax.enable_x64(True):
                dec = curv.decompose(la._factor(candidate), jnp.asarray(candidate.prior), la._subset.sizes)
            if not curv.positive_definite(dec):
                scores.append(np.inf)
                continue
            with jax.enable_x64(True):
                f_cov = np.asarray(curv.inv_quad(dec, jnp.asarray(J)))
            p = la._finish(f_mu, f_cov, candidate, link, n_samples, 0)
        else:
            try:
                p = la._sampled(state, candidate, la._decompose(state, candidate), features, n_samples, 0)
            except InputError:  # not positive definite at this prior precision
                scores.append(np.inf)
                continue
        scores.append(_nll(la, p, Y))
    if not np.any(np.isfinite(scores)):
        raise InputError("no prior precision in grid gives a positive definite posterior; use larger values")
    return dataclasses.replace(h, prior=la._check_prior(grid[int(np.argmin(scores))]))


def _validation_jacobians(la, state: Fitted, features) -> tuple[np.ndarray, np.ndarray]:
    """``f_MAP`` ``(N, C)`` and the subset's Jacobians ``(N, C, P_s)`` at once: the grid search
    reuses them for every grid value, so the guard checks all of them together."""
    s = la._subset
    N, C, P = features.shape[0], state.n_outputs, la.n_params
    memory.require("gridsearch validation Jacobians", memory.needed_bytes("param_jacobian", N * C * P, 8), (N, C, P))
    f_mu = api.forward(s.tail, s.tail_params(la.params), features, backend=la.backend)
    J = np.empty((N, C, P))
    for sl in chunks(N, la._jacobian_chunk(state, N), "Laplace Jacobians"):
        J[sl] = s.jacobian(la.params, features[sl], la.backend)
    return f_mu, J


def _nll(la, p: pred.Predictive, Y: np.ndarray) -> float:
    if la.likelihood == "regression":
        return float(np.mean(np.sum(0.5 * np.log(2 * np.pi * p.variance) + (Y - p.mean) ** 2 / (2 * p.variance), axis=1)))
    probs = np.clip(p.mean, 1e-300, 1.0)
    if probs.shape[1] == 1:
        return float(-np.mean(Y[:, 0] * np.log(probs[:, 0]) + (1 - Y[:, 0]) * np.log(np.clip(1 - probs[:, 0], 1e-300, 1))))
    return float(-np.mean(np.sum(Y * np.log(probs), axis=1)))
