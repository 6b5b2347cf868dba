"""The public functions: validate, guard memory, dispatch to a backend, return NumPy.

Conventions shared by every function (the README's "Conventions" section):

- ``model``: a :class:`fluxhess.Chain` (or a :class:`fluxhess.FluxModel` on the julia
  backend); ``params``: θ ``(P,)`` in Flux ``destructure`` order (``model.layout``).
- ``X``: ``(N, d)``, one row per sample; for a model with an input signature
  (``model.inputs``, e.g. ``{"x": 2, "t": 1}``) also the tuple ``(x, t)`` of
  ``(N, width)`` arrays. Input derivatives take ``wrt=`` one or more of those names
  and differentiate in those columns only (``d`` below is then their total width).
  A FluxModel also takes ``(N, a, b, …)``, which reaches Flux as ``(…, b, a, N)``
  (input derivatives are then with respect to each sample flattened in C order,
  ``d = a·b·…``). ``y``: ``(N, C)``, ``(N,)`` when C == 1, or
  integer class labels ``(N,)`` for the (logit)crossentropies.
- ``loss``: ``"mse"``, ``"crossentropy"``, ``"logitcrossentropy"``,
  ``"binarycrossentropy"``, ``"logitbinarycrossentropy"`` with Flux.Losses semantics.
- ``agg``: ``"sum"`` gives ``L = Σ_n ℓ_n``; ``"mean"`` gives what Flux's default
  ``agg=mean`` returns, ``L = s·Σ_n ℓ_n`` with ``s`` from :func:`fluxhess.losses.scale`.
  Every curvature carries the same factor ``s``.
- ``backend``: ``"auto"`` (julia when a Julia runtime is installed, else jax),
  ``"jax"`` or ``"julia"``. ``dtype``: ``"float64"`` (default) or ``"float32"``.

Results are C-ordered NumPy arrays of ``dtype`` that own their memory; they never
depend on the backend in shape or type. The P×P functions (``hessian``, ``ggn``,
``empirical_fisher``) also take:

- ``out``: a writable C-contiguous ``(P, P)`` array of ``dtype`` — e.g. a ``numpy.memmap``
  from ``np.lib.format.open_memmap`` for a result larger than memory — that receives the
  result panel by panel (the memory guard then counts only the working set) and is returned;
- ``devices``: a list of JAX devices or a ``jax.sharding.Mesh`` (jax backend): the rows of
  the result are sharded over them, each device computing its own, and the ``jax.Array``
  comes back (:mod:`fluxhess._backends.jax.sharded`; also under ``jax.distributed``);
- ``as_jax=True`` (jax backend): assembled by XLA on JAX's default device and returned there
  as a ``jax.Array``. When the default device is an accelerator this route is taken anyway,
  and its result copied to NumPy unless ``as_jax=True``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import _backends
from . import losses as L
from . import _memory as memory
from . import _validate as check
from .errors import BackendError, FluxHessError, InputError, NumericalWarning
from ._problem import Problem

KINDS = ("hessian", "ggn", "ef")
KRON_KINDS = ("ggn", "ef")


class KronFactors(NamedTuple):
    """KFAC factors of one Dense layer: its block ≈ ``A ⊗ G`` in ``[vec(W); b]`` order."""

    layer: str  # e.g. "layers.1"
    A: np.ndarray  # (in+1, in+1) with a bias, (in, in) without
    G: np.ndarray  # (out, out)


@dataclass(frozen=True)
class Call:
    """One public call: its quantity, the backend that runs it, and the checked
    :class:`~fluxhess._problem.Problem` every backend method takes."""

    quantity: str
    backend: object
    problem: Problem

    @property
    def dtype(self) -> np.dtype:
        return self.problem.dtype

    def run(self, method: str, *extra):
        """The backend's ``method(problem, *extra)``. A fluxhess error passes as the backend raised
        it (the julia backend classes Julia's exceptions itself); any other exception (but
        interrupts and MemoryError) becomes a :class:`BackendError` naming this call."""
        try:
            return getattr(self.backend, method)(self.problem, *extra)
        except FluxHessError:
            raise
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:
            raise BackendError(
                f"{self.quantity} on backend {self.backend.name!r} failed for {self.problem.shapes}: {type(e).__name__}: {e}"
            ) from e

    def result(self, value) -> np.ndarray:
        """The backend's value as a writeable C-ordered array of the call's dtype, checked finite.

        A backend's own writeable NumPy array (the P×P routes build one) is returned as it
        is, not copied: a second P×P copy would double the peak memory. Anything else (JAX
        arrays, read-only views) is copied once.
        """
        owned = (
            isinstance(value, np.ndarray)
            and value.dtype == self.dtype
            and value.flags.c_contiguous
            and value.flags.writeable
        )
        out = value if owned else np.array(value, dtype=self.dtype, order="C", copy=True)
        # A finite sum means every entry is finite (inf and NaN propagate); only a
        # non-finite sum, which may be an overflow of finite entries, needs the full check.
        with np.errstate(invalid="ignore", over="ignore"):
            total = out.sum()
        if not np.isfinite(total) and not np.isfinite(out).all():
            raise BackendError(
                f"{self.quantity} on backend {self.backend.name!r} produced non-finite values for "
                f"{self.problem.shapes}; the loss or model overflowed at these parameters and data"
            )
        return out


def _dims(model) -> tuple[int | None, int | None, bool]:
    return (
        getattr(model, "in_features", None),
        getattr(model, "out_features", None),
        bool(getattr(model, "flattens_input", False)),
    )


def check_model(model) -> None:
    # The class is checked, not the instance: FluxModel.num_params starts Julia, so it is
    # read only once a backend has accepted the model.
    if not hasattr(type(model), "num_params"):
        raise InputError(
            f"model must be a fluxhess.Chain (or a FluxModel from fluxhess.flux_model); got {type(model).__name__}"
        )


#: The ``loss`` of a quantity that takes none (forward, Jacobians, input derivatives); a
#: quantity that takes one checks whatever arrives, ``None`` included.
_NO_LOSS = object()


def _prepare(quantity, model, params, X, y=None, *, loss=_NO_LOSS, agg=None, backend="auto", dtype="float64") -> Call:
    dt = check.float_dtype(dtype)
    check_model(model)
    takes_loss = loss is not _NO_LOSS
    if takes_loss:
        L.check_loss(loss)
        L.check_agg(agg)
    chosen = _backends.get(backend, model) if isinstance(backend, str) else None
    if chosen is None:
        raise InputError(f"backend must be a name such as 'auto', 'jax' or 'julia'; got {backend!r}")
    d, C, flattens = _dims(model)
    P = model.num_params
    theta = check.params_array(params, P, dt)
    shapes_input = _takes_nd_inputs(model)
    Xa = check.inputs_array(X, d, flattens or shapes_input, dt, getattr(model, "inputs", None))
    if shapes_input and np.ndim(X) > 2:
        model = model.with_input_shape(np.shape(X)[1:])
    call = Call(quantity, chosen, Problem(model, theta, Xa))
    if takes_loss:
        if C is None:
            C = np.asarray(call.run("forward")).shape[1]
        problem = call.problem.with_loss(check.targets_array(y, Xa.shape[0], C, loss, dt), loss, agg)
        call = Call(quantity, chosen, problem)
        if loss in L.ON_PROBABILITIES:
            check.check_probabilities("the model output", np.asarray(call.run("forward")), loss)
    return call


def _takes_nd_inputs(model) -> bool:
    """A FluxModel takes ``X`` ``(N, a, b, …)`` as it is (its Julia model reshapes it)."""
    return hasattr(model, "with_input_shape")


def model_inputs(model, X, dtype="float64") -> np.ndarray:
    """``X`` checked as :func:`forward` checks it for ``model``, in its own shape: ``(N, d)``, or
    ``(N, a, b, …)`` for a FluxModel (and for a Chain that starts with Flatten, flattened)."""
    if _takes_nd_inputs(model):
        a = check.inputs_array(X, None, True, check.float_dtype(dtype))
        return a.reshape(np.shape(X))
    d, _, flattens = _dims(model)
    return check.inputs_array(X, d, flattens, check.float_dtype(dtype), getattr(model, "inputs", None))


def check_arguments(model, params, X, y=None, *, loss=_NO_LOSS, agg=None, backend="auto", dtype="float64") -> None:
    """Check the arguments as every public function does (model, ``params``, ``X``, and ``y``
    with ``loss``/``agg`` when a loss is given), computing nothing beyond a forward pass."""
    _prepare("check_arguments", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)


def _guard(call: Call, quantity: str, shape: tuple[int, ...]) -> None:
    """Refuse (:func:`fluxhess._memory.require`) a result of ``shape`` whose working set cannot fit."""
    memory.require(quantity, memory.needed_bytes(quantity, math.prod(shape), call.dtype.itemsize), shape)


def _outputs(call: Call) -> int:
    """C, the model's output width (1 where a model does not say)."""
    return _dims(call.problem.model)[1] or 1


