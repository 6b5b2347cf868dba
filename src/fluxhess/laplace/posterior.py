"""The Gaussian posterior ``N(θ_MAP, P⁻¹)`` for each curvature structure, in JAX.

The posterior precision is ``P = c·H + P₀``: ``H`` the summed-loss curvature of the
subset, ``c`` the likelihood's :func:`~fluxhess.laplace.likelihood.curvature_factor` and
``P₀`` the prior precision — diagonal: one value, one per block, or one per parameter.
Each structure keeps ``H`` in its own form and answers the same questions:

==========  =====================================  ========================================
structure   ``H``                                  ``P``
==========  =====================================  ========================================
full        ``(P, P)``                             ``c·H + diag(p₀)``, via its Cholesky factor
diag        ``(P,)``, the diagonal of ``H``        ``c·h + p₀``
kron        per block ``A ⊗ G`` (eigendecomposed)  per block ``c·A ⊗ G + δ_b·I``
lowrank     ``Uᵀ U``, the factor ``U`` ``(R, P)``   ``c·Uᵀ U + diag(p₀)``, by Woodbury
==========  =====================================  ========================================

``lowrank`` is for ``P ≫ R``: the GGN and the empirical Fisher of ``N`` samples have rank at
most ``R = N·C`` (GGN, ``U``'s rows ``L_nᵀ J_n`` with ``Λ_n = L_n L_nᵀ``) or ``R = N`` (EF,
rows ``g_nᵀ``); every question is answered through the smaller of the ``(R, R)`` and
``(P, P)`` Gram matrices, in ``O(R·P·min(R, P))`` time and ``O(R·P + min(R, P)²)`` memory.

``kron`` follows laplace-torch (``separate_weight_and_bias``): a weight block
``A ⊗ G`` with ``A = (1/N)·Σ a aᵀ`` the layer-input second moment and ``G`` the summed
output factor, a bias block ``1 ⊗ G``; the cross terms between blocks are dropped.
Its prior is one value, or one per block.

Every function that feeds the log marginal likelihood is written with ``jax.numpy``,
so it is differentiable in the prior precision and the factor ``c`` (hence σ).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np


def prior_diagonal(prior, sizes: list[int]):
    """``p₀`` ``(P,)`` from one value ``(1,)``, one per block ``(B,)`` or one per parameter ``(P,)``."""
    P = sum(sizes)
    if prior.shape[0] == 1:
        return jnp.broadcast_to(prior, (P,))
    if prior.shape[0] == P:
        return prior
    return jnp.repeat(prior, np.asarray(sizes), total_repeat_length=P)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Full:
    """Dense ``H`` ``(P, P)``."""

    H: np.ndarray

    name = "full"

    def precision(self, c, prior, sizes):
        return c * self.H + jnp.diag(prior_diagonal(prior, sizes))

    def logdet(self, c, prior, sizes):
        L = jnp.linalg.cholesky(self.precision(c, prior, sizes))
        return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))

    def decompose(self, c, prior, sizes):
        """The lower Cholesky factor ``L`` of ``P = L Lᵀ`` (NaN where ``P`` is not positive definite)."""
        return jnp.linalg.cholesky(self.precision(c, prior, sizes))

    @staticmethod
    def positive_definite(L) -> bool:
        return bool(np.all(np.isfinite(np.asarray(L))))

    def smallest_eigenvalue(self, c, prior, sizes) -> float:
        return float(jnp.linalg.eigvalsh(self.precision(c, prior, sizes))[0])

    @staticmethod
    def inv_quad(L, J):
        """``J P⁻¹ Jᵀ`` per sample: ``J`` ``(N, C, P)`` → ``(N, C, C)``."""
        N, C, P = J.shape
        V = jsl.solve_triangular(L, J.reshape(N * C, P).T, lower=True).T.reshape(N, C, P)
        return jnp.einsum("ncp,nkp->nck", V, V)

    @staticmethod
    def scale(L, Z):
        """Rows of ``Z`` ``(n, P)`` mapped to ``P^{-1/2}``-distributed rows: ``L⁻ᵀ z``."""
        return jsl.solve_triangular(L.T, Z.T, lower=False).T

    @staticmethod
    def covariance(L):
        return jsl.cho_solve((L, True), jnp.eye(L.shape[0], dtype=L.dtype))

    def eigenvalues(self) -> np.ndarray:
        """The eigenvalues of ``H``, ascending ``(P,)``."""
        return np.linalg.eigvalsh(self.H)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Diag:
    """The diagonal ``h`` ``(P,)`` of ``H``."""

    h: np.ndarray

    name = "diag"

    def precision_diagonal(self, c, prior, sizes):
        return c * self.h + prior_diagonal(prior, sizes)

    def precision(self, c, prior, sizes):
        return jnp.diag(self.precision_diagonal(c, prior, sizes))

    def logdet(self, c, prior, sizes):
        return jnp.sum(jnp.log(self.precision_diagonal(c, prior, sizes)))

    def decompose(self, c, prior, sizes):
        """The precision diagonal ``p`` ``(P,)``."""
        return self.precision_diagonal(c, prior, sizes)

    @staticmethod
    def positive_definite(p) -> bool:
        return bool(np.all(np.asarray(p) > 0))

    def smallest_eigenvalue(self, c, prior, sizes) -> float:
        return float(jnp.min(self.precision_diagonal(c, prior, sizes)))

    @staticmethod
    def inv_quad(p, J):
        return jnp.einsum("ncp,p,nkp->nck", J, 1.0 / p, J)

    @staticmethod
    def scale(p, Z):
        return Z / jnp.sqrt(p)

    @staticmethod
    def covariance(p):
        return jnp.diag(1.0 / p)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class KronBlock:
    """One block ``A ⊗ G`` as eigendecompositions ``A = Q_A diag(λ_A) Q_Aᵀ``, same for ``G``."""

    lam_A: np.ndarray  # (in,) or (1,) for a bias
    Q_A: np.ndarray
    lam_G: np.ndarray  # (out,)
    Q_G: np.ndarray

    @classmethod
    def from_factors(cls, A: np.ndarray, G: np.ndarray) -> "KronBlock":
        lam_A, Q_A = np.linalg.eigh(A)
        lam_G, Q_G = np.linalg.eigh(G)
        return cls(lam_A, Q_A, lam_G, Q_G)

    @property
    def shape(self) -> tuple[int, int]:
        return self.lam_A.size, self.lam_G.size

    def eigenvalues(self, c, delta):
        """Eigenvalues of ``c·A ⊗ G + δ·I`` as ``(in, out)``: entry ``[i, o]`` pairs ``λ_A[i]``, ``λ_G[o]``."""
        return c * jnp.outer(self.lam_A, self.lam_G) + delta


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Kron:
    """One :class:`KronBlock` per subset block, in layout order."""

    blocks: tuple[KronBlock, ...]

    name = "kron"

    def deltas(self, prior):
        """The prior as one value per block ``(B,)``."""
        return jnp.broadcast_to(prior, (len(self.blocks),)) if prior.shape[0] == 1 else prior

    def precision(self, c, prior, sizes):
        mats = []
        for block, d in zip(self.blocks, self.deltas(prior)):
            A = (block.Q_A * block.lam_A) @ block.Q_A.T
            G = (block.Q_G * block.lam_G) @ block.Q_G.T
            mats.append(c * jnp.kron(A, G) + d * jnp.eye(A.shape[0] * G.shape[0]))
        return jsl.block_diag(*mats)

    def logdet(self, c, prior, sizes):
        return sum(jnp.sum(jnp.log(b.eigenvalues(c, d))) for b, d in zip(self.blocks, self.deltas(prior)))

    def decompose(self, c, prior, sizes):
        """Per block the eigenvalues ``(in, out)`` of its posterior precision."""
        return [b.eigenvalues(c, d) for b, d in zip(self.blocks, self.deltas(prior))]

    @staticmethod
    def positive_definite(eig) -> bool:
        return all(bool(np.all(np.asarray(e) > 0)) for e in eig)

    def smallest_eigenvalue(self, c, prior, sizes) -> float:
        return min(float(jnp.min(e)) for e in self.decompose(c, prior, sizes))

    def _map(self, eig, W, power):
        """``P^power`` applied to the rows of ``W`` ``(k, P)``, block by block (column-major vec)."""
        out, start = [], 0
        for block, e in zip(self.blocks, eig):
            n_in, n_out = block.shape
            w = W[:, start : start + n_in * n_out].reshape(-1, n_in, n_out)  # [i, o] = vec index i·out + o
            w = jnp.einsum("ia,kio,ob->kab", block.Q_A, w, block.Q_G) * e**power
            out.append(jnp.einsum("ai,kio,bo->kab", block.Q_A, w, block.Q_G).reshape(-1, n_in * n_out))
            start += n_in * n_out
        return jnp.concatenate(out, axis=1)

    def inv_quad(self, eig, J):
        N, C, P = J.shape
        rows = J.reshape(N * C, P)
        return jnp.einsum("ncp,nkp->nck", J, self._map(eig, rows, -1.0).reshape(N, C, P))

    def scale(self, eig, Z):
        return self._map(eig, Z, -0.5)

    def covariance(self, eig):
        P = sum(b.shape[0] * b.shape[1] for b in self.blocks)
        return self._map(eig, jnp.eye(P), -1.0)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LowRank:
    """``H = Uᵀ U`` from its factor ``U`` ``(R, P)``; nothing ``(P, P)`` is formed when ``R < P``.

    With ``D = diag(p₀)`` and ``A = √c·U D^{-1/2}`` ``(R, P)``, ``P = D^{1/2} (I + AᵀA) D^{1/2}``.
    :meth:`decompose` diagonalises the smaller of the two Gram matrices, ``k = min(R, P)``:
    ``A Aᵀ = W diag(e) Wᵀ`` ``(R, R)`` with ``V = Wᵀ A`` when ``R ≤ P``, or
    ``AᵀA = Q diag(e) Qᵀ`` ``(P, P)`` with ``V = diag(√e) Qᵀ`` when ``P < R``. Either way ``V``
    ``(k, P)`` has orthogonal rows of norms ``√e`` and ``VᵀV = AᵀA``, so that by Woodbury
    ``(I + AᵀA)⁻¹ = I − Vᵀ diag(1/(1+e)) V`` and ``(I + AᵀA)^{-1/2} = I + Vᵀ diag(g(e)) V``
    with ``g(e) = ((1+e)^{-1/2} − 1)/e = −1/(√(1+e)·(1 + √(1+e)))``. Time ``O(R·P·k)``, memory
    ``O(R·P + k²)``.
    """

    U: np.ndarray

    name = "lowrank"

    @property
    def rows_side(self) -> bool:
        """Whether the ``(R, R)`` side is the smaller one (``R ≤ P``)."""
        R, P = self.U.shape
        return R <= P

    def working_bytes(self) -> int:
        """Bytes :meth:`decompose` (and :meth:`eigenvalues`) allocate beside ``U``: the scaled
        factor ``A`` ``(R, P)``, the ``(k, k)`` Gram matrix and its eigenvectors, and ``V`` ``(k, P)``."""
        R, P = self.U.shape
        k = min(R, P)
        return 8 * (R * P + 2 * k * k + k * P)

    def precision(self, c, prior, sizes):
        return c * self.U.T @ self.U + jnp.diag(prior_diagonal(prior, sizes))

    def logdet(self, c, prior, sizes):
        """``log det(D + c·UᵀU)``: by Sylvester, ``log det D + log det(I_R + c·U D⁻¹ Uᵀ)`` when ``R ≤ P``,
        else directly; a Cholesky factor of the smaller ``(k, k)`` matrix."""
        p0 = prior_diagonal(prior, sizes)
        if not self.rows_side:
            L = jnp.linalg.cholesky(self.precision(c, prior, sizes))
            return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
        R = self.U.shape[0]
        L = jnp.linalg.cholesky(jnp.eye(R, dtype=self.U.dtype) + c * (self.U / p0) @ self.U.T)
        return jnp.sum(jnp.log(p0)) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))

    def eigenvalues(self) -> np.ndarray:
        """The ``P`` eigenvalues of ``H = Uᵀ U``, ascending: those of the smaller Gram matrix, and
        ``P − R`` zeros when ``R < P``."""
        R, P = self.U.shape
        if not self.rows_side:
            return np.clip(np.linalg.eigvalsh(self.U.T @ self.U), 0.0, None)
        e = np.clip(np.linalg.eigvalsh(self.U @ self.U.T), 0.0, None)
        return np.concatenate([np.zeros(P - R), e])

    def decompose(self, c, prior, sizes):
        """``(p₀ (P,), V (k, P), e (k,))``, see the class docstring. NumPy (BLAS GEMMs, several
        times XLA's on a CPU at this size), like everything below: only :meth:`logdet` is traced."""
        p0 = np.asarray(prior_diagonal(prior, sizes), dtype=np.float64)
        A = self.U * np.sqrt(float(c) / p0)
        if self.rows_side:
            e, W = np.linalg.eigh(A @ A.T)
            V = np.matmul(W.T, A, out=A)  # A is not needed again: V takes its memory
        else:
            e, Q = np.linalg.eigh(A.T @ A)
            del A
            V = np.sqrt(np.clip(e, 0.0, None))[:, None] * Q.T
        e = np.clip(e, 0.0, None)  # a Gram matrix is positive semi-definite; clip its rounding
        return p0, V, e

    @staticmethod
    def positive_definite(dec) -> bool:
        p0, V, e = dec
        return bool(np.all(p0 > 0) and np.all(np.isfinite(e)))

    def smallest_eigenvalue(self, c, prior, sizes) -> float:
        """A lower bound: ``H`` is positive semi-definite, so ``P``'s smallest eigenvalue is at least ``min p₀``."""
        return float(jnp.min(prior_diagonal(prior, sizes)))

    @staticmethod
    def inv_quad(dec, J):
        """``J P⁻¹ Jᵀ`` per sample: ``J`` ``(N, C, P)`` → ``(N, C, C)``."""
        p0, V, e = dec
        Jt = np.asarray(J) / np.sqrt(p0)
        B = (Jt @ V.T) / np.sqrt(1.0 + e)  # (N, C, R)
        return np.einsum("ncp,nkp->nck", Jt, Jt) - np.einsum("ncr,nkr->nck", B, B)

    @staticmethod
    def scale(dec, Z):
        """Rows of ``Z`` ``(n, P)`` mapped by ``S = D^{-1/2} (I + AᵀA)^{-1/2}`` (``S Sᵀ = P⁻¹``)."""
        p0, V, e = dec
        root = np.sqrt(1.0 + e)
        Z = np.asarray(Z)
        return (Z + ((Z @ V.T) * (-1.0 / (root * (1.0 + root)))) @ V) / np.sqrt(p0)

    @staticmethod
    def variance(dec):
        """``diag(P⁻¹)`` ``(P,)`` in ``O(R·P)``."""
        p0, V, e = dec
        return (1.0 - np.einsum("rp,rp,r->p", V, V, 1.0 / (1.0 + e))) / p0

    @staticmethod
    def covariance(dec):
        p0, V, e = dec
        inner = np.eye(V.shape[1]) - (V.T / (1.0 + e)) @ V
        root = 1.0 / np.sqrt(p0)
        return root[:, None] * inner * root[None, :]


STRUCTURES = ("full", "diag", "kron", "lowrank")
