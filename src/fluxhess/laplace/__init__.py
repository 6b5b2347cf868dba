"""Laplace approximations on top of any backend's curvature (laplace-torch's conventions).

:class:`Laplace` holds the posterior; :class:`Predictive` is what its ``predictive`` returns.
"""

from .core import Laplace
from .predictive import Predictive

__all__ = ["Laplace", "Predictive"]