#: The curvature kind of each P×P quantity, as the backends name it.
_KIND = {"hessian": "hessian", "ggn": "ggn", "empirical_fisher": "ef"}


def _square(call: Call, quantity: str, out, devices, as_jax: bool):
    """The backend's P×P ``quantity`` behind the memory guard: a new NumPy array, written into
    ``out``, or assembled on JAX devices (``devices``, ``as_jax``, or an accelerator by default).
    """
    P, itemsize = call.problem.params.shape[0], call.dtype.itemsize
    if not isinstance(as_jax, bool):
        raise InputError(f"as_jax must be True or False; got {as_jax!r}")
    asked = devices is not None or as_jax
    on_devices = hasattr(call.backend, "sharded_matrix")  # a capability: absent = host only
    if asked and not on_devices:
        raise InputError(f"devices= and as_jax=True need backend='jax' (the result is a jax.Array); got backend {call.backend.name!r}")
    if asked and out is not None:
        raise InputError("out= writes the result into a host array, devices= and as_jax=True keep it on JAX devices: pass one or the other")
    mesh = _backends.sharded.mesh_for(devices, as_jax) if on_devices and out is None else None
    whole = memory.needed_bytes(quantity, P * P, itemsize)
    if mesh is not None:
        memory.require_on_devices(quantity, _backends.sharded.device_bytes(P, mesh, itemsize), mesh.local_devices, (P, P))
        if not asked:  # an accelerator's result copied to NumPy
            memory.require(quantity, whole, (P, P))
        M = call.run("sharded_matrix", _KIND[quantity], mesh)
        if not _backends.sharded.all_finite(M):
            raise BackendError(f"{quantity} on backend {call.backend.name!r} produced non-finite values for {call.problem.shapes}")
        return M if asked else call.result(M)
    if out is None:
        memory.require(quantity, whole, (P, P))
        return call.result(call.run(quantity))
    return _into(call, quantity, check.out_array(out, P, call.dtype), whole)


