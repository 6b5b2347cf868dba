"""The diagonal of the Hessian, GGN or empirical Fisher, ``(P,)``, without the matrix.

- :func:`structured`, for a Dense chain: per layer ``s·Σ_n ā_n² ⊗ diag K_ll,n`` from the
  kind's own per-layer factors (:mod:`.kinds`, :mod:`.dense`);
- :func:`generic`, for any Chain: the GGN's and EF's per-sample diagonals summed over
  chunks of samples; the Hessian's from chunks of its columns.
"""

from __future__ import annotations

import numpy as np

from ...problem import Problem
from .chunked import over_parameters, sum_over_samples
from .compiled import compiled
from .dense import Structure, factors, sample_chunks
from .kinds import Kind
from .precision import to_numpy


def structured(st: Structure, problem: Problem, kind: Kind) -> np.ndarray:
    fn = factors(st, problem.loss, kind, "diagonal")
    total = None
    for sl in sample_chunks(st, problem, kind, "diagonal"):
        part = fn(problem.params, problem.X[sl], problem.Y[sl], problem.scale)
        total = part if total is None else [a + b for a, b in zip(total, part)]
    return np.concatenate([np.asarray(t) for t in total])


def generic(problem: Problem, kind: Kind) -> np.ndarray:
    model, loss = problem.model, problem.loss
    if kind.per_sample_terms:
        fn = compiled(model, loss, "sample_diagonal", kind)
        return to_numpy(sum_over_samples(problem, fn, kind.rows(model.out_features), f"{kind.name} diagonal"))
    out = np.empty(problem.params.shape[0], dtype=problem.dtype)
    return over_parameters(problem, compiled(model, loss, "column_diagonal", kind), out, f"{kind.name} diagonal")
