"""``from_flax`` for convolutional ``flax.linen`` modules: Conv, Dense, BatchNorm and LayerNorm
calls with pools, activations and a flatten between them.

The module is applied to probe inputs with its layer calls intercepted
(``nn.intercept_methods``): each call in :data:`FLAX_LAYERS` becomes a spec layer with
its arrays, in call order. What the module does between two calls (no parameters:
activations, ``nn.avg_pool``/``nn.max_pool`` with window = stride, a mean over the spatial
axes, a reshape to ``(N, -1)``) is identified by substituting a grid of values for the
first call's output and matching what reaches the next call against those candidates
(:func:`_glue`). Residual adds and anything else are refused, naming the two layers.

Flax holds images NHWC and kernels ``(k_h, k_w, cin, cout)``; the Chain takes NCHW
(``X_flax.transpose(0, 3, 1, 2)``) and Flux's ``(k_w, k_h, cin, cout)``. A Flax flatten
orders features (h, w, c) where the Chain's Flatten orders (c, h, w): the next Dense
kernel's rows are permuted accordingly.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from . import _activations as A
from .errors import InputError, UnsupportedModelError
from .layers import BatchNorm, Conv, CrossCor, GlobalMeanPool, LayerNorm, MaxPool, MeanPool
from .model import Activation, Dense, Flatten, Layer


def _nchw(shape) -> tuple[int, ...]:
    """A Flax sample shape ``(…spatial, C)`` in the Chain's order ``(C, …spatial)``."""
    return (shape[-1], *shape[:-1])


def _conv(m, params, x):
    import jax

    rank = x.ndim - 2
    if any(d != 1 for d in np.broadcast_to(m.input_dilation or 1, (rank,))):
        raise UnsupportedModelError("an nn.Conv with input_dilation (a transposed convolution) has no Flux twin here")
    kernel = np.asarray(params["kernel"], dtype=np.float64)  # (*k, cin ÷ g, cout)
    k = kernel.shape[:rank]
    strides = tuple(np.broadcast_to(m.strides or 1, (rank,)).tolist())
    dilation = tuple(np.broadcast_to(m.kernel_dilation or 1, (rank,)).tolist())
    padding = m.padding
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID"):
            raise UnsupportedModelError(f"nn.Conv padding={padding!r} has no Flux twin (SAME, VALID and explicit pads do)")
        k_eff = [(n - 1) * d + 1 for n, d in zip(k, dilation)]
        padding = jax.lax.padtype_to_pads(x.shape[1:-1], k_eff, strides, padding)
    elif isinstance(padding, int):
        padding = [(padding, padding)] * rank
    pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    groups = m.feature_group_count
    torch_layout = kernel.transpose(rank + 1, rank, *range(rank))  # (cout, cin, *k)
    kind = CrossCor if groups == 1 else Conv
    if groups != 1:
        torch_layout = np.flip(torch_layout, axis=tuple(range(2, rank + 2)))
    layer = kind(k, kernel.shape[-2] * groups, kernel.shape[-1], stride=strides, padding=pads, dilation=dilation,
                 groups=groups, bias=m.use_bias)
    arrays = [torch_layout.transpose()] + ([np.asarray(params["bias"], dtype=np.float64)] if m.use_bias else [])
    return layer, arrays


def _dense(m, params, x, rows=None):
    if x.ndim != 2:
        raise UnsupportedModelError("an nn.Dense on images (acting on the channel axis) has no twin; flatten first")
    kernel = np.asarray(params["kernel"], dtype=np.float64)
    if rows is not None:  # Flax flattened (h, w, c); the Chain flattens (c, h, w)
        kernel = kernel[rows]
    arrays = [kernel.T] + ([np.asarray(params["bias"], dtype=np.float64)] if m.use_bias else [])
    return Dense(kernel.shape[0], kernel.shape[1], bias=m.use_bias), arrays


def _batchnorm(m, variables, x):
    if m.use_running_average is not True:
        raise UnsupportedModelError("nn.BatchNorm must be in inference mode: use_running_average=True")
    if m.axis not in (-1, x.ndim - 1):
        raise UnsupportedModelError(f"nn.BatchNorm(axis={m.axis}) must normalise the channel (last) axis")
    if m.use_scale != m.use_bias:
        raise UnsupportedModelError("nn.BatchNorm with a scale but no bias (or the reverse) has no Flux twin")
    stats, params = variables["batch_stats"], variables.get("params", {})
    layer = BatchNorm(x.shape[-1], mean=tuple(np.asarray(stats["mean"])), var=tuple(np.asarray(stats["var"])), eps=m.epsilon, affine=m.use_scale)
    arrays = [np.asarray(params["bias"], np.float64), np.asarray(params["scale"], np.float64)] if m.use_scale else []
    return layer, arrays


