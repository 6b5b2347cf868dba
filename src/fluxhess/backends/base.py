"""The Protocol every backend satisfies.

The public functions in :mod:`fluxhess.api` validate and normalise their
arguments before a backend sees them, so every backend method may rely on:

- ``model``: a :class:`fluxhess.Chain` spec (or, on backends that support it, a
  :class:`fluxhess.FluxModel` built from Julia source);
- ``params``: a C-contiguous NumPy array ``(P,)`` of the requested dtype
  (float64 or float32), finite, in Flux ``destructure`` order;
- ``X``: ``(N, d)`` of that dtype, finite, N >= 1, already flattened;
- ``Y``: ``(N, C)`` of that dtype (integer labels already one-hot);
- ``loss``: a name in :data:`fluxhess.losses.LOSSES`; ``agg``: ``"sum"`` or ``"mean"``;
- ``kind``: ``"hessian"``, ``"ggn"`` or ``"ef"`` (``kron``: ``"ggn"`` or ``"ef"``);
- ``V`` (``hvp`` only): ``(P, k)``, always two-dimensional.

Each method returns NumPy arrays (any float dtype; the API casts and copies) with
the shapes of the public functions in :mod:`fluxhess.api`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """``None`` when the backend can run here, else why not and how to fix it.

        Must be cheap and must never download or install anything.
        """

    def unsupported_reason(self, model) -> str | None:
        """``None`` when ``model`` can run on this backend, else why not."""

    def forward(self, model, params, X) -> np.ndarray: ...  # (N, C)

    def loss(self, model, params, X, Y, loss, agg) -> float: ...

    def gradient(self, model, params, X, Y, loss, agg) -> np.ndarray: ...  # (P,)

    def hessian(self, model, params, X, Y, loss, agg) -> np.ndarray: ...  # (P, P)

    def ggn(self, model, params, X, Y, loss, agg) -> np.ndarray: ...  # (P, P)

    def empirical_fisher(self, model, params, X, Y, loss, agg) -> np.ndarray: ...  # (P, P)

    def hvp(self, model, params, X, Y, loss, agg, V, kind) -> np.ndarray: ...  # (P, k)

    def diagonal(self, model, params, X, Y, loss, agg, kind) -> np.ndarray: ...  # (P,)

    def kron(self, model, params, X, Y, loss, agg, kind) -> list[tuple[np.ndarray, np.ndarray]]:
        """One ``(A, G)`` per Dense layer, in Chain order (see :func:`fluxhess.kron`)."""

    def param_jacobian(self, model, params, X) -> np.ndarray: ...  # (N, C, P)

    def input_jacobian(self, model, params, X) -> np.ndarray: ...  # (N, C, d)

    def input_hessian(self, model, params, X) -> np.ndarray: ...  # (N, C, d, d)

    def laplacian(self, model, params, X) -> np.ndarray: ...  # (N, C)

    def divergence(self, model, params, X) -> np.ndarray: ...  # (N,)
