"""Exact Hessian, GGN and empirical Fisher of a Dense chain, each block a GEMM over samples.

With the per-sample factors of :mod:`.dense` (what each kind takes from them: :mod:`.kinds`), the block of layers m ≥ l, rows
``(j, p)`` of ``[vec(W_m); b_m]`` and columns ``(i, q)`` of ``[vec(W_l); b_l]``, is

    Σ_n ā_m[j] ā_l[i] · K_ml[p, q]                          (GGN, exact Hessian)
  + Σ_n T̄_ml[j, q] · δ_m[p] ā_l[i]                          (exact Hessian, m > l)

and the empirical Fisher is ``Σ_n g_n g_nᵀ`` with ``g_n = [ā_l ⊗ δ_l]_l`` (row panels of
GEMMs on the rows g_n). Each term is one GEMM over the samples of two small per-sample
arrays (``(j, i) × (p, q)``, then a transpose into place), so the cost is about ``N·P²``
flops for any of the three whatever the number of outputs C, and the factors cost only
``~N·(Σ_l o_l)²`` (the Hessian's ``K_ll``) or ``~N·C·Σ_l o_l`` (the GGN's ``B_l``, with
each block's ``K_ml = B_mᵀ Λ B_l`` formed when the block is filled).

Only the lower triangle is computed — diagonal blocks by panels of ``j`` whose columns stop
at the panel's end — straight into one preallocated P×P array (or the caller's ``out``, e.g.
a ``numpy.memmap`` larger than memory); each panel is mirrored onto the upper triangle as
soon as it is complete. Working memory beside the result is bounded by :func:`_budget`
(:func:`working_bytes`): the samples are taken in chunks and each block in panels of rows,
with a progress bar when there are many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np

from ..._memory import chunk_size
from ..._progress import chunks
from .dense import Structure, bytes_per_sample, factors


def _budget(P: int, itemsize: int) -> int:
    """Working memory beside a P×P result: a quarter of it, at least 16 MiB and at most 1 GiB.

    Scaling with the result (rather than a fixed CHUNK_BYTES) keeps the peak near 1.25×
    the result while letting large problems take all samples in one chunk, so that each
    block is written once instead of accumulated chunk by chunk.
    """
    return int(min(2**30, max(16 * 2**20, P * P * itemsize // 4)))


def _shapes(theta, X, Y) -> tuple[str, int, int]:
    return theta.dtype.name, X.shape[1], Y.shape[1]


def _numpy(tree):
    return jax.tree.map(np.asarray, tree)


@dataclass(frozen=True)
class _Panel:
    """Rows ``j0:j1`` (inputs of layer m, ``(j, p)`` rows of θ) of the block (m, l)."""

    m: int
    l: int
    j0: int
    j1: int


def _panels(st: Structure, itemsize: int, budget: int) -> list[_Panel]:
    """The lower triangle of blocks, each in row panels whose GEMM output fits ``budget``."""
    out = []
    for m, seg_m in enumerate(st.segments):
        for l in range(m + 1):
            seg_l = st.segments[l]
            per_row = seg_l.rows * seg_m.outputs * seg_l.outputs * itemsize
            step = chunk_size(per_row, seg_m.rows, budget)
            out += [_Panel(m, l, j0, min(j0 + step, seg_m.rows)) for j0 in range(0, seg_m.rows, step)]
    return out


class _Scratch:
    """Work arrays reused from panel to panel, grown as needed: allocating (and faulting in)
    fresh memory for each panel's temporaries cost as much as the copies into H."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.buffers: dict[str, np.ndarray] = {}

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape``, sharing memory with earlier takes of ``name``."""
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self.buffers[name] = np.empty(size, self.dtype)
        return buffer[:size].reshape(shape)


def _put(H, rows: slice, cols: slice, term, accumulate: bool, scratch: _Scratch) -> None:
    """Write (or add) ``term`` ``(j, p, i, q)`` into ``H[rows, cols]``, in place.

    Adds go through a contiguous staging copy: adding the transposed view directly was ~30 %
    slower."""
    if accumulate:
        staged = scratch.take("staged", term.shape)
        np.copyto(staged, term)
        H[rows, cols] += staged.reshape(rows.stop - rows.start, -1)
    else:
        np.copyto(H[rows, cols].reshape(term.shape), term)  # splits the axes of a view: no copy


#: A block whose ``o_m·o_l`` is below this is formed one output pair ``(p, q)`` at a time,
#: ``(ā_m K[:, p, q])ᵀ ā_l``: ``o_m·o_l`` GEMMs of ``(j × n) · (n × i)`` with no ``n × j × i``
#: scratch. Wider blocks take one GEMM ``(n × j·i)ᵀ (n × p·q)``, whose scratch ``ā_m ⊗ ā_l``
#: is bounded by taking the chunk's samples in sub-chunks.
PAIRWISE_BELOW = 32


def _sample_bytes(panel: _Panel, st: Structure, cols: int, second: bool, adjacent: bool, itemsize: int) -> int:
    """Scratch per sample of :func:`_fill_panel`'s sub-chunks: ``ā_m ⊗ ā_l`` (or one column
    of it, pairwise) and, for the Hessian's second term, its per-sample operands."""
    rows, om, ol = panel.j1 - panel.j0, st.segments[panel.m].outputs, st.segments[panel.l].outputs
    floats = rows if om * ol < PAIRWISE_BELOW else rows * cols
    if second:
        floats += rows * om if adjacent else rows * ol + om * cols
    return itemsize * floats


