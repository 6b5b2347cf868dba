"""Independent reference computations the tests compare fluxhess against.

Nothing here calls fluxhess's computing code: the forward pass reads W with
NumPy's ``order="F"`` reshape (the documented Flux layout) rather than the
backend's transpose trick, losses are written out again from Flux's
definitions, and derivatives come from finite differences or from plain
``jax`` transforms of these functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import fluxhess as fh


def _act(name, x, xp):
    if name == "identity":
        return x
    if name == "relu":
        return xp.maximum(x, 0)
    if name == "tanh":
        return xp.tanh(x)
    if name == "sigmoid":
        return 1 / (1 + xp.exp(-x))
    if name == "softplus":
        return xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(x, 0)
    if name == "elu":
        return xp.where(x >= 0, x, xp.expm1(xp.minimum(x, 0)))
    if name == "leakyrelu":
        return xp.where(x > 0, x, 0.01 * x)
    if name == "swish":
        return x / (1 + xp.exp(-x))
    if name == "gelu":
        return 0.5 * x * (1 + xp.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    if name == "softmax":
        e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
        return e / xp.sum(e, axis=-1, keepdims=True)
    if name == "logsoftmax":
        m = xp.max(x, axis=-1, keepdims=True)
        return x - m - xp.log(xp.sum(xp.exp(x - m), axis=-1, keepdims=True))
    raise ValueError(name)


def forward(model: fh.Chain, theta, X, xp=np):
    """``(N, C)`` outputs; ``xp`` is numpy or jax.numpy."""
    a, offset = X, 0
    for layer in model.layers:
        if isinstance(layer, fh.Dense):
            n_w = layer.in_features * layer.out_features
            W = xp.reshape(theta[offset : offset + n_w], (layer.out_features, layer.in_features), order="F")
            a = a @ W.T
            offset += n_w
            if layer.bias:
                a = a + theta[offset : offset + layer.out_features][None, :]
                offset += layer.out_features
            a = _act(layer.activation, a, xp)
        elif isinstance(layer, fh.Activation):
            a = _act(layer.name, a, xp)
    return a


def unflatten_fortran(model: fh.Chain, theta):
    """{name: W (out, in)} via NumPy's Fortran-order reshape: the Flux layout by definition."""
    out, offset = {}, 0
    for i, layer in model.dense_layers:
        n_w = layer.in_features * layer.out_features
        out[f"layers.{i}.weight"] = np.reshape(theta[offset : offset + n_w], (layer.out_features, layer.in_features), order="F")
        offset += n_w
        if layer.bias:
            out[f"layers.{i}.bias"] = theta[offset : offset + layer.out_features]
            offset += layer.out_features
    return out


def sample_losses(loss, yhat, Y, xp=np):
    """ℓ_n ``(N,)`` written out from Flux.Losses (functions.jl)."""
    eps = float(np.finfo(np.float64).eps)
    if loss == "mse":
        return xp.sum((yhat - Y) ** 2, axis=1)
    if loss == "crossentropy":
        return -xp.sum(xp.where(Y == 0, 0.0, Y * xp.log(yhat + eps)), axis=1)
    if loss == "logitcrossentropy":
        return -xp.sum(Y * _act("logsoftmax", yhat, xp), axis=1)
    if loss == "binarycrossentropy":
        t1 = xp.where(Y == 0, 0.0, Y * xp.log(yhat + eps))
        t2 = xp.where(Y == 1, 0.0, (1 - Y) * xp.log(1 - yhat + eps))
        return xp.sum(-t1 - t2, axis=1)
    if loss == "logitbinarycrossentropy":
        return xp.sum((1 - Y) * yhat + xp.log1p(xp.exp(-xp.abs(yhat))) + xp.maximum(-yhat, 0), axis=1)
    raise ValueError(loss)


def scale(loss, agg, N, C):
    """s, restated from the README's conventions (not imported from fluxhess)."""
    if agg == "sum":
        return 1.0
    return 1.0 / N if loss in ("crossentropy", "logitcrossentropy") else 1.0 / (N * C)


