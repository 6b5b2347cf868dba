"""Losses with Flux.Losses semantics, and the aggregation factor ``s``.

Per-sample losses ℓ_n follow ``Flux.Losses`` exactly (same ϵ, same log
formulation). A batch loss is ``L = s · Σ_n ℓ_n`` where :func:`scale` gives
``s``: 1 for ``agg="sum"``; for ``agg="mean"`` exactly what Flux's default
``agg=mean`` divides by — ``1/N`` for the (logit)crossentropies, which sum over
the class dimension first, and ``1/(N·C)`` for ``mse`` and the (logit)binary
cross-entropies, which Flux averages over every element. Every curvature
(hessian, ggn, empirical_fisher, kron, ...) carries the same ``s``.
"""

from __future__ import annotations

import jax.numpy as jnp

from . import _activations as A
from .errors import UnknownNameError

LOSSES = (
    "mse",
    "crossentropy",
    "logitcrossentropy",
    "binarycrossentropy",
    "logitbinarycrossentropy",
)
AGGS = ("sum", "mean")

#: Losses whose targets are class distributions over the C outputs (integer labels allowed).
CATEGORICAL = ("crossentropy", "logitcrossentropy")
#: Losses whose targets are per-output probabilities in [0, 1].
BINARY = ("binarycrossentropy", "logitbinarycrossentropy")
#: Losses that expect the model to output probabilities.
ON_PROBABILITIES = ("crossentropy", "binarycrossentropy")


def check_loss(loss) -> str:
    if not isinstance(loss, str) or loss not in LOSSES:
        raise UnknownNameError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    return loss


def check_agg(agg) -> str:
    if not isinstance(agg, str) or agg not in AGGS:
        raise UnknownNameError(f"agg must be 'sum' or 'mean'; got {agg!r}")
    return agg


def scale(loss: str, agg: str, n_samples: int, n_outputs: int) -> float:
    """The factor ``s`` in ``L = s · Σ_n ℓ_n`` (docs/conventions.md: 1 for ``agg="sum"``)."""
    check_loss(loss)
    if check_agg(agg) == "sum":
        return 1.0
    if loss in CATEGORICAL:
        return 1.0 / n_samples
    return 1.0 / (n_samples * n_outputs)


def _xlogy(x, y):
    """``x * log(y)``, exactly 0 where ``x == 0`` (with a zero derivative there too)."""
    zero = x == 0
    return jnp.where(zero, 0.0, x * jnp.log(jnp.where(zero, 1.0, y)))


def _eps(yhat):
    return jnp.finfo(yhat.dtype).eps


#: ℓ_n for one sample of each loss, ``(ŷ (C,), y (C,)) -> scalar``, as Flux.Losses writes it.
PER_SAMPLE = {
    "mse": lambda yhat, y: jnp.sum((yhat - y) ** 2),
    "crossentropy": lambda yhat, y: -jnp.sum(_xlogy(y, yhat + _eps(yhat))),
    "logitcrossentropy": lambda yhat, y: -jnp.sum(y * A.logsoftmax(yhat)),
    "binarycrossentropy": lambda yhat, y: jnp.sum(-_xlogy(y, yhat + _eps(yhat)) - _xlogy(1 - y, 1 - yhat + _eps(yhat))),
    "logitbinarycrossentropy": lambda yhat, y: jnp.sum((1 - y) * yhat + A.softplus(-yhat)),
}


def per_sample(loss: str, yhat, y):
    """ℓ_n for one sample: ``yhat`` and ``y`` are ``(C,)``; returns a scalar.

    ϵ for the probability losses is ``eps`` of the dtype of ``yhat`` (2⁻⁵² in float64,
    2⁻²³ in float32), as in Flux.
    """
    if loss not in PER_SAMPLE:
        raise UnknownNameError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    return PER_SAMPLE[loss](yhat, y)
