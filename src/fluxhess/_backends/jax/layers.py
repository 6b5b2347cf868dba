"""JAX functions of the spec's layers on batches ``(B, *sample shape)`` (NumPy order).

One table, :data:`APPLY`, from layer class to ``apply(layer, theta, offset, a) -> a``;
``theta[offset:offset + layer.num_params]`` are the layer's parameters in Flux's
destructure order (:mod:`fluxhess.layers`). Convolutions are ``lax.conv_general_dilated``
in NCHW/OIHW layout, pools ``lax.reduce_window``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ... import _activations as A
from ...layers import (
    AdaptiveMeanPool, BatchNorm, Conv, CrossCor, Dropout, GlobalMeanPool, LayerNorm, MaxPool, MeanPool, Parallel,
    SkipConnection,
)
from ...model import Activation, Dense, Flatten


def dense_weights(layer: Dense, theta, offset: int):
    """``Wᵀ`` ``(in, out)`` and ``b`` from θ; vec(W) is column-major, so Wᵀ is a C-order reshape."""
    n_w = layer.in_features * layer.out_features
    w_t = theta[offset : offset + n_w].reshape(layer.in_features, layer.out_features)
    b = theta[offset + n_w : offset + layer.num_params] if layer.bias else None
    return w_t, b


def conv_kernel(layer: Conv, theta, offset: int):
    """The kernel as ``lax`` takes it, OIHW ``(out, in ÷ groups, *kernel_size)``, flipped for a
    true convolution, and the bias ``(out,)`` or None.

    Flux's ``(k_w, k_h, cin, cout)`` filled column-major is the C-order ``(cout, cin, k_h, k_w)``.
    """
    n_w = math.prod(layer.weight_shape)
    w = theta[offset : offset + n_w].reshape(layer.weight_shape)
    if layer.flips_kernel:
        w = jnp.flip(w, axis=tuple(range(2, w.ndim)))
    b = theta[offset + n_w : offset + layer.num_params] if layer.bias else None
    return w, b


def _channels(v, ndim: int):
    """A per-channel vector ``(C,)`` shaped to broadcast over ``(B, C, *spatial)``."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _dense(layer: Dense, theta, offset, a):
    w_t, b = dense_weights(layer, theta, offset)
    z = a @ w_t if b is None else a @ w_t + b
    return A.ELEMENTWISE[layer.activation](z)


def _conv(layer: Conv, theta, offset, a):
    w, b = conv_kernel(layer, theta, offset)
    z = lax.conv_general_dilated(
        a, w, window_strides=layer.stride, padding=layer.pads, rhs_dilation=layer.dilation,
        feature_group_count=layer.groups,
    )
    if b is not None:
        z = z + _channels(b, z.ndim)
    return A.ELEMENTWISE[layer.activation](z)


def _window(pool: MeanPool):
    """``reduce_window`` arguments of a pool over ``(B, C, *spatial)``."""
    return dict(
        window_dimensions=(1, 1, *pool.window), window_strides=(1, 1, *pool.stride),
        padding=((0, 0), (0, 0), *pool.pads),
    )


def mean_pool(pool: MeanPool, a):
    # NumPy scalars as init values: lax recognises the monoid (and so its derivatives) from them.
    total = lax.reduce_window(a, np.zeros((), a.dtype), lax.add, **_window(pool))
    return total / math.prod(pool.window)


def _max_pool(pool: MaxPool, theta, offset, a):
    if pool.stride == pool.window and not any(any(p) for p in pool.pads):
        return _tiled_max_pool(pool.window, a)
    return lax.reduce_window(a, np.array(-np.inf, a.dtype), lax.max, **_window(pool))