def _fill_panel(H, st: Structure, panel: _Panel, F, K_ml, T_ml, accumulate: bool, scratch: _Scratch, budget: int) -> None:
    """``panel``'s part of the lower triangle of H from one chunk's factors.

    ``F`` holds the chunk's per-layer factors, ``K_ml`` ``(N, o_m, o_l)`` the block's, and
    ``T_ml`` the Hessian's ``T̄_ml`` for non-adjacent layers (None otherwise). The chunk's
    samples are taken in sub-chunks whose scratch fits ``budget`` bytes; beside it the panel
    holds three arrays of its own size (the term, a GEMM's product, the staged add).
    """
    m, l, j0, j1 = panel.m, panel.l, panel.j0, panel.j1
    seg_m, seg_l = st.segments[m], st.segments[l]
    om, ol = seg_m.outputs, seg_l.outputs
    cols = j1 if m == l else seg_l.rows  # diagonal blocks: columns i < j1 only
    am, al = F["abar"][m][:, j0:j1], F["abar"][l][:, :cols]
    N, rows = am.shape
    second = "delta" in F and m > l  # the Hessian's Σ_n T̄_ml[j, q] δ_m[p] ā_l[i]
    step = chunk_size(_sample_bytes(panel, st, cols, second, T_ml is None, am.dtype.itemsize), N, budget)
    term = scratch.take("term", (rows, cols, om, ol))  # (j, i, p, q)
    for k, s0 in enumerate(range(0, N, step)):
        n = slice(s0, min(s0 + step, N))
        _gauss_newton_part(term, am[n], al[n], K_ml[n], k > 0, scratch)
    term = term.transpose(0, 2, 1, 3)  # (j, p, i, q)
    if second:
        for s0 in range(0, N, step):
            n = slice(s0, min(s0 + step, N))
            _second_part(term, st, panel, F, T_ml, n, scratch)
    rows_of_theta = slice(seg_m.offset + j0 * om, seg_m.offset + j1 * om)
    _put(H, rows_of_theta, slice(seg_l.offset, seg_l.offset + cols * ol), term, accumulate, scratch)


def _gauss_newton_part(term, am, al, K, add: bool, scratch: _Scratch) -> None:
    """``term[j, i, p, q]`` (+)= ``Σ_n ā_m[n, j] ā_l[n, i] K[n, p, q]`` over the samples given."""
    n, rows = am.shape
    cols, (om, ol) = al.shape[1], K.shape[1:]
    if om * ol < PAIRWISE_BELOW:
        scaled = scratch.take("scaled", (n, rows))
        product = scratch.take("product", (rows, cols))
        for p in range(om):
            for q in range(ol):
                np.multiply(am, K[:, p, q, None], out=scaled)
                np.matmul(scaled.T, al, out=product)
                if add:
                    term[:, :, p, q] += product
                else:
                    term[:, :, p, q] = product
        return
    left = scratch.take("left", (n, rows, cols))
    np.multiply(am[:, :, None], al[:, None, :], out=left)
    flat = term.reshape(rows * cols, om * ol)
    if add:
        product = scratch.take("product", flat.shape)
        np.matmul(left.reshape(n, -1).T, K.reshape(n, -1), out=product)
        flat += product
    else:
        np.matmul(left.reshape(n, -1).T, K.reshape(n, -1), out=flat)


