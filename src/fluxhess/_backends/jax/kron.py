"""KFAC: ``(A, G)`` per Dense layer, ``A = Σ_n ā ā ᵀ / N`` and ``G = s·Σ_n`` the kind's per-sample
curvature in the layer's pre-activation (``δ δᵀ`` for the EF, ``Bᵀ Λ B`` for the GGN).

- :func:`structured`, for a Dense chain: from the kind's own per-layer factors (:mod:`.kinds`);
- :func:`generic`, for any Chain: by derivatives in a zero added to each pre-activation.
"""

from __future__ import annotations

import numpy as np

from ..._problem import Problem
from .chunked import sum_over_samples
from .compiled import compiled
from .dense import Structure, factor_bytes, factors
from .kinds import Kind
from .precision import to_numpy


def structured(st: Structure, problem: Problem, kind: Kind) -> list[tuple[np.ndarray, np.ndarray]]:
    fn = factors(st, problem.loss, kind, "kron")
    return _pairs(problem, sum_over_samples(problem, fn, factor_bytes(st, problem, kind, "kron"), "kron"))


def generic(problem: Problem, kind: Kind) -> list[tuple[np.ndarray, np.ndarray]]:
    model = problem.model
    per_sample = problem.dtype.itemsize * sum((l.in_features + 1) ** 2 + l.out_features**2 for _, l in model.dense_layers)
    fn = compiled(model, problem.loss, "kron", kind)
    return _pairs(problem, sum_over_samples(problem, fn, per_sample, "kron"))


def _pairs(problem: Problem, sums) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(A, G)`` per layer from the sums ``([Σ_n ā ā ᵀ], [s·Σ_n G_n])``: ``A`` is their mean."""
    A, G = sums
    N = problem.X.shape[0]
    return [(to_numpy(a) / N, to_numpy(g)) for a, g in zip(A, G)]
