"""The generic JAX routes: one jitted function per quantity, built from a model's per-sample pieces.

:class:`Pieces` holds what every route is made of — the network ``f(θ, x)`` and, given a
loss, ``ℓ_n``, the batch loss and the output Hessians ``Λ_n``. Each route is a short
function of the pieces — for the curvatures, a curvature kind's own (:mod:`.kinds`);
:data:`ROUTES` names them, and :func:`compiled` jits one per
``(model, loss, name, option)``, keeping the functions of the :data:`MODELS_KEPT` most
recently used models (an LRU cache per model spec, so that a notebook that builds many
models does not keep them all alive).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import jax
import jax.numpy as jnp

from ... import losses as L
from ...model import Chain, Dense
from . import inputs
from .model import function_of, run


class Pieces:
    """The per-sample pieces of ``model`` under ``loss`` (``None``: the network alone)."""

    def __init__(self, model, loss: str | None):
        self.model, self.loss = model, loss
        self.f = function_of(model)  # f(θ, x) for one sample or a batch

    def sample_loss(self, theta, x, y):
        return L.per_sample(self.loss, self.f(theta, x), y)

    def batch_losses(self, theta, X, Y):  # (N,)
        return jax.vmap(self.sample_loss, (None, 0, 0))(theta, X, Y)

    def total(self, theta, X, Y, s):
        return s * jnp.sum(self.batch_losses(theta, X, Y))

    def output_hessians(self, theta, X, Y):  # Λ_n, (N, C, C)
        lam = jax.hessian(lambda yhat, y: L.per_sample(self.loss, yhat, y))
        return jax.vmap(lam)(self.f(theta, X), Y)

    def param_jacobian(self, theta, X):  # (N, C, P)
        return jax.vmap(jax.jacrev(self.f), (None, 0))(theta, X)

    def sample_grads(self, theta, X, Y):  # (N, P)
        return jax.vmap(jax.grad(self.sample_loss), (None, 0, 0))(theta, X, Y)


def _columns_of(kind):
    """``kind``'s ``M @ V`` over the columns of ``V`` ``(P, k)``."""
    return lambda p, theta, X, Y, s, V: jax.vmap(lambda v: kind.hvp(p, theta, X, Y, s, v), 1, 1)(V)


def kron_chunk(p: Pieces, theta, X, Y, s, kind):
    """KFAC sums of a chunk: ``Σ ā ā ᵀ`` and ``s·Σ`` of ``kind``'s per-sample curvature, per Dense layer."""
    dense = [l for l in p.model.layers if isinstance(l, Dense)]

    def per_sample(x, y):
        eps = [jnp.zeros(l.out_features, theta.dtype) for l in dense]
        _, taps = run(p.model, theta, x, eps, taps=True)
        abars = [jnp.concatenate([a, jnp.ones(1, a.dtype)]) if l.bias else a for l, a in zip(dense, taps)]
        return [jnp.outer(abar, abar) for abar in abars], kind.kron_curvature(p, theta, x, y, eps)

    A, G = jax.vmap(per_sample)(X, Y)
    return [a.sum(0) for a in A], [s * g.sum(0) for g in G]


def _of_kind(method):
    """A route that is the kind's own ``method`` on the pieces."""
    return lambda p, kind: functools.partial(getattr(kind, method), p)


def _on_inputs(fn):
    """An input derivative of :mod:`.inputs`, over the input ``columns`` of the key."""
    return lambda p, columns: functools.partial(fn, p.model, columns=columns)


#: Each route: ``(pieces, option) -> function`` to jit; the option is a curvature kind
#: (:mod:`.kinds`) or an input derivative's ``columns``.
ROUTES = {
    "forward": lambda p, _: p.f,
    "loss": lambda p, _: p.total,
    "gradient": lambda p, _: jax.grad(p.total),
    "hessian": lambda p, _: jax.hessian(p.total),
    "param_jacobian": lambda p, _: p.param_jacobian,
    **{name: _of_kind(name) for name in ("columns", "column_diagonal", "sample_diagonal", "factor")},
    "hvp": lambda p, kind: functools.partial(_columns_of(kind), p),
    "kron": lambda p, kind: functools.partial(kron_chunk, p, kind=kind),
    **{name: _on_inputs(getattr(inputs, name)) for name in ("input_jacobian", "input_hessian", "laplacian", "divergence")},
}

#: How many models' compiled functions are kept (least recently used dropped first).
MODELS_KEPT = 16

_CACHE: OrderedDict = OrderedDict()  # model -> {(loss, name, option): jitted function}


def compiled(model: Chain, loss: str | None, name: str, option=None):
    """The jitted route ``name`` for this model (and loss, and curvature kind or input ``columns``), built once."""
    functions = _CACHE.pop(model, None) or {}
    _CACHE[model] = functions  # now the most recently used
    while len(_CACHE) > MODELS_KEPT:
        _CACHE.popitem(last=False)
    key = (loss, name, option)
    if key not in functions:
        functions[key] = jax.jit(ROUTES[name](Pieces(model, loss), option))
    return functions[key]
