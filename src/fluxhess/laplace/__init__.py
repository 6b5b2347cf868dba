"""Laplace approximations on top of any backend's curvature (laplace-torch's conventions).

:class:`Laplace` holds the posterior; :class:`Predictive` is what its ``predictive`` returns;
:func:`marglik_training` alternates MAP training and marginal-likelihood prior tuning.
"""

from .core import Laplace
from .marglik import MarglikFit, MarglikRound, marglik_training
from .predictive import Predictive

__all__ = ["Laplace", "Predictive", "marglik_training", "MarglikFit", "MarglikRound"]
