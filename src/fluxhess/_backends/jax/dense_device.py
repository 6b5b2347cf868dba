"""The Dense-chain Hessian, GGN and empirical Fisher assembled by XLA on one JAX device.

The same blocks as :mod:`.dense_matrix` (see its docstring for the formulas) from the
same per-sample factors (:mod:`.dense`, :mod:`.kinds`), each block ``(m, l)`` one ``einsum`` over
the samples, written for XLA instead of NumPy: the factors never leave the device, and the
matrix stays there until the caller asks for it. Whole blocks at a time (no row panels):
the working memory is about the result again, so this route is for a result that fits the
device twice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..._problem import Problem
from .chunked import sum_over_samples
from .dense import Structure, factor_bytes, factors


def _adjacent_T(st: Structure, m: int, l: int, d1):
    """``T̄_ml`` ``(N, n̄_m, o_l)`` for adjacent layers (``m = l + 1``): ``diag(φ_l')`` and a zero bias row."""
    T = d1[:, :, None] * jnp.eye(d1.shape[1], dtype=d1.dtype)
    if st.segments[m].layer.bias:
        T = jnp.concatenate([T, jnp.zeros((T.shape[0], 1, T.shape[2]), T.dtype)], axis=1)
    return T


def _block(st: Structure, kind, m: int, l: int, theta, F):
    """Block ``(m, l)``, ``m ≥ l``, of the matrix: ``(n̄_m·o_m, n̄_l·o_l)``."""
    am, al = F["abar"][m], F["abar"][l]
    K, T = kind.block(st, m, l, theta, F)
    block = jnp.einsum("nj,ni,npq->jpiq", am, al, K)
    if kind.second_term and m > l:
        T = _adjacent_T(st, m, l, F["d1"][l]) if m == l + 1 else T
        block = block + jnp.einsum("njq,np,ni->jpiq", T, F["delta"][m], al)
    rows, cols = st.segments[m].size, st.segments[l].size
    return block.reshape(rows, cols)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _assemble(st: Structure, kind, theta, F):
    """The whole symmetric matrix from one chunk's factors: lower blocks, their transposes above."""
    n = len(st.segments)
    lower = {(m, l): _block(st, kind, m, l, theta, F) for m in range(n) for l in range(m + 1)}
    rows = [jnp.concatenate([lower[m, l] if l <= m else lower[l, m].T for l in range(n)], axis=1) for m in range(n)]
    M = jnp.concatenate(rows, axis=0)
    return 0.5 * (M + M.T)  # the diagonal blocks' einsums round their two triangles differently


@jax.jit
def _gram(G):
    """``Gᵀ G`` from the rows ``√s·g_n``, exactly symmetric."""
    M = G.T @ G
    return 0.5 * (M + M.T)


def matrix(st: Structure, problem: Problem, kind, budget: int) -> jax.Array:
    """The curvature ``kind`` (:mod:`.kinds`) of a Dense chain, ``(P, P)``, on JAX's default
    device; samples in chunks whose factors fit ``budget`` bytes. The caller scopes JAX's
    precision to the problem's dtype."""
    fn = factors(st, problem.loss, kind, "matrix")

    def chunk(theta, X, Y, s):
        F = fn(theta, X, Y, s)
        return _gram(F) if kind.gram else _assemble(st, kind, theta, F)

    return sum_over_samples(problem, chunk, factor_bytes(st, problem, kind, "matrix"), kind.name, budget)
