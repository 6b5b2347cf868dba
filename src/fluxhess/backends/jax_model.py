"""A :class:`fluxhess.Chain` as a JAX function of ``(θ, x)``, with NNlib's activations.

Shared by the generic JAX routes (:mod:`.jax`) and the Dense-chain fast paths
(:mod:`.dense_curvature`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import losses as L
from ..model import Activation, Chain, Dense, Flatten

# ---------------------------------------------------------------------------
# Activations: NNlib's formulas and default constants (NNlib src/activations.jl).
# ---------------------------------------------------------------------------


def _sigmoid(x):
    t = jnp.exp(-jnp.abs(x))
    return jnp.where(x >= 0, 1 / (1 + t), t / (1 + t))


def _gelu(x):
    # NNlib: gelu === gelu_tanh, x/2 * (1 + tanh(√(2/π) * (x + 0.044715 x³)))
    return x / 2 * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


ELEMENTWISE = {
    "identity": lambda x: x,
    "relu": lambda x: jnp.where(x < 0, 0.0, x),
    "tanh": jnp.tanh,
    "sigmoid": _sigmoid,
    "softplus": L._softplus,
    "elu": lambda x: jnp.where(x >= 0, x, jnp.exp(jnp.minimum(x, 0.0)) - 1),
    "leakyrelu": lambda x: jnp.where(x > 0, x, 0.01 * x),
    "swish": lambda x: x * _sigmoid(x),
    "gelu": _gelu,
}


def _softmax(z):
    # NNlib: exp.(x .- max) ./ sum(exp.(x .- max)) over each sample's outputs.
    e = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _logsoftmax(z):
    # NNlib: (x .- max) .- log(sum(exp.(x .- max))) over each sample's outputs.
    shifted = z - jnp.max(z, axis=-1, keepdims=True)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


COLUMN = {"softmax": _softmax, "logsoftmax": _logsoftmax}


def activation(name):
    """The JAX function of the activation called ``name`` (elementwise or columnwise)."""
    return ELEMENTWISE[name] if name in ELEMENTWISE else COLUMN[name]


def compose(names):
    """``x ↦ σ_k(…σ_1(x))`` for the activations ``names = (σ_1, …, σ_k)``."""
    fns = [activation(n) for n in names]

    def composed(x):
        for fn in fns:
            x = fn(x)
        return x

    return composed


def elementwise_derivatives(sigma, z):
    """σ(z), σ'(z), σ''(z) of an elementwise ``sigma``, by nested jvp."""
    ones = jnp.ones_like(z)
    first = lambda t: jax.jvp(sigma, (t,), (ones,))[1]  # noqa: E731
    (value, d1), d2 = jax.jvp(sigma, (z,), (ones,)), jax.jvp(first, (z,), (ones,))[1]
    return value, d1, d2


# ---------------------------------------------------------------------------
# The network as a function of (θ, x).
# ---------------------------------------------------------------------------


def dense_weights(layer: Dense, theta, offset: int):
    """``Wᵀ`` ``(in, out)`` and ``b`` from θ; vec(W) is column-major, so Wᵀ is a C-order reshape."""
    n_w = layer.in_features * layer.out_features
    w_t = theta[offset : offset + n_w].reshape(layer.in_features, layer.out_features)
    b = theta[offset + n_w : offset + layer.num_params] if layer.bias else None
    return w_t, b


def run(model: Chain, theta, x, eps=None, taps=False):
    """Apply the model to ``x`` ``(d,)`` or ``(N, d)``.

    ``eps`` (one array per Dense layer, shaped like its pre-activation) is added to the
    pre-activations, so derivatives with respect to it are ∂/∂z. With ``taps`` the
    inputs ``a`` of every Dense layer are returned too.
    """
    a, offset, inputs, k = x, 0, [], 0
    for layer in model.layers:
        if isinstance(layer, Dense):
            inputs.append(a)
            w_t, b = dense_weights(layer, theta, offset)
            offset += layer.num_params
            z = a @ w_t
            if b is not None:
                z = z + b
            if eps is not None:
                z = z + eps[k]
            k += 1
            a = ELEMENTWISE[layer.activation](z)
        elif isinstance(layer, Activation):
            a = activation(layer.name)(a)
        elif isinstance(layer, Flatten):
            pass  # the API hands over inputs already flattened to (N, d)
    return (a, inputs) if taps else a
