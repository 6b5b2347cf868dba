"""JAX-native transforms of a :class:`fluxhess.Chain`, for losses that are trained.

Every other fluxhess function returns NumPy arrays: fine for looking at a result, of no
use inside a loss that JAX differentiates and compiles. Here each transform takes a model
and returns a pure function ``fn(theta, X) -> jax.Array``:

- ``theta``: a ``jax.Array`` ``(P,)`` in the same Flux ``destructure`` order as everywhere
  in fluxhess (``model.layout``);
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

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ._backends.jax import inputs as jax_inputs
from ._backends.jax.model import run
from .errors import InputError, UnsupportedModelError
from ._origin import describe
from .model import Chain

__all__ = ["FlaxParams", "divergence", "flax_params", "forward", "input_hessian", "input_jacobian", "laplacian"]


def forward(model: Chain):
    """``fn(theta, X)`` → ``f(x_n)``: ``(N, C)``."""
    return _transform(model, lambda model, theta, X, columns: run(model, theta, X), None, "forward")


def input_jacobian(model: Chain, *, wrt=None):
    """``fn(theta, X)`` → ``∂f(x_n)/∂x``: ``(N, C, d)``."""
    return _transform(model, jax_inputs.input_jacobian, wrt, "input_jacobian")


def input_hessian(model: Chain, *, wrt=None):
    """``fn(theta, X)`` → ``∂²f_c(x_n)/∂x²``: ``(N, C, d, d)``."""
    return _transform(model, jax_inputs.input_hessian, wrt, "input_hessian")


def laplacian(model: Chain, *, wrt=None):
    """``fn(theta, X)`` → ``Δ_x f_c(x_n)``: ``(N, C)``, by the forward Laplacian (no d×d Hessians)."""
    return _transform(model, jax_inputs.laplacian, wrt, "laplacian")


def divergence(model: Chain, *, wrt=None):
    """``fn(theta, X)`` → ``∇·f(x_n) = Σ_i ∂f_i/∂x_i``: ``(N,)``; needs as many outputs as inputs."""
    fn = _transform(model, jax_inputs.divergence, wrt, "divergence")
    d = model.in_features if wrt is None else len(model.input_columns(wrt))
    if d != model.out_features:
        named = "" if wrt is None else f" in {wrt!r}"
        raise InputError(f"divergence needs as many outputs as inputs (C == d); this model has C={model.out_features}, d={d}{named}")
    return fn


def _check_model(model, wrt):
    if not isinstance(model, Chain):
        raise UnsupportedModelError(
            f"fluxhess.jax transforms take a fluxhess.Chain; got {type(model).__name__}. "
            "Convert with fluxhess.from_flax / from_torch, or FluxModel.to_spec()"
        )
    if model.flattens_input:
        raise UnsupportedModelError("fluxhess.jax transforms take models of (N, d) inputs; this Chain starts with Flatten()")
    return None if wrt is None else tuple(model.input_columns(wrt))


def _transform(model: Chain, quantity, wrt, name: str):
    """``fn(theta, X)``: ``quantity(model, θ, X (N, d), columns)``, for a batch or one sample."""
    columns = _check_model(model, wrt)
    P, d = model.num_params, model.in_features

    def fn(theta, X):
        theta = jnp.asarray(theta)
        if theta.shape != (P,):
            raise InputError(f"theta must have shape ({P},) for this model (its num_params); got {theta.shape}")
        Z = _stacked(model, X)
        if Z.ndim not in (1, 2) or Z.shape[-1] != d:
            raise InputError(f"X must have shape (N, {d}) or ({d},) for this model; got {Z.shape}")
        if Z.ndim == 1:
            return quantity(model, theta, Z[None], columns)[0]
        return quantity(model, theta, Z, columns)

    fn.__name__ = name
    fn.__doc__ = f"{name} of {describe(model)} as a function of (theta (P={P},), X (N, {d}) or ({d},))."
    return fn


def _stacked(model: Chain, X):
    """``X``, or the tuple ``(x, t, ...)`` side by side in signature order: ``(N, d)`` or ``(d,)``."""
    if not isinstance(X, tuple):
        return jnp.asarray(X)
    signature = model.inputs
    if signature is None or len(X) != len(signature):
        expected = "one array (N, d): the model has no input signature" if signature is None else (
            f"a tuple of {len(signature)} arrays ({', '.join(n for n, _ in signature)})")
        raise InputError(f"X must be {expected}; got a tuple of {len(X)}")
    parts = [jnp.asarray(x) for x in X]
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
        """θ ``(P,)`` from ``variables`` (``{"params": ...}``), differentiable in them."""
        params = variables["params"]
        parts = []
        for path, shape, bias in self.dense:
            leaf = _at(params, path)
            if tuple(leaf["kernel"].shape) != shape:
                raise InputError(f"variables: {'/'.join(path)}/kernel must have shape {shape}; got {tuple(leaf['kernel'].shape)}")
            parts.append(jnp.ravel(leaf["kernel"]))
            if bias:
                parts.append(jnp.ravel(leaf["bias"]))
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


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


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
