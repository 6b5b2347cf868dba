"""The JAX backend: every quantity of the public API (:mod:`fluxhess.api`), jit-compiled, chunked, float64 on request.

Per-sample functions (``f(θ, x)``, ``ℓ_n``) are written once and batched with
``vmap``. Results whose working memory grows with the batch or with P are built
in chunks (:data:`fluxhess.memory.CHUNK_BYTES` at a time) with a progress bar
when there are many chunks. float64 is scoped with ``jax.enable_x64`` around
each call, and matrix products with ``jax.default_matmul_precision("highest")`` (no
TensorFloat-32 on GPUs), never by changing the user's global JAX configuration.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np

from .. import losses as L
from ..memory import chunk_size
from ..model import Chain, Dense
from ..progress import chunks
from . import dense_curvature, dense_device, dense_factors, sharded
from .jax_compiled import compiled

__all__ = ["JaxBackend"]


# ---------------------------------------------------------------------------
# The backend.
# ---------------------------------------------------------------------------


@contextmanager
def _precision(*arrays):
    """float64 when any array is float64, and full-precision matrix products in any case
    (on GPUs JAX's default multiplies float32 in TensorFloat-32, ~1e-3 relative error)."""
    with jax.enable_x64(any(np.asarray(a).dtype == np.float64 for a in arrays)), jax.default_matmul_precision("highest"):
        yield


def _np(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def _structured_first(part: str, kind: str | None = None):
    """A method that takes the structured Dense-chain route (:func:`.dense_curvature` ``part``)
    where :func:`.dense_factors.split` covers the model, and its own generic route otherwise.

    ``kind``: the curvature kind of a P×P method, whose optional last argument is ``out``;
    ``None`` for the methods whose last argument is the kind (``diagonal``, ``kron``).
    """

    def wrap(generic):
        @functools.wraps(generic)
        def method(self, model, params, X, Y, loss, agg, *rest, **kw):
            st = dense_factors.split(model) if self.structured else None
            if st is None:
                return generic(self, model, params, X, Y, loss, agg, *rest, **kw)
            k, extra = (rest[0], {}) if kind is None else (kind, {"out": rest[0] if rest else kw.get("out")})
            with _precision(params):
                return getattr(dense_curvature, part)(st, loss, k, params, X, Y, L.scale(loss, agg, *Y.shape), **extra)

        return method

    return wrap


class JaxBackend:
    """Every quantity in JAX; always available.

    The P×P methods take ``out=`` (a writable ``(P, P)`` array of the call's dtype): the
    structured route writes its panels into it one at a time, the generic routes copy their
    result into it; :meth:`panel_working_bytes` says which, for the memory guard.

    ``structured=True`` (the default) computes the Hessian, GGN, empirical Fisher, their
    diagonals and KFAC factors of a Dense chain by the block-structured GEMM route of
    :mod:`.dense_curvature` wherever :func:`.dense_factors.split` covers the model, and by
    the generic chunked forward-over-reverse routes otherwise; ``structured=False`` always
    takes the generic routes (the tests compare the two).
    """

    name = "jax"
    #: The input derivatives take ``columns`` (differentiate in some inputs only).
    selects_inputs = True

    def __init__(self, structured: bool = True):
        self.structured = structured

    def panel_working_bytes(self, model, P: int, itemsize: int) -> int | None:
        """Bytes beside the result when a P×P route writes panel by panel into ``out=``, or None
        where the route builds the whole matrix first (then ``out`` receives a copy)."""
        if self.structured and dense_factors.split(model) is not None:
            return dense_curvature.working_bytes(P, itemsize)
        return None

    def unavailable_reason(self):
        return None

    def unsupported_reason(self, model):
        if isinstance(model, Chain):
            return None
        return (
            f"the jax backend runs fluxhess.Chain specs; got {type(model).__name__}. "
            "Convert a Flux model with model.to_spec(), or use backend='julia'"
        )

    # -- values -------------------------------------------------------------
    def forward(self, model, params, X):
        with _precision(params):
            return _np(compiled(model, None, "forward")(params, X))

    def loss(self, model, params, X, Y, loss, agg):
        with _precision(params):
            s = L.scale(loss, agg, *Y.shape)
            return float(compiled(model, loss, "loss")(params, X, Y, s))

    def gradient(self, model, params, X, Y, loss, agg):
        with _precision(params):
            s = L.scale(loss, agg, *Y.shape)
            return _np(compiled(model, loss, "gradient")(params, X, Y, s))

    # -- P × P matrices -----------------------------------------------------
    @_structured_first("matrix", "hessian")
    def hessian(self, model, params, X, Y, loss, agg, out=None):
        P = params.shape[0]
        s = L.scale(loss, agg, *Y.shape)
        with _precision(params):
            if P <= 256:
                H = _np(compiled(model, loss, "hessian")(params, X, Y, s))
            else:
                H = np.empty((P, P), dtype=params.dtype)
                k = chunk_size(_column_bytes(model, P, X.shape[0], params.dtype.itemsize), P)
                fn = compiled(model, loss, "hessian_columns")
                for sl in chunks(P, k, "hessian columns"):
                    idx = np.arange(sl.start, sl.stop)
                    H[sl] = _np(fn(params, X, Y, s, idx))
            return _into(out, _symmetrize(H))

    @_structured_first("matrix", "ggn")
    def ggn(self, model, params, X, Y, loss, agg, out=None):
        return _into(out, _symmetrize(self._sum_over_samples(model, params, X, Y, loss, agg, "ggn_chunk", model.out_features)))

    @_structured_first("matrix", "ef")
    def empirical_fisher(self, model, params, X, Y, loss, agg, out=None):
        return _into(out, _symmetrize(self._sum_over_samples(model, params, X, Y, loss, agg, "ef_chunk", 1)))

    def sharded_matrix(self, model, params, X, Y, loss, agg, kind, mesh):
        """The P×P ``kind`` assembled by XLA on ``mesh``'s devices, rows sharded (:mod:`.sharded`);
        on one device, a Dense chain's by its blocks (:mod:`.dense_device`)."""
        s = L.scale(loss, agg, *Y.shape)
        st = dense_factors.split(model) if self.structured and mesh.size == 1 else None
        with _precision(params):
            if st is None:
                return sharded.matrix(model, loss, kind, params, X, Y, s, mesh)
            with jax.default_device(mesh.devices.flat[0]):
                return dense_device.matrix(st, loss, kind, params, X, Y, s, sharded.work_bytes(mesh))

    def _sum_over_samples(self, model, params, X, Y, loss, agg, name, rows_per_sample):
        """Σ over sample chunks of a per-chunk reduction whose working set is rows × P."""
        P, N = params.shape[0], X.shape[0]
        s = L.scale(loss, agg, *Y.shape)
        n = chunk_size(3 * params.dtype.itemsize * rows_per_sample * P, N)
        fn = compiled(model, loss, name)
        with _precision(params):
            total = None
            for sl in chunks(N, n, name.replace("_chunk", "")):
                part = fn(params, X[sl], Y[sl], s)
                total = part if total is None else total + part
            return _np(total)

    # -- matrix-free --------------------------------------------------------
    def hvp(self, model, params, X, Y, loss, agg, V, kind):
        """``M @ V`` in chunks of columns of ``V``, each within :data:`fluxhess.memory.CHUNK_BYTES`."""
        s = L.scale(loss, agg, *Y.shape)
        P, k = V.shape
        n = chunk_size(_column_bytes(model, P, X.shape[0], params.dtype.itemsize), k)
        out = np.empty((P, k), dtype=params.dtype)
        fn = compiled(model, loss, f"hvp_{kind}")
        with _precision(params):
            for sl in chunks(k, n, f"hvp ({kind})"):
                out[:, sl] = _np(fn(params, X, Y, s, V[:, sl]))
        return out

    @_structured_first("diagonal")
    def diagonal(self, model, params, X, Y, loss, agg, kind):
        if kind == "ggn":
            return self._sum_over_samples(model, params, X, Y, loss, agg, "ggn_diag_chunk", model.out_features)
        if kind == "ef":
            return self._sum_over_samples(model, params, X, Y, loss, agg, "ef_diag_chunk", 1)
        P = params.shape[0]
        s = L.scale(loss, agg, *Y.shape)
        out = np.empty(P, dtype=params.dtype)
        k = chunk_size(_column_bytes(model, P, X.shape[0], params.dtype.itemsize), P)
        fn = compiled(model, loss, "hessian_diag_chunk")
        with _precision(params):
            for sl in chunks(P, k, "hessian diagonal"):
                out[sl] = _np(fn(params, X, Y, s, np.arange(sl.start, sl.stop)))
        return out

    @_structured_first("kron")
    def kron(self, model, params, X, Y, loss, agg, kind):
        s = L.scale(loss, agg, *Y.shape)
        N = X.shape[0]
        per_sample = params.dtype.itemsize * sum((l.in_features + 1) ** 2 + l.out_features**2 for _, l in model.dense_layers)
        n = chunk_size(per_sample, N)
        fn = compiled(model, loss, f"kron_{kind}")
        with _precision(params):
            A_sum, G_sum = None, None
            for sl in chunks(N, n, "kron"):
                A, G = fn(params, X[sl], Y[sl], s)
                weight = (sl.stop - sl.start) / N  # A is a mean over the chunk
                A = [a * weight for a in A]
                A_sum = A if A_sum is None else [x + y for x, y in zip(A_sum, A)]
                G_sum = G if G_sum is None else [x + y for x, y in zip(G_sum, G)]
            return [(_np(a), _np(g)) for a, g in zip(A_sum, G_sum)]

    # -- Jacobians and input derivatives ------------------------------------
    def param_jacobian(self, model, params, X):
        return self._per_sample_blocks(model, params, X, "param_jacobian", model.out_features * params.shape[0])

    # ``columns``: the input columns to differentiate in (None: all of them), see jax_inputs.
    def input_jacobian(self, model, params, X, columns=None):
        k = X.shape[1] if columns is None else len(columns)
        return self._per_sample_blocks(model, params, X, "input_jacobian", model.out_features * k, columns=columns)

    def input_hessian(self, model, params, X, columns=None):
        k = X.shape[1] if columns is None else len(columns)
        return self._per_sample_blocks(model, params, X, "input_hessian", model.out_features * k * k, columns=columns)

    def laplacian(self, model, params, X, columns=None):
        floats = _widest(model) * (X.shape[1] + 2)  # the forward Laplacian's (J, Δ) per sample
        cached = LAPLACIAN_CHUNK_BYTES if jax.default_backend() == "cpu" else None
        return self._per_sample_blocks(model, params, X, "laplacian", floats, cached, columns=columns)

    def divergence(self, model, params, X, columns=None):
        return self._per_sample_blocks(model, params, X, "divergence", model.out_features * X.shape[1], columns=columns)

    def _per_sample_blocks(self, model, params, X, name, floats_per_sample, budget=None, columns=None):
        """``name`` on chunks of samples: ``4·itemsize·floats_per_sample`` bytes each within CHUNK_BYTES,
        or ``itemsize·floats_per_sample`` bytes each within ``budget``."""
        N = X.shape[0]
        if budget is None:
            n = chunk_size(4 * X.dtype.itemsize * floats_per_sample, N)
        else:
            n = chunk_size(X.dtype.itemsize * floats_per_sample, N, budget)
        fn = compiled(model, None, name, columns)
        with _precision(params):
            return np.concatenate([_np(fn(params, X[sl])) for sl in chunks(N, n, name)])


#: Samples per chunk of the forward Laplacian on a CPU: about this many bytes of propagated
#: Jacobians ``(n, d, width)``. The passes over them (GEMM, σ', the squares) then run in
#: cache: [100, 128, 128, 128, 1] on 256 points took 39 -> 27 ms (float64) and 28 -> 19 ms
#: (float32) against one chunk on 2 cores (64-96 samples best; 32 or 256 slower).
LAPLACIAN_CHUNK_BYTES = 6 * 2**20


def _column_bytes(model: Chain, num_params: int, num_samples: int, itemsize: int) -> int:
    """Working memory of one curvature-vector product: the vector, its tangent and cotangent
    (P each) and the N × width activations of the forward and backward passes."""
    return itemsize * (num_params + 4 * num_samples * _widest(model))


def _widest(model: Chain) -> int:
    return max(max(l.in_features, l.out_features) for _, l in model.dense_layers)


def _into(out: np.ndarray | None, M: np.ndarray) -> np.ndarray:
    """``M``, or ``out`` holding a copy of it (the generic routes build the whole matrix first)."""
    if out is None:
        return M
    np.copyto(out, M)
    return out


def _symmetrize(M: np.ndarray) -> np.ndarray:
    """(M + Mᵀ)/2 in place: exact symmetry for matrices that are symmetric up to rounding."""
    M = np.array(M, copy=True)
    M += M.T.copy()
    M *= 0.5
    return M