def _second_part(term, st: Structure, panel: _Panel, F, T_ml, n: slice, scratch: _Scratch) -> None:
    """Add the Hessian's ``Σ_n T̄_ml[n, j, q] δ_m[n, p] ā_l[n, i]`` over the samples ``n`` to
    ``term`` ``(j, p, i, q)`` (m > l)."""
    m, l, j0, j1 = panel.m, panel.l, panel.j0, panel.j1
    delta, al = F["delta"][m][n], F["abar"][l][n]
    N, om, cols = delta.shape[0], delta.shape[1], al.shape[1]
    if T_ml is None:  # adjacent layers: T̄[j, q] = φ_l'[j] if q == j (j < n_m: no bias row)
        jd = min(j1, st.segments[m].layer.in_features)
        if jd <= j0:
            return
        scaled = scratch.take("scaled", (N, jd - j0, om))
        np.multiply(F["d1"][l][n, j0:jd, None], delta[:, None, :], out=scaled)
        diag = scratch.take("product", ((jd - j0) * om, cols))
        np.matmul(scaled.reshape(N, -1).T, al, out=diag)
        diag = diag.reshape(jd - j0, om, cols)
        for j in range(j0, jd):
            term[j - j0, :, :, j] += diag[j - j0]
        return
    ol = T_ml.shape[2]
    right = scratch.take("right", (N, om, cols))
    np.multiply(delta[:, :, None], al[:, None, :], out=right)
    twisted = scratch.take("product", ((j1 - j0) * ol, om * cols))
    np.matmul(T_ml[n, j0:j1, :].reshape(N, -1).T, right.reshape(N, -1), out=twisted)
    term += twisted.reshape(j1 - j0, ol, om, cols).transpose(0, 2, 3, 1)


def _strictly_lower(st: Structure, panel: _Panel) -> tuple[slice, slice]:
    """The rows of θ that ``panel`` fills and its columns strictly left of its diagonal
    (a diagonal block's panel also fills the square on the diagonal, both triangles)."""
    seg_m, seg_l = st.segments[panel.m], st.segments[panel.l]
    rows = slice(seg_m.offset + panel.j0 * seg_m.outputs, seg_m.offset + panel.j1 * seg_m.outputs)
    end = rows.start if panel.m == panel.l else seg_l.offset + seg_l.size
    return rows, slice(seg_l.offset, end)


def gram(fn, theta, X, Y, s, sample_chunks: list[slice], budget: int, H: np.ndarray, label: str = "ef") -> np.ndarray:
    """``Σ_n g_n g_nᵀ`` from the rows ``√s·g_n``: the lower triangle by row panels, one GEMM each.

    Not SYRK: OpenBLAS 0.3.31's (in NumPy's and SciPy's wheels) writes out of bounds at
    P ≈ 19k here. Panels cost ``N·P²·(1 + 1/panels)`` flops (:func:`gram_panels`).
    """
    P = theta.shape[0]
    panels = row_panels(0, P, gram_step(P, theta.dtype.itemsize, budget))
    return gram_panels(lambda *args: (fn(*args), ()), panels, theta, X, Y, s, sample_chunks, H, label)


