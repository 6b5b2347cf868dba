"""The three curvature kinds, each an object that knows its per-sample pieces in JAX.

For samples n with loss ``ℓ_n``, output ``f_n = f(θ, x_n)`` and aggregation factor ``s``:

- :data:`HESSIAN`: ``s·Σ_n ∇²_θ ℓ_n``;
- :data:`GGN`: ``s·Σ_n J_nᵀ Λ_n J_n`` (``J_n = ∂f_n/∂θ``, ``Λ_n = ∇²_f ℓ_n``);
- :data:`EMPIRICAL_FISHER`: ``s·Σ_n g_n g_nᵀ`` (``g_n = ∇_θ ℓ_n``).

Every route (:mod:`.curvature`, :mod:`.diagonal`, :mod:`.kron`, :mod:`.sharded`,
:mod:`.dense_matrix`, :mod:`.dense_device`) computes whichever kind it is handed from
these pieces, so no route asks which kind it has:

- of any Chain, from the per-sample :class:`.compiled.Pieces` ``p`` (the network and the
  loss): ``hvp`` (``M v``); for the GGN and EF, whose ``M`` is a sum of per-sample
  terms, ``sample_diagonal`` (over a chunk of samples) and ``factor``
  (``U`` with ``Uᵀ U = M``, :attr:`Kind.rows` rows per sample); for the Hessian,
  ``columns`` and ``column_diagonal`` (over a chunk of parameters, all samples);
  ``kron_curvature`` (KFAC's ``G`` of one sample);
- of a Dense chain, from :mod:`.dense`'s per-sample factors: ``layer_factors`` (``ā_l``
  and the layer's own curvature factor), ``own_diagonal``, ``own_sum``,
  ``sample_factors`` (what the P×P assembly reads) and ``block`` (a block's ``K_ml``).

The public API names the kinds ``"hessian"``, ``"ggn"`` and ``"ef"`` (:data:`KINDS`).
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp

from ... import losses as L
from .dense import Structure, backward, gauss_newton_block, output_jacobians, pair
from .model import run


class Kind(abc.ABC):
    """A curvature kind. ``name``: its public name. ``rows(C)``: rows per sample of its square-root
    factor ``U`` (``Uᵀ U = M``), None for the Hessian, which has none. Only the kinds with such a
    factor (GGN, EF) have KFAC factors, ``kron_curvature``; :func:`fluxhess.kron` refuses the Hessian."""

    name: str
    #: A Dense chain's cross-layer blocks carry the Hessian's ``T̄_ml δ_m ā_l`` term.
    second_term = False
    #: ``sample_factors`` are the rows ``√s·g_n`` of ``U`` itself, and ``M = Uᵀ U`` (no blocks).
    gram = False

    @abc.abstractmethod
    def rows(self, C: int) -> int | None: ...

    @property
    def per_sample_terms(self) -> bool:
        """``M`` is a sum of per-sample terms with a factor ``U`` (the generic routes chunk over
        samples), not built by columns."""
        return self.rows(1) is not None

    def __repr__(self) -> str:
        return f"<curvature kind {self.name!r}>"


class Hessian(Kind):
    """The exact Hessian. Not a sum of per-sample outer products, so it is built by columns
    (Hessian-vector products with unit vectors) over all samples at once."""

    name = "hessian"
    second_term = True

    def rows(self, C):
        return None

    # -- any Chain ----------------------------------------------------------------------
    def hvp(self, p, theta, X, Y, s, v):
        return jax.jvp(lambda t: jax.grad(p.total)(t, X, Y, s), (theta,), (v,))[1]

    def columns(self, p, theta, X, Y, s, idx):  # H[:, idx] as (k, P)
        basis = jax.nn.one_hot(idx, theta.shape[0], dtype=theta.dtype)
        return jax.vmap(lambda v: self.hvp(p, theta, X, Y, s, v))(basis)

    def column_diagonal(self, p, theta, X, Y, s, idx):  # H[idx, idx]
        return self.columns(p, theta, X, Y, s, idx)[jnp.arange(idx.shape[0]), idx]

    # -- Dense chains -------------------------------------------------------------------
    def layer_factors(self, st: Structure, loss, theta, x, y):
        """``ā_l`` and ``K_ll`` ``(o_l, o_l)`` per layer."""
        abar, _, _, _, K = backward(st, loss, theta, x, y, curvature=True)
        return abar, K

    def own_diagonal(self, K):
        return jnp.diagonal(K, axis1=1, axis2=2)

    def own_sum(self, K):
        return K.sum(0)

    def sample_factors(self, st: Structure, loss, theta, x, y, s):
        """``{"abar": [ā_l], "d1": [φ_l'], "K": [s·K_ll], "delta": [s·δ_l]}``."""
        abar, _, d1, delta, K = backward(st, loss, theta, x, y, curvature=True)
        return {"abar": abar, "d1": d1, "K": [s * k for k in K], "delta": [s * d for d in delta]}

    def block(self, st: Structure, m: int, l: int, theta, F):
        """``s·K_ml`` ``(N, o_m, o_l)`` and ``T̄_ml`` (None for l == m and adjacent layers)."""
        if m == l:
            return F["K"][m], None
        return pair(st, m, l)(theta, F["K"][m], F["d1"])


class GaussNewton(Kind):
    """The generalized Gauss-Newton: per sample ``J_nᵀ Λ_n J_n``, ``C`` rows of ``U`` per sample."""

    name = "ggn"

    def rows(self, C):
        return C

    # -- any Chain ----------------------------------------------------------------------
    def hvp(self, p, theta, X, Y, s, v):
        _, jv = jax.jvp(lambda t: p.f(t, X), (theta,), (v,))
        w = s * jnp.einsum("ncd,nd->nc", p.output_hessians(theta, X, Y), jv)
        return jax.vjp(lambda t: p.f(t, X), theta)[1](w)[0]

    def _jacobian_rows(self, p, theta, X, Y):
        """``J`` ``(N, C, P)`` and ``Λ J`` ``(N, C, P)``."""
        J = p.param_jacobian(theta, X)
        return J, jnp.einsum("ncd,ndp->ncp", p.output_hessians(theta, X, Y), J)

    def sample_diagonal(self, p, theta, X, Y, s):
        J, M = self._jacobian_rows(p, theta, X, Y)
        return s * jnp.sum(J * M, axis=(0, 1))

    def factor(self, p, theta, X, Y, s):
        """U ``(N·C, P)``: rows ``L_nᵀ J_n`` with ``s·Λ_n = L_n L_nᵀ``."""
        lam, Q = jnp.linalg.eigh(p.output_hessians(theta, X, Y))  # Λ_n is positive semi-definite: clip rounding
        root = Q * jnp.sqrt(jnp.clip(s * lam, 0.0, None))[:, None, :]
        return jnp.einsum("nck,ncp->nkp", root, p.param_jacobian(theta, X)).reshape(-1, theta.shape[0])

    def kron_curvature(self, p, theta, x, y, eps):
        """``Bᵀ Λ B`` per Dense layer, ``B = ∂f/∂z`` ``(C, out)``."""
        B = jax.jacrev(lambda e: run(p.model, theta, x, e))(eps)
        lam = jax.hessian(lambda yhat: L.per_sample(p.loss, yhat, y))(run(p.model, theta, x))
        return [b.T @ lam @ b for b in B]

    # -- Dense chains -------------------------------------------------------------------
    def layer_factors(self, st: Structure, loss, theta, x, y):
        """``ā_l`` and ``(B_l, Λ B_l)`` per layer (``K_ll = B_lᵀ Λ B_l``: ``C·o_l`` numbers, not ``o_l²``)."""
        abar, B, lamB = output_jacobians(st, loss, theta, x, y)
        return abar, list(zip(B, lamB))

    def own_diagonal(self, g):
        B, lamB = g
        return jnp.sum(B * lamB, axis=1)

    def own_sum(self, g):
        B, lamB = g
        rows = B.shape[0] * B.shape[1]
        return B.reshape(rows, -1).T @ lamB.reshape(rows, -1)

    def sample_factors(self, st: Structure, loss, theta, x, y, s):
        """``{"abar": [ā_l], "B": [B_l], "lamB": [s·Λ B_l]}``; each block's ``K_ml`` is made by :meth:`block`."""
        abar, B, lamB = output_jacobians(st, loss, theta, x, y)
        return {"abar": abar, "B": B, "lamB": [s * b for b in lamB]}

    def block(self, st: Structure, m: int, l: int, theta, F):
        """``s·K_ml = B_mᵀ (s·Λ B_l)`` ``(N, o_m, o_l)``; no second term."""
        return gauss_newton_block(F["B"][m], F["lamB"][l]), None


class EmpiricalFisher(Kind):
    """The empirical Fisher: per sample ``g_n g_nᵀ``, one row of ``U`` per sample."""

    name = "ef"
    gram = True

    def rows(self, C):
        return 1

    # -- any Chain ----------------------------------------------------------------------
    def hvp(self, p, theta, X, Y, s, v):
        gv = jax.jvp(lambda t: p.batch_losses(t, X, Y), (theta,), (v,))[1]
        return jax.vjp(lambda t: p.batch_losses(t, X, Y), theta)[1](s * gv)[0]

    def sample_diagonal(self, p, theta, X, Y, s):
        return s * jnp.sum(p.sample_grads(theta, X, Y) ** 2, axis=0)

    def factor(self, p, theta, X, Y, s):  # √s·g_n as rows (N, P)
        return jnp.sqrt(s) * p.sample_grads(theta, X, Y)

    def kron_curvature(self, p, theta, x, y, eps):
        """``δ δᵀ`` per Dense layer, ``δ = ∂ℓ/∂z``."""
        delta = jax.grad(lambda e: L.per_sample(p.loss, run(p.model, theta, x, e), y))(eps)
        return [jnp.outer(d, d) for d in delta]

    # -- Dense chains -------------------------------------------------------------------
    def layer_factors(self, st: Structure, loss, theta, x, y):
        """``ā_l`` and ``δ_l`` per layer."""
        abar, _, _, delta, _ = backward(st, loss, theta, x, y, curvature=False)
        return abar, delta

    def own_diagonal(self, delta):
        return delta * delta

    def own_sum(self, delta):
        return delta.T @ delta

    def sample_factors(self, st: Structure, loss, theta, x, y, s):
        """The rows ``√s·g_n`` with ``g_n = [ā_l ⊗ δ_l]_l`` ``(P,)``: the matrix is their Gram matrix."""
        abar, delta = self.layer_factors(st, loss, theta, x, y)
        return jnp.sqrt(s) * jnp.concatenate([jnp.outer(a, d).ravel() for a, d in zip(abar, delta)])


HESSIAN, GGN, EMPIRICAL_FISHER = Hessian(), GaussNewton(), EmpiricalFisher()

#: Each kind by its public name.
KINDS = {k.name: k for k in (HESSIAN, GGN, EMPIRICAL_FISHER)}
