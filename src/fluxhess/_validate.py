"""Argument checks shared by every public function.

Each check turns user input into the normalised arrays the backends rely on
(see :mod:`fluxhess._backends.base`) or raises an :class:`InputError` naming the
argument, what was expected and what arrived. Nothing is silently broadcast.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import losses as L
from .errors import FluxHessWarning, InputError, UnknownNameError

#: The float dtypes a result may have, by name.
FLOAT_DTYPES: dict[str, np.dtype] = {"float64": np.dtype(np.float64), "float32": np.dtype(np.float32)}


def float_dtype(dtype) -> np.dtype:
    """``"float64"``/``"float32"`` (or ``np.float64``/``np.float32``, or their ``np.dtype``) as a ``np.dtype``."""
    if isinstance(dtype, type) and dtype in (np.float64, np.float32):
        return np.dtype(dtype)
    if isinstance(dtype, np.dtype) and dtype.name in FLOAT_DTYPES:
        return dtype
    if isinstance(dtype, str) and dtype in FLOAT_DTYPES:
        return FLOAT_DTYPES[dtype]
    raise UnknownNameError(f"dtype must be 'float64' or 'float32'; got {dtype!r:.80}")


def choice(argument: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise UnknownNameError(f"{argument} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def positive_int(argument: str, value) -> int:
    """``value`` as an ``int`` when it is an integer ``>= 1`` (not a bool); else an InputError naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{argument} must be a positive integer; got {value!r}")
    return int(value)


def seed(argument: str, value) -> int:
    """``value`` as an ``int`` when it is an integer ``>= 0`` (not a bool), as NumPy's random streams take."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{argument} must be a non-negative integer (a random seed); got {value!r:.80}")
    return int(value)


def positive_number(argument: str, value) -> float:
    """``value`` as a ``float`` when it is a real number ``> 0`` and finite (not a bool or a string)."""
    if isinstance(value, (bool, str, bytes)) or np.ndim(value) != 0:
        raise InputError(f"{argument} must be a positive number; got {value!r:.80}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{argument} must be a positive number; got {value!r:.80}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{argument} must be a positive number; got {v}")
    return v


def numeric(argument: str, value) -> np.ndarray:
    """``value`` as a real floating/integer NumPy array, refusing bool, complex, object, strings."""
    try:
        a = np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise InputError(f"{argument} must be a numeric array; could not convert it: {e}") from None
    kind = a.dtype.kind
    if kind == "b":
        raise InputError(f"{argument} must hold numbers, not booleans; convert it with .astype(float)")
    if kind == "c":
        raise InputError(f"{argument} must be real; got complex dtype {a.dtype}")
    if kind not in "iuf":
        got = f"{type(value).__name__} {value!r:.60}" if a.ndim == 0 else f"dtype {a.dtype}"
        raise InputError(f"{argument} must be a numeric array; got {got}")
    return a


def _finite(argument: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise InputError(
            f"{argument} must be finite; found {a[tuple(bad)]} at index {tuple(int(i) for i in bad)}"
        )


def cast(argument: str, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` as a C-contiguous array of ``dtype``; an entry too large for ``dtype`` (finite in
    float64, infinite in float32) is an InputError naming it, not an overflow found later."""
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(a, dtype=dtype)
    if a.dtype.kind == "f" and out.dtype.itemsize < a.dtype.itemsize:
        overflow = ~np.isfinite(out)
        if overflow.any():
            bad = tuple(int(i) for i in np.argwhere(overflow)[0])
            raise InputError(
                f"{argument} holds {a[bad].item()!r} at index {bad}, beyond the largest {dtype.name} "
                f"({np.finfo(dtype).max:.4g}); rescale it or use dtype='float64'"
            )
    return out


def params_array(params, num_params: int, dtype: np.dtype) -> np.ndarray:
    """θ as a C-contiguous ``(P,)`` array of ``dtype``."""
    a = numeric("params", params)
    if a.shape != (num_params,):
        raise InputError(
            f"params must have shape ({num_params},) for this model (its num_params); got {a.shape}"
        )
    _finite("params", a)
    return cast("params", a, dtype)