def total_loss(model, theta, X, Y, loss, agg, xp=np):
    yhat = forward(model, theta, X, xp)
    return scale(loss, agg, *Y.shape) * xp.sum(sample_losses(loss, yhat, Y, xp))


def fd_gradient(fun, theta, h=1e-6):
    g = np.zeros_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        g[i] = (fun(theta + e) - fun(theta - e)) / (2 * h)
    return g


def fd_hessian(fun, theta, h=1e-4):
    """Central second differences of a scalar function (4 evaluations per entry)."""
    P = theta.size
    H = np.zeros((P, P))
    E = np.eye(P) * h
    for i in range(P):
        for j in range(i, P):
            v = (
                fun(theta + E[i] + E[j]) - fun(theta + E[i] - E[j]) - fun(theta - E[i] + E[j]) + fun(theta - E[i] - E[j])
            ) / (4 * h * h)
            H[i, j] = H[j, i] = v
    return H


def jax_hessian(model, theta, X, Y, loss, agg):
    with jax.enable_x64(True):
        f = lambda t: total_loss(model, t, jnp.asarray(X), jnp.asarray(Y), loss, agg, jnp)  # noqa: E731
        return np.asarray(jax.hessian(f)(jnp.asarray(theta)))


def linearized_ggn(model, theta, X, Y, loss, agg):
    """The Hessian of the loss of the model linearised at θ (curvlinops' route to the GGN)."""
    with jax.enable_x64(True):
        X, Y, theta = jnp.asarray(X), jnp.asarray(Y), jnp.asarray(theta)
        f0, f_lin = jax.linearize(lambda t: forward(model, t, X, jnp), theta)
        s = scale(loss, agg, *Y.shape)

        def lin_loss(t):
            return s * jnp.sum(sample_losses(loss, f0 + f_lin(t - theta), Y, jnp))

        return np.asarray(jax.hessian(lin_loss)(theta))


def per_sample_gradients(model, theta, X, Y, loss):
    """``(N, P)``, one sample at a time in a Python loop."""
    with jax.enable_x64(True):
        rows = []
        for n in range(X.shape[0]):
            x, y = jnp.asarray(X[n : n + 1]), jnp.asarray(Y[n : n + 1])
            rows.append(np.asarray(jax.grad(lambda t: jnp.sum(sample_losses(loss, forward(model, t, x, jnp), y, jnp)))(jnp.asarray(theta))))
        return np.stack(rows)


def output_hessians(loss, yhat, Y):
    """Λ_n ``(N, C, C)``, one sample at a time."""
    with jax.enable_x64(True):
        out = []
        for n in range(yhat.shape[0]):
            fn = lambda z: jnp.sum(sample_losses(loss, z[None], jnp.asarray(Y[n : n + 1]), jnp))  # noqa: E731
            out.append(np.asarray(jax.hessian(fn)(jnp.asarray(yhat[n]))))
        return np.stack(out)


def param_jacobian(model, theta, X):
    with jax.enable_x64(True):
        J = jax.jacrev(lambda t: forward(model, t, jnp.asarray(X), jnp))(jnp.asarray(theta))
        return np.asarray(J)  # (N, C, P)


def input_hessian(model, theta, X):
    """``(N, C, d, d)`` by ``vmap(hessian)`` of the reference forward pass."""
    with jax.enable_x64(True):
        f = lambda x: forward(model, jnp.asarray(theta), x[None], jnp)[0]  # noqa: E731
        return np.asarray(jax.vmap(jax.hessian(f))(jnp.asarray(X)))


def input_jacobian(model, theta, X):
    """``(N, C, d)`` by ``vmap(jacfwd)`` of the reference forward pass."""
    with jax.enable_x64(True):
        f = lambda x: forward(model, jnp.asarray(theta), x[None], jnp)[0]  # noqa: E731
        return np.asarray(jax.vmap(jax.jacfwd(f))(jnp.asarray(X)))
