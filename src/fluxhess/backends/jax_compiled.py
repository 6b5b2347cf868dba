"""The generic JAX routes: one jitted function per quantity, built from a model's per-sample pieces.

:class:`Pieces` holds what every route is made of — the network ``f(θ, x)`` and, given a
loss, ``ℓ_n``, the batch loss and the output Hessians ``Λ_n``. Each route is a short
function of the pieces; :data:`ROUTES` names them, and :func:`compiled` jits one per
``(model, loss, name, columns)``, keeping the functions of the :data:`MODELS_KEPT` most
recently used models (an LRU cache per model spec, so that a notebook that builds many
models does not keep them all alive).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import jax
import jax.numpy as jnp

from .. import losses as L
from ..model import Chain, Dense
from . import jax_inputs
from .jax_model import run


class Pieces:
    """The per-sample pieces of ``model`` under ``loss`` (``None``: the network alone)."""

    def __init__(self, model: Chain, loss: str | None):
        self.model, self.loss = model, loss
        self.f = functools.partial(run, model)  # f(θ, x) for one sample or a batch

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


# --- curvature-vector products ----------------------------------------------------


def hvp_hessian(p: Pieces, theta, X, Y, s, v):
    return jax.jvp(lambda t: jax.grad(p.total)(t, X, Y, s), (theta,), (v,))[1]


def hvp_ggn(p: Pieces, theta, X, Y, s, v):
    _, jv = jax.jvp(lambda t: p.f(t, X), (theta,), (v,))
    w = s * jnp.einsum("ncd,nd->nc", p.output_hessians(theta, X, Y), jv)
    return jax.vjp(lambda t: p.f(t, X), theta)[1](w)[0]


def hvp_ef(p: Pieces, theta, X, Y, s, v):
    gv = jax.jvp(lambda t: p.batch_losses(t, X, Y), (theta,), (v,))[1]
    return jax.vjp(lambda t: p.batch_losses(t, X, Y), theta)[1](s * gv)[0]


def _columns_of(hvp):
    """``hvp`` over the columns of ``V`` ``(P, k)``."""
    return lambda p, theta, X, Y, s, V: jax.vmap(lambda v: hvp(p, theta, X, Y, s, v), 1, 1)(V)


# --- P × P and diagonals, per chunk of samples or of parameters ------------------------


def hessian_columns(p: Pieces, theta, X, Y, s, idx):  # H[:, idx] as (k, P)
    basis = jax.nn.one_hot(idx, theta.shape[0], dtype=theta.dtype)
    return jax.vmap(lambda v: hvp_hessian(p, theta, X, Y, s, v))(basis)


def hessian_diag_chunk(p: Pieces, theta, X, Y, s, idx):
    return hessian_columns(p, theta, X, Y, s, idx)[jnp.arange(idx.shape[0]), idx]


def _ggn_rows(p: Pieces, theta, X, Y):
    """``J`` ``(N, C, P)`` and ``Λ J`` ``(N, C, P)``."""
    J = p.param_jacobian(theta, X)
    return J, jnp.einsum("ncd,ndp->ncp", p.output_hessians(theta, X, Y), J)


def ggn_chunk(p: Pieces, theta, X, Y, s):
    J, M = _ggn_rows(p, theta, X, Y)
    P = theta.shape[0]
    return s * (J.reshape(-1, P).T @ M.reshape(-1, P))


def ggn_diag_chunk(p: Pieces, theta, X, Y, s):
    J, M = _ggn_rows(p, theta, X, Y)
    return s * jnp.sum(J * M, axis=(0, 1))


def ggn_factor(p: Pieces, theta, X, Y, s):
    """U ``(N·C, P)`` with ``Uᵀ U = s·Σ_n J_nᵀ Λ_n J_n``: rows ``L_nᵀ J_n``, ``Λ_n = L_n L_nᵀ``."""
    lam, Q = jnp.linalg.eigh(p.output_hessians(theta, X, Y))  # Λ_n is positive semi-definite: clip rounding
    root = Q * jnp.sqrt(jnp.clip(s * lam, 0.0, None))[:, None, :]
    return jnp.einsum("nck,ncp->nkp", root, p.param_jacobian(theta, X)).reshape(-1, theta.shape[0])


def ef_factor(p: Pieces, theta, X, Y, s):  # √s·g_n as rows (N, P)
    return jnp.sqrt(s) * p.sample_grads(theta, X, Y)


def ef_chunk(p: Pieces, theta, X, Y, s):
    G = p.sample_grads(theta, X, Y)
    return s * (G.T @ G)


def ef_diag_chunk(p: Pieces, theta, X, Y, s):
    return s * jnp.sum(p.sample_grads(theta, X, Y) ** 2, axis=0)


def kron_chunk(p: Pieces, theta, X, Y, s, kind):
    """KFAC factors of a chunk: ``A`` the mean of ``ā ā ᵀ``, ``G`` ``s·Σ`` of ``δ δᵀ`` (EF) or ``Bᵀ Λ B`` (GGN)."""
    model, loss = p.model, p.loss
    dense = [l for l in model.layers if isinstance(l, Dense)]

    def per_sample(x, y):
        eps = [jnp.zeros(l.out_features, theta.dtype) for l in dense]
        out, inputs = run(model, theta, x, eps, taps=True)
        if kind == "ef":
            delta = jax.grad(lambda e: L.per_sample(loss, run(model, theta, x, e), y))(eps)
            G = [jnp.outer(d, d) for d in delta]
        else:
            B = jax.jacrev(lambda e: run(model, theta, x, e))(eps)  # each (C, out)
            lam = jax.hessian(lambda yhat: L.per_sample(loss, yhat, y))(out)
            G = [b.T @ lam @ b for b in B]
        abars = [jnp.concatenate([a, jnp.ones(1, a.dtype)]) if l.bias else a for l, a in zip(dense, inputs)]
        return [jnp.outer(abar, abar) for abar in abars], G

    A, G = jax.vmap(per_sample)(X, Y)
    return [a.sum(0) / X.shape[0] for a in A], [s * g.sum(0) for g in G]


def _on_pieces(fn):
    """A route written as ``fn(pieces, ...)``."""
    return lambda p, _: functools.partial(fn, p)


def _on_inputs(fn):
    """An input derivative of :mod:`.jax_inputs`, over the input ``columns`` of the key."""
    return lambda p, columns: functools.partial(fn, p.model, columns=columns)


#: Each route: ``(pieces, columns) -> function`` to jit.
ROUTES = {
    "forward": lambda p, _: p.f,
    "loss": lambda p, _: p.total,
    "gradient": lambda p, _: jax.grad(p.total),
    "hessian": lambda p, _: jax.hessian(p.total),
    "param_jacobian": lambda p, _: p.param_jacobian,
    "hessian_columns": _on_pieces(hessian_columns),
    "hessian_diag_chunk": _on_pieces(hessian_diag_chunk),
    "ggn_chunk": _on_pieces(ggn_chunk),
    "ggn_diag_chunk": _on_pieces(ggn_diag_chunk),
    "ggn_factor": _on_pieces(ggn_factor),
    "ef_chunk": _on_pieces(ef_chunk),
    "ef_diag_chunk": _on_pieces(ef_diag_chunk),
    "ef_factor": _on_pieces(ef_factor),
    "hvp_hessian": _on_pieces(_columns_of(hvp_hessian)),
    "hvp_ggn": _on_pieces(_columns_of(hvp_ggn)),
    "hvp_ef": _on_pieces(_columns_of(hvp_ef)),
    "kron_ggn": _on_pieces(functools.partial(kron_chunk, kind="ggn")),
    "kron_ef": _on_pieces(functools.partial(kron_chunk, kind="ef")),
    **{name: _on_inputs(getattr(jax_inputs, name)) for name in ("input_jacobian", "input_hessian", "laplacian", "divergence")},
}

#: How many models' compiled functions are kept (least recently used dropped first).
MODELS_KEPT = 16

_CACHE: OrderedDict = OrderedDict()  # model -> {(loss, name, columns): jitted function}


def compiled(model: Chain, loss: str | None, name: str, columns: tuple[int, ...] | None = None):
    """The jitted route ``name`` for this model (and loss, and input ``columns``), built once."""
    functions = _CACHE.pop(model, None) or {}
    _CACHE[model] = functions  # now the most recently used
    while len(_CACHE) > MODELS_KEPT:
        _CACHE.popitem(last=False)
    key = (loss, name, columns)
    if key not in functions:
        functions[key] = jax.jit(ROUTES[name](Pieces(model, loss), columns))
    return functions[key]
