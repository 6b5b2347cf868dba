"""A model as a JAX function of ``(θ, x)``: a :class:`fluxhess.Chain` with NNlib's activations,
or a :class:`fluxhess.JaxFunction`'s own function (:func:`function_of`).

Shared by the generic JAX routes (:mod:`.compiled`) and the Dense-chain fast paths
(:mod:`.dense_matrix`); the layers' own functions are in :mod:`.layers`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ... import _activations as A
from ...jax_function import JaxFunction
from ...model import Activation, Chain, Dense
from .layers import apply_layers, dense_weights


@functools.singledispatch
def function_of(model):
    """``f(θ, x)`` of ``model``: ``(C,)`` for one sample ``x`` ``(d,)``, ``(N, C)`` for ``(N, d)``."""
    raise TypeError(f"no JAX function for a {type(model).__name__}")


@function_of.register
def _(model: Chain):
    return functools.partial(run, model)


@function_of.register
def _(model: JaxFunction):
    return model.function

def compose(names):
    """``x ↦ σ_k(…σ_1(x))`` for the activations ``names = (σ_1, …, σ_k)``."""
    fns = [A.function(n) for n in names]

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


def run(model: Chain, theta, x, eps=None, taps=False):
    """Apply the model to ``x`` ``(d,)`` or ``(N, d)`` (samples flattened in C order).

    ``eps`` (one array per Dense layer, shaped like its pre-activation) is added to the
    pre-activations, so derivatives with respect to it are ∂/∂z. With ``taps`` the
    inputs ``a`` of every Dense layer are returned too. Both only on Dense chains
    (``model.is_mlp``); any other Chain runs layer by layer on ``(B, *input_shape)``.
    """
    if not model.is_mlp:
        if eps is not None or taps:
            raise ValueError("pre-activation taps are defined on Dense chains only")
        batch = x.reshape((-1, *model.input_shape))
        out, _ = apply_layers(model.layers, theta, 0, batch)
        return out[0] if x.ndim == 1 else out
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
            a = A.ELEMENTWISE[layer.activation](z)
        elif isinstance(layer, Activation):
            a = A.function(layer.name)(a)
        # a leading Flatten: the API hands over inputs already flattened to (N, d)
    return (a, inputs) if taps else a
