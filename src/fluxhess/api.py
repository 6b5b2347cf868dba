"""The public functions: validate, guard memory, dispatch to a backend, return NumPy.

Conventions shared by every function (docs/conventions.md):

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
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Sequence, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _backends
from . import losses as L
from . import _memory as memory
from . import _validate as check
from .errors import BackendError, FluxHessError, InputError, NumericalWarning, UnsupportedModelError
from .model import Chain
from ._problem import Problem
from ._kfac import kron_layers
from ._types import InputNames, Inputs, Model

if TYPE_CHECKING:
    import jax

KINDS = ("hessian", "ggn", "ef")
KRON_KINDS = ("ggn", "ef")


class KronFactors(NamedTuple):
    """KFAC factors of one Dense layer (its block ≈ `A ⊗ G` in `[vec(W); b]` order,
    `numpy.kron(A, G)`) or Conv layer (its weight block ≈ `G ⊗ A`: θ holds a kernel output-major).

    Attributes:
        layer: the layer's name, e.g. `"layers.1"` (its blocks are `layers.1.weight`, `layers.1.bias`).
        A: `(in+1, in+1)` with a bias, `(in, in)` without: the layer inputs' second moment.
        G: `(out, out)`: the curvature in the layer's pre-activations.
    """

    layer: str  # e.g. "layers.1"
    A: np.ndarray  # (in+1, in+1) with a bias, (in, in) without
    G: np.ndarray  # (out, out)


@dataclass(frozen=True)
class Call:
    """One public call: its quantity, the backend that runs it, and the checked
    :class:`~fluxhess._problem.Problem` every backend method takes."""

    quantity: str
    backend: Any  # a _backends.base.Backend, with optional capabilities beside the Protocol
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


def _square(call: Call, quantity: str, out, devices, as_jax: bool, inputs: dict[str, object]):
    """The backend's P×P ``quantity`` behind the memory guard: a new NumPy array, written into
    ``out``, or assembled on JAX devices (``devices``, ``as_jax``, or an accelerator by default).
    ``inputs``: the caller's arguments by name, which ``out`` must not share memory with.
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
        memory.require(quantity, _matrix_bytes(call, quantity, into_out=False), (P, P))
        return call.result(call.run(quantity))
    return _into(call, quantity, check.out_array(out, P, call.dtype, inputs))


def _matrix_bytes(call: Call, quantity: str, into_out: bool) -> int:
    """The P×P route's peak memory: the backend's own estimate of the route it takes
    (``matrix_bytes``, a capability), else two copies of the result (:func:`fluxhess._memory.needed_bytes`)."""
    estimate = getattr(call.backend, "matrix_bytes", None)
    P = call.problem.params.shape[0]
    if estimate is not None:
        return estimate(call.problem.model, P, call.dtype.itemsize, into_out)
    return memory.needed_bytes(quantity, P * P, call.dtype.itemsize)


def _into(call: Call, quantity: str, target: np.ndarray) -> np.ndarray:
    """``quantity`` written into ``target``: by the backend where it takes ``out=``
    (``writes_out``), else copied in from its result. The memory guard checks the route's
    memory beside ``target``, and a memmap's filesystem for the room the writes need."""
    P = call.problem.params.shape[0]
    memory.require(quantity, _matrix_bytes(call, quantity, into_out=True), (P, P))
    if isinstance(target, np.memmap):
        memory.require_disk(target, target.nbytes)
    if getattr(call.backend, "writes_out", False):
        call.run(quantity, target)
    else:
        np.copyto(target, call.run(quantity))
    if isinstance(target, np.memmap):
        target.flush()
    return call.result(target)


# --- values ----------------------------------------------------------------