def _layernorm(m, variables, x):
    last = (-1, x.ndim - 1)
    if x.ndim != 2 or m.reduction_axes not in last or m.feature_axes not in last:
        raise UnsupportedModelError("nn.LayerNorm maps on feature vectors (N, D) over the last axis only")
    if m.use_scale != m.use_bias:
        raise UnsupportedModelError("nn.LayerNorm with a scale but no bias (or the reverse) has no Flux twin")
    params = variables.get("params", {})
    arrays = [np.asarray(params["scale"], np.float64), np.asarray(params["bias"], np.float64)] if m.use_scale else []
    return LayerNorm(x.shape[-1], eps=m.epsilon, affine=m.use_scale), arrays


def FLAX_LAYERS() -> dict:
    """``{flax module class: mapper(module, variables, input) -> (layer, arrays)}``, arrays in θ order
    and Flux's shapes."""
    import flax.linen as nn

    return {
        nn.Conv: lambda m, v, x: _conv(m, v["params"], x),
        nn.Dense: lambda m, v, x: _dense(m, v["params"], x),
        nn.BatchNorm: _batchnorm,
        nn.LayerNorm: _layernorm,
    }


def uses_cnn_layers(module, variables, args) -> bool:
    """Whether the module calls a layer of :data:`FLAX_LAYERS` other than Dense."""
    import flax.linen as nn

    seen = set()

    def spy(next_fun, a, kw, context):
        if context.method_name == "__call__" and context.module.scope is not None and context.module.path:
            seen.add(type(context.module))
        return next_fun(*a, **kw)

    try:
        with nn.intercept_methods(spy):
            module.apply(variables, *args)
    except Exception:  # the MLP path reports why the module cannot run
        return False
    return bool(seen & (set(FLAX_LAYERS()) - {nn.Dense}))


# --- between two layer calls ---------------------------------------------------------