def stacked_inputs(X, signature) -> np.ndarray:
    """The tuple ``X = (x, t, ...)`` of a model with input signature ``((name, width), ...)``
    as the matrix ``(N, d)`` its network sees: the arrays side by side in signature order.
    Each array is ``(N, width)``, or ``(N,)`` for an input of width 1.
    """
    if signature is None:
        raise InputError(
            f"X is a tuple of {len(X)} arrays, but this model takes one input array (N, d) and has no "
            "input signature; convert it with inputs=(x, t, ...) or pass the stacked matrix"
        )
    if len(X) != len(signature):
        names = ", ".join(n for n, _ in signature)
        raise InputError(f"X must be a tuple of {len(signature)} arrays ({names}); got {len(X)}")
    parts: list[np.ndarray] = []
    for (name, width), x in zip(signature, X):
        a = numeric(f"input {name!r}", x)
        if a.ndim == 1 and width == 1:
            a = a[:, None]
        rows = parts[0].shape[0] if parts else None
        if a.ndim != 2 or a.shape[1] != width or (rows is not None and a.shape[0] != rows):
            raise InputError(f"input {name!r} must have shape ({rows or 'N'}, {width}); got {a.shape}")
        parts.append(a)
    return np.concatenate(parts, axis=1)


def inputs_array(X, in_features: int | None, flattens: bool, dtype: np.dtype, signature=None) -> np.ndarray:
    """``X`` as ``(N, d)``: rows are samples; ``(N, ...)`` only when the model starts with Flatten;
    a tuple of arrays for a model with an input ``signature`` (:func:`stacked_inputs`)."""
    if isinstance(X, tuple):
        X = stacked_inputs(X, signature)
    a = numeric("X", X)
    if a.ndim == 0 or a.shape[0] == 0:
        raise InputError(f"X must hold at least one sample, shape (N, d) with N >= 1; got {a.shape}")
    if a.ndim > 2:
        if not flattens:
            raise InputError(
                f"X must be 2-D (N, d); got shape {a.shape}. Start the Chain with Flatten() "
                "to feed higher-rank samples"
            )
        a = a.reshape(a.shape[0], -1)
    if a.ndim == 1:
        hint = "; for one sample use X[None, :], for N samples of one feature X[:, None]"
        raise InputError(f"X must be 2-D (N, d); got shape {a.shape}{hint}")
    if in_features is not None and a.shape[1] != in_features:
        raise InputError(
            f"X must have {in_features} features per sample (the model's input width), "
            f"shape (N, {in_features}); got {a.shape}"
        )
    _finite("X", a)
    return cast("X", a, dtype)


def targets_array(y, n_samples: int, n_outputs: int, loss: str, dtype: np.dtype) -> np.ndarray:
    """``y`` as ``(N, C)`` of ``dtype``; integer class labels become one-hot rows.

    - ``mse``: ``(N, C)``, or ``(N,)`` when C == 1.
    - ``crossentropy``/``logitcrossentropy`` with C >= 2: integer labels ``(N,)`` in
      ``[0, C)``, or rows ``(N, C)`` of values in [0, 1] — one-hot, class probabilities, or
      rows that do not sum to 1 (multi-label targets, label smoothing), which Flux computes
      as they are: ``-Σ_c y_c·log(ŷ_c + ϵ)``, ``-Σ_c y_c·logsoftmax(ŷ)_c``. With C == 1 the
      target is a value in [0, 1] per sample, as Flux computes ``-y·log(ŷ+ϵ)``.
    - ``binarycrossentropy``/``logitbinarycrossentropy``: values in [0, 1],
      ``(N, C)`` or ``(N,)`` when C == 1.
    """
    if y is None:
        raise InputError(f"y is required for loss={loss!r}: targets of shape ({n_samples}, {n_outputs})")
    a = numeric("y", y)
    if a.ndim == 0 or a.shape[0] != n_samples:
        raise InputError(f"y must have one row per sample of X ({n_samples} rows); got shape {a.shape}")
    N, C = n_samples, n_outputs
    if loss in L.CATEGORICAL and C >= 2 and a.ndim == 1:
        if a.dtype.kind == "f":
            _finite("y", a)
            if not np.all(a == np.round(a)):
                raise InputError(
                    f"y as a vector holds class labels for loss={loss!r}, which must be integers in "
                    f"[0, {C}); got non-integer values such as {a[a != np.round(a)][0]}"
                )
        if a.min() < 0 or a.max() >= C:  # on the values as given: an int64 cast would wrap 2**70
            raise InputError(
                f"class labels in y must lie in [0, {C}) for a model with {C} outputs; "
                f"got values from {a.min()} to {a.max()}"
            )
        labels = a.astype(np.int64)
        out = np.zeros((N, C), dtype=dtype)
        out[np.arange(N), labels] = 1
        return out
    if a.ndim == 1:
        if C != 1:
            raise InputError(f"y must have shape ({N}, {C}) for loss={loss!r} and {C} outputs; got {a.shape}")
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != C:
        raise InputError(f"y must have shape ({N}, {C}) for a model with {C} outputs; got {a.shape}")
    _finite("y", a)
    a = cast("y", a, dtype)
    if loss != "mse" and (a.min() < 0 or a.max() > 1):
        raise InputError(
            f"y must hold probabilities in [0, 1] for loss={loss!r}; got values from {a.min()} to {a.max()}"
        )
    return a


