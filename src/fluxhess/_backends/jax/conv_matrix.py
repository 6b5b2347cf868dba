"""Hessian, GGN, empirical Fisher, their diagonals and ``param_jacobian`` of a convolutional
chain from per-sample rows built on unfolded patches (:mod:`.conv`).

- GGN: the Gram matrix ``Σ_n Σ_k r_nk r_nkᵀ`` of the rows ``r_n = L_nᵀ J_n`` (``s·Λ_n = L_n L_nᵀ``,
  ``C`` rows per sample), ``N·C·P²`` flops for the lower triangle's panels;
- empirical Fisher: the Gram matrix of the rows ``√s·g_n`` (``N·P²``);
- exact Hessian, when every layer is piecewise linear in its input
  (:attr:`.conv.Structure.second_order_free`): the GGN plus the bilinear cross terms
  ``T_{m,<m}`` of each tap against the parameters before it (:func:`.conv.cross_function`) and their
  transposes. Otherwise the Hessian is left to the generic route (by columns).
- diagonals: the sums of the rows' squares (the Hessian's is the GGN's: ``T`` has no
  diagonal blocks);
- ``param_jacobian``: the rows with ``L = I``.

The Gram matrices are built panel by panel into the result (or the caller's ``out``) by
:func:`.dense_matrix.gram`, its panels within :func:`.dense_matrix._budget` and its chunks of
samples within :func:`_sample_budget`; the cross terms one tap at a time, in chunks of
samples within the same (:func:`working_bytes`).
"""

from __future__ import annotations

import numpy as np

from ..._memory import CHUNK_BYTES, chunk_size
from ..._problem import Problem
from . import conv, curvature, diagonal as generic_diagonal
from .chunked import sum_over_samples
from .dense_matrix import _budget, gram, slices
from .kinds import Kind
from .precision import to_numpy

#: The rows each kind's matrix is the Gram matrix of (the Hessian's GGN part).
ROWS = {"hessian": "ggn", "ggn": "ggn", "ef": "ef"}


#: Rows per sample of each kind of rows, for C outputs.
_ROW_COUNT = {"ggn": lambda C: C, "ef": lambda C: 1}


def _rows_per_sample(kind_name: str, C: int) -> int:
    return _ROW_COUNT[ROWS[kind_name]](C)


def covers(st: conv.Structure, kind: Kind) -> bool:
    """Whether this route computes ``kind`` for ``st``: the Hessian only without second-order terms."""
    return st.second_order_free or not kind.second_term


def _sample_budget(P: int, itemsize: int) -> int:
    """Working memory of one chunk of samples' rows: the panels' budget, at least :data:`CHUNK_BYTES`
    (fewer, larger chunks: each chunk after the first adds into every panel of the result)."""
    return max(_budget(P, itemsize), CHUNK_BYTES)


def working_bytes(st: conv.Structure, P: int, itemsize: int) -> int:
    """Memory :func:`matrix` uses beside its ``(P, P)`` result: a chunk's rows, the panels' GEMM
    outputs, and the largest cross-term block ``T_{m,<m}`` with its running sum."""
    cross = max(t.offset * t.weights for t in st.taps)
    return _sample_budget(P, itemsize) + _budget(P, itemsize) + 2 * cross * itemsize


def matrix(st: conv.Structure, problem: Problem, kind: Kind, out: np.ndarray | None = None) -> np.ndarray:
    """The curvature ``kind`` ``(P, P)``, written into ``out`` when given."""
    if not covers(st, kind):
        return curvature.generic(problem, kind, out)
    theta, X, Y, s = problem.params, problem.X, problem.Y, problem.scale
    P, N, itemsize = theta.shape[0], X.shape[0], theta.dtype.itemsize
    budget, samples = _budget(P, itemsize), _sample_budget(P, itemsize)
    H = np.empty((P, P), dtype=theta.dtype) if out is None else out
    fn = conv.chunk_function(st, problem.loss, ROWS[kind.name], "rows")
    per_sample = conv.rows_bytes_per_sample(st, _rows_per_sample(kind.name, Y.shape[1]), itemsize)
    gram(fn, theta, X, Y, s, slices(N, chunk_size(per_sample, N, samples)), budget, H, kind.name)
    if kind.second_term:
        _add_cross_terms(st, problem, H, samples)
    return H


def _add_cross_terms(st: conv.Structure, problem: Problem, H: np.ndarray, budget: int) -> None:
    """``H[W_m, <m] += T_{m,<m}ᵀ`` and its mirror, for every tap after the first."""
    itemsize = problem.dtype.itemsize
    for m, tap in enumerate(st.taps):
        if tap.offset == 0:
            continue
        fn = conv.cross_function(st, problem.loss, m)
        per_sample = conv.cross_bytes_per_sample(st, m, itemsize)
        T = sum_over_samples(problem, fn, per_sample, f"hessian cross terms ({tap.name})", budget, on_host=True)
        rows = slice(tap.offset, tap.offset + T.shape[1])
        H[rows, : tap.offset] += T.T
        H[: tap.offset, rows] += T


def diagonal(st: conv.Structure, problem: Problem, kind: Kind) -> np.ndarray:
    """``(P,)``: the sums over samples of the rows' squares."""
    if not covers(st, kind):
        return generic_diagonal.generic(problem, kind)
    fn = conv.chunk_function(st, problem.loss, ROWS[kind.name], "diagonal")
    rows = _rows_per_sample(kind.name, problem.Y.shape[1])
    per_sample = conv.rows_bytes_per_sample(st, rows, problem.dtype.itemsize)
    return to_numpy(sum_over_samples(problem, fn, per_sample, f"{kind.name} diagonal"))