def forward(model: Model, params: ArrayLike, X: Inputs, *, backend: str = "auto", dtype: str = "float64") -> np.ndarray:
    """The model's output `f(x_n)` for every sample.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        `(N, C)` NumPy array of `dtype`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        >>> import numpy as np, fluxhess as fh
            >>> model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); theta = model.init(0)
            >>> X, y = np.random.default_rng(0).normal(size=(4, 2)), np.zeros(4)
        >>> fh.forward(model, theta, X, backend="jax").shape
        (4, 1)
    """
    call = _prepare("forward", model, params, X, backend=backend, dtype=dtype)
    _guard(call, "forward", (call.problem.X.shape[0], _outputs(call)))
    return call.result(call.run("forward"))


def loss(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = "mse", agg: str = "sum",
    backend: str = "auto", dtype: str = "float64",
) -> float:
    """The batch loss `L = s·Σ_n ℓ_n` (Flux.Losses semantics).

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        y: targets `(N, C)`, or `(N,)` when C == 1; integer class labels `(N,)` in `[0, C)`
            for `"crossentropy"`/`"logitcrossentropy"` with C ≥ 2.
        loss: `"mse"` (`Σ_c (f_c − y_c)²`, no ½), `"crossentropy"` (on probabilities),
            `"logitcrossentropy"`, `"binarycrossentropy"` (on probabilities) or
            `"logitbinarycrossentropy"`, with Flux.Losses' semantics.
        agg: `"sum"` (`L = Σ_n ℓ_n`) or `"mean"` (what Flux's default `agg=mean` returns:
            `L = s·Σ_n ℓ_n` with `s = 1/N` for the (logit)crossentropies and `1/(N·C)` for
            `mse` and the binary cross-entropies).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        `L`, a Python float.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        >>> import numpy as np, fluxhess as fh
            >>> model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); theta = model.init(0)
            >>> X, y = np.random.default_rng(0).normal(size=(4, 2)), np.zeros(4)
        >>> f = fh.forward(model, theta, X, backend="jax")
        >>> bool(np.isclose(fh.loss(model, theta, X, y, loss="mse", backend="jax"), np.sum(f**2)))
        True
    """
    call = _prepare("loss", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    return float(call.result(call.run("loss")))


def gradient(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = "mse", agg: str = "sum",
    backend: str = "auto", dtype: str = "float64",
) -> np.ndarray:
    """The gradient `∇_θ L`.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        y: targets `(N, C)`, or `(N,)` when C == 1; integer class labels `(N,)` in `[0, C)`
            for `"crossentropy"`/`"logitcrossentropy"` with C ≥ 2.
        loss: `"mse"` (`Σ_c (f_c − y_c)²`, no ½), `"crossentropy"` (on probabilities),
            `"logitcrossentropy"`, `"binarycrossentropy"` (on probabilities) or
            `"logitbinarycrossentropy"`, with Flux.Losses' semantics.
        agg: `"sum"` (`L = Σ_n ℓ_n`) or `"mean"` (what Flux's default `agg=mean` returns:
            `L = s·Σ_n ℓ_n` with `s = 1/N` for the (logit)crossentropies and `1/(N·C)` for
            `mse` and the binary cross-entropies).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        `(P,)` NumPy array of `dtype`, in θ's order.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        >>> import numpy as np, fluxhess as fh
            >>> model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); theta = model.init(0)
            >>> X, y = np.random.default_rng(0).normal(size=(4, 2)), np.zeros(4)
        >>> fh.gradient(model, theta, X, y, loss="mse", backend="jax").shape
        (13,)
    """
    call = _prepare("gradient", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    _guard(call, "gradient", call.problem.params.shape)
    return call.result(call.run("gradient"))


# --- P × P curvature ---------------------------------------------------------


@overload
def hessian(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = ..., agg: str = ...,
    backend: str = ..., dtype: str = ..., out: np.ndarray | None = ..., devices: None = ..., as_jax: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def hessian(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = ..., agg: str = ...,
    backend: str = ..., dtype: str = ..., out: None = ..., devices: Sequence[Any] | Any | None = ..., as_jax: bool = ...,
) -> np.ndarray | jax.Array: ...
def hessian(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = "mse", agg: str = "sum",
    backend: str = "auto", dtype: str = "float64", out: np.ndarray | None = None,
    devices: Sequence[Any] | Any | None = None, as_jax: bool = False,
) -> np.ndarray | jax.Array:
    """The exact parameter Hessian `∇²_θ L`.

    With `dtype="float32"` it warns (`NumericalWarning`) when rounding has cost the result
    about half its digits, measured as the symmetry error of Hessian-vector products
    (`SYMMETRY_BOUND`).

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        y: targets `(N, C)`, or `(N,)` when C == 1; integer class labels `(N,)` in `[0, C)`
            for `"crossentropy"`/`"logitcrossentropy"` with C ≥ 2.
        loss: `"mse"` (`Σ_c (f_c − y_c)²`, no ½), `"crossentropy"` (on probabilities),
            `"logitcrossentropy"`, `"binarycrossentropy"` (on probabilities) or
            `"logitbinarycrossentropy"`, with Flux.Losses' semantics.
        agg: `"sum"` (`L = Σ_n ℓ_n`) or `"mean"` (what Flux's default `agg=mean` returns:
            `L = s·Σ_n ℓ_n` with `s = 1/N` for the (logit)crossentropies and `1/(N·C)` for
            `mse` and the binary cross-entropies).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.
        out: a writable C-contiguous `(P, P)` array of `dtype` (e.g. a memmap from
            `np.lib.format.open_memmap`) that receives the result panel by panel and is
            returned; the memory guard then counts only the working set.
        devices: a list of JAX devices or a `jax.sharding.Mesh` (jax backend): the result's
            rows are sharded over them, each device computing its own (also under
            `jax.distributed`), and the `jax.Array` is returned.
        as_jax: `True` (jax backend): assembled by XLA on JAX's default device and returned
            there as a `jax.Array`.

    Returns:
        `(P, P)`, symmetric, NumPy of `dtype`; `out` itself when given; a `jax.Array` with
        `devices` or `as_jax=True`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        For a linear model with `mse` it equals the GGN:

        >>> import numpy as np, fluxhess as fh
        >>> m = fh.Chain(fh.Dense(3, 2)); X = np.arange(12.).reshape(4, 3) / 10; y = np.ones((4, 2))
        >>> H = fh.hessian(m, m.init(), X, y, backend="jax")
        >>> H.shape, bool(np.allclose(H, fh.ggn(m, m.init(), X, y, backend="jax")))
        ((8, 8), True)
    """
    call = _prepare("hessian", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    H = _square(call, "hessian", out, devices, as_jax, {"params": params, "X": X, "y": y})
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


@overload
def ggn(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = ..., agg: str = ...,
    backend: str = ..., dtype: str = ..., out: np.ndarray | None = ..., devices: None = ..., as_jax: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def ggn(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = ..., agg: str = ...,
    backend: str = ..., dtype: str = ..., out: None = ..., devices: Sequence[Any] | Any | None = ..., as_jax: bool = ...,
) -> np.ndarray | jax.Array: ...
def ggn(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = "mse", agg: str = "sum",
    backend: str = "auto", dtype: str = "float64", out: np.ndarray | None = None,
    devices: Sequence[Any] | Any | None = None, as_jax: bool = False,
) -> np.ndarray | jax.Array:
    """The generalized Gauss-Newton `s·Σ_n J_nᵀ Λ_n J_n`.

    `J_n = ∂f(x_n)/∂θ` `(C, P)`, `Λ_n = ∇²_f ℓ_n` `(C, C)`.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        y: targets `(N, C)`, or `(N,)` when C == 1; integer class labels `(N,)` in `[0, C)`
            for `"crossentropy"`/`"logitcrossentropy"` with C ≥ 2.
        loss: `"mse"` (`Σ_c (f_c − y_c)²`, no ½), `"crossentropy"` (on probabilities),
            `"logitcrossentropy"`, `"binarycrossentropy"` (on probabilities) or
            `"logitbinarycrossentropy"`, with Flux.Losses' semantics.
        agg: `"sum"` (`L = Σ_n ℓ_n`) or `"mean"` (what Flux's default `agg=mean` returns:
            `L = s·Σ_n ℓ_n` with `s = 1/N` for the (logit)crossentropies and `1/(N·C)` for
            `mse` and the binary cross-entropies).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.
        out: a writable C-contiguous `(P, P)` array of `dtype` (e.g. a memmap from
            `np.lib.format.open_memmap`) that receives the result panel by panel and is
            returned; the memory guard then counts only the working set.
        devices: a list of JAX devices or a `jax.sharding.Mesh` (jax backend): the result's
            rows are sharded over them, each device computing its own (also under
            `jax.distributed`), and the `jax.Array` is returned.
        as_jax: `True` (jax backend): assembled by XLA on JAX's default device and returned
            there as a `jax.Array`.

    Returns:
        `(P, P)`, symmetric positive semi-definite, NumPy of `dtype`; `out` itself when
        given; a `jax.Array` with `devices` or `as_jax=True`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        >>> import numpy as np, fluxhess as fh
            >>> model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); theta = model.init(0)
            >>> X, y = np.random.default_rng(0).normal(size=(4, 2)), np.zeros(4)
        >>> G = fh.ggn(model, theta, X, y, loss="mse", backend="jax")
        >>> G.shape, bool(np.linalg.eigvalsh(G).min() > -1e-12)
        ((13, 13), True)
    """
    call = _prepare("ggn", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    return _square(call, "ggn", out, devices, as_jax, {"params": params, "X": X, "y": y})


@overload
def empirical_fisher(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = ..., agg: str = ...,
    backend: str = ..., dtype: str = ..., out: np.ndarray | None = ..., devices: None = ..., as_jax: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def empirical_fisher(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = ..., agg: str = ...,
    backend: str = ..., dtype: str = ..., out: None = ..., devices: Sequence[Any] | Any | None = ..., as_jax: bool = ...,
) -> np.ndarray | jax.Array: ...
def empirical_fisher(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = "mse", agg: str = "sum",
    backend: str = "auto", dtype: str = "float64", out: np.ndarray | None = None,
    devices: Sequence[Any] | Any | None = None, as_jax: bool = False,
) -> np.ndarray | jax.Array:
    """The empirical Fisher `s·Σ_n g_n g_nᵀ`, with `g_n = ∇_θ ℓ_n` the per-sample gradient.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        y: targets `(N, C)`, or `(N,)` when C == 1; integer class labels `(N,)` in `[0, C)`
            for `"crossentropy"`/`"logitcrossentropy"` with C ≥ 2.
        loss: `"mse"` (`Σ_c (f_c − y_c)²`, no ½), `"crossentropy"` (on probabilities),
            `"logitcrossentropy"`, `"binarycrossentropy"` (on probabilities) or
            `"logitbinarycrossentropy"`, with Flux.Losses' semantics.
        agg: `"sum"` (`L = Σ_n ℓ_n`) or `"mean"` (what Flux's default `agg=mean` returns:
            `L = s·Σ_n ℓ_n` with `s = 1/N` for the (logit)crossentropies and `1/(N·C)` for
            `mse` and the binary cross-entropies).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.
        out: a writable C-contiguous `(P, P)` array of `dtype` (e.g. a memmap from
            `np.lib.format.open_memmap`) that receives the result panel by panel and is
            returned; the memory guard then counts only the working set.
        devices: a list of JAX devices or a `jax.sharding.Mesh` (jax backend): the result's
            rows are sharded over them, each device computing its own (also under
            `jax.distributed`), and the `jax.Array` is returned.
        as_jax: `True` (jax backend): assembled by XLA on JAX's default device and returned
            there as a `jax.Array`.

    Returns:
        `(P, P)`, symmetric positive semi-definite, NumPy of `dtype`; `out` itself when
        given; a `jax.Array` with `devices` or `as_jax=True`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        With one sample it is the outer product of the gradient:

        >>> import numpy as np, fluxhess as fh
        >>> m = fh.Chain(fh.Dense(2, 1, "tanh")); t = m.init(0); x, y = np.ones((1, 2)), np.zeros(1)
        >>> g = fh.gradient(m, t, x, y, backend="jax")
        >>> bool(np.allclose(fh.empirical_fisher(m, t, x, y, backend="jax"), np.outer(g, g)))
        True
    """
    call = _prepare("empirical_fisher", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    return _square(call, "empirical_fisher", out, devices, as_jax, {"params": params, "X": X, "y": y})


# --- matrix-free and structured ----------------------------------------------


def hvp(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, V: ArrayLike, *, kind: str = "hessian",
    loss: str = "mse", agg: str = "sum", backend: str = "auto", dtype: str = "float64",
) -> np.ndarray:
    """Curvature-vector products `M @ V` without forming `M`.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        y: targets `(N, C)`, or `(N,)` when C == 1; integer class labels `(N,)` in `[0, C)`
            for `"crossentropy"`/`"logitcrossentropy"` with C ≥ 2.
        V: `(P,)` or `(P, k)`: the vectors, worked through in chunks of columns.
        kind: `"hessian"`, `"ggn"` or `"ef"` (empirical Fisher): which `M`.
        loss: `"mse"` (`Σ_c (f_c − y_c)²`, no ½), `"crossentropy"` (on probabilities),
            `"logitcrossentropy"`, `"binarycrossentropy"` (on probabilities) or
            `"logitbinarycrossentropy"`, with Flux.Losses' semantics.
        agg: `"sum"` (`L = Σ_n ℓ_n`) or `"mean"` (what Flux's default `agg=mean` returns:
            `L = s·Σ_n ℓ_n` with `s = 1/N` for the (logit)crossentropies and `1/(N·C)` for
            `mse` and the binary cross-entropies).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        `(P,)` for `V` `(P,)`, `(P, k)` for `V` `(P, k)`; NumPy of `dtype`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        >>> import numpy as np, fluxhess as fh
            >>> model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); theta = model.init(0)
            >>> X, y = np.random.default_rng(0).normal(size=(4, 2)), np.zeros(4)
        >>> V = np.eye(13)[:, :2]
        >>> H = fh.hessian(model, theta, X, y, backend="jax")
        >>> bool(np.allclose(fh.hvp(model, theta, X, y, V, kind="hessian", backend="jax"), H @ V))
        True
    """
    check.choice("kind", kind, KINDS)
    call = _prepare("hvp", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    Vm, single = check.vectors_array(V, call.problem.params.shape[0], call.dtype)
    _guard(call, "hvp", Vm.shape)
    out = call.result(call.run("hvp", Vm, kind))
    return out[:, 0].copy() if single else out


def diagonal(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, kind: str = "hessian",
    loss: str = "mse", agg: str = "sum", backend: str = "auto", dtype: str = "float64",
) -> np.ndarray:
    """The diagonal of the Hessian, GGN or empirical Fisher, without the full matrix.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        y: targets `(N, C)`, or `(N,)` when C == 1; integer class labels `(N,)` in `[0, C)`
            for `"crossentropy"`/`"logitcrossentropy"` with C ≥ 2.
        kind: `"hessian"`, `"ggn"` or `"ef"` (empirical Fisher).
        loss: `"mse"` (`Σ_c (f_c − y_c)²`, no ½), `"crossentropy"` (on probabilities),
            `"logitcrossentropy"`, `"binarycrossentropy"` (on probabilities) or
            `"logitbinarycrossentropy"`, with Flux.Losses' semantics.
        agg: `"sum"` (`L = Σ_n ℓ_n`) or `"mean"` (what Flux's default `agg=mean` returns:
            `L = s·Σ_n ℓ_n` with `s = 1/N` for the (logit)crossentropies and `1/(N·C)` for
            `mse` and the binary cross-entropies).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        `(P,)` NumPy array of `dtype`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        >>> import numpy as np, fluxhess as fh
            >>> model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); theta = model.init(0)
            >>> X, y = np.random.default_rng(0).normal(size=(4, 2)), np.zeros(4)
        >>> G = fh.ggn(model, theta, X, y, backend="jax")
        >>> bool(np.allclose(fh.diagonal(model, theta, X, y, kind="ggn", backend="jax"), np.diag(G)))
        True
    """
    check.choice("kind", kind, KINDS)
    call = _prepare("diagonal", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    _guard(call, "diagonal", call.problem.params.shape)
    return call.result(call.run("diagonal", kind))


def kron(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, kind: str = "ggn",
    loss: str = "mse", agg: str = "sum", backend: str = "auto", dtype: str = "float64",
) -> list[KronFactors]:
    """KFAC: one Kronecker-factored block per Dense or Conv layer.

    For layer input `a_n` and pre-activation `z_n`: `A = (1/N)·Σ_n ā_n ā_nᵀ` with
    `ā = [a; 1]` when the layer has a bias; `G = s·Σ_n δ_n δ_nᵀ` with `δ_n = ∂ℓ_n/∂z_n`
    (`kind="ef"`), or `G = s·Σ_n B_nᵀ Λ_n B_n` with `B_n = ∂f(x_n)/∂z_n` (`kind="ggn"`).
    `A ⊗ G` approximates the layer's `[vec(W); b]` block of the curvature, exactly for a
    single sample.

    Conv/CrossCor layers (`groups=1`) follow the KFC "expand" convention
    (curvlinops' `KFACLinearOperator`): with `ū_{n,s}` the patch of the input at output
    position `s` of `S` (`[u; 1]` with a bias, in θ's kernel order),
    `A = (1/(N·S))·Σ_{n,s} ū ūᵀ` `(cin·k+1, cin·k+1)` and `G` sums the above over the
    positions too, `(cout, cout)`; the weight block (output-major in θ) is `≈ G ⊗ A`.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        y: targets `(N, C)`, or `(N,)` when C == 1; integer class labels `(N,)` in `[0, C)`
            for `"crossentropy"`/`"logitcrossentropy"` with C ≥ 2.
        kind: `"ggn"` or `"ef"` (empirical Fisher).
        loss: `"mse"` (`Σ_c (f_c − y_c)²`, no ½), `"crossentropy"` (on probabilities),
            `"logitcrossentropy"`, `"binarycrossentropy"` (on probabilities) or
            `"logitbinarycrossentropy"`, with Flux.Losses' semantics.
        agg: `"sum"` (`L = Σ_n ℓ_n`) or `"mean"` (what Flux's default `agg=mean` returns:
            `L = s·Σ_n ℓ_n` with `s = 1/N` for the (logit)crossentropies and `1/(N·C)` for
            `mse` and the binary cross-entropies).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        A list of `KronFactors(layer, A, G)`, one per Dense or Conv layer in order: `A`
        `(in+1, in+1)` (`(in, in)` without bias), `G` `(out, out)`, NumPy of `dtype`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.
        UnsupportedModelError: a layer with parameters KFAC does not factor (normalisations
            with affine parameters, grouped convolutions), a CNN on a backend without
            convolutional KFAC, or a model without layers (a `JaxFunction`).

    Example:
        For one sample, `A ⊗ G` is the GGN's block of the layer:

        >>> import numpy as np, fluxhess as fh
        >>> m = fh.Chain(fh.Dense(2, 3)); t = m.init(0); x, y = np.ones((1, 2)), np.zeros((1, 3))
        >>> (f,) = fh.kron(m, t, x, y, kind="ggn", backend="jax")
        >>> f.layer, f.A.shape, f.G.shape
        ('layers.0', (3, 3), (3, 3))
        >>> bool(np.allclose(np.kron(f.A, f.G), fh.ggn(m, t, x, y, backend="jax")))
        True
    """
    check.choice("kind", kind, KRON_KINDS)
    convolutional = isinstance(model, Chain) and not model.is_mlp
    factored = kron_layers(model) if convolutional and isinstance(model, Chain) else None  # refuses layers KFAC does not factor
    call = _prepare("kron", model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
    if convolutional and not getattr(call.backend, "kron_convolutions", False):  # a capability: absent = Dense only
        raise UnsupportedModelError(
            f"kron (KFAC) of a Chain with convolutions needs backend='jax'; backend {call.backend.name!r} "
            "factors chains of Dense and activation layers"
        )
    if factored is None:
        factored = [(name, n_in + bias, n_out) for name, n_in, n_out, bias in model.dense_shapes]
    shapes = [((a,) * 2, (g,) * 2) for _, a, g in factored]
    floats = sum(a[0] ** 2 + g[0] ** 2 for a, g in shapes)
    memory.require("kron", memory.needed_bytes("kron", floats, call.dtype.itemsize), max((a for a, _ in shapes), key=lambda a: a[0]))
    pairs = call.run("kron", kind)
    return [KronFactors(name, call.result(A), call.result(G)) for (name, *_), (A, G) in zip(factored, pairs)]


# --- Jacobians and input derivatives ------------------------------------------


def param_jacobian(model: Model, params: ArrayLike, X: Inputs, *, backend: str = "auto", dtype: str = "float64") -> np.ndarray:
    """The Jacobian `∂f(x_n)/∂θ` of every sample's output in the parameters.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        `(N, C, P)` NumPy array of `dtype`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        >>> import numpy as np, fluxhess as fh
            >>> model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); theta = model.init(0)
            >>> X, y = np.random.default_rng(0).normal(size=(4, 2)), np.zeros(4)
        >>> fh.param_jacobian(model, theta, X, backend="jax").shape
        (4, 1, 13)
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


def input_jacobian(
    model: Model, params: ArrayLike, X: Inputs, *, wrt: InputNames = None, backend: str = "auto", dtype: str = "float64",
) -> np.ndarray:
    """The input Jacobian `∂f(x_n)/∂x` of every sample.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        wrt: for a model with an input signature, an input name or a list of names: the
            derivatives are then in those inputs' columns only (`d` is their total width).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        `(N, C, d)` NumPy array of `dtype`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        >>> import numpy as np, fluxhess as fh
            >>> model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); theta = model.init(0)
            >>> X, y = np.random.default_rng(0).normal(size=(4, 2)), np.zeros(4)
        >>> fh.input_jacobian(model, theta, X, backend="jax").shape
        (4, 1, 2)
    """
    call = _prepare("input_jacobian", model, params, X, backend=backend, dtype=dtype)
    columns = _columns(model, wrt, call.problem.X.shape[1])
    _guard(call, "input_jacobian", (call.problem.X.shape[0], _outputs(call), _width(call, columns)))
    return call.result(_in_columns(call, "input_jacobian", columns))


def input_hessian(
    model: Model, params: ArrayLike, X: Inputs, *, wrt: InputNames = None, backend: str = "auto", dtype: str = "float64",
) -> np.ndarray:
    """The input Hessian `∂²f_c(x_n)/∂x²` of every sample and output (a PINN's `u_xx`).

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        wrt: for a model with an input signature, an input name or a list of names: the
            derivatives are then in those inputs' columns only (`d` is their total width).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        `(N, C, d, d)` NumPy array of `dtype`, symmetric in its last two axes.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        >>> import numpy as np, fluxhess as fh
            >>> model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); theta = model.init(0)
            >>> X, y = np.random.default_rng(0).normal(size=(4, 2)), np.zeros(4)
        >>> fh.input_hessian(model, theta, X, backend="jax").shape
        (4, 1, 2, 2)
    """
    call = _prepare("input_hessian", model, params, X, backend=backend, dtype=dtype)
    columns = _columns(model, wrt, call.problem.X.shape[1])
    N, d = call.problem.X.shape[0], _width(call, columns)
    _guard(call, "input_hessian", (N, _outputs(call), d, d))
    return call.result(_in_columns(call, "input_hessian", columns))


def laplacian(
    model: Model, params: ArrayLike, X: Inputs, *, wrt: InputNames = None, backend: str = "auto", dtype: str = "float64",
) -> np.ndarray:
    """The Laplacian `Δ_x f_c(x_n) = tr ∂²f_c/∂x²` of every sample and output.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        wrt: for a model with an input signature, an input name or a list of names: the
            derivatives are then in those inputs' columns only (`d` is their total width).
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        `(N, C)` NumPy array of `dtype`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend.

    Example:
        >>> import numpy as np, fluxhess as fh
            >>> model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); theta = model.init(0)
            >>> X, y = np.random.default_rng(0).normal(size=(4, 2)), np.zeros(4)
        >>> H = fh.input_hessian(model, theta, X, backend="jax")
        >>> bool(np.allclose(fh.laplacian(model, theta, X, backend="jax"), np.trace(H, axis1=2, axis2=3)))
        True
    """
    call = _prepare("laplacian", model, params, X, backend=backend, dtype=dtype)
    _guard(call, "laplacian", (call.problem.X.shape[0], _outputs(call)))
    return call.result(_in_columns(call, "laplacian", _columns(model, wrt, call.problem.X.shape[1])))


def divergence(
    model: Model, params: ArrayLike, X: Inputs, *, wrt: InputNames = None, backend: str = "auto", dtype: str = "float64",
) -> np.ndarray:
    """The divergence `∇·f(x_n) = Σ_i ∂f_i/∂x_i` of a model with as many outputs as inputs.

    Args:
        model: a `fluxhess.Chain` (from `Chain(...)`, `from_flax`, `from_torch`), or a
            `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order (`model.layout` names its blocks).
        X: inputs `(N, d)`, one row per sample; for a model with an input signature
            (`model.inputs`) also the tuple `(x, t, …)` of `(N, width)` arrays; for a
            FluxModel also `(N, a, b, …)`, which reaches Flux as `(…, b, a, N)`.
        wrt: for a model with an input signature, an input name or a list of names: the
            derivatives are then in those inputs' columns only (`d` is their total width). The model needs as many outputs as the named inputs' total width.
        backend: `"auto"` (julia where a Julia runtime is installed, else jax), `"jax"` or
            `"julia"`.
        dtype: `"float64"` (default) or `"float32"`: the precision of the computation and
            of the result.

    Returns:
        `(N,)` NumPy array of `dtype`.

    Raises:
        InputError: an argument of the wrong shape, dtype or value, naming it, the shape
            expected and the one received (`UnknownNameError` for an unknown `loss`,
            `agg`, `kind`, `backend` or `dtype`).
        MemoryBudgetError: the result and its working set would not fit in the memory
            available; raised before anything is allocated, naming cheaper alternatives.
        BackendUnavailableError: the backend asked for cannot run here
            (`JuliaUnavailableError` for julia, saying why and how to fix it).
        BackendError: the backend failed, naming the quantity, the shapes and the backend. Also `InputError` when C ≠ d.

    Example:
        >>> import numpy as np, fluxhess as fh
        >>> m = fh.Chain(fh.Dense(2, 2, "tanh")); t = m.init(0); X = np.zeros((3, 2))
        >>> J = fh.input_jacobian(m, t, X, backend="jax")
        >>> bool(np.allclose(fh.divergence(m, t, X, backend="jax"), np.trace(J, axis1=1, axis2=2)))
        True
    """
    call = _prepare("divergence", model, params, X, backend=backend, dtype=dtype)
    columns = _columns(model, wrt, call.problem.X.shape[1])
    d, C = _width(call, columns), _dims(model)[1]
    if C is not None and d != C:
        named = "" if wrt is None else f" in {wrt!r}"
        raise InputError(f"divergence needs as many outputs as inputs (C == d); this model has C={C}, d={d}{named}")
    _guard(call, "divergence", (call.problem.X.shape[0],))
    return call.result(_in_columns(call, "divergence", columns))
