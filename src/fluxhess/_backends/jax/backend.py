"""The JAX backend: every quantity of the public API (:mod:`fluxhess.api`), jit-compiled, chunked, float64 on request.

Each method takes the call's :class:`fluxhess._problem.Problem` and picks a route: for
the curvatures, the structured Dense-chain route of its quantity's module wherever
:func:`.dense.split` covers the model, else the convolutional route (:mod:`.conv_matrix`,
:mod:`.conv_kron`; also ``param_jacobian``) wherever :func:`.conv.split` does, and the
generic route otherwise (:mod:`.curvature`, :mod:`.diagonal`, :mod:`.kron`); each route
computes every curvature kind (:mod:`.kinds`). Per-sample functions are written once and batched with
``vmap``; results whose working memory grows with the batch or with P are built in chunks
(:data:`fluxhess._memory.CHUNK_BYTES` at a time) with a progress bar when there are many.
Every call runs inside :func:`.precision.precision`: float64 when θ is, full-precision
matrix products, never by changing the user's global JAX configuration.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from ..._memory import chunk_size
from ...jax_function import JaxFunction
from ...model import Chain
from ..._problem import Problem
from ..._progress import chunks
from . import conv, conv_kron, conv_matrix, curvature, dense, dense_device, dense_matrix, diagonal, kron, sharded
from .chunked import widest
from .compiled import compiled
from .kinds import EMPIRICAL_FISHER, GGN, HESSIAN, KINDS
from .precision import precision, to_numpy

__all__ = ["JaxBackend"]


class JaxBackend:
    """Every quantity in JAX; always available.

    The P×P methods take ``out=`` (a writable ``(P, P)`` array of the call's dtype): the
    structured route writes its panels into it one at a time, the generic routes copy their
    result into it; :meth:`matrix_bytes` is each route's peak memory, for the memory guard.

    ``structured=True`` (the default) takes the structured Dense-chain routes wherever they
    cover the model; ``structured=False`` always the generic ones (the tests compare the two).
    """

    name = "jax"
    #: The input derivatives take ``columns`` (differentiate in some inputs only).
    selects_inputs = True
    #: The P×P methods take ``out=`` and write the result into it.
    writes_out = True

    def __init__(self, structured: bool = True):
        self.structured = structured
        #: KFAC of Chains with Conv layers (:mod:`.conv_kron`), a structured route.
        self.kron_convolutions = structured

    def _route(self, routes, model):
        """``routes.structured`` bound to the model's Dense structure where it has one, else the
        convolutional route (:data:`CONV_ROUTES`) bound to its taps where :func:`.conv.split`
        covers the model, else ``routes.generic``."""
        if not self.structured:
            return routes.generic
        st = dense.split(model)
        if st is not None:
            return functools.partial(routes.structured, st)
        cst = conv.split(model)
        return routes.generic if cst is None else functools.partial(CONV_ROUTES[routes], cst)

    def matrix_bytes(self, model, P: int, itemsize: int, into_out: bool) -> int:
        """Peak memory of the P×P route that ``model`` takes, in bytes: its ``(P, P)`` result of
        ``itemsize``-byte numbers (unless it is written into ``out=``, ``into_out``) and every
        array the route makes beside it."""
        result = 0 if into_out else P * P * itemsize
        if self.structured and dense.split(model) is not None:
            return result + dense_matrix.working_bytes(P, itemsize)
        cst = conv.split(model) if self.structured else None
        if cst is not None and cst.exact_hessian:  # else the Hessian is the generic route's
            return result + conv_matrix.working_bytes(cst, P, itemsize)
        return curvature.generic_bytes(P, itemsize)

    def unavailable_reason(self):
        return None

    def unsupported_reason(self, model):
        if isinstance(model, (Chain, JaxFunction)):
            return None
        return (
            f"the jax backend runs fluxhess.Chain specs and JaxFunction models (fluxhess.from_jax); got {type(model).__name__}. "
            "Convert a Flux model with model.to_spec(), or use backend='julia'"
        )

    # -- values -------------------------------------------------------------
    def forward(self, problem: Problem):
        with precision(problem.params):
            return to_numpy(compiled(problem.model, None, "forward")(problem.params, problem.X))

    def loss(self, problem: Problem):
        return float(self._of_loss(problem, "loss"))

    def gradient(self, problem: Problem):
        return to_numpy(self._of_loss(problem, "gradient"))

    def _of_loss(self, problem: Problem, name: str):
        with precision(problem.params):
            return compiled(problem.model, problem.loss, name)(problem.params, problem.X, problem.Y, problem.scale)

    # -- P × P matrices -----------------------------------------------------
    def hessian(self, problem: Problem, out=None):
        return self._matrix(problem, HESSIAN, out)

    def ggn(self, problem: Problem, out=None):
        return self._matrix(problem, GGN, out)

    def empirical_fisher(self, problem: Problem, out=None):
        return self._matrix(problem, EMPIRICAL_FISHER, out)

    def _matrix(self, problem: Problem, kind, out):
        with precision(problem.params):
            return self._route(curvature, problem.model)(problem, kind, out)

    def sharded_matrix(self, problem: Problem, kind: str, mesh):
        """The P×P ``kind`` assembled by XLA on ``mesh``'s devices, rows sharded (:mod:`.sharded`);
        on one device, a Dense chain's by its blocks (:mod:`.dense_device`)."""
        p, kind = problem, KINDS[kind]
        st = dense.split(p.model) if self.structured and mesh.size == 1 else None
        with precision(p.params):
            if st is None:
                return sharded.matrix(p.model, p.loss, kind, p.params, p.X, p.Y, p.scale, mesh)
            with jax.default_device(mesh.devices.flat[0]):
                return dense_device.matrix(st, p, kind, sharded.work_bytes(mesh))

    # -- matrix-free and structured -----------------------------------------
    def hvp(self, problem: Problem, V, kind: str):
        """``M @ V`` in chunks of columns of ``V``, each within :data:`fluxhess._memory.CHUNK_BYTES`."""
        with precision(problem.params):
            return curvature.products(problem, KINDS[kind], V)

    def diagonal(self, problem: Problem, kind: str):
        with precision(problem.params):
            return self._route(diagonal, problem.model)(problem, KINDS[kind])

    def kron(self, problem: Problem, kind: str):
        with precision(problem.params):
            return self._route(kron, problem.model)(problem, KINDS[kind])

    # -- Jacobians and input derivatives ------------------------------------
    def param_jacobian(self, problem: Problem):
        P = problem.params.shape[0]
        cst = conv.split(problem.model) if self.structured and dense.split(problem.model) is None else None
        fn = None if cst is None else conv.jacobian_function(cst)
        return self._per_sample_blocks(problem, "param_jacobian", problem.model.out_features * P, fn=fn)

    # ``columns``: the input columns to differentiate in (None: all of them), see .inputs.
    def input_jacobian(self, problem: Problem, columns=None):
        k = _width(problem, columns)
        return self._per_sample_blocks(problem, "input_jacobian", problem.model.out_features * k, columns=columns)

    def input_hessian(self, problem: Problem, columns=None):
        k = _width(problem, columns)
        return self._per_sample_blocks(problem, "input_hessian", problem.model.out_features * k * k, columns=columns)

    def laplacian(self, problem: Problem, columns=None):
        floats = widest(problem.model) * (problem.X.shape[1] + 2)  # the forward Laplacian's (J, Δ) per sample
        cached = LAPLACIAN_CHUNK_BYTES if jax.default_backend() == "cpu" else None
        return self._per_sample_blocks(problem, "laplacian", floats, cached, columns=columns)

    def divergence(self, problem: Problem, columns=None):
        floats = problem.model.out_features * problem.X.shape[1]
        return self._per_sample_blocks(problem, "divergence", floats, columns=columns)

    def _per_sample_blocks(self, problem: Problem, name, floats_per_sample, budget=None, columns=None, fn=None):
        """``name`` (or the jitted ``fn(θ, X chunk)``) on chunks of samples: ``4·itemsize·floats_per_sample``
        bytes each within CHUNK_BYTES, or ``itemsize·floats_per_sample`` bytes each within ``budget``."""
        X, N, itemsize = problem.X, problem.X.shape[0], problem.dtype.itemsize
        if budget is None:
            n = chunk_size(4 * itemsize * floats_per_sample, N)
        else:
            n = chunk_size(itemsize * floats_per_sample, N, budget)
        fn = compiled(problem.model, None, name, columns) if fn is None else fn
        with precision(problem.params):
            return np.concatenate([to_numpy(fn(problem.params, X[sl])) for sl in chunks(N, n, name)])


#: Samples per chunk of the forward Laplacian on a CPU: about this many bytes of propagated
#: Jacobians ``(n, d, width)``. The passes over them (GEMM, σ', the squares) then run in
#: cache: [100, 128, 128, 128, 1] on 256 points took 39 -> 27 ms (float64) and 28 -> 19 ms
#: (float32) against one chunk on 2 cores (64-96 samples best; 32 or 256 slower).
LAPLACIAN_CHUNK_BYTES = 6 * 2**20

#: The convolutional route (:mod:`.conv`) of each quantity module's ``structured``/``generic`` pair.
CONV_ROUTES = {curvature: conv_matrix.matrix, diagonal: conv_matrix.diagonal, kron: conv_kron.kron}


def _width(problem: Problem, columns) -> int:
    return problem.X.shape[1] if columns is None else len(columns)
