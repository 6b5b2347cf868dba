"""The posterior predictive: one result type, and the link approximations for classification.

Given the Gaussian over the outputs ``f(x) ~ N(f_μ, Σ_f)`` (the GLM predictive) a
classification likelihood needs ``E[softmax(f)]`` (``E[sigmoid(f)]`` for C == 1):

- ``probit``: ``softmax(κ ⊙ f_μ)``, ``κ_c = 1/sqrt(1 + π/8 · Σ_f[c, c])`` (MacKay; laplace-torch);
- ``bridge``: the Laplace bridge (Hobbhahn et al. 2022) — the Dirichlet whose mean is
  returned, after laplace-torch's zero-mean correction; needs C ≥ 2;
- ``mc``: the average of the link over ``n_samples`` draws of ``f``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FluxHessError, InputError

LINKS = ("probit", "bridge", "mc")
PRED_TYPES = ("glm", "nn")


@dataclass(frozen=True)
class Predictive:
    """The posterior predictive at ``N`` inputs; the same fields for every likelihood and method.

    - ``mean`` ``(N, C)``: classification — the predicted class probabilities
      (C == 1: the probability of class 1); regression — ``E[f(x)]``.
    - ``variance`` ``(N, C)``: the variance of the target ``y`` under the predictive.
      Regression: ``function_variance + sigma_noise²``, *with* observation noise.
      Classification: ``mean · (1 − mean)``, the variance of the one-hot label.
    - ``function_variance`` ``(N, C)``: the variance of ``f(x)`` (the logits for
      classification), *without* observation noise.
    - ``function_mean`` ``(N, C)``, ``function_covariance`` ``(N, C, C)``: the moments of
      ``f(x)`` (GLM: ``f_MAP(x)`` and ``J P⁻¹ Jᵀ``; nn: over the sampled networks).
    """

    mean: np.ndarray
    variance: np.ndarray
    function_mean: np.ndarray
    function_covariance: np.ndarray

    @property
    def function_variance(self) -> np.ndarray:
        return np.ascontiguousarray(np.diagonal(self.function_covariance, axis1=1, axis2=2))

    def _table(self):
        """Each field's shape and the range and mean of its entries."""
        fields = {"mean": self.mean, "variance": self.variance, "function_mean": self.function_mean,
                  "function_variance": self.function_variance, "function_covariance": self.function_covariance}
        head = ["field", "shape", "min", "mean", "max"]
        rows = [[name, str(a.shape), f"{a.min():.4g}", f"{a.mean():.4g}", f"{a.max():.4g}"] for name, a in fields.items()]
        return head, rows

    def _title(self) -> str:
        N, C = self.mean.shape
        return f"Predictive at {N} inputs, {C} output{'s' if C > 1 else ''}"

    def __repr__(self) -> str:
        from ..compare import text_table

        return f"{self._title()}\n{text_table(*self._table())}"

    def _repr_html_(self) -> str:
        import html

        from ..compare import html_table

        return f"<p><b>{html.escape(self._title())}</b></p>{html_table(*self._table())}"


