"""Marginal-likelihood training: a MAP and a prior precision (and σ) that agree with each other.

A post-hoc Laplace approximation tunes the prior of a network that was trained with
another prior (the weight decay). :func:`marglik_training` makes the two consistent by
alternating, as Immer et al. (2021, *Scalable Marginal Likelihood Estimation for Model
Selection in Deep Learning*, Algorithm 1; laplace-torch's ``marglik_training``) do once
per epoch:

1. ``θ ← fit_map`` at the current prior precision ``p₀`` (and σ, temperature T): the mode
   of the posterior the Laplace approximation describes, ``c·Σ_n ℓ_n + ½ θᵀ diag(p₀) θ``
   with ``c`` the likelihood factor — that is, :func:`fluxhess.fit_map` with
   ``prior_precision = p₀ / c`` (``2σ²T·p₀`` for regression, ``T·p₀`` for classification);
2. a Laplace approximation of all the weights at ``θ``; ``p₀`` (and σ) ← the maximiser of
   its log marginal likelihood (:meth:`Laplace.optimize_prior_precision`),

until no prior precision (and σ) moves by more than ``rtol`` (relative) in a round. At
that point the network was trained with the prior that its marginal likelihood picks.
For a linear-Gaussian model the Laplace evidence is exact and its gradient in ``θ``
vanishes at the MAP, so the fixed point is the exact evidence maximiser.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .. import _validate as check
from ..errors import ConvergenceWarning
from ..train import MapFit, fit_map
from . import likelihood as lik
from .core import Laplace

if TYPE_CHECKING:
    from ..flux import FluxModel
    from ..model import Chain


class MarglikRound(NamedTuple):
    """One round of :func:`marglik_training`."""

    map_prior_precision: np.ndarray  # p₀ the MAP was trained with, per parameter (P,)
    map_sigma_noise: float  # σ the MAP was trained with
    map_iterations: int  # L-BFGS iterations of that fit_map
    prior_precision: np.ndarray  # p₀ the marginal likelihood then picked ((1,), (B,) or (P,))
    sigma_noise: float  # σ it picked (1 for classification)
    log_marginal_likelihood: float  # at those hyperparameters
    change: float  # max |log(new / old)| over p₀ per parameter and σ


class MarglikFit(NamedTuple):
    """The result of :func:`marglik_training`."""

    laplace: Laplace  # fitted at the last MAP, with the marginal-likelihood prior (and σ)
    map_fit: MapFit  # the last MAP
    history: list[MarglikRound]
    converged: bool


def marglik_training(
    model: Chain | FluxModel,
    params0: ArrayLike,
    X: ArrayLike,
    y: ArrayLike,
    likelihood: str = "classification",
    *,
    curvature: str = "ggn",
    structure: str = "full",
    prior_structure: str = "scalar",
    prior_precision: ArrayLike = 1.0,
    sigma_noise: float = 1.0,
    tune_sigma_noise: bool = False,
    temperature: float = 1.0,
    rounds: int = 10,
    rtol: float = 1e-3,
    max_iter: int = 1000,
    gtol: float = 1e-8,
    backend: str = "auto",
) -> MarglikFit:
    """Alternate MAP training and marginal-likelihood prior tuning until they agree (see the module).

    - ``model``, ``params0`` ``(P,)``, ``X`` ``(N, d)``, ``y``: as for :class:`Laplace` and
      :func:`fluxhess.fit_map`; the first MAP starts from ``params0``, each later one from
      the previous MAP.
    - ``likelihood``, ``curvature``, ``structure``, ``prior_precision`` (the starting value:
      a scalar, one per block ``(B,)`` or ``(P,)``), ``sigma_noise``, ``temperature``,
      ``backend``: as for :class:`Laplace`, whose subset is ``"all"`` (every weight is trained,
      so every weight needs its prior).
    - ``prior_structure``: ``"scalar"``, ``"layerwise"`` or ``"diag"``, as in
      :meth:`Laplace.optimize_prior_precision`; ``tune_sigma_noise=True`` (regression) also
      tunes σ. With ``structure="full"`` a scalar prior costs one eigendecomposition per round;
      the others a Cholesky factorisation per optimiser step.
    - ``rounds``: at most this many MAP fits; ``rtol``: stop when ``max |log(new/old)|`` over
      the per-parameter prior precision (and σ) is below it.
    - ``max_iter``, ``gtol``: for each :func:`fluxhess.fit_map`.

    Returns: a :class:`MarglikFit` (``laplace``, ``map_fit``, ``history``, ``converged``); a
    :class:`fluxhess.ConvergenceWarning` (a ``RuntimeWarning``) when ``rounds`` ran out before the
    hyperparameters settled.

    Example:
        >>> import numpy as np, fluxhess as fh
        >>> X = np.random.default_rng(0).normal(size=(30, 2)); y = (X[:, 0] > 0).astype(int)
        >>> m = fh.Chain.mlp([2, 3, 2], "tanh")
        >>> fit = fh.marglik_training(m, m.init(0), X, y, "classification", backend="jax")
        >>> fit.laplace.prior_precision.shape
        (1,)
    """
    rounds = check.positive_int("rounds", rounds)
    rtol = check.positive_number("rtol", rtol)
    settings = dict(curvature=curvature, structure=structure, subset="all", temperature=temperature, backend=backend)
    la = Laplace(model, params0, likelihood, prior_precision=prior_precision, sigma_noise=sigma_noise, **settings)
    la.check_tuning(prior_structure, tune_sigma_noise)
    loss = lik.loss_name(la.likelihood, la.n_outputs)
    theta, history = la.params, []
    for _ in range(rounds):
        p0, sigma = la.prior_precision_diagonal, la.sigma_noise
        factor = lik.hessian_factor(la.likelihood, sigma, la.temperature)
        fit = fit_map(model, theta, X, y, loss=loss, prior_precision=p0 / factor, max_iter=max_iter, gtol=gtol, backend=backend)
        theta = fit.params
        la = Laplace(model, theta, likelihood, prior_precision=la.prior_precision, sigma_noise=sigma, **settings).fit(X, y)
        la.optimize_prior_precision("marglik", prior_structure, tune_sigma_noise=tune_sigma_noise)
        change = float(np.max(np.abs(np.log(la.prior_precision_diagonal / p0))))
        change = max(change, abs(float(np.log(la.sigma_noise / sigma))))
        history.append(
            MarglikRound(p0, sigma, fit.iterations, la.prior_precision, la.sigma_noise, float(la.log_marginal_likelihood()), change)
        )
        if change < rtol:
            return MarglikFit(la, fit, history, True)
    warnings.warn(
        f"marglik_training: the hyperparameters still moved by {change:.3g} (log scale) in round {rounds}, "
        f"above rtol={rtol:g}. Raise rounds or loosen rtol",
        ConvergenceWarning,
        stacklevel=2,
    )
    return MarglikFit(la, fit, history, False)
