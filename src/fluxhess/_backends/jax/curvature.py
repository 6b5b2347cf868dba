"""The P×P curvatures (Hessian, GGN, empirical Fisher) and their products with vectors.

Two routes, each computing every kind (:mod:`.kinds`):

- :func:`structured`, for a Dense chain (:func:`.dense.split`): its blocks, one GEMM over
  the samples each, written panel by panel into the result or the caller's ``out``
  (:mod:`.dense_matrix`);
- :func:`generic`, for any Chain: the Hessian by columns (Hessian-vector products with
  unit vectors over all samples), the GGN and EF as sums over chunks of samples of their
  per-sample terms; the whole matrix is built, then copied into ``out`` if given.

:func:`products` is ``M @ V`` by the kind's own product, in chunks of columns of ``V``.
"""

from __future__ import annotations

import numpy as np

from ..._memory import CHUNK_BYTES, chunk_size
from ..._problem import Problem
from ..._progress import chunks
from . import dense_matrix
from .chunked import column_bytes, over_parameters, row_bytes, sum_over_samples
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
    if kind.per_sample_terms:  # the NumPy running sum and one chunk's XLA result
        fn = compiled(model, loss, "sample_sum", kind)
        M = sum_over_samples(problem, fn, row_bytes(problem, kind.rows(model.out_features)), kind.name, on_host=True)
    elif P <= SMALL:
        M = np.array(compiled(model, loss, "hessian")(problem.params, problem.X, problem.Y, problem.scale))
    else:
        M = over_parameters(problem, compiled(model, loss, "columns", kind), np.empty((P, P), problem.dtype), f"{kind.name} columns")
    return _into(out, _symmetrize(M))


def generic_bytes(P: int, itemsize: int) -> int:
    """Memory :func:`generic` uses at most, result included: two P×P arrays (the running sum
    and a chunk's result, or the matrix and ``out``'s copy) and one chunk's working set."""
    return 2 * P * P * itemsize + CHUNK_BYTES


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