def _pool(fn, z, window):
    """A non-overlapping pool (window = stride) over the spatial axes of NHWC ``z``."""
    split = [z.shape[0]]
    for n, k in zip(z.shape[1:-1], window):
        split += [n // k, k]
    split.append(z.shape[-1])
    crop = (slice(None), *[slice(0, (n // k) * k) for n, k in zip(z.shape[1:-1], window)], slice(None))
    r = z[crop].reshape(split)
    return fn(r, axis=tuple(range(2, 2 * len(window) + 1, 2)))


def _candidates(z, out_shape):
    """``(layers, value, hwc)`` for each parameter-free step from ``z`` (NHWC, or (N, D)) whose
    value has ``out_shape``: an activation, a pool before or after it, a spatial mean, a
    flatten; ``hwc`` is the sample shape a flatten flattened (None without one)."""
    acts = list(A.ELEMENTWISE) + (list(A.COLUMNWISE) if z.ndim == 2 else [])
    spatial_axes = tuple(range(1, z.ndim - 1))
    for name in acts:
        act: list[Layer] = [] if name == "identity" else [Activation(name)]
        az = np.asarray(A.function(name)(z))
        steps: list[tuple[list[Layer], np.ndarray]] = [(act, az)]
        if z.ndim > 2:
            if len(out_shape) == 2 and out_shape[1] == z.shape[-1]:
                yield act + [GlobalMeanPool(), Flatten()], az.mean(axis=spatial_axes), None
            for window in _windows(z.shape[1:-1], out_shape):
                for kind, fn in ((MeanPool, np.mean), (MaxPool, np.max)):
                    steps.append((act + [kind(window)], _pool(fn, az, window)))
                    steps.append(([kind(window)] + act, np.asarray(A.function(name)(_pool(fn, z, window)))))
        for layers, value in steps:
            if value.shape == out_shape:
                yield layers, value, None
            elif value.ndim > 2 and len(out_shape) == 2:
                yield layers + [Flatten()], value.reshape(value.shape[0], -1), value.shape[1:]


def _windows(spatial, out_shape):
    """Pool windows (= strides) to try: the one that gives ``out_shape``'s spatial sizes, or
    before a flatten every window of 2 to 4 per axis."""
    if len(out_shape) == len(spatial) + 2:
        if all(t >= 1 and n // t >= 1 for n, t in zip(spatial, out_shape[1:-1])) and out_shape[1:-1] != spatial:
            yield tuple(n // t for n, t in zip(spatial, out_shape[1:-1]))
        return
    yield from itertools.product(*[range(2, min(n, 4) + 1) for n in spatial])


def _glue(z, seen, before: str, after: str):
    """The layers between two calls and, after a flatten of (h, w, c), the row order the next
    Dense needs: ``(layers, rows or None)``."""
    for layers, value, hwc in _candidates(z, seen.shape):
        if _same(value, seen):
            return layers, None if hwc is None else _rows(hwc)
    raise UnsupportedModelError(
        f"what the module does between {before} and {after} is none of: an NNlib activation, "
        "nn.avg_pool/nn.max_pool with window = stride (before or after the activation), a mean over the "
        "spatial axes, a reshape to (N, -1). Residual adds and other functions have no mapping in from_flax yet"
    )


def _rows(hwc) -> np.ndarray:
    """For each feature of the Chain's (c, h, w) flatten, its position in Flax's (h, w, c) flatten."""
    n = int(np.prod(hwc))
    return np.arange(n).reshape(hwc).transpose(len(hwc) - 1, *range(len(hwc) - 1)).ravel()


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) <= 1e-12 * np.maximum(1.0, np.abs(np.asarray(b)))))


# --- the module ------------------------------------------------------------------------


def flax_cnn_chain(module, variables, shape, probe):
    """``(layers, arrays, input_shape, output)`` of a convolutional module on the Flax ``probe``
    ``(rows, *shape)``: the Chain's layers, their arrays in θ order, one sample's shape in the
    Chain's order and the module's output on the probe."""
    import flax.linen as nn

    table = FLAX_LAYERS()
    calls: list[tuple[Any, ...]] = []  # (module, input, variables, output) per layer call

    def record(next_fun, a, kw, context):
        m = context.module
        if context.method_name != "__call__" or m.scope is None or not m.path:
            return next_fun(*a, **kw)
        if type(m) in table:
            x = np.asarray(a[0] if a else next(iter(kw.values())))
            calls.append((m, x, {k: m.variables[k] for k in m.variables}))
            out = next_fun(*a, **kw)
            calls[-1] += (np.asarray(out),)
            return out
        if type(m).__module__.startswith("flax."):
            raise UnsupportedModelError(
                f"layer {'/'.join(map(str, m.path))} ({type(m).__name__}) cannot be mapped: from_flax converts "
                f"{', '.join(c.__name__ for c in table)} and the parameter-free steps between them"
            )
        return next_fun(*a, **kw)

    with nn.intercept_methods(record):
        output = np.asarray(module.apply(variables, probe))
    if not calls:
        raise UnsupportedModelError("from_flax found no nn.Conv/nn.Dense call in the module")
    names = ["/".join(map(str, m.path)) + f" ({type(m).__name__})" for m, *_ in calls]
    layers, arrays, rows = [], [], None
    first = calls[0][1]
    flattened = first.ndim == 2 and probe.ndim > 2 and np.array_equal(first, probe.reshape(probe.shape[0], -1))
    if flattened:
        layers.append(Flatten())
        rows = _rows(probe.shape[1:])
    elif first.shape != probe.shape or not np.array_equal(first, probe):
        raise UnsupportedModelError(f"the input reaches the first layer {names[0]} changed by more than a flatten")
    for k, (m, x, v, _) in enumerate(calls):
        mapper = table[type(m)]
        try:
            layer, a = _dense(m, v["params"], x, rows) if type(m) is nn.Dense else mapper(m, v, x)
        except (UnsupportedModelError, InputError) as e:
            raise UnsupportedModelError(f"layer {names[k]} cannot be mapped: {e}") from None
        layers.append(layer)
        arrays.extend(a)
        glue, rows = _glue_after(module, variables, probe, calls, k, names)
        layers.extend(glue)
    return layers, arrays, _nchw(shape) if len(shape) > 1 else shape, output


def _glue_after(module, variables, probe, calls, k, names):
    """Substitute a grid for call ``k``'s output and identify what reaches call ``k + 1``."""
    import flax.linen as nn

    m_k = calls[k][0]
    out_shape = calls[k][3].shape
    rng = np.random.default_rng(k)
    grid = rng.permutation(np.concatenate([np.linspace(-8, 8, int(np.prod(out_shape)) - 8), np.logspace(1, 4, 4), -np.logspace(1, 4, 4)]))
    grid = grid.reshape(out_shape)
    reached = []

    def substitute(next_fun, a, kw, context):
        m = context.module
        if context.method_name != "__call__" or m.scope is None or not m.path:
            return next_fun(*a, **kw)
        if m.path == m_k.path:
            return grid
        if k + 1 < len(calls) and m.path == calls[k + 1][0].path:
            reached.append(np.asarray(a[0] if a else next(iter(kw.values()))))
        return next_fun(*a, **kw)

    with nn.intercept_methods(substitute):
        final = np.asarray(module.apply(variables, probe))
    seen = reached[0] if k + 1 < len(calls) else final
    after = names[k + 1] if k + 1 < len(calls) else "the output"
    return _glue(grid, seen, names[k], after)
