"""The likelihoods a Laplace approximation knows, and their one scaling factor.

A likelihood names the loss whose curvature is computed (always ``agg="sum"``):

- ``"classification"``: the model outputs logits; a softmax likelihood for C ≥ 2
  (``loss="logitcrossentropy"``), a sigmoid likelihood for C == 1
  (``loss="logitbinarycrossentropy"``). The negative log likelihood *is* that loss.
- ``"regression"``: Gaussian with noise ``sigma_noise`` σ on every output
  (``loss="mse"``): ``−log p(y | f) = Σ_n ‖y_n − f_n‖² / (2σ²) + N·C·log(σ√(2π))``.

With a temperature T, every curvature of the loss and the loss itself enter the
posterior times :func:`hessian_factor` ``= 1/T`` (classification) or ``1/(2σ²T)``
(regression), exactly as laplace-torch's ``_H_factor`` times its ½-scaled MSE (the
empirical Fisher, quadratic in the loss, that factor squared times T:
:func:`curvature_factor`), and the
log likelihood is the tempered one, ``(1/T)·log p(y | f)``, its Gaussian normalizer
included (laplace-torch ≥ 0.5; its 0.3 and 0.4 left the normalizer untempered).
This module is the only place that factor is written down.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .. import _validate as check
from ..errors import InputError
from ..jax_function import JaxFunction
from ..model import Activation, Chain

LIKELIHOODS = ("classification", "regression")
#: Output activations after which a model no longer returns logits.
_PROBABILITY_OUTPUTS = ("softmax", "logsoftmax", "sigmoid")


def loss_name(likelihood: str, n_outputs: int) -> str:
    """The fluxhess loss whose sum over the data is the (unscaled) negative log likelihood."""
    if likelihood == "regression":
        return "mse"
    return "logitcrossentropy" if n_outputs >= 2 else "logitbinarycrossentropy"


def hessian_factor(likelihood: str, sigma_noise, temperature):
    """The factor that turns the summed loss (and its curvature) into the tempered NLL.

    ``1/T`` for classification, ``1/(2σ²T)`` for regression. Works on floats and on JAX
    values alike, so the log marginal likelihood stays differentiable in σ.
    """
    if likelihood == "regression":
        return 1.0 / (2.0 * sigma_noise**2 * temperature)
    return 1.0 / temperature


def curvature_factor(likelihood: str, curvature: str, sigma_noise, temperature):
    """``c`` of the posterior precision ``c·H + P₀`` for the curvature ``H`` of the summed loss.

    The Hessian and the GGN are linear in the loss's scale: :func:`hessian_factor`. The
    empirical Fisher, the sum of the per-sample gradients' squares, is quadratic in it: the
    tempered NLL's is ``Σ_n g_n g_nᵀ / T`` with ``g_n`` the NLL's gradients, so ``1/T``
    (classification) or ``1/(4σ⁴T)`` (regression), as laplace-torch ≥ 0.5 computes it (its 0.3
    and 0.4 scaled the EF as the GGN).
    """
    c = hessian_factor(likelihood, sigma_noise, temperature)
    return c * c * temperature if curvature == "ef" else c


def factor_formula(likelihood: str, curvature: str) -> str:
    """:func:`curvature_factor` in words, for error messages."""
    if likelihood == "classification":
        return "1/temperature"
    return "1/(4·sigma_noise⁴·temperature)" if curvature == "ef" else "1/(2·sigma_noise²·temperature)"


def log_likelihood(likelihood: str, summed_loss, sigma_noise, temperature, n_data: int, n_outputs: int):
    """``(1/T)·log p(y | f)`` of the training data from its summed loss (laplace-torch's
    ``log_likelihood``).

    Classification: ``−L/T``. Regression: ``−(L/(2σ²) + N·C·log(σ√(2π)))/T``.
    """
    value = -hessian_factor(likelihood, sigma_noise, temperature) * summed_loss
    if likelihood == "regression":
        value = value - n_data * n_outputs * jnp.log(sigma_noise * math.sqrt(2 * math.pi)) / temperature
    return value


def check_model(model, likelihood: str) -> None:
    """A classification model must output logits: refuse a model that ends in a probability map
    (for a FluxModel, a last layer identified as one, e.g. ``x -> σ.(x)``)."""
    if isinstance(model, JaxFunction):
        return  # a function's last operation cannot be seen
    last = model.layers[-1] if isinstance(model, Chain) else model.layer_specs[-1]
    if likelihood == "classification" and isinstance(last, Activation) and last.name in _PROBABILITY_OUTPUTS:
        raise InputError(
            f"likelihood='classification' needs a model that outputs logits, but this model ends with "
            f"Activation({last.name!r}). Drop that layer: the likelihood applies the softmax (C >= 2) "
            "or the sigmoid (C == 1) itself"
        )


def targets(likelihood: str, y, n_samples: int, n_outputs: int) -> np.ndarray:
    """``y`` as ``(N, C)`` float64 targets of the likelihood's loss, with messages that name it.

    Classification with C ≥ 2: integer labels ``(N,)`` in ``[0, C)`` or rows of class
    probabilities ``(N, C)``. With C == 1 (sigmoid): labels or probabilities in [0, 1],
    ``(N,)`` or ``(N, 1)``. Regression: ``(N, C)``, or ``(N,)`` when C == 1.
    """
    if likelihood == "classification" and n_outputs == 1:
        a = np.asarray(y)
        if a.dtype.kind in "iu" and a.size and (a.min() < 0 or a.max() > 1):
            raise InputError(
                f"a model with 1 output is a sigmoid (binary) classifier: labels in y must be 0 or 1; got values "
                f"from {a.min()} to {a.max()}. For {int(a.max()) + 1} classes give the model "
                f"{int(a.max()) + 1} outputs"
            )
    return check.targets_array(y, n_samples, n_outputs, loss_name(likelihood, n_outputs), np.dtype(np.float64))


def check_choice(likelihood) -> str:
    return check.choice("likelihood", likelihood, LIKELIHOODS)