def gram_step(P: int, itemsize: int, budget: int) -> int:
    """Rows per panel of a Gram matrix whose panels' products take a quarter of ``budget``."""
    return min(EF_PANEL_ROWS, chunk_size(P * itemsize, P, budget // 4))


@dataclass(frozen=True)
class RowsPanel:
    """Rows of a Gram matrix ``Σ GᵀG``, left of the diagonal and the square on it, from the rows ``G``."""

    rows: slice

    def fill(self, H: np.ndarray, G: np.ndarray, factors, accumulate: bool) -> None:
        rows = self.rows
        if accumulate:
            H[rows, : rows.stop] += G[:, rows].T @ G[:, : rows.stop]
        else:
            np.matmul(G[:, rows].T, G[:, : rows.stop], out=H[rows, : rows.stop])


def row_panels(start: int, stop: int, step: int) -> list[RowsPanel]:
    return [RowsPanel(slice(r, min(r + step, stop))) for r in range(start, stop, step)]


def gram_panels(fn, panels, theta, X, Y, s, sample_chunks: list[slice], H: np.ndarray, label: str) -> np.ndarray:
    """The lower triangle of a Gram matrix ``Σ GᵀG`` over chunks of samples, panel by panel.

    ``fn(θ, X, Y, s)`` gives a chunk's rows ``G`` and the factors the panels may use beside them;
    each panel (``rows``, ``fill(H, G, factors, accumulate)``) writes ``H[rows, :rows.stop]``.
    The first chunk of samples is written straight into H, later ones are added; each panel
    is mirrored onto the upper triangle as soon as it is complete.
    """
    work = [(c, panel) for c in range(len(sample_chunks)) for panel in panels]
    current, G, factors, last = None, None, None, len(sample_chunks) - 1
    for task in chunks(len(work), 1, label):
        c, panel = work[task.start]
        if c != current:
            current, G, factors = c, None, None
            sl = sample_chunks[c]
            G, factors = _numpy(fn(theta, X[sl], Y[sl], s))
        panel.fill(H, G, factors, accumulate=c > 0)
        if c == last:
            mirror_panel(H, panel.rows, slice(0, panel.rows.start), square=True)
    return H


#: Rows per panel of the empirical Fisher's Gram matrix: wide enough for GEMMs near the
#: machine's rate, narrow enough that the squares on the diagonal (computed whole) add few flops.
EF_PANEL_ROWS = 512


def mirror_panel(H: np.ndarray, rows: slice, cols: slice, square: bool, tile: int = 256) -> None:
    """Copy ``H[rows, cols]`` (left of the diagonal) transposed onto ``H[cols, rows]``, ``tile``
    columns at a time while the just-written panel is still in cache; with ``square`` also
    the lower triangle of ``H[rows, rows]`` onto its upper one (its GEMM rounds the two
    triangles differently, and H must be exactly symmetric)."""
    for c0 in range(cols.start, cols.stop, tile):
        c1 = min(cols.stop, c0 + tile)
        H[c0:c1, rows] = H[rows, c0:c1].T
    if square:
        for r0 in range(rows.start, rows.stop, 64):
            r1 = min(rows.stop, r0 + 64)
            H[rows.start : r0, r0:r1] = H[r0:r1, rows.start : r0].T
            diagonal = H[r0:r1, r0:r1]
            upper = np.triu_indices(r1 - r0, 1)
            diagonal[upper] = diagonal.T[upper]


def working_bytes(P: int, itemsize: int) -> int:
    """Memory :func:`matrix` uses beside its ``(P, P)`` result, at most: :func:`_budget` for the
    arrays it holds (see :func:`matrix`) and as much again for XLA's temporaries while a
    chunk's factors are computed."""
    return 2 * _budget(P, itemsize)


def matrix(st: Structure, loss: str, kind, theta, X, Y, s: float, out: np.ndarray | None = None) -> np.ndarray:
    """The curvature ``kind`` (:mod:`.kinds`) of a Dense chain, ``(P, P)``.

    ``theta`` ``(P,)``, ``X`` ``(N, d)``, ``Y`` ``(N, C)`` NumPy arrays of one float dtype (the
    caller scopes JAX's precision to it); ``s`` is the aggregation factor. ``out``: a
    C-contiguous writable ``(P, P)`` array of that dtype (a ``numpy.memmap`` included) that the
    panels are written into, one at a time, instead of a new array; it is returned.

    Beside the result, within :func:`_budget` ``B``: a chunk's factors (with one block's
    ``K_ml`` and ``T̄_ml``) take at most ``B/2``; each panel's three arrays of its size
    ``3·B/8``; the sub-chunks' scratch ``B/8`` (:func:`working_bytes` adds XLA's temporaries).
    Each chunk of samples after the first adds every panel into H once more, so the chunks
    take all the budget the panels leave.
    """
    P, N = theta.shape[0], X.shape[0]
    itemsize = theta.dtype.itemsize
    budget = _budget(P, itemsize)
    H = np.empty((P, P), dtype=theta.dtype) if out is None else out
    fn = factors(st, loss, kind, "matrix")
    per_sample = bytes_per_sample(st, loss, kind, "matrix", *_shapes(theta, X, Y))
    if kind.gram:
        n = chunk_size(per_sample, N, budget // 2)
        return gram(fn, theta, X, Y, s, slices(N, n), budget, H)
    # and one block's K_ml (and the Hessian's T̄_ml) at a time
    per_sample += max(a.outputs * b.outputs for a in st.segments for b in st.segments) * itemsize
    if kind.second_term:
        per_sample += max(a.rows * b.outputs for a in st.segments for b in st.segments) * itemsize
    n = chunk_size(per_sample, N, budget // 2)
    return _blocks(st, kind, fn, theta, X, Y, s, slices(N, n), budget, H)


def slices(N: int, n: int) -> list[slice]:
    return [slice(a, min(a + n, N)) for a in range(0, N, n)]


def _blocks(st: Structure, kind, fn, theta, X, Y, s, sample_chunks: list[slice], budget: int, H: np.ndarray) -> np.ndarray:
    """The lower triangle of ``H`` block by block, each in row panels, from each chunk's factors;
    each panel mirrored onto the upper triangle once the last chunk has been added."""
    work = [(c, p) for c in range(len(sample_chunks)) for p in _panels(st, theta.dtype.itemsize, budget // 8)]
    key, F, K_ml, T_ml = None, None, None, None
    scratch, last = _Scratch(theta.dtype), len(sample_chunks) - 1
    for task in chunks(len(work), 1, kind.name):
        c, panel = work[task.start]
        if key is None or key[0] != c:
            sl = sample_chunks[c]
            F = K_ml = T_ml = None  # the last chunk's factors go before this chunk's are made
            F = _numpy(fn(theta, X[sl], Y[sl], s))
        if key != (c, panel.m, panel.l):
            K_ml = T_ml = None
            K_ml, T_ml = _numpy(kind.block(st, panel.m, panel.l, theta, F))
        key = (c, panel.m, panel.l)
        _fill_panel(H, st, panel, F, K_ml, T_ml, accumulate=c > 0, scratch=scratch, budget=budget // 8)
        if c == last:
            mirror_panel(H, *_strictly_lower(st, panel), square=panel.m == panel.l)
    return H
