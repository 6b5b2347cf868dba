"""``Laplace``: a Gaussian posterior around θ_MAP from any backend's curvature.

Conventions are laplace-torch's (``laplace/baselaplace.py``), so that the same model,
weights, data and settings give the same numbers:

- posterior precision ``P = c·H + P₀`` with ``H`` the curvature of the summed loss over
  the subset and ``c`` the likelihood factor (:mod:`fluxhess.laplace.likelihood`);
- log marginal likelihood
  ``log p(y | θ_MAP) − ½·(log det P − log det P₀ + (θ_MAP − μ₀)ᵀ P₀ (θ_MAP − μ₀))``;
- prior precision: one value, one per block of the subset (laplace-torch's per-layer
  prior, one per parameter tensor), or one per parameter.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from .. import api, _memory as memory
from .._backends import get as _get_backend
from .. import _validate as check
from ..errors import ConvergenceWarning, FluxHessError, InputError, NotFittedError
from ..flux import FluxModel
from ..model import Chain
from .._progress import chunks
from ..train import lbfgs
from . import curvature as K
from . import likelihood as lik
from . import posterior
from . import predictive as pred
from . import store
from .subset import Subset, resolve

PRIOR_STRUCTURES = ("scalar", "layerwise", "diag")
#: Structures whose log det under a scalar prior comes from ``H``'s eigenvalues, computed once.
EIGENVALUE_LOGDET = ("full", "lowrank")
METHODS = ("marglik", "gridsearch")


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


class Laplace:
    """A Laplace approximation ``N(θ_MAP, P⁻¹)`` over a subset of a network's parameters.

    - ``model``: a :class:`fluxhess.Chain`, or a :class:`fluxhess.FluxModel` on the julia
      backend, whose output is the likelihood's parameter: logits for classification (no
      final softmax/sigmoid layer), the mean for regression.
    - ``params``: θ_MAP ``(P,)`` (e.g. from :func:`fluxhess.fit_map`).
    - ``likelihood``: ``"classification"`` (softmax for C ≥ 2 outputs, sigmoid for C == 1)
      or ``"regression"`` (Gaussian with noise ``sigma_noise``).
    - ``curvature``: ``"ggn"``, ``"ef"`` (empirical Fisher) or ``"hessian"``.
    - ``structure``: ``"full"`` ``(P_s, P_s)``, ``"diag"``, ``"kron"`` (KFAC, per block) or
      ``"lowrank"`` (GGN/EF only: the factor ``U`` ``(N·C, P_s)`` resp. ``(N, P_s)`` with
      ``H = Uᵀ U``; solves, log det, variances and samples by Woodbury in ``O(R²·P_s)``, for
      ``P_s ≫ N·C`` where ``(P_s, P_s)`` does not fit).
    - ``subset``: ``"all"``, ``"last_layer"`` (the last layer with parameters: the last Dense
      layer's weight and bias in a Chain) or a
      list of block names of ``model.layout``; ``P_s`` is its number of parameters.
    - ``prior_precision``: ``> 0``; a scalar, one per block of the subset ``(B,)``, or
      ``(P_s,)``. ``prior_mean``: a scalar or ``(P_s,)``.
    - ``sigma_noise``: σ ``> 0`` (regression; 1 for classification); ``temperature`` T ``> 0``.
    - ``backend``: the backend computing every curvature and Jacobian (``"auto"``, ``"jax"``,
      ``"julia"``).
    - ``clip_negative_eigenvalues``: with ``curvature="hessian"``, set the negative
      eigenvalues (diag: entries) of the likelihood Hessian to 0 at ``fit``, with a warning
      and :attr:`clipped` saying what was removed.

    Call :meth:`fit` with the training data, then use :meth:`log_marginal_likelihood`,
    :meth:`optimize_prior_precision`, :meth:`predictive`, :meth:`sample`.
    """

    def __init__(
        self,
        model: Chain | FluxModel,
        params: ArrayLike,
        likelihood: str = "classification",
        *,
        curvature: str = "ggn",
        structure: str = "full",
        subset: str | Sequence[str] = "all",
        prior_precision: ArrayLike = 1.0,
        prior_mean: ArrayLike = 0.0,
        sigma_noise: float = 1.0,
        temperature: float = 1.0,
        backend: str = "auto",
        clip_negative_eigenvalues: bool = False,
    ) -> None:
        if not isinstance(model, (Chain, FluxModel)):
            raise InputError(
                f"model must be a fluxhess.Chain or a FluxModel (fluxhess.flux_model); got {type(model).__name__}"
            )
        self.model = model
        self.likelihood = lik.check_choice(likelihood)
        lik.check_model(model, self.likelihood)
        self.structure = check.choice("structure", structure, posterior.STRUCTURES)
        self.curvature = K.check_kind(curvature, self.structure)
        if not isinstance(clip_negative_eigenvalues, bool):
            raise InputError(f"clip_negative_eigenvalues must be True or False; got {clip_negative_eigenvalues!r}")
        if clip_negative_eigenvalues and self.curvature != "hessian":
            raise InputError(
                f"clip_negative_eigenvalues applies to curvature='hessian' only; curvature={self.curvature!r} "
                "is positive semi-definite already"
            )
        self.clip_negative_eigenvalues = clip_negative_eigenvalues
        _get_backend(backend, model)  # fail now, not at fit, when it cannot run
        self.backend = backend
        # A copy, frozen: the caller's θ stays theirs (writeable, never aliased).
        theta = np.array(check.params_array(params, model.num_params, np.dtype(np.float64)))
        theta.setflags(write=False)
        self.params = theta
        self._subset: Subset = resolve(model, subset)
        self._cache = None
        self.temperature = temperature
        self.sigma_noise = sigma_noise
        self.prior_precision = prior_precision
        self.prior_mean = prior_mean
        self._curv = None
        self._eig = None
        self._eigvecs = None
        self.clipped: K.Clipped | None = None
        self.loss = None  # Σ_n ℓ_n at θ_MAP, set by fit
        self.n_data = None
        self.n_outputs = getattr(model, "out_features", None)  # a FluxModel's is known once fit sees data

    # -- the subset and hyperparameters ----------------------------------------

    @property
    def subset(self) -> list[str]:
        """The block names of the subset, in layout order."""
        return self._subset.names

    @property
    def n_params(self) -> int:
        """``P_s``, the number of parameters in the subset."""
        return self._subset.num_params

    @property
    def mean(self) -> np.ndarray:
        """θ_MAP restricted to the subset ``(P_s,)``: the posterior mean."""
        return self.params[self._subset.global_index]

    @property
    def prior_precision(self) -> np.ndarray:
        """``(1,)``, ``(B,)`` or ``(P_s,)``, as set."""
        return self._prior.copy()

    @prior_precision.setter
    def prior_precision(self, value) -> None:
        self._prior = self._check_prior(value)
        self._cache = None

    @property
    def prior_precision_diagonal(self) -> np.ndarray:
        """The prior precision of every parameter of the subset ``(P_s,)``, expanded from any shape."""
        with jax.enable_x64(True):
            return np.array(posterior.prior_diagonal(jnp.asarray(self._prior), self._subset.sizes))

    @property
    def sigma_noise(self) -> float:
        return self._sigma

    @sigma_noise.setter
    def sigma_noise(self, value) -> None:
        sigma = check.positive_number("sigma_noise", value)
        if self.likelihood == "classification" and sigma != 1.0:
            raise InputError(f"sigma_noise is the regression noise; it must stay 1 for classification, got {sigma}")
        self._sigma = sigma
        self._cache = None

    @property
    def temperature(self) -> float:
        """T ``> 0``: the curvature and the loss enter the posterior divided by it."""
        return self._temperature

    @temperature.setter
    def temperature(self, value) -> None:
        self._temperature = check.positive_number("temperature", value)
        self._cache = None

    @property
    def prior_mean(self) -> np.ndarray:
        """``(P_s,)``."""
        return self._prior_mean.copy()

    @prior_mean.setter
    def prior_mean(self, value) -> None:
        m = np.array(check.numeric("prior_mean", value), dtype=np.float64)  # a copy: never the caller's array
        if m.ndim == 0:
            m = np.full(self.n_params, float(m))
        if m.shape != (self.n_params,) or not np.all(np.isfinite(m)):
            raise InputError(
                f"prior_mean must be a finite scalar or have shape ({self.n_params},); got shape {np.shape(value)}"
                + ("" if m.shape != (self.n_params,) else " with non-finite entries")
            )
        self._prior_mean = m

    def _check_prior(self, value, *, concrete: bool = True):
        B, P = len(self._subset.blocks), self.n_params
        allowed = {1: "one value", B: "one per block"}
        if self.structure != "kron":
            allowed.setdefault(P, "one per parameter")
        if concrete:  # a copy: an array the caller changes later must not change this posterior
            p = np.atleast_1d(np.array(check.numeric("prior_precision", value), dtype=np.float64))
        else:
            p = jnp.atleast_1d(jnp.asarray(value, dtype=jnp.float64))
        if p.ndim != 1 or p.shape[0] not in allowed:
            shapes = ", ".join(f"({n},) ({what})" for n, what in allowed.items())
            raise InputError(
                f"prior_precision for this subset ({B} blocks, {P} parameters, structure={self.structure!r}) "
                f"must be a scalar or have shape {shapes}; got shape {np.shape(value)}"
            )
        if concrete and (not np.all(np.isfinite(p)) or np.any(p <= 0)):
            raise InputError(f"prior_precision must be positive and finite; got values from {p.min()} to {p.max()}")
        return p

    # -- fitting ----------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self._curv is not None

    @property
    def fitted_curvature(self):
        """The curvature :meth:`fit` computed (:mod:`.posterior`'s ``Full``, ``Diag``, ``LowRank`` or
        ``Kron``), None before it."""
        return self._curv

    def restore(self, curvature: Any, *, loss: float, n_data: int, n_outputs: int, clipped: Any) -> "Laplace":
        """Put back a fitted state, as :func:`fluxhess.laplace.load` reads it, without refitting."""
        self._curv = curvature
        self._eig = self._eigvecs = None
        self.loss, self.n_data, self.n_outputs = loss, n_data, n_outputs
        self.clipped = None if clipped is None else K.Clipped(*clipped)
        return self

    def _require_fit(self, what: str) -> None:
        if not self.fitted:
            raise NotFittedError(f"{what} needs a fitted Laplace approximation: call .fit(X, y) with the training data first")

    def _features(self, X) -> np.ndarray:
        if self._subset.head is None:
            return api.model_inputs(self.model, X)
        return self._subset.features(self.params, X, self.backend)

    def fit(self, X: ArrayLike, y: ArrayLike) -> "Laplace":
        """Compute the curvature of the summed loss over the data, in chunks (a progress bar when long).

        ``X``: ``(N, d)``; ``y``: classification — integer labels ``(N,)`` in ``[0, C)`` (0/1
        for C == 1) or class probabilities ``(N, C)``; regression — ``(N, C)`` or ``(N,)`` for C == 1.

        Returns: ``self``.
        """
        features = self._features(X)
        s = self._subset
        if self.n_outputs is None:
            self.n_outputs = api.forward(s.tail, s.tail_params(self.params), features[:1], backend=self.backend).shape[1]
        N, C = features.shape[0], self.n_outputs
        Y = lik.targets(self.likelihood, y, N, C)
        loss = lik.loss_name(self.likelihood, C)
        theta_tail = s.tail_params(self.params)
        with memory.hints(K.MEMORY_HINTS):  # a refusal names Laplace's own options
            H = K.summed_curvature(self.structure, self.curvature, s, self.params, features, Y, loss, self.backend)
        if self.structure == "kron":
            H = posterior.Kron(tuple(posterior.KronBlock.from_factors(A, G) for A, G in H))
        self.clipped = None
        if self.clip_negative_eigenvalues:
            H, self.clipped = K.clip_negative(H)
        self._curv = H
        self._eig = self._eigvecs = None
        self.loss = api.loss(s.tail, theta_tail, features, Y, loss=loss, agg="sum", backend=self.backend)
        self.n_data = N
        self._cache = None
        return self

    # -- the posterior ------------------------------------------------------------

    def _factor(self, sigma=None):
        return lik.hessian_factor(self.likelihood, self._sigma if sigma is None else sigma, self.temperature)

    def _not_positive_definite(self, c, prior) -> InputError:
        with jax.enable_x64(True):
            smallest = self._curv.smallest_eigenvalue(c, jnp.asarray(prior), self._subset.sizes)
        msg = (
            f"the posterior precision (factor × curvature + prior precision) is not positive definite: its most "
            f"negative eigenvalue is {smallest:.6g}."
        )
        if self.curvature == "hessian":
            h_min = c * K.most_negative_eigenvalue(self._curv)
            return InputError(
                f"{msg} The Hessian of the negative log likelihood is indefinite at these parameters (most "
                f"negative eigenvalue {h_min:.6g}; not a minimum of the loss). Use curvature='ggn' (positive "
                "semi-definite by construction), a larger prior_precision, or clip_negative_eigenvalues=True "
                "to set the Hessian's negative eigenvalues to 0 (reported in Laplace.clipped)"
            )
        return InputError(f"{msg} Use a larger prior_precision")

    def _decomposition(self):
        """The current posterior's factorisation (cached until a hyperparameter changes)."""
        self._require_fit("the posterior")
        if self._cache is None:
            c = self._factor()
            with jax.enable_x64(True):
                dec = self._curv.decompose(c, jnp.asarray(self._prior), self._subset.sizes)
            if not self._curv.positive_definite(dec):
                raise self._not_positive_definite(c, self._prior)
            self._cache = dec
        return self._cache

    def _dense(self, quantity: str):
        P = self.n_params
        memory.require(quantity, memory.needed_bytes(quantity, P * P, 8), (P, P))

    @property
    def posterior_precision(self) -> np.ndarray:
        """``P = c·H + P₀`` as a dense ``(P_s, P_s)`` matrix, for every structure."""
        self._require_fit("posterior_precision")
        self._dense("posterior_precision")
        with jax.enable_x64(True):
            return np.array(self._curv.precision(self._factor(), jnp.asarray(self._prior), self._subset.sizes))

    @property
    def posterior_covariance(self) -> np.ndarray:
        """``P⁻¹`` as a dense ``(P_s, P_s)`` matrix, for every structure."""
        dec = self._decomposition()
        self._dense("posterior_covariance")
        with jax.enable_x64(True):
            return np.array(self._curv.covariance(dec))

    @property
    def posterior_variance(self) -> np.ndarray:
        """The marginal posterior variances ``diag(P⁻¹)`` ``(P_s,)``."""
        dec = self._decomposition()
        if self.structure == "diag":
            return 1.0 / np.asarray(dec)
        if self.structure == "lowrank":
            with jax.enable_x64(True):
                return np.array(self._curv.variance(dec))
        return np.ascontiguousarray(np.diagonal(self.posterior_covariance))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` draws of the subset's parameters from ``N(θ_MAP, P⁻¹)``.

        Returns: ``(n, P_s)``.
        """
        n = check.positive_int("n", n)
        rng = np.random.default_rng(check.seed("seed", seed))
        dec = self._decomposition()
        memory.require("sample", memory.needed_bytes("sample", n * self.n_params, 8), (n, self.n_params))
        Z = rng.standard_normal((n, self.n_params))
        with jax.enable_x64(True):
            return self.mean + np.asarray(self._curv.scale(dec, jnp.asarray(Z)))

    # -- the marginal likelihood ----------------------------------------------------

    def log_marginal_likelihood(self, prior_precision: ArrayLike | None = None, sigma_noise: ArrayLike | None = None) -> jax.Array:
        """The Laplace log marginal likelihood (laplace-torch's formula), at the given hyperparameters.

        ``log p(y | θ_MAP) − ½·(log det P − log det P₀ + (θ_MAP − μ₀)ᵀ P₀ (θ_MAP − μ₀))``.
        ``prior_precision`` (shapes as in the constructor) and ``sigma_noise`` (regression)
        default to the current ones and are *not* stored. Both may be JAX values: the
        result is differentiable in them (``jax.grad``; enable float64 with
        ``jax.enable_x64(True)`` around the call for full precision).

        Returns: a 0-d float64 JAX array.
        """
        self._require_fit("log_marginal_likelihood")
        if sigma_noise is not None and self.likelihood != "regression":
            raise InputError("sigma_noise can only be changed for likelihood='regression'")
        traced = _is_traced(prior_precision) or _is_traced(sigma_noise)
        if traced and not jax.config.jax_enable_x64:
            raise InputError(
                "differentiating log_marginal_likelihood needs float64 JAX: wrap the jax.grad call in "
                "`with jax.enable_x64(True):`"
            )
        with jax.enable_x64(True):
            prior = jnp.asarray(self._prior) if prior_precision is None else self._check_prior(prior_precision, concrete=not traced)
            prior = jnp.asarray(prior, dtype=jnp.float64)
            if sigma_noise is None:
                sigma = self._sigma
            else:
                sigma = sigma_noise if traced else check.positive_number("sigma_noise", sigma_noise)
            value = self._log_marglik(prior, sigma)
        if not traced and not np.isfinite(np.asarray(value)):
            raise self._not_positive_definite(self._factor(sigma), np.asarray(prior))
        return value

    def _eigenvalues(self) -> np.ndarray:
        """The eigenvalues of a full or low-rank ``H`` (computed once per fit): a scalar prior's log det is then O(P)."""
        if self._eig is None:
            self._eig = self._curv.eigenvalues()
        return self._eig

    def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """``H = Q diag(e) Qᵀ`` for a full ``H`` (computed once per fit): ``e`` ``(P_s,)``, ``Q`` ``(P_s, P_s)``."""
        if self._eigvecs is None:
            self._dense("eigenvectors")
            self._eig, self._eigvecs = np.linalg.eigh(self._curv.H)
        return self._eig, self._eigvecs

    def _log_marglik(self, prior, sigma, curv=None):
        """The log marginal likelihood as a JAX function of the hyperparameters (and of ``curv``, for jit)."""
        curv = self._curv if curv is None else curv
        sizes = self._subset.sizes
        c = self._factor(sigma)
        p0 = posterior.prior_diagonal(prior, sizes)
        delta = self.mean - self._prior_mean
        if self.structure in EIGENVALUE_LOGDET and prior.shape[0] == 1:  # log det(c·H + λ·I) from H's eigenvalues
            log_det = jnp.sum(jnp.log(c * self._eigenvalues() + prior[0]))
        else:
            log_det = curv.logdet(c, prior, sizes)
        log_det_ratio = log_det - jnp.sum(jnp.log(p0))
        scatter = jnp.sum(p0 * delta**2)
        ll = lik.log_likelihood(self.likelihood, self.loss, sigma, self.temperature, self.n_data, self.n_outputs)
        return ll - 0.5 * (log_det_ratio + scatter)

    def optimize_prior_precision(
        self,
        method: str = "marglik",
        prior_structure: str = "scalar",
        *,
        tune_sigma_noise: bool = False,
        val: tuple[ArrayLike, ArrayLike] | None = None,
        grid: ArrayLike | None = None,
        pred_type: str = "glm",
        link_approx: str | None = None,
        n_samples: int = 100,
        max_iter: int = 500,
    ) -> "Laplace":
        """Tune the prior precision (and, for regression, optionally σ); stores the result.

        - ``method="marglik"``: maximise :meth:`log_marginal_likelihood` over the log prior
          precision by L-BFGS with JAX gradients, with ``prior_structure`` ``"scalar"``,
          ``"layerwise"`` (one per block; ``(B,)``) or ``"diag"`` (``(P_s,)``; not for kron),
          started from the current value. ``tune_sigma_noise=True`` (regression) optimises
          ``log σ`` jointly.
        - ``method="gridsearch"``: a scalar prior precision from ``grid`` (default
          ``logspace(-4, 4, 100)``, laplace-torch's) minimising the predictive negative log
          likelihood on the validation data ``val=(X_val, y_val)`` — classification:
          ``−mean log p(y)``; regression: the Gaussian NLL with the observation noise.
        - ``max_iter`` (marglik): at most this many L-BFGS iterations, a positive integer; a
          :class:`fluxhess.ConvergenceWarning` says when it stops before converging (the
          value reached is stored all the same).

        Returns: ``self``.
        """
        self._require_fit("optimize_prior_precision")
        check.choice("method", method, METHODS)
        max_iter = check.positive_int("max_iter", max_iter)
        self.check_tuning(prior_structure, tune_sigma_noise)
        if method == "gridsearch":
            if tune_sigma_noise or prior_structure != "scalar":
                raise InputError(
                    "method='gridsearch' tunes one scalar prior precision; use method='marglik' for "
                    "prior_structure='layerwise'/'diag' or tune_sigma_noise=True"
                )
            return self._gridsearch(val, grid, pred_type, link_approx, n_samples)
        if val is not None or grid is not None:
            raise InputError("val and grid are for method='gridsearch'; method='marglik' uses the training data only")
        return self._maximise_marglik(prior_structure, tune_sigma_noise, max_iter)

    def check_tuning(self, prior_structure: str, tune_sigma_noise: bool) -> None:
        """Refuse a ``prior_structure`` or ``tune_sigma_noise`` that this approximation cannot tune."""
        check.choice("prior_structure", prior_structure, PRIOR_STRUCTURES)
        if not isinstance(tune_sigma_noise, bool):
            raise InputError(f"tune_sigma_noise must be True or False; got {tune_sigma_noise!r}")
        if tune_sigma_noise and self.likelihood != "regression":
            raise InputError("tune_sigma_noise=True applies to likelihood='regression' only")
        if prior_structure == "diag" and self.structure == "kron":
            raise InputError("structure='kron' takes a scalar or per-block prior: use prior_structure='scalar' or 'layerwise'")

    def _initial_prior(self, prior_structure: str) -> np.ndarray:
        sizes = self._subset.sizes
        p0 = self.prior_precision_diagonal
        if prior_structure == "diag":
            return p0
        logs = np.log(p0)
        if prior_structure == "scalar":
            return np.array([np.exp(logs.mean())])
        bounds = np.cumsum([0] + sizes)
        return np.array([np.exp(logs[a:b].mean()) for a, b in zip(bounds[:-1], bounds[1:])])

    def _maximise_marglik(self, prior_structure: str, tune_sigma: bool, max_iter: int) -> "Laplace":
        if self.curvature == "hessian" and self.clipped is None:
            h_min = self._factor() * K.most_negative_eigenvalue(self._curv)
            if h_min < 0:
                raise InputError(
                    f"the likelihood Hessian is indefinite (most negative eigenvalue {h_min:.6g}), so the marginal "
                    "likelihood is undefined for small prior precisions and cannot be maximised. Use "
                    "curvature='ggn', or clip_negative_eigenvalues=True to set those eigenvalues to 0"
                )
        x0 = np.log(self._initial_prior(prior_structure))
        k = x0.size
        if tune_sigma:
            x0 = np.append(x0, np.log(self._sigma))

        def negative(x, curv):
            sigma = jnp.exp(x[k]) if tune_sigma else self._sigma
            return -self._log_marglik(jnp.exp(x[:k]), sigma, curv)

        with jax.enable_x64(True):
            value_and_grad = jax.jit(jax.value_and_grad(negative))

            def fun(x):
                v, g = value_and_grad(jnp.asarray(x), self._curv)
                if not np.isfinite(float(v)):
                    return np.inf, np.zeros_like(x)
                return float(v), np.asarray(g, dtype=np.float64)

            result = lbfgs(fun, x0, max_iter=max_iter, gtol=1e-9, desc="marginal likelihood (L-BFGS)")
        if not np.all(np.isfinite(result.x)):
            raise FluxHessError(f"the marginal likelihood optimisation diverged: {result.message}")
        if not result.success:
            warnings.warn(
                f"optimize_prior_precision stopped after {result.nit} iterations without converging "
                f"({result.message}); the prior precision it stores is where it stopped. Raise max_iter",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.prior_precision = np.exp(result.x[:k])
        if tune_sigma:
            self.sigma_noise = float(np.exp(result.x[k]))
        return self

    def _gridsearch(self, val, grid, pred_type, link_approx, n_samples) -> "Laplace":
        if val is None or not isinstance(val, (tuple, list)) or len(val) != 2:
            raise InputError("method='gridsearch' needs validation data val=(X_val, y_val)")
        n_samples = check.positive_int("n_samples", n_samples)
        grid = np.logspace(-4, 4, 100) if grid is None else np.atleast_1d(np.array(check.numeric("grid", grid), dtype=np.float64))
        if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
            raise InputError(f"grid must be a non-empty 1-D array of positive prior precisions; got {grid!r}")
        X_val, y_val = val
        link = pred.check_link(link_approx, pred_type, self.likelihood)
        features = self._features(X_val)
        Y = lik.targets(self.likelihood, y_val, features.shape[0], self.n_outputs)
        moments = self._glm_inputs(features) if pred_type == "glm" else None
        rotated = None
        if pred_type == "glm" and self.structure == "full":
            # P = Q diag(c·e + λ) Qᵀ for every scalar λ: with the Jacobians rotated once, J P⁻¹ Jᵀ is a
            # diagonal solve per grid value instead of a Cholesky factorisation.
            e, Q = self._eigh()
            f_mu, jacobians = moments
            moments, rotated = (f_mu, [(sl, J @ Q) for sl, J in jacobians]), posterior.Diag(e)
        original, scores = self._prior, []
        try:
            for value in grid:
                self.prior_precision = value
                if rotated is not None:
                    with jax.enable_x64(True):
                        dec = rotated.decompose(self._factor(), jnp.asarray([value]), [self.n_params])
                    p = self._glm(moments, link, n_samples, 0, rotated, dec) if rotated.positive_definite(dec) else None
                else:
                    try:
                        p = self._predict(features, pred_type, link, n_samples, 0, moments)
                    except InputError:  # not positive definite at this prior precision
                        p = None
                scores.append(np.inf if p is None else self._nll(p, Y))
        finally:
            self.prior_precision = original
        if not np.any(np.isfinite(scores)):
            raise InputError("no prior precision in grid gives a positive definite posterior; use larger values")
        self.prior_precision = grid[int(np.argmin(scores))]
        return self

    def _nll(self, p: pred.Predictive, Y: np.ndarray) -> float:
        if self.likelihood == "regression":
            return float(np.mean(np.sum(0.5 * np.log(2 * np.pi * p.variance) + (Y - p.mean) ** 2 / (2 * p.variance), axis=1)))
        probs = np.clip(p.mean, 1e-300, 1.0)
        if probs.shape[1] == 1:
            return float(-np.mean(Y[:, 0] * np.log(probs[:, 0]) + (1 - Y[:, 0]) * np.log(np.clip(1 - probs[:, 0], 1e-300, 1))))
        return float(-np.mean(np.sum(Y * np.log(probs), axis=1)))

    # -- the predictive -------------------------------------------------------------

    def predictive(self, X: ArrayLike, pred_type: str = "glm", link_approx: str | None = None, n_samples: int = 100, seed: int = 0) -> pred.Predictive:
        """The posterior predictive at ``X`` ``(N, d)``.

        - ``pred_type="glm"``: the linearised network, ``f(x) ~ N(f_MAP(x), J P⁻¹ Jᵀ)``
          with ``J = ∂f/∂θ_subset``; ``"nn"``: ``n_samples`` networks with θ from :meth:`sample`.
        - ``link_approx`` (classification): ``"probit"`` (the default for glm), ``"bridge"`` or
          ``"mc"`` (``n_samples`` draws; the only one, and the default, for nn). Not for regression.
        - ``seed``: the random stream of ``mc`` and ``nn``.

        Returns: a :class:`~fluxhess.laplace.Predictive` (``mean``, ``variance``, ``function_variance``
        ``(N, C)``; ``function_covariance`` ``(N, C, C)``).
        """
        self._require_fit("predictive")
        link = pred.check_link(link_approx, pred_type, self.likelihood)
        n_samples = check.positive_int("n_samples", n_samples)
        seed = check.seed("seed", seed)
        features = self._features(X)
        if pred_type == "nn" or link == "mc":  # the draws of f, (n_samples, N, C), are held at once
            draws = (n_samples, features.shape[0], self.n_outputs)
            memory.require("predictive", memory.needed_bytes("predictive", math.prod(draws), 8), draws)
        moments = self._glm_inputs(features) if pred_type == "glm" else None
        return self._predict(features, pred_type, link, int(n_samples), seed, moments)

    def _glm_inputs(self, features):
        """``f_MAP`` ``(N, C)`` and the per-chunk Jacobians of the subset (independent of the prior)."""
        s = self._subset
        f_mu = api.forward(s.tail, s.tail_params(self.params), features, backend=self.backend)
        N = features.shape[0]
        step = memory.chunk_size(2 * 8 * self.n_outputs * s.tail.num_params, N)
        jacobians = [(sl, s.jacobian(self.params, features[sl], self.backend)) for sl in chunks(N, step, "Laplace Jacobians")]
        return f_mu, jacobians

    def _glm(self, moments, link, n_samples, seed, curv=None, dec=None) -> pred.Predictive:
        """The GLM predictive from ``moments`` (:meth:`_glm_inputs`) under the current posterior, or
        under ``curv`` with its decomposition ``dec`` (the same posterior in a rotated basis)."""
        f_mu, jacobians = moments
        if curv is None:
            curv, dec = self._curv, self._decomposition()
        f_cov = np.empty((f_mu.shape[0], self.n_outputs, self.n_outputs))
        with jax.enable_x64(True):
            for sl, J in jacobians:
                f_cov[sl] = np.asarray(curv.inv_quad(dec, jnp.asarray(J)))
        if self.likelihood == "regression":
            return pred.regression(f_mu, f_cov, self._sigma)
        probs = {
            "probit": pred.probit,
            "bridge": pred.bridge,
            "mc": lambda m, v: pred.monte_carlo(m, v, n_samples, seed),
        }[link](f_mu, f_cov)
        return pred.classification(probs, f_mu, f_cov)

    def _predict(self, features, pred_type, link, n_samples, seed, moments) -> pred.Predictive:
        if pred_type == "glm":
            return self._glm(moments, link, n_samples, seed)
        s = self._subset
        theta_tail = np.array(s.tail_params(self.params))
        outputs = []
        for draw in self.sample(n_samples, seed):
            theta_tail[s.index] = draw
            outputs.append(api.forward(s.tail, theta_tail, features, backend=self.backend))
        f = np.stack(outputs)  # (n_samples, N, C)
        f_mu = f.mean(axis=0)
        centred = f - f_mu
        f_cov = np.einsum("snc,snk->nck", centred, centred) / max(n_samples - 1, 1)
        if self.likelihood == "regression":
            return pred.regression(f_mu, f_cov, self._sigma)
        return pred.classification(pred.link(f).mean(axis=0), f_mu, f_cov)

    # -- saving ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the approximation (model spec, θ, settings, fitted curvature) to ``path`` (``.npz``)."""
        store.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Laplace":
        """The approximation that :meth:`save` wrote to ``path``, ready to use."""
        return store.load(cls, path)

    def __repr__(self) -> str:
        state = f"fitted on {self.n_data} samples" if self.fitted else "not fitted"
        return (
            f"Laplace({self.likelihood}, curvature={self.curvature!r}, structure={self.structure!r}, "
            f"subset={len(self.subset)} blocks / {self.n_params} parameters, backend={self.backend!r}; {state})"
        )
