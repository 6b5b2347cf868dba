"""NNlib's activations: the one registry of the names and formulas fluxhess knows.

The spec layers (:mod:`fluxhess.model`), the JAX functions (:mod:`fluxhess._backends.jax.model`),
the losses, the converters and the comparison tool read it; the Julia side's name table
(``ACTIVATIONS`` and ``COLUMN_MAPS`` in ``julia/src/spec.jl``) is checked against it by a
test. Formulas and constants are NNlib's (``src/activations.jl``): gelu is the tanh
approximation, leakyrelu has slope 0.01, elu has α = 1, swish is x·σ(x), softplus never
switches to x.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def sigmoid(x):
    t = jnp.exp(-jnp.abs(x))
    return jnp.where(x >= 0, 1 / (1 + t), t / (1 + t))


def softplus(x):
    # NNlib: x < 0 ? log1p(exp(x)) : x + log1p(exp(-x)); the same expression on each
    # branch, written without an overflowing exp in the branch not taken.
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def gelu(x):
    # NNlib: gelu === gelu_tanh, x/2 * (1 + tanh(√(2/π) * (x + 0.044715 x³)))
    return x / 2 * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def softmax(z):
    # NNlib: exp.(x .- max) ./ sum(exp.(x .- max)) over each sample's outputs (the last axis).
    e = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def logsoftmax(z):
    # NNlib: (x .- max) .- log(sum(exp.(x .- max))) over each sample's outputs (the last axis).
    shifted = z - jnp.max(z, axis=-1, keepdims=True)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


#: Elementwise activations by their Flux/NNlib name.
ELEMENTWISE = {
    "identity": lambda x: x,
    "relu": lambda x: jnp.where(x < 0, 0.0, x),
    "tanh": jnp.tanh,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "elu": lambda x: jnp.where(x >= 0, x, jnp.exp(jnp.minimum(x, 0.0)) - 1),
    "leakyrelu": lambda x: jnp.where(x > 0, x, 0.01 * x),
    "swish": lambda x: x * sigmoid(x),
    "gelu": gelu,
}

#: Activations that act on each sample's whole output (``dims=1`` in Flux).
COLUMNWISE = {"softmax": softmax, "logsoftmax": logsoftmax}

#: Every activation name, elementwise first.
NAMES = (*ELEMENTWISE, *COLUMNWISE)


def function(name: str):
    """The JAX function of the activation called ``name`` (elementwise or columnwise)."""
    return ELEMENTWISE[name] if name in ELEMENTWISE else COLUMNWISE[name]
