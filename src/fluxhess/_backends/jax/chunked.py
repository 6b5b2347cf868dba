"""The routes' two loops: a sum over chunks of samples, and a fill over chunks of parameters;
each chunk's working set within a budget (:data:`fluxhess._memory.CHUNK_BYTES` by default),
with a progress bar when there are many chunks."""

from __future__ import annotations

import functools
import math
import operator

import jax
import numpy as np

from ..._memory import CHUNK_BYTES, chunk_size
from ...jax_function import JaxFunction
from ...model import Chain
from ..._problem import Problem
from ..._progress import chunks
from .precision import to_numpy


def sum_over_samples(problem: Problem, fn, bytes_per_sample: int, label: str, budget: int | None = None, on_host: bool = False):
    """``Σ`` over chunks of samples of ``fn(θ, X_chunk, Y_chunk, s)``, a sum over the chunk (an
    array or a tree of arrays) whose working set is ``bytes_per_sample`` per sample.

    ``on_host``: ``fn`` returns one array, summed into a writable NumPy array in place (two
    result-sized arrays at once, where adding JAX arrays holds three)."""
    N = problem.X.shape[0]
    total = None
    for sl in chunks(N, chunk_size(bytes_per_sample, N, CHUNK_BYTES if budget is None else budget), label):
        part = fn(problem.params, problem.X[sl], problem.Y[sl], problem.scale)
        if on_host:
            total = np.array(part) if total is None else np.add(total, to_numpy(part), out=total)
        else:
            total = part if total is None else jax.tree.map(operator.add, total, part)
        del part
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


def column_bytes(model, num_params: int, num_samples: int, itemsize: int) -> int:
    """Working memory of one curvature-vector product: the vector, the product, and the
    gradient's tangent and cotangent (P each), and for each sample the forward and backward
    passes' activations and their tangents (four numbers per entry of :func:`activation_floats`).

    Measured by benchmarks/memory_estimates.py (the "-generic" cases) and
    tests/test_memory_guard.py: counting P once and only the widest layer's activations
    underestimated a batch of Hessian columns 2.2 to 3 times."""
    return itemsize * (4 * num_params + 4 * num_samples * activation_floats(model))


@functools.singledispatch
def activation_floats(model) -> int:
    """Numbers per sample that a forward pass keeps (for memory estimates)."""
    raise TypeError(f"no activation estimate for a {type(model).__name__}")


@activation_floats.register
def _(model: Chain) -> int:
    """Each layer's input and twice its output (pre-activation and activation), flattened."""
    sizes = [math.prod(shape) for shape in model.shapes]
    return sum(a + 2 * b for a, b in zip(sizes, sizes[1:]))


@activation_floats.register
def _(model: JaxFunction) -> int:
    return model.activation_floats


@functools.singledispatch
def widest(model) -> int:
    """Floats per sample of the activations a forward pass holds at once (for memory estimates)."""
    raise TypeError(f"no width estimate for a {type(model).__name__}")


@widest.register
def _(model: Chain) -> int:
    """The largest sample between layers, flattened (a Dense chain's widest layer)."""
    return max(math.prod(shape) for shape in model.shapes)


@widest.register
def _(model: JaxFunction) -> int:
    return model.activation_floats