def _softmax(f: np.ndarray) -> np.ndarray:
    e = np.exp(f - f.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(f: np.ndarray) -> np.ndarray:
    t = np.exp(-np.abs(f))
    return np.where(f >= 0, 1 / (1 + t), t / (1 + t))


def link(f: np.ndarray) -> np.ndarray:
    """The inverse link: softmax over the last axis for C ≥ 2, the sigmoid for C == 1."""
    return _softmax(f) if f.shape[-1] >= 2 else _sigmoid(f)


def probit(f_mu: np.ndarray, f_cov: np.ndarray) -> np.ndarray:
    kappa = 1 / np.sqrt(1 + np.pi / 8 * np.diagonal(f_cov, axis1=1, axis2=2))
    return link(kappa * f_mu)


def bridge(f_mu: np.ndarray, f_cov: np.ndarray) -> np.ndarray:
    """The mean of the Laplace bridge's Dirichlet, ``α / Σα`` with
    ``α_c = (1 − 2/C + e^{μ_c}·Σ_k e^{−μ_k} / C²) / v_c`` after the zero-mean correction.

    Computed in log space (``e^{μ_c}·Σ_k e^{−μ_k} = e^{μ_c + logsumexp(−μ)}``, then a softmax of
    ``log α``), so logits of any size give finite probabilities that sum to 1. A class whose
    corrected variance ``v_c`` is not positive (a posterior without variance there) has no
    bridge: an InputError.
    """
    if f_mu.shape[1] < 2:
        raise InputError(
            "link_approx='bridge' maps a softmax Gaussian to a Dirichlet and needs C >= 2 outputs; "
            "this model has 1 (a sigmoid likelihood): use link_approx='probit' or 'mc'"
        )
    row = f_cov.sum(axis=-1)  # (N, C)
    total = f_cov.sum(axis=(1, 2))[:, None]  # (N, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = f_mu - row * f_mu.sum(axis=-1, keepdims=True) / total
        var = np.diagonal(f_cov, axis1=1, axis2=2) - row * f_cov.sum(axis=-2) / total
    flat = ~(np.all(np.isfinite(mu), axis=1) & np.all(var > 0, axis=1))
    if np.any(flat):
        rows = np.flatnonzero(flat)
        raise InputError(
            f"link_approx='bridge' needs a positive function variance in every class after its zero-mean "
            f"correction; {rows.size} of {f_mu.shape[0]} inputs have none (first: row {rows[0]}). Use "
            "link_approx='probit' or 'mc'"
        )
    K = f_mu.shape[1]
    shifted = mu + logsumexp(-mu)  # log(e^{μ_c}·Σ_k e^{−μ_k}) >= 0
    with np.errstate(divide="ignore"):  # log(1 − 2/C) = −inf for C == 2: logaddexp takes it
        log_alpha = np.logaddexp(np.log(1 - 2 / K), shifted - 2 * np.log(K)) - np.log(var)
    return _softmax(log_alpha)


def logsumexp(a: np.ndarray) -> np.ndarray:
    """``log Σ_k e^{a_k}`` over the last axis, kept as a column, without overflow."""
    top = a.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(a - top).sum(axis=-1, keepdims=True))


def gaussian_samples(f_mu: np.ndarray, f_cov: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """``(n_samples, N, C)`` draws of ``N(f_μ, Σ_f)`` per input (``Σ_f`` may be singular)."""
    lam, Q = np.linalg.eigh(f_cov)
    root = Q * np.sqrt(np.clip(lam, 0, None))[:, None, :]  # (N, C, C): root @ rootᵀ = Σ_f
    Z = np.random.default_rng(seed).standard_normal((n_samples,) + f_mu.shape)
    return f_mu + np.einsum("nck,snk->snc", root, Z)


def monte_carlo(f_mu: np.ndarray, f_cov: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    return link(gaussian_samples(f_mu, f_cov, n_samples, seed)).mean(axis=0)


def classification(probs: np.ndarray, f_mu: np.ndarray, f_cov: np.ndarray) -> Predictive:
    """The predictive of class probabilities ``(N, C)``, checked: finite, in [0, 1], rows summing to 1."""
    totals = probs.sum(axis=1) if probs.shape[1] > 1 else np.ones(probs.shape[0])
    if not (np.all(np.isfinite(probs)) and np.all((probs >= 0) & (probs <= 1)) and np.allclose(totals, 1.0, rtol=0, atol=1e-9)):
        bad = ~np.isfinite(f_mu).all(axis=1) | ~np.isfinite(f_cov).all(axis=(1, 2))
        why = (f"the function moments are not finite at {int(bad.sum())} inputs (an overflow in the network)"
               if bad.any() else "rounding")
        raise FluxHessError(f"the predictive class probabilities are not a distribution at every input ({why})")
    return Predictive(probs, probs * (1 - probs), f_mu, f_cov)


def regression(f_mu: np.ndarray, f_cov: np.ndarray, sigma_noise: float) -> Predictive:
    f_var = np.diagonal(f_cov, axis1=1, axis2=2)
    return Predictive(f_mu, f_var + sigma_noise**2, f_mu, f_cov)


def check_link(link_approx, pred_type: str, likelihood: str) -> str:
    """The link approximation to use; ``None`` means probit for ``glm`` and sampling for ``nn``."""
    if pred_type not in PRED_TYPES:
        raise InputError(f"pred_type must be one of {', '.join(map(repr, PRED_TYPES))}; got {pred_type!r}")
    if likelihood == "regression":
        if link_approx is not None:
            raise InputError(
                f"link_approx applies to classification only; a regression predictive is Gaussian. Got {link_approx!r}"
            )
        return "none"
    if link_approx is None:
        return "probit" if pred_type == "glm" else "mc"
    if link_approx not in LINKS:
        raise InputError(f"link_approx must be one of {', '.join(map(repr, LINKS))}; got {link_approx!r}")
    if pred_type == "nn" and link_approx != "mc":
        raise InputError(
            f"pred_type='nn' samples networks, so its link is link_approx='mc'; got {link_approx!r}. "
            "Use pred_type='glm' for probit or bridge"
        )
    return link_approx
