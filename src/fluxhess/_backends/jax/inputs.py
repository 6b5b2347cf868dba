"""Derivatives of a model (a :class:`fluxhess.Chain` or a :class:`fluxhess.JaxFunction`) with
respect to its inputs, as JAX functions.

Pure functions of ``(model, θ, X, columns)`` returning ``jax.Array``; they compose with
``jit``, ``grad`` (in θ) and ``vmap``. The JAX backend jits and chunks them for the NumPy
API; :mod:`fluxhess.jax` hands them to users as transforms. ``X`` is ``(N, d)``;
``columns`` (a tuple of column indices of ``X``, or ``None`` for all ``d``) restricts the
derivatives to those inputs, ``k`` of them, the other columns held fixed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ...model import COLUMNWISE, Activation, Chain, Dense
from ..._activations import ELEMENTWISE
from .model import dense_weights, elementwise_derivatives, function_of


def _of_columns(model, theta, x, columns):
    """``(g, v)``: ``g(v) = f(θ, x with x[columns] = v)`` ``(k,) -> (C,)``, and ``v = x[columns]``."""
    f = function_of(model)
    if columns is None:
        return (lambda v: f(theta, v)), x
    idx = jnp.asarray(columns)
    return (lambda v: f(theta, x.at[idx].set(v))), x[idx]


def input_jacobian(model, theta, X, columns=None):
    """``∂f(x_n)/∂x[columns]``: ``(N, C, k)``; forward mode when ``k <= C``, reverse otherwise."""

    def one(x):
        g, v = _of_columns(model, theta, x, columns)
        return (jax.jacfwd if v.shape[0] <= model.out_features else jax.jacrev)(g)(v)

    return jax.vmap(one)(X)


def input_hessian(model, theta, X, columns=None):
    """``∂²f_c(x_n)/∂x[columns]²``: ``(N, C, k, k)``."""

    def one(x):
        g, v = _of_columns(model, theta, x, columns)
        return jax.hessian(g)(v)

    return jax.vmap(one)(X)


def laplacian(model, theta, X, columns=None):
    """``Σ_{i ∈ columns} ∂²f_c(x_n)/∂x_i²``: ``(N, C)``, by the forward Laplacian where it applies,
    else by second directional derivatives along each input (forward over forward, no k×k Hessians)."""
    if forward_laplacian_applies(model):
        return forward_laplacian(model, theta, X, columns)

    def one(x):
        g, v = _of_columns(model, theta, x, columns)
        along = lambda e: jax.jvp(lambda u: jax.jvp(g, (u,), (e,))[1], (v,), (e,))[1]  # noqa: E731
        return jnp.sum(jax.vmap(along)(jnp.eye(v.shape[0], dtype=v.dtype)), axis=0)

    return jax.vmap(one)(X)


def divergence(model, theta, X, columns=None):
    """``Σ_i ∂f_i(x_n)/∂x[columns]_i`` for ``C == k``: ``(N,)``."""
    return jnp.trace(input_jacobian(model, theta, X, columns), axis1=1, axis2=2)


# ---------------------------------------------------------------------------
# Forward Laplacian: propagate (value, ∂/∂x, Δ) through Dense + elementwise layers.
# ---------------------------------------------------------------------------


def forward_laplacian_applies(model) -> bool:
    """A Dense chain without columnwise activations (the forward Laplacian's layers)."""
    return isinstance(model, Chain) and model.is_mlp and not any(
        isinstance(l, Activation) and l.name in COLUMNWISE for l in model.layers)


def forward_laplacian(model: Chain, theta, X, columns=None):
    """Δ_x f(x_n) for every sample and output, without forming d×d Hessians: ``(N, C)``.

    With a ``(N, w)``, J = ∂a/∂x stored as ``(N, k, w)`` (so that a Dense layer is one GEMM,
    ``J ↦ J Wᵀ``) and lap = Δa ``(N, w)``: a Dense layer maps them linearly (lap ↦ lap Wᵀ);
    an elementwise σ gives J ↦ σ'(z) J and lap ↦ σ'(z) lap + σ''(z) Σ_i J[:, i, :]².
    Before the first Dense layer J is the identity (its rows ``columns``), never materialised
    for all columns.
    """
    a, J, lap, offset = X, None, None, 0
    rows = slice(None) if columns is None else jnp.asarray(columns)

    def through(sigma, z, Jz, lapz):
        value, d1, d2 = elementwise_derivatives(sigma, z)
        if Jz is None:  # J = I[rows] before the first Dense layer
            Jz = jnp.eye(z.shape[-1], dtype=z.dtype)[rows]
            squares = 1.0 if columns is None else jnp.sum(Jz, axis=0)
        else:
            squares = jnp.sum(Jz**2, axis=1)
        lap = d2 * squares if lapz is None else d1 * lapz + d2 * squares
        return value, d1[:, None, :] * Jz, lap

    for layer in model.layers:
        if isinstance(layer, Dense):
            w_t, b = dense_weights(layer, theta, offset)
            offset += layer.num_params
            z = a @ w_t + (b if b is not None else 0.0)
            if J is None:
                Jz = jnp.broadcast_to(w_t[rows], (X.shape[0],) + w_t[rows].shape)
            else:
                Jz = J @ w_t
            a, J, lap = through(ELEMENTWISE[layer.activation], z, Jz, None if lap is None else lap @ w_t)
        elif isinstance(layer, Activation):
            a, J, lap = through(ELEMENTWISE[layer.name], a, J, lap)
    return lap
