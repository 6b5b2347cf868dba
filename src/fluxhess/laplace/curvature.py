"""The summed-loss curvature of a subset, from the public API, in chunks of the data.

Each structure asks the public API (hence any backend) for one quantity of the tail
network (:mod:`fluxhess.laplace.subset`) on its input features, chunk by chunk, and
sums: ``full`` → :func:`fluxhess.ggn` / :func:`fluxhess.empirical_fisher` /
:func:`fluxhess.hessian`, ``diag`` → :func:`fluxhess.diagonal`, ``kron`` →
:func:`fluxhess.kron`; ``lowrank`` stacks the rows of the factor ``U`` (``H = Uᵀ U``) from
:func:`fluxhess.param_jacobian` and the loss's derivatives in the outputs. All with ``agg="sum"``: the curvature of ``Σ_n ℓ_n``, unscaled;
the likelihood's factor is applied later, in one place.
"""

from __future__ import annotations

import functools

import warnings
from typing import NamedTuple

import jax
import numpy as np

from .. import api, _memory as memory
from .. import losses as L
from .. import _validate as check
from ..errors import FluxHessWarning, InputError
from .._progress import chunks
from . import posterior
from .subset import Subset, tail_block

CURVATURES = ("ggn", "ef", "hessian")
_DENSE = {"ggn": api.ggn, "ef": api.empirical_fisher, "hessian": api.hessian}


class Clipped(NamedTuple):
    """What ``clip_negative_eigenvalues=True`` removed from the Hessian of the summed loss."""

    count: int  # how many eigenvalues (full) or diagonal entries (diag) were negative
    total: int  # out of how many
    most_negative: float  # the most negative one, now 0


#: What a refused curvature suggests inside a Laplace fit: its own structures and subsets.
_SMALLER = "structure='kron' or 'diag', structure='lowrank' (GGN or EF, for P much larger than N·C), or subset='last_layer'"
MEMORY_HINTS = {
    "hessian": f"a Laplace approximation with {_SMALLER}",
    "ggn": f"a Laplace approximation with {_SMALLER}",
    "empirical_fisher": f"a Laplace approximation with {_SMALLER}",
    "kron": "a Laplace approximation with structure='diag' or subset='last_layer'",
}


def _samples_per_chunk(subset: Subset, n_outputs: int, n_data: int) -> int:
    P = subset.tail.num_params
    return memory.chunk_size(3 * 8 * max(n_outputs, 1) * P, n_data)


def _kron_pair(block, part: str, A, G):
    """``(F₁, F₂)`` with the block of θ ``≈ F₁ ⊗ F₂`` in θ's order, from its layer's KFAC ``(A, G)``.

    A bias: ``1 ⊗ G`` (``A[-1, -1] = (1/N)·Σ 1``). A Dense weight (Julia shape ``(out, in)``,
    column-major: input-major): ``A ⊗ G``. A Conv kernel (``(k…, cin, cout)``, column-major:
    output-major): ``G ⊗ A``.
    """
    if part != "weight":
        return A[-1:, -1:], G
    if len(block.shape) == 2:
        return A[: block.shape[1], : block.shape[1]], G
    k = int(np.prod(block.shape[:-1]))
    return G, A[:k, :k]


def summed_curvature(structure: str, kind: str, subset: Subset, theta, features, Y, loss: str, backend: str):
    """The curvature ``H`` of ``Σ_n ℓ_n`` over the subset, in the form of ``structure``.

    Returns a :class:`~fluxhess.laplace.posterior.Full` (``(P_s, P_s)``),
    :class:`~fluxhess.laplace.posterior.Diag` (``(P_s,)``) or, for ``kron``, the per-block
    factors ``[(A, G), ...]`` (eigendecomposed later).
    """
    N = features.shape[0]
    tail, t_theta, idx = subset.tail, subset.tail_params(theta), subset.index
    kw = dict(loss=loss, agg="sum", backend=backend)
    step = _samples_per_chunk(subset, Y.shape[1], N)
    if structure == "lowrank":
        return posterior.LowRank(_low_rank_factor(kind, subset, theta, features, Y, loss, backend, step))
    if structure == "kron":
        A_sum, G_sum = None, None
        for sl in chunks(N, step, "Laplace fit (kron)"):
            factors = api.kron(tail, t_theta, features[sl], Y[sl], kind=kind, **kw)
            w = (sl.stop - sl.start) / N  # A is a mean over the chunk: reweight to the mean over all data
            A_part = {f.layer: w * f.A for f in factors}
            G_part = {f.layer: f.G for f in factors}
            A_sum = A_part if A_sum is None else {k: A_sum[k] + A_part[k] for k in A_sum}
            G_sum = G_part if G_sum is None else {k: G_sum[k] + G_part[k] for k in G_sum}
        pairs = []
        for block in subset.blocks:
            layer, part = tail_block(subset, block).rsplit(".", 1)
            pairs.append(_kron_pair(block, part, A_sum[layer], G_sum[layer]))
        return pairs
    total = None
    for sl in chunks(N, step, f"Laplace fit ({structure})"):
        if structure == "full":
            part = _DENSE[kind](tail, t_theta, features[sl], Y[sl], **kw)
            part = part if idx.size == part.shape[0] else part[np.ix_(idx, idx)]
        else:
            part = api.diagonal(tail, t_theta, features[sl], Y[sl], kind=kind, **kw)[idx]
        total = part if total is None else total + part
    return posterior.Full(total) if structure == "full" else posterior.Diag(total)


