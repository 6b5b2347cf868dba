"""Argument checks shared by every public function.

Each check turns user input into the normalised arrays the backends rely on
(see :mod:`fluxhess.backends.base`) or raises an :class:`InputError` naming the
argument, what was expected and what arrived. Nothing is silently broadcast.
"""

from __future__ import annotations

import math

import numpy as np

from . import losses as L
from .errors import InputError, UnknownNameError
from .model import _float_dtype


def float_dtype(dtype) -> np.dtype:
    return _float_dtype(dtype)


def choice(argument: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise UnknownNameError(f"{argument} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def positive_int(argument: str, value) -> int:
    """``value`` as an ``int`` when it is an integer ``>= 1`` (not a bool); else an InputError naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{argument} must be a positive integer; got {value!r}")
    return int(value)


def _numeric(argument: str, value) -> np.ndarray:
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
        raise InputError(f"{argument} must be a numeric array; got dtype {a.dtype}")
    return a


def _finite(argument: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise InputError(
            f"{argument} must be finite; found {a[tuple(bad)]} at index {tuple(int(i) for i in bad)}"
        )


def params_array(params, num_params: int, dtype: np.dtype) -> np.ndarray:
    """θ as a C-contiguous ``(P,)`` array of ``dtype``."""
    a = _numeric("params", params)
    if a.shape != (num_params,):
        raise InputError(
            f"params must have shape ({num_params},) for this model (its num_params); got {a.shape}"
        )
    _finite("params", a)
    return np.ascontiguousarray(a, dtype=dtype)


def inputs_array(X, in_features: int | None, flattens: bool, dtype: np.dtype) -> np.ndarray:
    """``X`` as ``(N, d)``: rows are samples; ``(N, ...)`` only when the model starts with Flatten."""
    a = _numeric("X", X)
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
        hint = f"; for one sample use X[None, :], for N samples of one feature X[:, None]"
        raise InputError(f"X must be 2-D (N, d); got shape {a.shape}{hint}")
    if in_features is not None and a.shape[1] != in_features:
        raise InputError(
            f"X must have {in_features} features per sample (the model's input width), "
            f"shape (N, {in_features}); got {a.shape}"
        )
    _finite("X", a)
    return np.ascontiguousarray(a, dtype=dtype)


def targets_array(y, n_samples: int, n_outputs: int, loss: str, dtype: np.dtype) -> np.ndarray:
    """``y`` as ``(N, C)`` of ``dtype``; integer class labels become one-hot rows.

    - ``mse``: ``(N, C)``, or ``(N,)`` when C == 1.
    - ``crossentropy``/``logitcrossentropy`` with C >= 2: integer labels ``(N,)`` in
      ``[0, C)``, or rows ``(N, C)`` of probabilities that sum to 1. With C == 1 the
      target is a value in [0, 1] per sample, as Flux computes ``-y·log(ŷ+ϵ)``.
    - ``binarycrossentropy``/``logitbinarycrossentropy``: values in [0, 1],
      ``(N, C)`` or ``(N,)`` when C == 1.
    """
    if y is None:
        raise InputError(f"y is required for loss={loss!r}: targets of shape ({n_samples}, {n_outputs})")
    a = _numeric("y", y)
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
        labels = a.astype(np.int64)
        if labels.min() < 0 or labels.max() >= C:
            raise InputError(
                f"class labels in y must lie in [0, {C}) for a model with {C} outputs; "
                f"got values from {labels.min()} to {labels.max()}"
            )
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
    a = np.ascontiguousarray(a, dtype=dtype)
    if loss != "mse" and (a.min() < 0 or a.max() > 1):
        raise InputError(
            f"y must hold probabilities in [0, 1] for loss={loss!r}; got values from {a.min()} to {a.max()}"
        )
    if loss in L.CATEGORICAL and C >= 2:
        sums = a.sum(axis=1)
        tol = 1e-6 if dtype == np.float64 else 1e-4
        bad = np.flatnonzero(np.abs(sums - 1) > tol)
        if bad.size:
            raise InputError(
                f"each row of y must sum to 1 (one-hot or class probabilities) for loss={loss!r}; "
                f"row {bad[0]} sums to {sums[bad[0]]}. Pass integer labels of shape ({N},) instead"
            )
    return a


def check_probabilities(argument: str, yhat: np.ndarray, loss: str) -> None:
    """``crossentropy`` needs model outputs that are probabilities (a softmax/sigmoid output)."""
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
            raise InputError(
                f"loss='crossentropy' expects each row of the model output to sum to 1; "
                f"row {worst} sums to {sums[worst]:.6g}. End the Chain with Activation('softmax'), "
                "or use loss='logitcrossentropy' on raw outputs"
            )


def vectors_array(V, num_params: int, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """``V`` as ``(P, k)``; returns it and whether the caller passed a single ``(P,)`` vector."""
    a = _numeric("V", V)
    if a.ndim not in (1, 2) or a.shape[0] != num_params or (a.ndim == 2 and a.shape[1] == 0):
        raise InputError(f"V must have shape ({num_params},) or ({num_params}, k) with k >= 1; got {a.shape}")
    _finite("V", a)
    single = a.ndim == 1
    return np.ascontiguousarray(a[:, None] if single else a, dtype=dtype), single


def out_array(out, num_params: int, dtype: np.dtype) -> np.ndarray:
    """``out`` when it is a writable C-contiguous ``(P, P)`` NumPy array of ``dtype`` (a memmap included)."""
    expected = f"a writable C-contiguous numpy array (or numpy.memmap) of shape ({num_params}, {num_params}) and dtype {dtype}"
    if not isinstance(out, np.ndarray):
        raise InputError(f"out must be {expected}; got {type(out).__name__}")
    if out.shape != (num_params, num_params) or out.dtype != dtype:
        raise InputError(f"out must be {expected}; got shape {out.shape} and dtype {out.dtype}")
    if not out.flags.writeable or not out.flags.c_contiguous:
        raise InputError(f"out must be {expected}; got a {'read-only' if not out.flags.writeable else 'non-contiguous'} array")
    return out
