"""The Protocol every backend satisfies.

The public functions in :mod:`fluxhess.api` validate and normalise their arguments once
and hand every backend method the call's :class:`fluxhess._problem.Problem`, on which it
may rely:

- ``model``: a :class:`fluxhess.Chain` spec (or, on backends that support it, a
  :class:`fluxhess.FluxModel` built from Julia source);
- ``params``: a C-contiguous NumPy array ``(P,)`` of the requested dtype
  (float64 or float32), finite, in Flux ``destructure`` order;
- ``X``: ``(N, d)`` of that dtype, finite, N >= 1, already flattened;
- for the quantities of a loss, ``Y``: ``(N, C)`` of that dtype (integer labels already
  one-hot), ``loss``: a name in :data:`fluxhess.losses.LOSSES`, ``agg``: ``"sum"`` or ``"mean"``.

Beside the problem, a method takes only what its quantity needs:

- ``kind``: ``"hessian"``, ``"ggn"`` or ``"ef"`` (``kron``: ``"ggn"`` or ``"ef"``);
- ``V`` (``hvp`` only): ``(P, k)``, always two-dimensional.

Each method returns NumPy arrays (any float dtype; the API casts and copies) with
the shapes of the public functions in :mod:`fluxhess.api`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .._problem import Problem


@runtime_checkable
class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """``None`` when the backend can run here, else why not and how to fix it.

        Must be cheap and must never download or install anything.
        """

    def unsupported_reason(self, model) -> str | None:
        """``None`` when ``model`` can run on this backend, else why not."""

    def forward(self, problem: Problem) -> np.ndarray: ...  # (N, C)

    def loss(self, problem: Problem) -> float: ...

    def gradient(self, problem: Problem) -> np.ndarray: ...  # (P,)

    def hessian(self, problem: Problem) -> np.ndarray: ...  # (P, P)

    def ggn(self, problem: Problem) -> np.ndarray: ...  # (P, P)

    def empirical_fisher(self, problem: Problem) -> np.ndarray: ...  # (P, P)

    def hvp(self, problem: Problem, V, kind: str) -> np.ndarray: ...  # (P, k)

    def diagonal(self, problem: Problem, kind: str) -> np.ndarray: ...  # (P,)

    def kron(self, problem: Problem, kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """One ``(A, G)`` per Dense layer, in Chain order (see :func:`fluxhess.kron`)."""

    def param_jacobian(self, problem: Problem) -> np.ndarray: ...  # (N, C, P)

    def input_jacobian(self, problem: Problem) -> np.ndarray: ...  # (N, C, d)

    def input_hessian(self, problem: Problem) -> np.ndarray: ...  # (N, C, d, d)

    def laplacian(self, problem: Problem) -> np.ndarray: ...  # (N, C)

    def divergence(self, problem: Problem) -> np.ndarray: ...  # (N,)