def _low_rank_factor(kind: str, subset: Subset, theta, features, Y, loss: str, backend: str, step: int) -> np.ndarray:
    """``U`` with ``Uᵀ U`` the GGN (``(N·C, P_s)``, rows ``L_nᵀ J_n``, ``Λ_n = L_n L_nᵀ``) or the
    EF (``(N, P_s)``, rows ``g_nᵀ = r_nᵀ J_n``, ``r_n = ∇_f ℓ_n``) of ``Σ_n ℓ_n``, from the
    subset's Jacobians ``J_n`` ``(C, P_s)``, chunk by chunk."""
    N, C = Y.shape
    per_sample = _ROOT_COLUMNS[kind](C)
    P = subset.num_params
    shape = (N * per_sample, P)
    memory.require("Laplace low-rank factor", memory.needed_bytes("lowrank", shape[0] * P, 8), shape)
    U = np.empty(shape)
    f = api.forward(subset.tail, subset.tail_params(theta), features, backend=backend)
    root = _OUTPUT_ROOT[kind]
    for sl in chunks(N, step, "Laplace fit (lowrank)"):
        J = subset.jacobian(theta, features[sl], backend)  # (n, C, P_s)
        rows = slice(sl.start * per_sample, sl.stop * per_sample)
        with jax.enable_x64(True):
            R = np.asarray(root(functools.partial(L.per_sample, loss), f[sl], Y[sl]))
        U[rows] = np.einsum("nck,ncp->nkp", R, J).reshape(-1, P)
    return U


def _gauss_newton_root(ell, f, Y):
    """A root ``L_n`` ``(n, C, C)`` of each ``Λ_n = ∇²_f ℓ_n``, positive semi-definite for these losses (rounding clipped)."""
    e, Q = np.linalg.eigh(np.asarray(jax.vmap(jax.hessian(ell))(f, Y)))
    return Q * np.sqrt(np.clip(e, 0.0, None))[:, None, :]


def _gradient_root(ell, f, Y):
    """The gradient ``∇_f ℓ_n`` as a column, ``(n, C, 1)``."""
    return jax.vmap(jax.grad(ell))(f, Y)[:, :, None]


#: Per kind, ``R_n`` ``(n, C, k)`` with the kind's per-sample term ``J_nᵀ R_n R_nᵀ J_n``, and its k.
_OUTPUT_ROOT = {"ggn": _gauss_newton_root, "ef": _gradient_root}
_ROOT_COLUMNS = {"ggn": lambda C: C, "ef": lambda C: 1}


def clip_negative(curvature) -> tuple[object, Clipped | None]:
    """Set the negative eigenvalues (full) or diagonal entries (diag) of ``H`` to 0; report them."""
    if isinstance(curvature, posterior.Full):
        lam, Q = np.linalg.eigh(curvature.H)
        negative = lam < 0
        if not negative.any():
            return curvature, None
        report = Clipped(int(negative.sum()), lam.size, float(lam.min()))
        lam = np.where(negative, 0.0, lam)
        clipped = posterior.Full((Q * lam) @ Q.T)
    else:
        h = curvature.h
        negative = h < 0
        if not negative.any():
            return curvature, None
        report = Clipped(int(negative.sum()), h.size, float(h.min()))
        clipped = posterior.Diag(np.where(negative, 0.0, h))
    what = "eigenvalues" if isinstance(curvature, posterior.Full) else "diagonal entries"
    warnings.warn(
        f"clipped {report.count} of {report.total} negative {what} of the Hessian of the summed loss to 0 "
        f"(most negative {report.most_negative:.6g}); Laplace.clipped has the details",
        FluxHessWarning,
        stacklevel=3,
    )
    return clipped, report


def is_finite(curvature) -> bool:
    """Whether every number of a curvature (any structure, or kron's ``[(A, G), ...]``) is finite
    (its largest and smallest are: NaN and ±inf propagate to them; nothing of its size is allocated)."""
    return all(bool(np.isfinite(np.max(leaf)) and np.isfinite(np.min(leaf))) for leaf in jax.tree_util.tree_leaves(curvature))


def largest_entry(curvature) -> float:
    """The largest absolute number a curvature holds (any structure), without a copy of it."""
    return max(max(float(np.max(leaf)), -float(np.min(leaf))) for leaf in jax.tree_util.tree_leaves(curvature))


def most_negative_eigenvalue(curvature) -> float:
    """The smallest eigenvalue of a full ``H`` (the smallest entry of a diagonal one)."""
    if isinstance(curvature, posterior.Full):
        return float(np.linalg.eigvalsh(curvature.H)[0])
    return float(np.min(curvature.h))


def check_kind(kind, structure: str) -> str:
    check.choice("curvature", kind, CURVATURES)
    if structure in ("kron", "lowrank") and kind == "hessian":
        why = {"kron": "KFAC factors exist for those", "lowrank": "their low-rank factor Uᵀ U exists, the Hessian's does not"}
        raise InputError(
            f"structure={structure!r} needs curvature='ggn' or 'ef' ({why[structure]}); "
            "for the exact Hessian use structure='full' or 'diag'"
        )
    return kind
