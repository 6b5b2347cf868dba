"""The routes' two loops: a sum over chunks of samples, and a fill over chunks of parameters;
each chunk's working set within a budget (:data:`fluxhess._memory.CHUNK_BYTES` by default),
with a progress bar when there are many chunks."""

from __future__ import annotations

import math
import operator

import jax
import numpy as np

from ..._memory import CHUNK_BYTES, chunk_size
from ...model import Chain
from ..._problem import Problem
from ..._progress import chunks
from .precision import to_numpy


def sum_over_samples(problem: Problem, fn, bytes_per_sample: int, label: str, budget: int | None = None):
    """``Σ`` over chunks of samples of ``fn(θ, X_chunk, Y_chunk, s)``, a sum over the chunk (an
    array or a tree of arrays) whose working set is ``bytes_per_sample`` per sample."""
    N = problem.X.shape[0]
    total = None
    for sl in chunks(N, chunk_size(bytes_per_sample, N, CHUNK_BYTES if budget is None else budget), label):
        part = fn(problem.params, problem.X[sl], problem.Y[sl], problem.scale)
        total = part if total is None else jax.tree.map(operator.add, total, part)
    return total


def row_bytes(problem: Problem, rows_per_sample: int) -> int:
    """Working set per sample of a route that holds ``rows_per_sample`` rows of P numbers (and
    their cotangents) for each sample: per-sample gradients, Jacobians."""
    return 3 * problem.dtype.itemsize * rows_per_sample * problem.params.shape[0]


def over_parameters(problem: Problem, fn, out: np.ndarray, label: str) -> np.ndarray:
    """``out[idx] = fn(θ, X, Y, s, idx)`` for chunks ``idx`` of the P parameters, each a batch of
    curvature-vector products over all samples (:func:`column_bytes` each)."""
    P = problem.params.shape[0]
    k = chunk_size(column_bytes(problem.model, P, problem.X.shape[0], problem.dtype.itemsize), P)
    for sl in chunks(P, k, label):
        out[sl] = to_numpy(fn(problem.params, problem.X, problem.Y, problem.scale, np.arange(sl.start, sl.stop)))
    return out


def column_bytes(model: Chain, num_params: int, num_samples: int, itemsize: int) -> int:
    """Working memory of one curvature-vector product: the vector, its tangent and cotangent
    (P each) and the N × width activations of the forward and backward passes."""
    return itemsize * (num_params + 4 * num_samples * widest(model))


def widest(model: Chain) -> int:
    """The largest sample between layers, flattened (a Dense chain's widest layer)."""
    return max(math.prod(shape) for shape in model.shapes)
