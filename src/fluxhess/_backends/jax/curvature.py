"""The P×P curvatures (Hessian, GGN, empirical Fisher) and their products with vectors.

Two routes, each computing every kind (:mod:`.kinds`):

- :func:`structured`, for a Dense chain (:func:`.dense.split`): its blocks, one GEMM over
  the samples each, written panel by panel into the result or the caller's ``out``
  (:mod:`.dense_matrix`);
- :func:`generic`, for any model (a Chain, a JaxFunction): the Hessian by columns
  (Hessian-vector products with unit vectors over all samples), built whole, then copied into
  ``out`` if given; the GGN and EF as the Gram matrix ``Uᵀ U`` of their factor's rows (``C``
  resp. 1 per sample, from per-sample Jacobians resp. ``vmap`` of per-sample gradients), made
  by chunks of samples in JAX and summed by NumPy GEMMs panel by panel into the lower triangle
  of the result (or ``out``), mirrored (:func:`.dense_matrix.gram`): half the flops of ``JᵀΛJ``.

:func:`products` is ``M @ V`` by the kind's own product, in chunks of columns of ``V``.
"""

from __future__ import annotations

import numpy as np

from ..._memory import CHUNK_BYTES, chunk_size
from ..._problem import Problem
from ..._progress import chunks
from . import dense_matrix
from .chunked import column_bytes, over_parameters, row_bytes
from .compiled import compiled
from .dense import Structure
from .kinds import Kind
from .precision import to_numpy


def structured(st: Structure, problem: Problem, kind: Kind, out: np.ndarray | None = None) -> np.ndarray:
    return dense_matrix.matrix(st, problem.loss, kind, problem.params, problem.X, problem.Y, problem.scale, out)


def generic(problem: Problem, kind: Kind, out: np.ndarray | None = None) -> np.ndarray:
    """The whole matrix in NumPy, symmetrized in place, then copied into ``out`` if given: at
    most two P×P arrays at once (:func:`generic_bytes`)."""
    model, loss, P = problem.model, problem.loss, problem.params.shape[0]
    if kind.per_sample_terms:
        return _gram(problem, kind, out)
    if P <= SMALL:
        M = np.array(compiled(model, loss, "hessian")(problem.params, problem.X, problem.Y, problem.scale))  # writable: symmetrized in place
    else:
        M = over_parameters(problem, compiled(model, loss, "columns", kind), np.empty((P, P), problem.dtype), f"{kind.name} columns")
    return _into(out, _symmetrize(M))


def generic_bytes(P: int, itemsize: int) -> int:
    """Memory :func:`generic` uses at most, result included: two P×P arrays (the Hessian's
    matrix and ``out``'s copy; for GGN/EF the result and the Gram route's working set, which
    stays within :func:`.dense_matrix.working_bytes`) and one chunk's working set."""
    return 2 * P * P * itemsize + CHUNK_BYTES


def _gram(problem: Problem, kind: Kind, out: np.ndarray | None) -> np.ndarray:
    """``Uᵀ U`` from the kind's factor rows (:meth:`~.kinds.Kind.factor`), chunks of samples within
    half of :func:`.dense_matrix.working_bytes`, written into ``out`` (or a new array)."""
    P, N, itemsize = problem.params.shape[0], problem.X.shape[0], problem.dtype.itemsize
    budget = dense_matrix.working_bytes(P, itemsize) // 2
    n = chunk_size(row_bytes(problem, kind.rows(problem.model.out_features)), N, budget // 2)
    H = np.empty((P, P), dtype=problem.dtype) if out is None else out
    fn = compiled(problem.model, problem.loss, "factor", kind)
    return dense_matrix.gram(fn, problem.params, problem.X, problem.Y, problem.scale, dense_matrix.slices(N, n), budget, H)


#: Up to this many parameters the generic Hessian is one ``jax.hessian`` call.
SMALL = 256


def products(problem: Problem, kind: Kind, V: np.ndarray) -> np.ndarray:
    """``M @ V`` ``(P, k)``, in chunks of columns of ``V`` each within :data:`fluxhess._memory.CHUNK_BYTES`."""
    P, k = V.shape
    n = chunk_size(column_bytes(problem.model, P, problem.X.shape[0], problem.dtype.itemsize), k)
    out = np.empty((P, k), dtype=problem.dtype)
    fn = compiled(problem.model, problem.loss, "hvp", kind)
    for sl in chunks(k, n, f"hvp ({kind.name})"):
        out[:, sl] = to_numpy(fn(problem.params, problem.X, problem.Y, problem.scale, V[:, sl]))
    return out


def _into(out: np.ndarray | None, M: np.ndarray) -> np.ndarray:
    """``M``, or ``out`` holding a copy of it (the generic routes build the whole matrix first)."""
    if out is None:
        return M
    np.copyto(out, M)
    return out


def _symmetrize(M: np.ndarray, tile: int = 256) -> np.ndarray:
    """``M`` (a writable array) made exactly symmetric in place, ``(M + Mᵀ)/2``, one tile of
    rows at a time: no second P×P array."""
    P = M.shape[0]
    for r0 in range(0, P, tile):
        r1 = min(P, r0 + tile)
        lower = M[r0:r1, :r1]
        lower += M[:r1, r0:r1].T
        lower *= 0.5
        M[:r1, r0:r1] = lower.T
    return M
