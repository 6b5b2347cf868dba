"""The diagonal of the Hessian, GGN or empirical Fisher, ``(P,)``, without the matrix.

- :func:`structured`, for a Dense chain: per layer ``s·Σ_n ā_n² ⊗ diag K_ll,n`` from the
  kind's own per-layer factors (:mod:`.kinds`, :mod:`.dense`);
- :func:`generic`, for any Chain: the GGN's and EF's per-sample diagonals summed over
  chunks of samples; the Hessian's from chunks of its columns.
"""

from __future__ import annotations

import numpy as np

from ..._problem import Problem
from .chunked import over_parameters, row_bytes, sum_over_samples
from .compiled import compiled
from .dense import Structure, factor_bytes, factors
from .kinds import Kind
from .precision import to_numpy


def structured(st: Structure, problem: Problem, kind: Kind) -> np.ndarray:
    fn = factors(st, problem.loss, kind, "diagonal")
    per_layer = sum_over_samples(problem, fn, factor_bytes(st, problem, kind, "diagonal"), f"{kind.name} diagonal")
    return np.concatenate([np.asarray(t) for t in per_layer])


def generic(problem: Problem, kind: Kind) -> np.ndarray:
    model, loss = problem.model, problem.loss
    if kind.per_sample_terms:
        fn = compiled(model, loss, "sample_diagonal", kind)
        return to_numpy(sum_over_samples(problem, fn, row_bytes(problem, kind.rows(model.out_features)), f"{kind.name} diagonal"))
    out = np.empty(problem.params.shape[0], dtype=problem.dtype)
    return over_parameters(problem, compiled(model, loss, "column_diagonal", kind), out, f"{kind.name} diagonal")