def check_probabilities(argument: str, yhat: np.ndarray, loss: str) -> None:
    """The probability losses need model outputs in [0, 1], where Flux's ``log(ŷ + ϵ)`` terms
    are defined (a softmax/sigmoid output): anything outside is an InputError.

    ``crossentropy`` on rows that do not sum to 1 (independent sigmoids, C ≥ 2) is what Flux
    computes too, so it is computed, with one :class:`~fluxhess.FluxHessWarning` per call
    saying that it is unusual and what the usual choice is.
    """
    tol = 1e-6 if yhat.dtype == np.float64 else 1e-4
    if yhat.min() < -tol or yhat.max() > 1 + tol:
        raise InputError(
            f"loss={loss!r} expects the model to output probabilities in [0, 1], but {argument} "
            f"ranges from {yhat.min():.4g} to {yhat.max():.4g}. End the Chain with "
            f"Activation('softmax') / 'sigmoid', or use loss='logit{loss}' on raw outputs"
        )
    if loss == "crossentropy" and yhat.shape[1] >= 2:
        sums = yhat.sum(axis=1)
        worst = int(np.argmax(np.abs(sums - 1)))
        if abs(sums[worst] - 1) > math.sqrt(tol):
            warnings.warn(
                f"loss='crossentropy' on model outputs whose rows do not sum to 1 (row {worst} sums to "
                f"{sums[worst]:.6g}): computed as Flux does, -Σ y·log(ŷ + ϵ), but unusual. The usual choice "
                "is Activation('softmax') at the end of the Chain (or loss='logitcrossentropy' on raw "
                "outputs); for independent sigmoid outputs, loss='binarycrossentropy'",
                FluxHessWarning,
                stacklevel=4,
            )


def vectors_array(V, num_params: int, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """``V`` as ``(P, k)``; returns it and whether the caller passed a single ``(P,)`` vector."""
    a = numeric("V", V)
    if a.ndim not in (1, 2) or a.shape[0] != num_params or (a.ndim == 2 and a.shape[1] == 0):
        raise InputError(f"V must have shape ({num_params},) or ({num_params}, k) with k >= 1; got {a.shape}")
    _finite("V", a)
    single = a.ndim == 1
    return cast("V", a[:, None] if single else a, dtype), single


def out_array(out, num_params: int, dtype: np.dtype, inputs: dict[str, object]) -> np.ndarray:
    """``out`` when it is a writable C-contiguous ``(P, P)`` NumPy array of ``dtype`` (a memmap
    included) that shares no memory with any of ``inputs`` (argument name → the caller's value:
    an array, or a tuple/list of them)."""
    expected = f"a writable C-contiguous numpy array (or numpy.memmap) of shape ({num_params}, {num_params}) and dtype {dtype}"
    if not isinstance(out, np.ndarray):
        raise InputError(f"out must be {expected}; got {type(out).__name__}")
    if type(out) is not np.ndarray and not isinstance(out, np.memmap):
        raise InputError(
            f"out must be {expected}; got a {type(out).__name__}, a subclass whose operations mean something else "
            "(np.matrix's * is a matrix product): pass np.asarray(out) or a plain array"
        )
    if out.shape != (num_params, num_params) or out.dtype != dtype:
        raise InputError(f"out must be {expected}; got shape {out.shape} and dtype {out.dtype}")
    if not out.flags.writeable or not out.flags.c_contiguous:
        raise InputError(f"out must be {expected}; got a {'read-only' if not out.flags.writeable else 'non-contiguous'} array")
    for name, value in inputs.items():
        for a in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(a, np.ndarray) and np.shares_memory(out, a):
                raise InputError(
                    f"out shares memory with {name}: the result would overwrite {name} while it is being read; "
                    "pass a separate array as out"
                )
    return out
