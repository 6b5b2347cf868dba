"""One call's checked arguments, as every backend method receives them.

The API (:mod:`fluxhess.api`) checks and converts the user's arguments once and builds a
:class:`Problem`; each backend method then takes that one value (plus what only its
quantity needs: ``V``, ``kind``, ``out``, ``columns``) instead of six to eight
positional arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import losses as L


@dataclass(frozen=True)
class Problem:
    """The model, θ ``(P,)`` in Flux ``destructure`` order and ``X`` ``(N, d)``, all of one float
    dtype, finite and C-contiguous; for the quantities of a loss also ``Y`` ``(N, C)`` (labels
    already one-hot), the loss name (:data:`fluxhess.losses.LOSSES`) and ``agg``."""

    model: Any  # a Chain, or a FluxModel on the julia backend
    params: np.ndarray
    X: np.ndarray
    Y: np.ndarray | None = None
    loss: str | None = None
    agg: str | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.params.dtype

    @property
    def scale(self) -> float:
        """``s`` of ``L = s·Σ_n ℓ_n`` (:func:`fluxhess.losses.scale`); every curvature carries it."""
        if self.loss is None or self.agg is None or self.Y is None:
            raise TypeError("Problem.scale needs a problem with a loss (Problem.with_loss)")
        return L.scale(self.loss, self.agg, *self.Y.shape)

    @property
    def shapes(self) -> str:
        """The arrays' shapes, for messages."""
        y = f", y {self.Y.shape}" if self.Y is not None else ""
        return f"params {self.params.shape}, X {self.X.shape}{y}"

    def with_loss(self, Y: np.ndarray, loss: str, agg: str) -> Problem:
        """The same problem with targets ``Y`` ``(N, C)``, ``loss`` and ``agg``."""
        return dataclasses.replace(self, Y=Y, loss=loss, agg=agg)
