"""KFAC: ``(A, G)`` per Dense layer, ``A = Σ_n ā ā ᵀ / N`` and ``G = s·Σ_n`` the kind's per-sample
curvature in the layer's pre-activation (``δ δᵀ`` for the EF, ``Bᵀ Λ B`` for the GGN).

- :func:`structured`, for a Dense chain: from the kind's own per-layer factors (:mod:`.kinds`);
- :func:`generic`, for any Chain: by derivatives in a zero added to each pre-activation.
"""

from __future__ import annotations

import numpy as np

from ...memory import chunk_size
from ...problem import Problem
from ...progress import chunks
from .compiled import compiled
from .dense import Structure, factors, sample_chunks
from .kinds import Kind
from .precision import to_numpy


def structured(st: Structure, problem: Problem, kind: Kind) -> list[tuple[np.ndarray, np.ndarray]]:
    fn = factors(st, problem.loss, kind, "kron")
    A, G = None, None
    for sl in sample_chunks(st, problem, kind, "kron"):
        a, g = fn(problem.params, problem.X[sl], problem.Y[sl], problem.scale)
        A = a if A is None else [x + y for x, y in zip(A, a)]
        G = g if G is None else [x + y for x, y in zip(G, g)]
    N = problem.X.shape[0]
    return [(np.asarray(a) / N, np.asarray(g)) for a, g in zip(A, G)]


def generic(problem: Problem, kind: Kind) -> list[tuple[np.ndarray, np.ndarray]]:
    model, N = problem.model, problem.X.shape[0]
    per_sample = problem.dtype.itemsize * sum((l.in_features + 1) ** 2 + l.out_features**2 for _, l in model.dense_layers)
    fn = compiled(model, problem.loss, "kron", kind)
    A_sum, G_sum = None, None
    for sl in chunks(N, chunk_size(per_sample, N), "kron"):
        A, G = fn(problem.params, problem.X[sl], problem.Y[sl], problem.scale)
        weight = (sl.stop - sl.start) / N  # A is a mean over the chunk
        A = [a * weight for a in A]
        A_sum = A if A_sum is None else [x + y for x, y in zip(A_sum, A)]
        G_sum = G if G_sum is None else [x + y for x, y in zip(G_sum, G)]
    return [(to_numpy(a), to_numpy(g)) for a, g in zip(A_sum, G_sum)]
