"""Hessian, GGN, empirical Fisher, their diagonals and ``param_jacobian`` of a convolutional
chain from per-sample rows built on unfolded patches (:mod:`.conv`).

- GGN: the Gram matrix ``Σ_n Σ_k r_nk r_nkᵀ`` of the rows ``r_n = L_nᵀ J_n`` (``s·Λ_n = L_n L_nᵀ``,
  ``C`` rows per sample), ``N·C·P²`` flops for the lower triangle's panels;
- empirical Fisher: the Gram matrix of the rows ``√s·g_n`` (``N·P²``);
- exact Hessian, when every layer but the taps' own activations is piecewise linear in its
  input (:attr:`.conv.Structure.exact_hessian`): the GGN plus the bilinear cross terms
  ``T_{m,<m}`` of each tap against the parameters before it (:func:`.conv.cross_function`) and their
  transposes, plus the term of each curved tap activation (:func:`.conv.curvature_function`).
  Otherwise the Hessian is left to the generic route (by columns).
- diagonals: the sums of the rows' squares (``T`` has no diagonal blocks; the Hessian's adds
  the curved activations' diagonals);
- ``param_jacobian``: the rows with ``L = I``.

The Gram matrices are built panel by panel into the result (or the caller's ``out``) by
:func:`.dense_matrix.gram_panels`, its panels within :func:`.dense_matrix._budget` and its
chunks of samples within :func:`_sample_budget`; the cross terms one tap at a time, in chunks
of samples within the same (:func:`working_bytes`).

A Dense tap's rows are ``ā_n ⊗ D_{n,r}`` (one position), so with ``r`` rows per sample its
rows of the GGN are ``Σ_n ā_n ⊗ E_n`` with ``E_n = Σ_r D_{n,r} row_{n,r}``: ``(r + K̄)·O`` flops
per sample and column instead of the rows' ``r·K̄·O`` (:func:`factored_taps`,
:class:`FactoredPanel`); for a CNN's classifier head (K̄ = 129, C = r = 10) a tenth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..._memory import CHUNK_BYTES, chunk_size
from ..._problem import Problem
from ...layers import Conv
from . import conv, curvature, diagonal as generic_diagonal
from .chunked import sum_over_samples
from .dense_matrix import _budget, gram_panels, gram_step, row_panels, slices
from .kinds import Kind
from .precision import to_numpy

#: The rows each kind's matrix is the Gram matrix of (the Hessian's GGN part).
ROWS = {"hessian": "ggn", "ggn": "ggn", "ef": "ef"}


#: Rows per sample of each kind of rows, for C outputs.
_ROW_COUNT = {"ggn": lambda C: C, "ef": lambda C: 1}


def _rows_per_sample(kind_name: str, C: int) -> int:
    return _ROW_COUNT[ROWS[kind_name]](C)


def covers(st: conv.Structure, kind: Kind) -> bool:
    """Whether this route computes ``kind`` for ``st``: the Hessian only where its second-order
    terms are the taps' and their activations' (:attr:`.conv.Structure.exact_hessian`)."""
    return st.exact_hessian or not kind.second_term


def _sample_budget(P: int, itemsize: int) -> int:
    """Working memory of one chunk of samples' rows: the panels' budget, at least :data:`CHUNK_BYTES`
    (fewer, larger chunks: each chunk after the first adds into every panel of the result)."""
    return max(_budget(P, itemsize), CHUNK_BYTES)


def factored_taps(st: conv.Structure, rows: int) -> tuple[int, ...]:
    """The Dense taps whose rows of the Gram matrix come from factors (:class:`FactoredPanel`):
    those where that costs at most half the rows' GEMM, ``2·(r + K̄) ≤ r·K̄`` for ``r`` rows
    per sample (none for the empirical Fisher's one)."""
    return tuple(
        m for m, t in enumerate(st.taps)
        if not isinstance(t.layer, Conv) and 2 * (rows + _inputs(t)) <= rows * _inputs(t)
    )


def _inputs(tap: conv.Tap) -> int:
    """``K̄``: a Dense tap's inputs, and one more for its bias."""
    return tap.size // tap.outputs


@dataclass(frozen=True)
class FactoredPanel:
    """Rows ``k`` of ``ā`` of the ``factor``-th factored tap, i.e. rows ``(k, o)`` of θ (a Dense
    block is input-major), from that tap's ``(ā, E)``: ``H[rows, :rows.stop] = Σ_n ā[n, k] E[n]``."""

    rows: slice
    factor: int
    k: slice

    def fill(self, H: np.ndarray, G: np.ndarray, factors, accumulate: bool) -> None:
        abar, E = factors[self.factor]
        n, _, end = E.shape
        product = (abar[:, self.k].T @ E.reshape(n, -1)).reshape(-1, end)[:, : self.rows.stop]
        if accumulate:
            H[self.rows, : self.rows.stop] += product
        else:
            H[self.rows, : self.rows.stop] = product


def _panels(st: conv.Structure, factored: tuple[int, ...], P: int, itemsize: int, budget: int) -> list:
    """Row panels of θ: the factored taps' by rows of ``ā``, everything else by rows of the Gram
    matrix (:func:`.dense_matrix.row_panels`), each panel's product within a quarter of ``budget``."""
    step, panels, start = gram_step(P, itemsize, budget), [], 0
    for f, m in enumerate(factored):
        tap = st.taps[m]
        panels += row_panels(start, tap.offset, step)
        end, O = tap.offset + tap.size, tap.outputs
        k_step = chunk_size(O * end * itemsize, _inputs(tap), budget // 4)
        for k0 in range(0, _inputs(tap), k_step):
            k1 = min(k0 + k_step, _inputs(tap))
            panels.append(FactoredPanel(slice(tap.offset + k0 * O, tap.offset + k1 * O), f, slice(k0, k1)))
        start = end
    return panels + row_panels(start, P, step)


def _factors_bytes_per_sample(st: conv.Structure, factored: tuple[int, ...], itemsize: int) -> int:
    """Bytes per sample of the factored taps' ``ā`` and ``E`` (twice: XLA's product, then its copy)."""
    return 2 * itemsize * sum(_inputs(st.taps[m]) + st.taps[m].outputs * (st.taps[m].offset + st.taps[m].size) for m in factored)


def working_bytes(st: conv.Structure, P: int, itemsize: int) -> int:
    """Memory :func:`matrix` uses beside its ``(P, P)`` result: a chunk's rows, the panels' GEMM
    outputs, and the largest cross-term block ``T_{m,<m}`` with its running sum, or curved
    activation's block of θ_{≤m} with its running sum and its own block's scatter."""
    cross = max(t.offset * t.weights for t in st.taps)
    curved = max(((st.taps[m].offset + st.taps[m].size) ** 2 + st.taps[m].size ** 2 for m in st.curved), default=0)
    return _sample_budget(P, itemsize) + _budget(P, itemsize) + 2 * max(cross, curved) * itemsize


def matrix(st: conv.Structure, problem: Problem, kind: Kind, out: np.ndarray | None = None) -> np.ndarray:
    """The curvature ``kind`` ``(P, P)``, written into ``out`` when given."""
    if not covers(st, kind):
        return curvature.generic(problem, kind, out)
    theta, X, Y, s = problem.params, problem.X, problem.Y, problem.scale
    P, N, itemsize = theta.shape[0], X.shape[0], theta.dtype.itemsize
    budget, samples = _budget(P, itemsize), _sample_budget(P, itemsize)
    H = np.empty((P, P), dtype=theta.dtype) if out is None else out
    rows = _rows_per_sample(kind.name, Y.shape[1])
    per_sample = conv.rows_bytes_per_sample(st, rows, itemsize)
    factored = factored_taps(st, rows) if ROWS[kind.name] == "ggn" else ()
    if factored:
        fn = conv.factored_rows_function(st, problem.loss, factored)
        per_sample += _factors_bytes_per_sample(st, factored, itemsize)
    else:
        rows_of = conv.chunk_function(st, problem.loss, ROWS[kind.name], "rows")
        fn = lambda *args: (rows_of(*args), ())  # noqa: E731
    sample_chunks = slices(N, chunk_size(per_sample, N, samples))
    gram_panels(fn, _panels(st, factored, P, itemsize, budget), theta, X, Y, s, sample_chunks, H, kind.name)
    if kind.second_term:
        _add_cross_terms(st, problem, H, samples)
        _add_curvature_terms(st, problem, H, samples)
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


def _add_curvature_terms(st: conv.Structure, problem: Problem, H: np.ndarray, budget: int | None = None) -> None:
    """``H[:end, :end] += `` each curved tap activation's term (``H`` a matrix; a vector takes its
    diagonal), ``end`` the tap's last parameter."""
    part = "matrix" if H.ndim == 2 else "diagonal"
    for m in st.curved:
        tap = st.taps[m]
        fn = conv.curvature_function(st, problem.loss, m, part)
        per_sample = conv.curvature_bytes_per_sample(st, m, problem.dtype.itemsize)
        term = sum_over_samples(problem, fn, per_sample, f"hessian curvature ({tap.name})", budget, on_host=True)
        end = tap.offset + tap.size
        H[(slice(0, end),) * H.ndim] += term


def diagonal(st: conv.Structure, problem: Problem, kind: Kind) -> np.ndarray:
    """``(P,)``: the sums over samples of the rows' squares (the Hessian's with its curved
    activations' diagonals added)."""
    if not covers(st, kind):
        return generic_diagonal.generic(problem, kind)
    fn = conv.chunk_function(st, problem.loss, ROWS[kind.name], "diagonal")
    rows = _rows_per_sample(kind.name, problem.Y.shape[1])
    per_sample = conv.rows_bytes_per_sample(st, rows, problem.dtype.itemsize)
    d = np.array(to_numpy(sum_over_samples(problem, fn, per_sample, f"{kind.name} diagonal")))
    if kind.second_term:
        _add_curvature_terms(st, problem, d)
    return d
