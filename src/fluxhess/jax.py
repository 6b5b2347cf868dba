"""JAX-native transforms of a model (a :class:`fluxhess.Chain` or a :class:`fluxhess.JaxFunction`), for losses that are trained.

Every other fluxhess function returns NumPy arrays: fine for looking at a result, of no
use inside a loss that JAX differentiates and compiles. Here each transform takes a model
and returns a pure function ``fn(theta, X) -> jax.Array``:

- ``theta``: a ``jax.Array`` ``(P,)`` in the model's own order (``model.layout``): Flux's
  ``destructure`` order for a Chain, the pytree's leaves for a JaxFunction (whose
  ``model.unflatten(theta)`` gives the pytree back, differentiably);
- ``X``: ``(N, d)``, or one sample ``(d,)`` (the leading ``N`` axis of every result is then
  absent, so ``jax.vmap(fn, (None, 0))`` works too); for a model with an input signature
  (``model.inputs``, e.g. ``{"x": 2, "t": 1}``) also the tuple ``(x, t)`` of ``(N, width)``
  arrays (a width-1 input may be ``(N,)``), or of ``(width,)`` arrays for one sample.

The functions compose with ``jax.jit``, ``jax.grad`` (with respect to ``theta``, e.g. of a
PINN residual) and ``jax.vmap``; they compute in the dtype of ``theta`` and ``X`` (enable
float64 with ``jax.enable_x64`` as usual). ``wrt=`` (a name or list of names of the model's
inputs) differentiates in those inputs only; ``d`` below is then their total width.

| transform | `fn(theta, X)` | math |
|---|---|---|
| `forward(model)` | `(N, C)` | `f(x_n)` |
| `input_jacobian(model)` | `(N, C, d)` | `∂f/∂x` |
| `input_hessian(model)` | `(N, C, d, d)` | `∂²f_c/∂x²` |
| `laplacian(model)` | `(N, C)` | `Σ_i ∂²f_c/∂x_i²` (forward Laplacian) |
| `divergence(model)` | `(N,)` | `Σ_i ∂f_i/∂x_i`, needs `C == d` |

For users who keep a Flax module, :func:`flax_params` turns its variables into θ and θ
back into variables (both differentiable), with the Chain that :func:`fluxhess.from_flax`
builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from numpy.typing import ArrayLike

from ._backends.jax import inputs as jax_inputs
from ._backends.jax.model import function_of
from .errors import InputError, UnsupportedModelError
from ._origin import describe
from .jax_function import JaxFunction
from .model import Chain, Flatten

#: What every transform returns: ``fn(theta (P,), X) -> jax.Array``.
Transform = Callable[[ArrayLike, Any], jax.Array]

__all__ = ["FlaxParams", "divergence", "flax_params", "forward", "input_hessian", "input_jacobian", "laplacian"]


def forward(model: Chain | JaxFunction) -> Transform:
    """The model as a JAX function: `fn(theta, X)` → `f(x_n)`.

    Args:
        model: a `fluxhess.Chain` or `fluxhess.JaxFunction` of `(N, d)` inputs (from `Chain(...)`, `from_flax`,
            `from_torch` or `FluxModel.to_spec()`).

    Returns:
        A pure function `fn(theta, X)`: `theta` a `(P,)` array in Flux `destructure` order,
        `X` `(N, d)`, one sample `(d,)` (the leading `N` axis of the result is then absent),
        or for a model with an input signature the tuple `(x, t, …)`. It composes with
        `jax.jit`, `jax.grad` in `theta` and `jax.vmap`, and computes in the dtype of its
        arguments. `fn` returns `(N, C)`.

    Raises:
        UnsupportedModelError: `model` is neither a Chain nor a JaxFunction, or it flattens samples of several axes.
        UnknownNameError: `wrt` names no input of the model.

    `fn` raises `InputError` for a `theta` or `X` of the wrong shape.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, fluxhess as fh, fluxhess.jax as fhj
        >>> model = fh.Chain(fh.Dense(2, 8, "tanh"), fh.Dense(8, 1)); theta = jnp.asarray(model.init(0))
        >>> X = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)))
        >>> u = fhj.forward(model)
        >>> u(theta, X).shape, u(theta, X[0]).shape
        ((5, 1), (1,))
        >>> jax.grad(lambda t: jnp.sum(u(t, X) ** 2))(theta).shape   # differentiable in θ
        (33,)
    """
    return _transform(model, lambda model, theta, X, columns: function_of(model)(theta, X), None, "forward")


def input_jacobian(model: Chain | JaxFunction, *, wrt: str | list[str] | None = None) -> Transform:
    """The input Jacobian as a JAX function: `fn(theta, X)` → `∂f(x_n)/∂x`.

    Args:
        model: a `fluxhess.Chain` or `fluxhess.JaxFunction` of `(N, d)` inputs (from `Chain(...)`, `from_flax`,
            `from_torch` or `FluxModel.to_spec()`).
        wrt: for a model with an input signature, an input name or a list of names: the
            derivatives are then in those inputs' columns only (`d` is their total width).

    Returns:
        A pure function `fn(theta, X)`: `theta` a `(P,)` array in Flux `destructure` order,
        `X` `(N, d)`, one sample `(d,)` (the leading `N` axis of the result is then absent),
        or for a model with an input signature the tuple `(x, t, …)`. It composes with
        `jax.jit`, `jax.grad` in `theta` and `jax.vmap`, and computes in the dtype of its
        arguments. `fn` returns `(N, C, d)`.

    Raises:
        UnsupportedModelError: `model` is neither a Chain nor a JaxFunction, or it flattens samples of several axes.
        UnknownNameError: `wrt` names no input of the model.

    `fn` raises `InputError` for a `theta` or `X` of the wrong shape.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, fluxhess as fh, fluxhess.jax as fhj
        >>> model = fh.Chain(fh.Dense(2, 8, "tanh"), fh.Dense(8, 1)); theta = jnp.asarray(model.init(0))
        >>> X = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)))
        >>> J = fhj.input_jacobian(model)(theta, X)
        >>> J.shape, bool(jnp.allclose(J, jax.vmap(jax.jacrev(lambda x: fhj.forward(model)(theta, x)))(X)))
        ((5, 1, 2), True)
    """
    return _transform(model, jax_inputs.input_jacobian, wrt, "input_jacobian")


def input_hessian(model: Chain | JaxFunction, *, wrt: str | list[str] | None = None) -> Transform:
    """The input Hessian as a JAX function: `fn(theta, X)` → `∂²f_c(x_n)/∂x²` (a PINN's `u_xx`).

    Args:
        model: a `fluxhess.Chain` or `fluxhess.JaxFunction` of `(N, d)` inputs (from `Chain(...)`, `from_flax`,
            `from_torch` or `FluxModel.to_spec()`).
        wrt: for a model with an input signature, an input name or a list of names: the
            derivatives are then in those inputs' columns only (`d` is their total width).

    Returns:
        A pure function `fn(theta, X)`: `theta` a `(P,)` array in Flux `destructure` order,
        `X` `(N, d)`, one sample `(d,)` (the leading `N` axis of the result is then absent),
        or for a model with an input signature the tuple `(x, t, …)`. It composes with
        `jax.jit`, `jax.grad` in `theta` and `jax.vmap`, and computes in the dtype of its
        arguments. `fn` returns `(N, C, d, d)`.

    Raises:
        UnsupportedModelError: `model` is neither a Chain nor a JaxFunction, or it flattens samples of several axes.
        UnknownNameError: `wrt` names no input of the model.

    `fn` raises `InputError` for a `theta` or `X` of the wrong shape.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, fluxhess as fh, fluxhess.jax as fhj
        >>> model = fh.Chain(fh.Dense(2, 8, "tanh"), fh.Dense(8, 1)); theta = jnp.asarray(model.init(0))
        >>> X = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)))
        >>> H = fhj.input_hessian(model)(theta, X)
        >>> H.shape, bool(jnp.allclose(H, jax.vmap(jax.hessian(lambda x: fhj.forward(model)(theta, x)))(X)))
        ((5, 1, 2, 2), True)
    """
    return _transform(model, jax_inputs.input_hessian, wrt, "input_hessian")


def laplacian(model: Chain | JaxFunction, *, wrt: str | list[str] | None = None) -> Transform:
    """The Laplacian as a JAX function: `fn(theta, X)` → `Δ_x f_c(x_n) = Σ_i ∂²f_c/∂x_i²`.

    Computed by the forward Laplacian (one forward pass carrying values, first and second
    derivatives; no `d × d` Hessians), which makes it cheap inside `jax.grad` of a PINN loss.

    Args:
        model: a `fluxhess.Chain` or `fluxhess.JaxFunction` of `(N, d)` inputs (from `Chain(...)`, `from_flax`,
            `from_torch` or `FluxModel.to_spec()`).
        wrt: for a model with an input signature, an input name or a list of names: the
            derivatives are then in those inputs' columns only (`d` is their total width).

    Returns:
        A pure function `fn(theta, X)`: `theta` a `(P,)` array in Flux `destructure` order,
        `X` `(N, d)`, one sample `(d,)` (the leading `N` axis of the result is then absent),
        or for a model with an input signature the tuple `(x, t, …)`. It composes with
        `jax.jit`, `jax.grad` in `theta` and `jax.vmap`, and computes in the dtype of its
        arguments. `fn` returns `(N, C)`.

    Raises:
        UnsupportedModelError: `model` is neither a Chain nor a JaxFunction, or it flattens samples of several axes.
        UnknownNameError: `wrt` names no input of the model.

    `fn` raises `InputError` for a `theta` or `X` of the wrong shape.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, fluxhess as fh, fluxhess.jax as fhj
        >>> model = fh.Chain(fh.Dense(2, 8, "tanh"), fh.Dense(8, 1)); theta = jnp.asarray(model.init(0))
        >>> X = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)))
        >>> lap = fhj.laplacian(model)
        >>> H = fhj.input_hessian(model)(theta, X)
        >>> bool(jnp.allclose(lap(theta, X), jnp.trace(H, axis1=2, axis2=3)))
        True
        >>> step = jax.jit(jax.grad(lambda t: jnp.mean(lap(t, X) ** 2)))   # a PINN residual's gradient
        >>> step(theta).shape
        (33,)
    """
    return _transform(model, jax_inputs.laplacian, wrt, "laplacian")


def divergence(model: Chain | JaxFunction, *, wrt: str | list[str] | None = None) -> Transform:
    """The divergence as a JAX function: `fn(theta, X)` → `∇·f(x_n) = Σ_i ∂f_i/∂x_i`.

    Args:
        model: a `fluxhess.Chain` or `fluxhess.JaxFunction` of `(N, d)` inputs with as many outputs as inputs
            (`C == d`, or C equal to the named inputs' total width with `wrt`).
        wrt: for a model with an input signature, an input name or a list of names: the
            derivatives are then in those inputs' columns only (`d` is their total width).

    Returns:
        A pure function `fn(theta, X)`: `theta` a `(P,)` array in Flux `destructure` order,
        `X` `(N, d)`, one sample `(d,)` (the leading `N` axis of the result is then absent),
        or for a model with an input signature the tuple `(x, t, …)`. It composes with
        `jax.jit`, `jax.grad` in `theta` and `jax.vmap`, and computes in the dtype of its
        arguments. `fn` returns `(N,)`.

    Raises:
        UnsupportedModelError: `model` is neither a Chain nor a JaxFunction, or it flattens samples of several axes.
        UnknownNameError: `wrt` names no input of the model.
        InputError: the model's outputs are not as many as the inputs differentiated in.

    `fn` raises `InputError` for a `theta` or `X` of the wrong shape.

    Example:
        >>> import jax.numpy as jnp, numpy as np, fluxhess as fh, fluxhess.jax as fhj
        >>> model = fh.Chain(fh.Dense(2, 2, "tanh")); theta = jnp.asarray(model.init(0))
        >>> X = jnp.zeros((3, 2))
        >>> J = fhj.input_jacobian(model)(theta, X)
        >>> bool(jnp.allclose(fhj.divergence(model)(theta, X), jnp.trace(J, axis1=1, axis2=2)))
        True
    """
    fn = _transform(model, jax_inputs.divergence, wrt, "divergence")
    d = model.in_features if wrt is None else len(model.input_columns(wrt))
    if d != model.out_features:
        named = "" if wrt is None else f" in {wrt!r}"
        raise InputError(f"divergence needs as many outputs as inputs (C == d); this model has C={model.out_features}, d={d}{named}")
    return fn


def _check_model(model, wrt):
    if not isinstance(model, (Chain, JaxFunction)):
        raise UnsupportedModelError(
            f"fluxhess.jax transforms take a fluxhess.Chain or a JaxFunction; got {type(model).__name__}. "
            "Convert with fluxhess.from_flax / from_torch / from_jax, or FluxModel.to_spec()"
        )
    flattens = isinstance(model.layers[0], Flatten) if isinstance(model, Chain) else model.flattens_input
    if flattens:
        raise UnsupportedModelError(
            f"fluxhess.jax transforms take models of (N, d) inputs; {model!r} flattens samples of several axes")
    return None if wrt is None else tuple(model.input_columns(wrt))


def _transform(model, quantity, wrt, name: str):
    """``fn(theta, X)``: ``quantity(model, θ, X (N, d), columns)``, for a batch or one sample."""
    columns = _check_model(model, wrt)
    P, d = model.num_params, model.in_features

    def fn(theta, X):
        theta = _real("theta", _as_array("theta", theta))
        if not jnp.issubdtype(theta.dtype, jnp.floating):
            raise InputError(f"theta must be a floating array (it is differentiated); got dtype {theta.dtype}")
        if theta.shape != (P,):
            raise InputError(f"theta must have shape ({P},) for this model (its num_params); got {theta.shape}")
        Z = _real("X", _stacked(model, X))
        if not jnp.issubdtype(Z.dtype, jnp.floating):  # integers, as the NumPy API takes them: in θ's dtype
            Z = Z.astype(theta.dtype)
        if Z.ndim not in (1, 2) or Z.shape[-1] != d:
            flat = "" if len(model.input_shape) == 1 else f" (samples of shape {model.input_shape} flattened in C order)"
            raise InputError(f"X must have shape (N, {d}) or ({d},) for this model{flat}; got {Z.shape}")
        if Z.ndim == 1:
            return quantity(model, theta, Z[None], columns)[0]
        return quantity(model, theta, Z, columns)

    fn.__name__ = name
    fn.__doc__ = f"{name} of {describe(model)} as a function of (theta (P={P},), X (N, {d}) or ({d},))."
    return fn


def _as_array(argument: str, value) -> jax.Array:
    """``value`` as a JAX array (a traced one stays as it is); what JAX cannot take is an InputError."""
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{argument} must be a numeric array; got {type(value).__name__} ({e})") from None


def _real(argument: str, a: jax.Array) -> jax.Array:
    """``a`` when its dtype is real (floating or integer); bool and complex refused, as the NumPy API does."""
    if jnp.issubdtype(a.dtype, jnp.complexfloating) or a.dtype == jnp.bool_ or not jnp.issubdtype(a.dtype, jnp.number):
        raise InputError(f"{argument} must be a real (floating or integer) array; got dtype {a.dtype}")
    return a


def _stacked(model, X):
    """``X``, or the tuple ``(x, t, ...)`` side by side in signature order: ``(N, d)`` or ``(d,)``."""
    if not isinstance(X, tuple):
        return _as_array("X", X)
    signature = model.inputs
    if signature is None or len(X) != len(signature):
        expected = "one array (N, d): the model has no input signature" if signature is None else (
            f"a tuple of {len(signature)} arrays ({', '.join(n for n, _ in signature)})")
        raise InputError(f"X must be {expected}; got a tuple of {len(X)}")
    parts = [_as_array(f"input {name!r}", x) for (name, _), x in zip(signature, X)]
    rows = next((x.shape[0] for x in parts if x.ndim == 2), None)  # None: one sample
    shaped = []
    for (name, width), x in zip(signature, parts):
        want = (width,) if rows is None else (rows, width)
        if x.shape != want and not (width == 1 and x.shape == want[:-1]):
            raise InputError(f"input {name!r} must have shape {want}; got {x.shape}")
        shaped.append(x.reshape(want))
    return jnp.concatenate(shaped, axis=-1)


# ---------------------------------------------------------------------------
# Flax variables <-> θ
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FlaxParams:
    """θ ↔ the ``variables`` of a Flax module that :func:`fluxhess.from_flax` converts.

    ``model``: the Chain; ``dense``: per Dense layer in Chain order, its Flax path, its
    kernel shape ``(in, out)`` and whether it has a bias. A kernel is ``Wᵀ``, so its
    C-order ravel is ``vec(W)``, θ's block.
    """

    model: Chain
    dense: tuple[tuple[tuple[str, ...], tuple[int, int], bool], ...]

    def theta(self, variables: Any) -> jax.Array:
        """θ `(P,)` in Flux order from `variables` (`{"params": ...}`), differentiable in them.

        Raises `InputError` naming the entry of `variables` that is missing, not an array,
        or of another shape than the module's."""
        parts = []
        for path, (n_in, n_out), bias in self.dense:
            parts.append(jnp.ravel(_leaf(variables, ("params", *path, "kernel"), (n_in, n_out))))
            if bias:
                parts.append(_leaf(variables, ("params", *path, "bias"), (n_out,)))
        return jnp.concatenate(parts)

    def variables(self, theta: ArrayLike) -> dict:
        """`{"params": ...}` for `module.apply` from θ `(P,)`, differentiable in θ.

        Raises `InputError` for a θ of another shape."""
        theta = jnp.asarray(theta)
        if theta.shape != (self.model.num_params,):
            raise InputError(f"theta must have shape ({self.model.num_params},) for this model; got {theta.shape}")
        params: dict[str, Any] = {}
        offset = 0
        for path, (n_in, n_out), bias in self.dense:
            node = params
            for key in path:
                node = node.setdefault(key, {})
            node["kernel"] = theta[offset : offset + n_in * n_out].reshape(n_in, n_out)
            offset += n_in * n_out
            if bias:
                node["bias"] = theta[offset : offset + n_out]
                offset += n_out
        return {"params": params}


def _leaf(variables, path: tuple[str, ...], shape: tuple[int, ...]) -> jax.Array:
    """``variables[path[0]][path[1]]…`` as a real array of ``shape``; else an InputError naming the path."""
    where = "variables[" + "][".join(repr(k) for k in path) + "]"
    node = variables
    for depth, key in enumerate(path):
        try:
            node = node[key]
        except (KeyError, TypeError, IndexError):
            have = sorted(map(str, node)) if isinstance(node, Mapping) else type(node).__name__
            raise InputError(
                f"variables must be the module's variables ({{'params': ...}}, as module.init returns); "
                f"{where} is missing: at {'/'.join(path[:depth]) or 'the top'} there is {have}"
            ) from None
    try:
        leaf = jnp.asarray(node)
    except TypeError:
        raise InputError(f"{where} must be an array of shape {shape}; got {type(node).__name__}") from None
    if leaf.shape != shape:
        raise InputError(f"{where} must have shape {shape}; got {leaf.shape}")
    return _real(where, leaf)


def flax_params(module: Any, variables: Any, *, inputs: Any = None, input_shape: tuple[int, ...] | None = None) -> FlaxParams:
    """The `FlaxParams` of a `flax.linen` module: its Chain and the maps θ ↔ its variables.

    Args:
        module: a `flax.linen.Module` that `fluxhess.from_flax` converts (Dense layers with
            NNlib activations between them).
        variables: what `module.init` returned (`{"params": ...}`).
        inputs: for a `__call__(self, x, t, …)` of several arrays that it concatenates, one
            example array per argument (`(N, width)`), as for `fluxhess.from_flax`.
        input_shape: the shape of one sample, as for `fluxhess.from_flax`.

    Returns:
        A `FlaxParams` with `model` (the Chain), `theta(variables)` → `jax.Array` `(P,)`
        and `variables(theta)` → `{"params": ...}`, both differentiable.

    Raises:
        UnsupportedModelError: the module does not convert (naming the layer), or it
            flattens its samples.
        InputError: `variables` are not the module's.

    Example:
        >>> import jax, flax.linen as nn, fluxhess.jax as fhj
        >>> module = nn.Sequential([nn.Dense(4), nn.tanh, nn.Dense(1)])
        >>> variables = module.init(jax.random.PRNGKey(0), jax.numpy.ones((1, 3)))
        >>> fp = fhj.flax_params(module, variables)
        >>> theta = fp.theta(variables); theta.shape
        (21,)
        >>> same = jax.tree.map(lambda a, b: bool((a == b).all()), fp.variables(theta), variables)
        >>> all(jax.tree.leaves(same))
        True
    """
    from .convert import flax_chain

    model, _, paths = flax_chain(module, variables, input_shape=input_shape, inputs=inputs)
    if model.flattens_input:
        raise UnsupportedModelError("flax_params takes modules of (N, d) inputs; this one flattens its samples")
    dense = tuple(
        (path, (model.layers[i].in_features, model.layers[i].out_features), model.layers[i].bias) for i, path in paths
    )
    return FlaxParams(model, dense)