def _into(call: Call, quantity: str, target: np.ndarray, whole: int) -> np.ndarray:
    """``quantity`` written into ``target``. On a route that writes panel by panel (the backend's
    ``panel_working_bytes`` is not None) the guard counts only that working set; otherwise the
    whole result, which ``target`` then receives as a copy."""
    P, itemsize = call.problem.params.shape[0], call.dtype.itemsize
    working_bytes = getattr(call.backend, "panel_working_bytes", None)  # a capability: absent = copies
    working = None if working_bytes is None else working_bytes(call.problem.model, P, itemsize)
    memory.require(quantity, whole if working is None else working, (P, P))
    if working_bytes is None:
        np.copyto(target, call.run(quantity))
    else:
        call.run(quantity, target)
    if isinstance(target, np.memmap):
        target.flush()
    return call.result(target)


# --- values ----------------------------------------------------------------


def forward(model, params, X, *, backend="auto", dtype="float64") -> np.ndarray:
    """The model's output ``f(x_n)`` for every sample.

    Returns: ``(N, C)``.
    """
    call = _prepare("forward", model, params, X, backend=backend, dtype=dtype)
    _guard(call, "forward", (call.problem.X.shape[0], _outputs(call)))
    return call.result(call.run("forward"))


def loss(model, params, X, y, *, loss="mse", agg="sum", backend="auto", dtype="float64") -> float:
    """The batch loss ``L = s·Σ_n ℓ_n`` (Flux.Losses semantics).

    Returns: a Python float.
    """
    call = _prepare("loss", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    return float(call.result(call.run("loss")))


def gradient(model, params, X, y, *, loss="mse", agg="sum", backend="auto", dtype="float64") -> np.ndarray:
    """``∇_θ L``.

    Returns: ``(P,)``.
    """
    call = _prepare("gradient", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    _guard(call, "gradient", call.problem.params.shape)
    return call.result(call.run("gradient"))


# --- P × P curvature ---------------------------------------------------------


def hessian(model, params, X, y, *, loss="mse", agg="sum", backend="auto", dtype="float64", out=None, devices=None, as_jax=False):
    """The exact parameter Hessian ``∇²_θ L``.

    For a linear model with ``mse`` it equals :func:`ggn`:

    >>> import numpy as np, fluxhess as fh
    >>> m = fh.Chain(fh.Dense(3, 2)); X = np.arange(12.).reshape(4, 3) / 10; y = np.ones((4, 2))
    >>> H = fh.hessian(m, m.init(), X, y, backend="jax")
    >>> bool(np.allclose(H, fh.ggn(m, m.init(), X, y, backend="jax")))
    True

    With ``dtype="float32"`` it warns (:class:`fluxhess.NumericalWarning`) when rounding has
    cost the result about half its digits, measured as the symmetry error of the
    Hessian-vector products (:data:`SYMMETRY_BOUND`).

    ``out``, ``devices``, ``as_jax``: where the result is made and kept (module docstring).

    Returns: ``(P, P)``, symmetric (``out`` itself when given; a ``jax.Array`` with ``devices``/``as_jax``).
    """
    call = _prepare("hessian", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    H = _square(call, "hessian", out, devices, as_jax)
    if call.dtype == np.float32:
        error = _symmetry_error(call)
        if error > SYMMETRY_BOUND:
            warnings.warn(
                f"the float32 hessian is inaccurate: its symmetry error {error:.2g} exceeds {SYMMETRY_BOUND:.2g} "
                "(100·eps of float32), so rounding has cost its entries about 3 or more of their 7 "
                "significant digits (cancellation between samples or large residuals). "
                "Compute it with dtype='float64'",
                NumericalWarning,
                stacklevel=2,
            )
    return H


#: A float32 :func:`hessian` warns when its symmetry error exceeds this, 100·eps(float32).
#: Measured on models whose Hessian terms cancel: at this bound the largest entries are
#: off by about 1e-3 of the largest; well-conditioned models stay near 1e-8.
SYMMETRY_BOUND = 100 * float(np.finfo(np.float32).eps)


def _symmetry_error(call: Call) -> float:
    """``|uᵀ(Hv) − vᵀ(Hu)| / (‖u‖·‖Hv‖ + ‖v‖·‖Hu‖)`` for two fixed random probes ``u, v``.

    Zero in exact arithmetic. The products come from the matrix-free route, which no
    backend symmetrizes, so this sees the rounding that the returned matrix, made exactly
    symmetric (or built from one triangle), cannot show.
    """
    probes = np.random.default_rng(0).standard_normal((call.problem.params.shape[0], 2)).astype(call.dtype)
    Hu, Hv = np.asarray(call.run("hvp", probes, "hessian"), dtype=np.float64).T
    u, v = probes.T.astype(np.float64)
    scale = np.linalg.norm(u) * np.linalg.norm(Hv) + np.linalg.norm(v) * np.linalg.norm(Hu)
    return float(abs(u @ Hv - v @ Hu) / scale) if scale > 0 else 0.0


def ggn(model, params, X, y, *, loss="mse", agg="sum", backend="auto", dtype="float64", out=None, devices=None, as_jax=False):
    """The generalized Gauss-Newton ``s·Σ_n J_nᵀ Λ_n J_n``.

    ``J_n = ∂f(x_n)/∂θ`` ``(C, P)``, ``Λ_n = ∇²_ŷ ℓ_n`` ``(C, C)``.
    ``out``, ``devices``, ``as_jax``: where the result is made and kept (module docstring).

    Returns: ``(P, P)``, symmetric positive semi-definite (``out`` itself when given; a ``jax.Array`` with ``devices``/``as_jax``).
    """
    call = _prepare("ggn", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    return _square(call, "ggn", out, devices, as_jax)


def empirical_fisher(model, params, X, y, *, loss="mse", agg="sum", backend="auto", dtype="float64", out=None, devices=None, as_jax=False):
    """The empirical Fisher ``s·Σ_n g_n g_nᵀ`` with ``g_n = ∇_θ ℓ_n`` the per-sample gradient.

    ``out``, ``devices``, ``as_jax``: where the result is made and kept (module docstring).

    Returns: ``(P, P)``, symmetric positive semi-definite (``out`` itself when given; a ``jax.Array`` with ``devices``/``as_jax``).
    """
    call = _prepare("empirical_fisher", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    return _square(call, "empirical_fisher", out, devices, as_jax)


# --- matrix-free and structured ----------------------------------------------


def hvp(model, params, X, y, V, *, kind="hessian", loss="mse", agg="sum", backend="auto", dtype="float64") -> np.ndarray:
    """Curvature-vector products ``M @ V`` without forming ``M``.

    ``kind``: ``"hessian"``, ``"ggn"`` or ``"ef"`` (empirical Fisher).
    ``V``: ``(P,)`` or ``(P, k)``.

    Returns: ``(P,)`` for ``V (P,)``, ``(P, k)`` for ``V (P, k)``.
    """
    check.choice("kind", kind, KINDS)
    call = _prepare("hvp", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    Vm, single = check.vectors_array(V, call.problem.params.shape[0], call.dtype)
    _guard(call, "hvp", Vm.shape)
    out = call.result(call.run("hvp", Vm, kind))
    return out[:, 0].copy() if single else out


def diagonal(model, params, X, y, *, kind="hessian", loss="mse", agg="sum", backend="auto", dtype="float64") -> np.ndarray:
    """The diagonal of the Hessian, GGN or empirical Fisher (``kind``), without the full matrix.

    Returns: ``(P,)``.
    """
    check.choice("kind", kind, KINDS)
    call = _prepare("diagonal", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    _guard(call, "diagonal", call.problem.params.shape)
    return call.result(call.run("diagonal", kind))


def kron(model, params, X, y, *, kind="ggn", loss="mse", agg="sum", backend="auto", dtype="float64") -> list[KronFactors]:
    """KFAC: one Kronecker-factored block ``A ⊗ G`` per Dense layer.

    For layer input ``a_n`` and pre-activation ``z_n``:
    ``A = (1/N)·Σ_n ā_n ā_nᵀ`` with ``ā = [a; 1]`` when the layer has a bias;
    ``G = s·Σ_n δ_n δ_nᵀ`` with ``δ_n = ∂ℓ_n/∂z_n`` (``kind="ef"``), or
    ``G = s·Σ_n B_nᵀ Λ_n B_n`` with ``B_n = ∂f(x_n)/∂z_n`` (``kind="ggn"``).
    ``A ⊗ G`` approximates the layer's ``[vec(W); b]`` block of the curvature and is
    exact for a single sample.

    Returns: a list of :class:`KronFactors` ``(layer, A, G)``: ``A`` ``(in+1, in+1)``
    (``(in, in)`` without bias), ``G`` ``(out, out)``.
    """
    check.choice("kind", kind, KRON_KINDS)
    call = _prepare("kron", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    dense = model.dense_shapes
    shapes = [((n_in + bias,) * 2, (n_out,) * 2) for _, n_in, n_out, bias in dense]
    floats = sum(a[0] ** 2 + g[0] ** 2 for a, g in shapes)
    memory.require("kron", memory.needed_bytes("kron", floats, call.dtype.itemsize), max((a for a, _ in shapes), key=lambda a: a[0]))
    pairs = call.run("kron", kind)
    return [KronFactors(name, call.result(A), call.result(G)) for (name, *_), (A, G) in zip(dense, pairs)]


# --- Jacobians and input derivatives ------------------------------------------


def param_jacobian(model, params, X, *, backend="auto", dtype="float64") -> np.ndarray:
    """``∂f(x_n)/∂θ`` for every sample.

    Returns: ``(N, C, P)``.
    """
    call = _prepare("param_jacobian", model, params, X, backend=backend, dtype=dtype)
    _guard(call, "param_jacobian", (call.problem.X.shape[0], _outputs(call), call.problem.params.shape[0]))
    return call.result(call.run("param_jacobian"))


def _columns(model, wrt, d: int) -> tuple[int, ...] | None:
    """The columns of ``X`` named by ``wrt`` (None: all ``d``)."""
    if wrt is None:
        return None
    if not hasattr(model, "input_columns"):
        raise InputError(f"wrt={wrt!r} names inputs, but a {type(model).__name__} has no input signature")
    columns = tuple(model.input_columns(wrt))
    return None if columns == tuple(range(d)) else columns


def _in_columns(call: Call, quantity: str, columns) -> np.ndarray:
    """``quantity`` in the input ``columns``: from the backend where it selects inputs itself,
    else its result in every input, restricted to those columns."""
    if columns is None:
        return call.run(quantity)
    if getattr(call.backend, "selects_inputs", False):
        return call.run(quantity, columns)
    return _FROM_EVERY_COLUMN[quantity](call, list(columns))


def _jacobian_columns(call, c):
    return np.asarray(call.run("input_jacobian"))[:, :, c]


def _hessian_columns(call, c):
    return np.asarray(call.run("input_hessian"))[:, :, c][:, :, :, c]


_FROM_EVERY_COLUMN = {
    "input_jacobian": _jacobian_columns,
    "input_hessian": _hessian_columns,
    "laplacian": lambda call, c: np.trace(_hessian_columns(call, c), axis1=2, axis2=3),
    "divergence": lambda call, c: np.trace(_jacobian_columns(call, c), axis1=1, axis2=2),
}


def _width(call: Call, columns) -> int:
    return call.problem.X.shape[1] if columns is None else len(columns)


def input_jacobian(model, params, X, *, wrt=None, backend="auto", dtype="float64") -> np.ndarray:
    """``∂f(x_n)/∂x`` for every sample (``wrt``: in the named inputs only).

    Returns: ``(N, C, d)``.
    """
    call = _prepare("input_jacobian", model, params, X, backend=backend, dtype=dtype)
    columns = _columns(model, wrt, call.problem.X.shape[1])
    _guard(call, "input_jacobian", (call.problem.X.shape[0], _outputs(call), _width(call, columns)))
    return call.result(_in_columns(call, "input_jacobian", columns))


def input_hessian(model, params, X, *, wrt=None, backend="auto", dtype="float64") -> np.ndarray:
    """``∂²f_c(x_n)/∂x²`` for every sample and output (the PINN ``u_xx``; ``wrt``: in the named inputs only).

    Returns: ``(N, C, d, d)``.
    """
    call = _prepare("input_hessian", model, params, X, backend=backend, dtype=dtype)
    columns = _columns(model, wrt, call.problem.X.shape[1])
    N, d = call.problem.X.shape[0], _width(call, columns)
    _guard(call, "input_hessian", (N, _outputs(call), d, d))
    return call.result(_in_columns(call, "input_hessian", columns))


def laplacian(model, params, X, *, wrt=None, backend="auto", dtype="float64") -> np.ndarray:
    """``Δ_x f_c(x_n) = tr ∂²f_c/∂x²`` for every sample and output (``wrt``: over the named inputs only).

    Returns: ``(N, C)``.
    """
    call = _prepare("laplacian", model, params, X, backend=backend, dtype=dtype)
    _guard(call, "laplacian", (call.problem.X.shape[0], _outputs(call)))
    return call.result(_in_columns(call, "laplacian", _columns(model, wrt, call.problem.X.shape[1])))


def divergence(model, params, X, *, wrt=None, backend="auto", dtype="float64") -> np.ndarray:
    """``∇·f(x_n) = Σ_i ∂f_i/∂x_i`` for a model with as many outputs as inputs (C == d; with
    ``wrt``, as many outputs as the named inputs' total width).

    Returns: ``(N,)``.
    """
    call = _prepare("divergence", model, params, X, backend=backend, dtype=dtype)
    columns = _columns(model, wrt, call.problem.X.shape[1])
    d, C = _width(call, columns), _dims(model)[1]
    if C is not None and d != C:
        named = "" if wrt is None else f" in {wrt!r}"
        raise InputError(f"divergence needs as many outputs as inputs (C == d); this model has C={C}, d={d}{named}")
    _guard(call, "divergence", (call.problem.X.shape[0],))
    return call.result(_in_columns(call, "divergence", columns))
