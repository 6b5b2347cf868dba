"""A Laplace approximation's state: what ``fit`` computed and the hyperparameters, each
replaced as a whole (frozen), so that a reader who takes them once sees one consistent set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .curvature import Clipped
from .posterior import Diag, Full, Kron, LowRank


@dataclass(frozen=True)
class Fitted:
    """What :meth:`Laplace.fit` computes, installed as a whole (never one part of it)."""

    curvature: Full | Diag | Kron | LowRank
    loss: float  # Σ_n ℓ_n at θ_MAP
    n_data: int
    n_outputs: int
    clipped: Clipped | None


@dataclass(frozen=True)
class Hyper:
    """The hyperparameters, replaced as a whole: a reader that takes them once sees one consistent set."""

    prior: np.ndarray  # (1,), (B,) or (P_s,), read-only
    sigma: float
    temperature: float
