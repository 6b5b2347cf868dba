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

import dataclasses
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from .. import api, _memory as memory
from .._backends import get as _get_backend
from .. import _validate as check
from ..errors import InputError, NotFittedError, UnsupportedModelError
from ..flux import FluxModel
from ..jax_function import JaxFunction
from ..model import Chain
from .._progress import chunks
from . import curvature as K
from . import likelihood as lik
from . import posterior
from . import predictive as pred
from . import store
from . import tuning
from .state import Fitted, Hyper
from .subset import Subset, resolve

PRIOR_STRUCTURES = ("scalar", "layerwise", "diag")
#: Structures whose log det under a scalar prior comes from ``H``'s eigenvalues, computed once.
EIGENVALUE_LOGDET = ("full", "lowrank")
METHODS = ("marglik", "gridsearch")
#: Beyond this ratio of the largest curvature entry to the prior precision, the prior is lost in
#: the curvature's float64 rounding (1/ε ≈ 4.5e15), and a failed factorisation says so.
_ROUNDING_SPAN = 1e15


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


class Laplace:
    """A Laplace approximation ``N(θ_MAP, P⁻¹)`` over a subset of a network's parameters.

    - ``model``: a :class:`fluxhess.Chain`, a :class:`fluxhess.JaxFunction` (jax backend), or a
      :class:`fluxhess.FluxModel` on the julia backend, whose output is the likelihood's parameter: logits for classification (no
      final softmax/sigmoid layer), the mean for regression.
    - ``params``: θ_MAP ``(P,)`` (e.g. from :func:`fluxhess.fit_map`).
    - ``likelihood``: ``"classification"`` (softmax for C ≥ 2 outputs, sigmoid for C == 1)
      or ``"regression"`` (Gaussian with noise ``sigma_noise``).
    - ``curvature``: ``"ggn"``, ``"ef"`` (empirical Fisher) or ``"hessian"``.
    - ``structure``: ``"full"`` ``(P_s, P_s)``, ``"diag"``, ``"kron"`` (KFAC, per block) or
      ``"lowrank"`` (GGN/EF only: the factor ``U`` ``(N·C, P_s)`` resp. ``(N, P_s)`` with
      ``H = Uᵀ U``; solves, log det, variances and samples by Woodbury through the smaller of the
      ``(R, R)`` and ``(P_s, P_s)`` Gram matrices, for
      ``P_s ≫ N·C`` where ``(P_s, P_s)`` does not fit).
    - ``subset``: ``"all"``, ``"last_layer"`` (the last layer with parameters: the last Dense
      layer's weight and bias in a Chain, the leaves of the last tree node that holds
      parameters in a JaxFunction) or a
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

    Threads: the object may be read from several threads while one thread changes it.
    :meth:`fit`, :meth:`optimize_prior_precision` and the setters build the new state aside
    and install it in one step, and every reading method (the properties, :meth:`predictive`,
    :meth:`sample`, :meth:`log_marginal_likelihood`, :meth:`save`) takes the state once, so
    a reader sees the posterior before the change or after it — never a prior precision
    that a search is trying, nor a new curvature with the old loss. Changing one object
    from two threads at once is not supported (the change that finishes last wins). A
    failed :meth:`fit` or :meth:`optimize_prior_precision` leaves the object as it was.
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
        if not isinstance(model, (Chain, FluxModel, JaxFunction)):
            raise InputError(
                f"model must be a fluxhess.Chain, a JaxFunction (fluxhess.from_jax) or a FluxModel "
                f"(fluxhess.flux_model); got {type(model).__name__}"
            )
        self.model = model
        self.likelihood = lik.check_choice(likelihood)
        lik.check_model(model, self.likelihood)
        self.structure = check.choice("structure", structure, posterior.STRUCTURES)
        self.curvature = K.check_kind(curvature, self.structure)
        if self.structure == "kron" and isinstance(model, JaxFunction):
            raise UnsupportedModelError(
                f"structure='kron' (KFAC) needs the Dense layers of a fluxhess.Chain; {model!r} is a JAX function "
                "whose layers fluxhess cannot see. Use structure='diag', 'lowrank' or 'full' (any subset=)"
            )
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
        self._model_outputs = getattr(model, "out_features", None)  # a FluxModel's is known once fit sees data
        self._state: Fitted | None = None
        self._cache: tuple | None = None  # (state, hyper, decomposition) of the last posterior factorised
        self._spectrum: tuple | None = None  # (state, eigenvalues, eigenvectors or None) of a full or low-rank H
        temperature = check.positive_number("temperature", temperature)
        self._hyper = Hyper(self._check_prior(prior_precision), self._check_sigma(sigma_noise, temperature), temperature)
        self.prior_mean = prior_mean

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
        return self._hyper.prior.copy()

    @prior_precision.setter
    def prior_precision(self, value) -> None:
        self._hyper = dataclasses.replace(self._hyper, prior=self._check_prior(value))

    @property
    def prior_precision_diagonal(self) -> np.ndarray:
        """The prior precision of every parameter of the subset ``(P_s,)``, expanded from any shape."""
        with jax.enable_x64(True):
            return np.array(posterior.prior_diagonal(jnp.asarray(self._hyper.prior), self._subset.sizes))

    @property
    def sigma_noise(self) -> float:
        return self._hyper.sigma

    @sigma_noise.setter
    def sigma_noise(self, value) -> None:
        h = self._hyper
        self._hyper = dataclasses.replace(h, sigma=self._check_sigma(value, h.temperature))

    @property
    def temperature(self) -> float:
        """T ``> 0``: the curvature and the loss enter the posterior divided by it."""
        return self._hyper.temperature

    @temperature.setter
    def temperature(self, value) -> None:
        h = self._hyper
        T = check.positive_number("temperature", value)
        self._check_factor(h.sigma, T)
        self._hyper = dataclasses.replace(h, temperature=T)

    def _check_sigma(self, value, temperature: float) -> float:
        sigma = check.positive_number("sigma_noise", value)
        if self.likelihood == "classification" and sigma != 1.0:
            raise InputError(f"sigma_noise is the regression noise; it must stay 1 for classification, got {sigma}")
        self._check_factor(sigma, temperature)
        return sigma

    def _check_factor(self, sigma: float, temperature: float) -> None:
        """Refuse a σ whose square, or a σ and T whose likelihood factor
        (:func:`~fluxhess.laplace.likelihood.curvature_factor`), overflows float64."""
        if not math.isfinite(sigma * sigma):
            raise InputError(f"sigma_noise={sigma:.6g} is too large: its square (the noise variance) overflows float64")
        with np.errstate(over="ignore", divide="ignore"):
            c = lik.curvature_factor(self.likelihood, self.curvature, np.float64(sigma), np.float64(temperature))
        if not np.isfinite(c):
            raise InputError(self._factor_overflow(sigma, temperature))

    def _factor_overflow(self, sigma, temperature) -> str:
        formula = lik.factor_formula(self.likelihood, self.curvature)
        return (
            f"the likelihood factor {formula} overflows float64 at sigma_noise={sigma:.6g}, temperature="
            f"{temperature:.6g}: use a larger " + ("sigma_noise or temperature" if self.likelihood == "regression" else "temperature")
        )

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
            p.setflags(write=False)
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
        return self._state is not None

    @property
    def fitted_curvature(self):
        """The curvature :meth:`fit` computed (:mod:`.posterior`'s ``Full``, ``Diag``, ``LowRank`` or
        ``Kron``), None before it."""
        return None if self._state is None else self._state.curvature

    @property
    def loss(self) -> float | None:
        """``Σ_n ℓ_n`` at θ_MAP over the data :meth:`fit` saw (None before it)."""
        return None if self._state is None else self._state.loss

    @property
    def n_data(self) -> int | None:
        """N, the number of samples :meth:`fit` saw (None before it)."""
        return None if self._state is None else self._state.n_data

    @property
    def n_outputs(self) -> int | None:
        """C, the model's number of outputs (for a FluxModel, None until :meth:`fit`)."""
        return self._model_outputs if self._state is None else self._state.n_outputs

    @property
    def clipped(self) -> K.Clipped | None:
        """What ``clip_negative_eigenvalues=True`` removed at :meth:`fit` (None: nothing)."""
        return None if self._state is None else self._state.clipped

    def restore(self, curvature: Any, *, loss: float, n_data: int, n_outputs: int, clipped: Any) -> "Laplace":
        """Put back a fitted state, as :func:`fluxhess.laplace.load` reads it, without refitting."""
        self._state = Fitted(curvature, loss, n_data, n_outputs, None if clipped is None else K.Clipped(*clipped))
        return self

    def _features(self, X) -> np.ndarray:
        if self._subset.head is None:
            return api.model_inputs(self.model, X)
        return self._subset.features(self.params, X, self.backend)

    def fit(self, X: ArrayLike, y: ArrayLike) -> "Laplace":
        """Compute the curvature of the summed loss over the data, in chunks (a progress bar when long).

        ``X``: ``(N, d)``; ``y``: classification — integer labels ``(N,)`` in ``[0, C)`` (0/1
        for C == 1) or class probabilities ``(N, C)``; regression — ``(N, C)`` or ``(N,)`` for C == 1.

        Returns: ``self``. The new posterior replaces the old one only once all of it is
        computed: when ``fit`` fails, the object is as it was (unfitted, or the previous fit).
        """
        features = self._features(X)
        s = self._subset
        C = self._model_outputs
        if C is None:
            C = api.forward(s.tail, s.tail_params(self.params), features[:1], backend=self.backend).shape[1]
        N = features.shape[0]
        Y = lik.targets(self.likelihood, y, N, C)
        loss = lik.loss_name(self.likelihood, C)
        with memory.hints(K.MEMORY_HINTS):  # a refusal names Laplace's own options
            H = K.summed_curvature(self.structure, self.curvature, s, self.params, features, Y, loss, self.backend)
        if not K.is_finite(H):
            raise self._overflow("curvature")
        if self.structure == "kron":
            H = posterior.Kron(tuple(posterior.KronBlock.from_factors(A, G) for A, G in H))
        clipped = None
        if self.clip_negative_eigenvalues:
            H, clipped = K.clip_negative(H)
        summed = float(api.loss(s.tail, s.tail_params(self.params), features, Y, loss=loss, agg="sum", backend=self.backend))
        if not math.isfinite(summed):
            raise self._overflow("loss")
        self._state = Fitted(H, summed, N, C, clipped)  # one step: the whole new posterior, or none of it
        return self

    def _overflow(self, what: str) -> InputError:
        return InputError(
            f"the {what} of the data at these parameters is not finite: the network overflows float64 at θ_MAP "
            f"(largest |θ| = {float(np.max(np.abs(self.params), initial=0.0)):.6g}). Check params (a diverged "
            "training run?) and the scale of X; the object is unchanged"
        )

    # -- the posterior ------------------------------------------------------------

    def _factor(self, h: Hyper, sigma=None):
        return lik.curvature_factor(self.likelihood, self.curvature, h.sigma if sigma is None else sigma, h.temperature)

    def _check_scale(self, state: Fitted, h: Hyper, sigma) -> None:
        """Refuse a posterior precision ``c·H + P₀`` that overflows float64: the factor ``c`` itself
        (σ or T too small), or ``c`` times the curvature's largest entry."""
        with np.errstate(over="ignore", divide="ignore"):
            c = self._factor(h, np.float64(sigma))
            if not np.isfinite(c):
                raise InputError(self._factor_overflow(sigma, h.temperature))
            size = K.largest_entry(state.curvature)
            if not np.isfinite(c * size):
                raise InputError(
                    f"the posterior precision overflows float64: the likelihood factor {c:.6g} (sigma_noise={sigma:.6g}, "
                    f"temperature={h.temperature:.6g}) times a curvature with entries up to {size:.6g}. Use a larger "
                    + ("sigma_noise or temperature" if self.likelihood == "regression" else "temperature")
                )

    def _not_positive_definite(self, state: Fitted, h: Hyper, sigma, prior) -> InputError:
        """Why ``c·H + P₀`` (which does not overflow: :meth:`_check_scale`) could not be factorised:
        an indefinite Hessian, or a prior too small for the curvature's rounding."""
        c = self._factor(h, sigma)
        with jax.enable_x64(True):
            smallest = state.curvature.smallest_eigenvalue(c, jnp.asarray(prior), self._subset.sizes)
        msg = (
            f"the posterior precision (factor × curvature + prior precision) is not positive definite: its most "
            f"negative eigenvalue is {smallest:.6g}."
        )
        if self.curvature == "hessian":
            h_min = c * K.most_negative_eigenvalue(state.curvature)
            if h_min < 0:
                return InputError(
                    f"{msg} The Hessian of the negative log likelihood is indefinite at these parameters (most "
                    f"negative eigenvalue {h_min:.6g}; not a minimum of the loss). Use curvature='ggn' (positive "
                    "semi-definite by construction), a larger prior_precision, or clip_negative_eigenvalues=True "
                    "to set the Hessian's negative eigenvalues to 0 (reported in Laplace.clipped)"
                )
        scale = c * K.largest_entry(state.curvature)
        if scale > _ROUNDING_SPAN * float(np.min(prior)):
            return InputError(
                f"{msg} The curvature's entries reach {scale:.6g} (factor included) at these parameters (largest "
                f"|θ| = {float(np.max(np.abs(self.params), initial=0.0)):.6g}), so a prior precision of "
                f"{float(np.min(prior)):.6g} is below its rounding error: the parameters are far out of scale (a "
                f"diverged training run?), or the prior precision must be at least about {scale / _ROUNDING_SPAN:.3g}"
            )
        return InputError(f"{msg} Use a larger prior_precision")

    def _snapshot(self, what: str) -> tuple[Fitted, Hyper]:
        """The fitted state and the hyperparameters, taken once (see the class docstring on threads)."""
        state, h = self._state, self._hyper
        if state is None:
            raise NotFittedError(f"{what} needs a fitted Laplace approximation: call .fit(X, y) with the training data first")
        return state, h

    def _decompose(self, state: Fitted, h: Hyper):
        """The factorisation of ``c·H + P₀`` under ``h``; an InputError when it is not positive definite."""
        curv = state.curvature
        if isinstance(curv, posterior.LowRank):
            memory.require("Laplace low-rank decomposition", curv.working_bytes(), curv.U.shape)
        self._check_scale(state, h, h.sigma)
        c = self._factor(h)
        with jax.enable_x64(True):
            dec = curv.decompose(c, jnp.asarray(h.prior), self._subset.sizes)
        if not curv.positive_definite(dec):
            raise self._not_positive_definite(state, h, h.sigma, h.prior)
        return dec

    def _decomposition(self, state: Fitted | None = None, h: Hyper | None = None):
        """The factorisation of the posterior of ``state`` under ``h`` (default: the current ones),
        kept for the next call while neither changes."""
        if state is None:
            state, h = self._snapshot("the posterior")
        cache = self._cache
        if cache is not None and cache[0] is state and cache[1] is h:
            return cache[2]
        dec = self._decompose(state, h)
        self._cache = (state, h, dec)  # one step: a reader never pairs one posterior with another's factor
        return dec

    def _dense(self, quantity: str):
        P = self.n_params
        memory.require(quantity, memory.needed_bytes(quantity, P * P, 8), (P, P))

    @property
    def posterior_precision(self) -> np.ndarray:
        """``P = c·H + P₀`` as a dense ``(P_s, P_s)`` matrix, for every structure."""
        state, h = self._snapshot("posterior_precision")
        self._dense("posterior_precision")
        with jax.enable_x64(True):
            return np.array(state.curvature.precision(self._factor(h), jnp.asarray(h.prior), self._subset.sizes))

    @property
    def posterior_covariance(self) -> np.ndarray:
        """``P⁻¹`` as a dense ``(P_s, P_s)`` matrix, for every structure."""
        state, h = self._snapshot("posterior_covariance")
        dec = self._decomposition(state, h)
        self._dense("posterior_covariance")
        with jax.enable_x64(True):
            return np.array(state.curvature.covariance(dec))

    @property
    def posterior_variance(self) -> np.ndarray:
        """The marginal posterior variances ``diag(P⁻¹)`` ``(P_s,)``."""
        state, h = self._snapshot("posterior_variance")
        dec = self._decomposition(state, h)
        if self.structure == "diag":
            return 1.0 / np.asarray(dec)
        if self.structure == "lowrank":
            with jax.enable_x64(True):
                return np.array(state.curvature.variance(dec))
        self._dense("posterior_variance")
        with jax.enable_x64(True):
            return np.ascontiguousarray(np.diagonal(np.asarray(state.curvature.covariance(dec))))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` draws of the subset's parameters from ``N(θ_MAP, P⁻¹)``.

        Returns: ``(n, P_s)``.
        """
        n = check.positive_int("n", n)
        seed = check.seed("seed", seed)
        state, h = self._snapshot("sample")
        return self._draw(state, self._decomposition(state, h), n, seed)

    def _draw(self, state: Fitted, dec, n: int, seed: int) -> np.ndarray:
        memory.require("sample", memory.needed_bytes("sample", n * self.n_params, 8), (n, self.n_params))
        Z = np.random.default_rng(seed).standard_normal((n, self.n_params))
        with jax.enable_x64(True):
            return self.mean + np.asarray(state.curvature.scale(dec, jnp.asarray(Z)))

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
        state, h = self._snapshot("log_marginal_likelihood")
        if sigma_noise is not None and self.likelihood != "regression":
            raise InputError("sigma_noise can only be changed for likelihood='regression'")
        traced = _is_traced(prior_precision) or _is_traced(sigma_noise)
        if traced and not jax.config.jax_enable_x64:
            raise InputError(
                "differentiating log_marginal_likelihood needs float64 JAX: wrap the jax.grad call in "
                "`with jax.enable_x64(True):`"
            )
        with jax.enable_x64(True):
            prior = jnp.asarray(h.prior) if prior_precision is None else self._check_prior(prior_precision, concrete=not traced)
            prior = jnp.asarray(prior, dtype=jnp.float64)
            if sigma_noise is None:
                sigma = h.sigma
            else:
                sigma = sigma_noise if traced else self._check_sigma(sigma_noise, h.temperature)
            if not traced:
                self._check_scale(state, h, sigma)
            value = self._log_marglik(state, h, prior, sigma)
        if not traced and not np.isfinite(np.asarray(value)):
            raise self._not_positive_definite(state, h, sigma, np.asarray(prior))
        return value

    def _eigenvalues(self, state: Fitted) -> np.ndarray:
        """The eigenvalues of a full or low-rank ``H`` (computed once per fit): a scalar prior's log det is then O(P)."""
        spectrum = self._spectrum
        if spectrum is not None and spectrum[0] is state:
            return spectrum[1]
        if isinstance(state.curvature, posterior.LowRank):
            memory.require("Laplace low-rank eigenvalues", state.curvature.working_bytes(), state.curvature.U.shape)
        e = state.curvature.eigenvalues()
        self._spectrum = (state, e, None)
        return e

    def _eigh(self, state: Fitted) -> tuple[np.ndarray, np.ndarray]:
        """``H = Q diag(e) Qᵀ`` for a full ``H`` (computed once per fit): ``e`` ``(P_s,)``, ``Q`` ``(P_s, P_s)``."""
        spectrum = self._spectrum
        if spectrum is not None and spectrum[0] is state and spectrum[2] is not None:
            return spectrum[1], spectrum[2]
        self._dense("eigenvectors")
        e, Q = np.linalg.eigh(state.curvature.H)
        self._spectrum = (state, e, Q)
        return e, Q

    def _log_marglik(self, state: Fitted, h: Hyper, prior, sigma, curv=None):
        """The log marginal likelihood as a JAX function of the hyperparameters (and of ``curv``, for jit)."""
        curv = state.curvature if curv is None else curv
        sizes = self._subset.sizes
        c = self._factor(h, sigma)
        p0 = posterior.prior_diagonal(prior, sizes)
        delta = self.mean - self._prior_mean
        if self.structure in EIGENVALUE_LOGDET and prior.shape[0] == 1:  # log det(c·H + λ·I) from H's eigenvalues
            log_det = jnp.sum(jnp.log(c * jnp.asarray(self._eigenvalues(state)) + prior[0]))
        else:
            log_det = curv.logdet(c, prior, sizes)
        log_det_ratio = log_det - jnp.sum(jnp.log(p0))
        scatter = jnp.sum(p0 * delta**2)
        ll = lik.log_likelihood(self.likelihood, state.loss, sigma, h.temperature, state.n_data, state.n_outputs)
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

        The search works on its own copy of the hyperparameters and stores the result in one
        step at the end: meanwhile, other threads reading this object see the values it had
        before; when the search fails, they stay.

        Returns: ``self``.
        """
        state, h = self._snapshot("optimize_prior_precision")
        check.choice("method", method, METHODS)
        max_iter = check.positive_int("max_iter", max_iter)
        self.check_tuning(prior_structure, tune_sigma_noise)
        if method == "gridsearch":
            if tune_sigma_noise or prior_structure != "scalar":
                raise InputError(
                    "method='gridsearch' tunes one scalar prior precision; use method='marglik' for "
                    "prior_structure='layerwise'/'diag' or tune_sigma_noise=True"
                )
            self._hyper = tuning.gridsearch(self, state, h, val, grid, pred_type, link_approx, n_samples)
            return self
        if val is not None or grid is not None:
            raise InputError("val and grid are for method='gridsearch'; method='marglik' uses the training data only")
        self._hyper = tuning.maximise_marglik(self, state, h, prior_structure, tune_sigma_noise, max_iter)
        return self

    def check_tuning(self, prior_structure: str, tune_sigma_noise: bool) -> None:
        """Refuse a ``prior_structure`` or ``tune_sigma_noise`` that this approximation cannot tune."""
        check.choice("prior_structure", prior_structure, PRIOR_STRUCTURES)
        if not isinstance(tune_sigma_noise, bool):
            raise InputError(f"tune_sigma_noise must be True or False; got {tune_sigma_noise!r}")
        if tune_sigma_noise and self.likelihood != "regression":
            raise InputError("tune_sigma_noise=True applies to likelihood='regression' only")
        if prior_structure == "diag" and self.structure == "kron":
            raise InputError("structure='kron' takes a scalar or per-block prior: use prior_structure='scalar' or 'layerwise'")

    # -- the predictive -------------------------------------------------------------

    def predictive(self, X: ArrayLike, pred_type: str = "glm", link_approx: str | None = None, n_samples: int = 100, seed: int = 0) -> pred.Predictive:
        """The posterior predictive at ``X`` ``(N, d)``.

        - ``pred_type="glm"``: the linearised network, ``f(x) ~ N(f_MAP(x), J P⁻¹ Jᵀ)``
          with ``J = ∂f/∂θ_subset``; ``"nn"``: ``n_samples`` networks with θ from :meth:`sample`.
        - ``link_approx`` (classification): ``"probit"`` (the default for glm), ``"bridge"`` or
          ``"mc"`` (``n_samples`` draws; the only one, and the default, for nn). Not for regression.
        - ``seed``: the random stream of ``mc`` and ``nn``.

        The GLM predictive streams over chunks of ``X``: each chunk's Jacobians ``(n, C, P_s)``
        are reduced to its ``J P⁻¹ Jᵀ`` ``(n, C, C)`` before the next chunk's are computed, so
        it holds one chunk's Jacobians beside the ``(N, C, C)`` result, and the memory guard
        checks that sum before it starts.

        Returns: a :class:`~fluxhess.laplace.Predictive` (``mean``, ``variance``, ``function_variance``
        ``(N, C)``; ``function_covariance`` ``(N, C, C)``); classification probabilities are
        finite, in [0, 1], and each row sums to 1.
        """
        state, h = self._snapshot("predictive")
        link = pred.check_link(link_approx, pred_type, self.likelihood)
        n_samples = check.positive_int("n_samples", n_samples)
        seed = check.seed("seed", seed)
        features = self._features(X)
        N, C = features.shape[0], state.n_outputs
        draws = n_samples * N * C if (pred_type == "nn" or link == "mc") else 0  # draws of f (n_samples, N, C), at once
        if pred_type == "nn":
            memory.require("predictive", memory.needed_bytes("predictive", draws, 8), (n_samples, N, C))
            return self._sampled(state, h, self._decomposition(state, h), features, n_samples, seed)
        step = self._jacobian_chunk(state, N)
        # f_MAP and J P⁻¹ Jᵀ (N, C, C); one chunk's Jacobians of the tail, the subset's copy and
        # inv_quad's temporaries (three of that size); the mc draws and their link (two copies).
        elements = N * C + N * C * C + 3 * step * C * self._subset.tail.num_params + 2 * draws
        memory.require("predictive", 8 * elements, (n_samples, N, C) if draws else (N, C, C))
        dec = self._decomposition(state, h)
        s = self._subset
        f_mu = api.forward(s.tail, s.tail_params(self.params), features, backend=self.backend)
        f_cov = np.empty((N, C, C))
        for sl in chunks(N, step, "Laplace predictive"):
            J = s.jacobian(self.params, features[sl], self.backend)
            with jax.enable_x64(True):
                f_cov[sl] = np.asarray(state.curvature.inv_quad(dec, jnp.asarray(J)))
            del J  # before the next chunk's Jacobians exist
        return self._finish(f_mu, f_cov, h, link, n_samples, seed)

    def _jacobian_chunk(self, state: Fitted, N: int) -> int:
        """Samples per chunk of subset Jacobians: two copies of ``(n, C, P_tail)`` within the chunk budget."""
        return memory.chunk_size(2 * 8 * state.n_outputs * self._subset.tail.num_params, N)

    def _finish(self, f_mu, f_cov, h: Hyper, link: str, n_samples: int, seed: int) -> pred.Predictive:
        """The predictive from the moments of ``f``: Gaussian (regression) or through the link."""
        if self.likelihood == "regression":
            return pred.regression(f_mu, f_cov, h.sigma)
        probs = {
            "probit": pred.probit,
            "bridge": pred.bridge,
            "mc": lambda m, v: pred.monte_carlo(m, v, n_samples, seed),
        }[link](f_mu, f_cov)
        return pred.classification(probs, f_mu, f_cov)

    def _sampled(self, state: Fitted, h: Hyper, dec, features, n_samples: int, seed: int) -> pred.Predictive:
        """The predictive of ``n_samples`` networks drawn from the posterior factorised in ``dec``."""
        s = self._subset
        theta_tail = np.array(s.tail_params(self.params))
        outputs = []
        for draw in self._draw(state, dec, n_samples, seed):
            theta_tail[s.index] = draw
            outputs.append(api.forward(s.tail, theta_tail, features, backend=self.backend))
        f = np.stack(outputs)  # (n_samples, N, C)
        f_mu = f.mean(axis=0)
        centred = f - f_mu
        f_cov = np.einsum("snc,snk->nck", centred, centred) / max(n_samples - 1, 1)
        if self.likelihood == "regression":
            return pred.regression(f_mu, f_cov, h.sigma)
        return pred.classification(pred.link(f).mean(axis=0), f_mu, f_cov)

    # -- saving ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the approximation (model, θ, settings, fitted curvature) to ``path`` (``.npz``).

        Atomic: the file is written beside ``path`` and renamed over it once complete, so a
        failed or interrupted save leaves what was at ``path`` before. What the file holds:
        :mod:`fluxhess.laplace.store`. A :class:`~fluxhess.FluxModel` is saved as its Julia
        source, which :meth:`load` runs only when told to.
        """
        store.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Any = None, trust_source: bool = False) -> "Laplace":
        """The approximation that :meth:`save` wrote to ``path``, ready to use.

        Loading runs no code: a saved :class:`~fluxhess.Chain` is rebuilt from its table of
        layers; a file holding a Flux model's Julia source is refused unless ``model=`` gives
        the model (e.g. ``fluxhess.flux_model(source)`` from a source you trust) or
        ``trust_source=True`` says to run the file's source. A damaged or foreign file raises
        :class:`~fluxhess.InputError` naming it and what is wrong.
        """
        return store.load(cls, path, model=model, trust_source=trust_source)

    def __repr__(self) -> str:
        state = f"fitted on {self.n_data} samples" if self.fitted else "not fitted"
        return (
            f"Laplace({self.likelihood}, curvature={self.curvature!r}, structure={self.structure!r}, "
            f"subset={len(self.subset)} blocks / {self.n_params} parameters, backend={self.backend!r}; {state})"
        )
