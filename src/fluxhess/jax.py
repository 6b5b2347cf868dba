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

========================  ======================  =====================================
transform                 ``fn(theta, X)``        math
========================  ======================  =====================================
``forward(model)``        ``(N, C)``              ``f(x_n)``
``input_jacobian(model)`` ``(N, C, d)``           ``∂f/∂x``
``input_hessian(model)``  ``(N, C, d, d)``        ``∂²f_c/∂x²``
``laplacian(model)``      ``(N, C)``              ``Σ_i ∂²f_c/∂x_i²`` (forward Laplacian)
``divergence(model)``     ``(N,)``                ``Σ_i ∂f_i/∂x_i``, needs ``C == d``
========================  ======================  =====================================

For users who keep a Flax module, :func:`flax_params` turns its variables into θ and θ
back into variables (both differentiable), with the Chain that :func:`fluxhess.from_flax`
builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ._backends.jax import inputs as jax_inputs
from ._backends.jax.model import function_of
from .errors import InputError, UnsupportedModelError
from .jax_function import JaxFunction
from .model import Chain, Flatten

__all__ = ["FlaxParams", "divergence", "flax_params", "forward", "input_hessian", "input_jacobian", "laplacian"]


def forward(model):
    """``fn(theta, X)`` → ``f(x_n)``: ``(N, C)``."""
    return _transform(model, lambda model, theta, X, columns: function_of(model)(theta, X), None, "forward")


def input_jacobian(model, *, wrt=None):
    """``fn(theta, X)`` → ``∂f(x_n)/∂x``: ``(N, C, d)``."""
    return _transform(model, jax_inputs.input_jacobian, wrt, "input_jacobian")


def input_hessian(model, *, wrt=None):
    """``fn(theta, X)`` → ``∂²f_c(x_n)/∂x²``: ``(N, C, d, d)``."""
    return _transform(model, jax_inputs.input_hessian, wrt, "input_hessian")


def laplacian(model, *, wrt=None):
    """``fn(theta, X)`` → ``Δ_x f_c(x_n)``: ``(N, C)``, by the forward Laplacian (no d×d Hessians)."""
    return _transform(model, jax_inputs.laplacian, wrt, "laplacian")


def divergence(model, *, wrt=None):
    """``fn(theta, X)`` → ``∇·f(x_n) = Σ_i ∂f_i/∂x_i``: ``(N,)``; needs as many outputs as inputs."""
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
    fn.__doc__ = f"{name} of {model!r} as a function of (theta (P={P},), X (N, {d}) or ({d},))."
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

    def theta(self, variables) -> jax.Array:
        """θ ``(P,)`` from ``variables`` (``{"params": ...}``), differentiable in them.

        Raises :class:`~fluxhess.errors.InputError` naming the entry of ``variables`` that is
        missing, not an array, or of another shape than the module's."""
        parts = []
        for path, (n_in, n_out), bias in self.dense:
            parts.append(jnp.ravel(_leaf(variables, ("params", *path, "kernel"), (n_in, n_out))))
            if bias:
                parts.append(_leaf(variables, ("params", *path, "bias"), (n_out,)))
        return jnp.concatenate(parts)

    def variables(self, theta) -> dict:
        """``{"params": ...}`` for ``module.apply`` from θ ``(P,)``, differentiable in θ."""
        theta = jnp.asarray(theta)
        if theta.shape != (self.model.num_params,):
            raise InputError(f"theta must have shape ({self.model.num_params},) for this model; got {theta.shape}")
        params, offset = {}, 0
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


def flax_params(module, variables, *, inputs=None, input_shape=None) -> FlaxParams:
    """The :class:`FlaxParams` of a ``flax.linen`` module: its Chain and its θ ↔ variables maps.

    Arguments as for :func:`fluxhess.from_flax` (``inputs=(x, t)`` for a ``__call__`` of
    several arrays).
    """
    from .convert import flax_chain

    model, _, paths = flax_chain(module, variables, input_shape=input_shape, inputs=inputs)
    if model.flattens_input:
        raise UnsupportedModelError("flax_params takes modules of (N, d) inputs; this one flattens its samples")
    dense = tuple(
        (path, (model.layers[i].in_features, model.layers[i].out_features), model.layers[i].bias) for i, path in paths
    )
    return FlaxParams(model, dense)