def _tiles(window: tuple[int, ...], a):
    """``a`` ``(B, C, *spatial)`` as its tiles ``(B, C, *out, prod(window))`` (a remainder dropped)."""
    lead, k = a.shape[:2], len(window)
    out = [n // w for n, w in zip(a.shape[2:], window)]
    a = a[(..., *(slice(0, o * w) for o, w in zip(out, window)))]
    a = a.reshape(*lead, *(d for o, w in zip(out, window) for d in (o, w)))
    return a.transpose(0, 1, *range(2, 2 + 2 * k, 2), *range(3, 3 + 2 * k, 2)).reshape(*lead, *out, -1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _tiled_max_pool(window: tuple[int, ...], a):
    """A max pool whose windows tile the input (stride = window, no padding): ``reduce_window``'s
    values, with derivatives that pick each tile's first largest entry (Flux's choice) by a fixed
    mask, elementwise, where ``reduce_window``'s go through a select-and-scatter per (co)tangent
    (slow on CPUs: 4–6× slower for the pre-activation Jacobians of the benchmarks' CNN Hessian)."""
    n = len(window)
    return lax.reduce_window(a, np.array(-np.inf, a.dtype), lax.max, (1, 1, *window), (1, 1, *window), ((0, 0),) * (n + 2))


@_tiled_max_pool.defjvp
def _tiled_max_pool_jvp(window, primals, tangents):
    (a,), (t,) = primals, tangents
    tiles = _tiles(window, a)
    first = jnp.arange(tiles.shape[-1]) == jnp.argmax(tiles, axis=-1)[..., None]
    return _tiled_max_pool(window, a), jnp.sum(jnp.where(first, _tiles(window, t), 0), axis=-1)


def _batch_norm(layer: BatchNorm, theta, offset, a):
    dtype = a.dtype
    mean = _channels(jnp.asarray(layer.mean, dtype), a.ndim)
    inv = _channels(1 / jnp.sqrt(jnp.asarray(layer.var, dtype) + layer.eps), a.ndim)
    y = (a - mean) * inv
    if layer.affine:
        c = layer.channels
        beta, gamma = theta[offset : offset + c], theta[offset + c : offset + 2 * c]
        y = _channels(gamma, a.ndim) * y + _channels(beta, a.ndim)
    return A.ELEMENTWISE[layer.activation](y)


def _layer_norm(layer: LayerNorm, theta, offset, a):
    axes = tuple(range(a.ndim - len(layer.shape), a.ndim))
    mu = jnp.mean(a, axis=axes, keepdims=True)
    var = jnp.mean((a - mu) ** 2, axis=axes, keepdims=True)
    y = (a - mu) / jnp.sqrt(var + layer.eps)
    if layer.affine:
        n = math.prod(layer.shape)
        gamma = theta[offset : offset + n].reshape(layer.shape)  # Flux's reversed shape, column-major
        beta = theta[offset + n : offset + 2 * n].reshape(layer.shape)
        y = gamma * y + beta
    return A.ELEMENTWISE[layer.activation](y)


def apply_layers(layers, theta, offset: int, a):
    """``a`` through ``layers`` in order: ``(output, offset after their parameters)``."""
    for layer in layers:
        a = APPLY[type(layer)](layer, theta, offset, a)
        offset += layer.num_params
    return a, offset


def _skip(layer: SkipConnection, theta, offset, a):
    return a + apply_layers(layer.layers, theta, offset, a)[0]


def _parallel(layer: Parallel, theta, offset, a):
    total = None
    for branch in layer.branches:
        out, offset = apply_layers(branch, theta, offset, a)
        total = out if total is None else total + out
    return total


#: ``apply(layer, theta, offset, a)`` of each layer class, on a batch ``a`` ``(B, *shape)``.
APPLY = {
    Dense: _dense,
    Activation: lambda layer, theta, offset, a: A.function(layer.name)(a),
    Flatten: lambda layer, theta, offset, a: a.reshape(a.shape[0], -1),
    Dropout: lambda layer, theta, offset, a: a,
    Conv: _conv,
    CrossCor: _conv,
    MeanPool: lambda layer, theta, offset, a: mean_pool(layer, a),
    MaxPool: _max_pool,
    AdaptiveMeanPool: lambda layer, theta, offset, a: mean_pool(layer.pool(a.shape[1:]), a),
    GlobalMeanPool: lambda layer, theta, offset, a: mean_pool(layer.pool(a.shape[1:]), a),
    BatchNorm: _batch_norm,
    LayerNorm: _layer_norm,
    SkipConnection: _skip,
    Parallel: _parallel,
}
