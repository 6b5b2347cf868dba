"""fluxhess: second-order derivatives of neural networks, from Flux/Zygote (Julia) or JAX.

``import fluxhess`` never starts Julia; the julia backend loads on first use.

This module is the public door, with the submodules :mod:`fluxhess.jax`,
:mod:`fluxhess.flux`, :mod:`fluxhess.laplace` and :mod:`fluxhess.plot`. Internal modules
carry a leading underscore (``_backends``, ``_problem``, ``_validate``, ``_memory``,
``_progress``, ``_activations``) and may change without notice.
"""

from . import jax  # noqa: F401 (the JAX-native transforms: fluxhess.jax.laplacian(model) etc.)
from .api import (
    KronFactors,
    diagonal,
    divergence,
    empirical_fisher,
    forward,
    ggn,
    gradient,
    hessian,
    hvp,
    input_hessian,
    input_jacobian,
    kron,
    laplacian,
    loss,
    param_jacobian,
)
from ._backends import backends
from .compare import CompareReport, compare
from .convert import from_flax, from_torch
from .diagnostics import CurvatureDiagnostics, MemoryEstimate, curvature_diagnostics, estimate
from .errors import (
    BackendError,
    BackendUnavailableError,
    ConvergenceWarning,
    FluxHessError,
    FluxHessWarning,
    InputError,
    JuliaUnavailableError,
    MemoryBudgetError,
    NotFittedError,
    NumericalWarning,
    UnknownNameError,
    UnsupportedModelError,
)
from .flux import FluxModel, flux_model
from .jax_function import JaxFunction, from_jax
from .laplace import Laplace, MarglikFit, MarglikRound, Predictive, marglik_training
from .layers import (
    AdaptiveMeanPool, BatchNorm, Conv, CrossCor, Dropout, GlobalMeanPool, LayerNorm, MaxPool, MeanPool, Parallel,
    SkipConnection,
)
from .model import Activation, Chain, Dense, Flatten, ParamLayout
from .train import MapFit, fit_map
from ._torch_params import TorchParams, torch_params

__version__ = "0.1.0"

__all__ = [
    # models
    "Chain",
    "Dense",
    "Activation",
    "Flatten",
    "Conv",
    "CrossCor",
    "MeanPool",
    "MaxPool",
    "AdaptiveMeanPool",
    "GlobalMeanPool",
    "BatchNorm",
    "LayerNorm",
    "Dropout",
    "SkipConnection",
    "Parallel",
    "ParamLayout",
    "JaxFunction",
    # values
    "forward",
    "loss",
    "gradient",
    # curvature
    "hessian",
    "ggn",
    "empirical_fisher",
    "hvp",
    "diagonal",
    "kron",
    "KronFactors",
    # Jacobians and input derivatives
    "param_jacobian",
    "input_jacobian",
    "input_hessian",
    "laplacian",
    "divergence",
    # Laplace approximation and MAP training
    "Laplace",
    "Predictive",
    "fit_map",
    "MapFit",
    "marglik_training",
    "MarglikFit",
    "MarglikRound",
    # converters
    "from_flax",
    "from_torch",
    "from_jax",
    "torch_params",
    "TorchParams",
    # comparison and diagnostics
    "compare",
    "CompareReport",
    "curvature_diagnostics",
    "CurvatureDiagnostics",
    "estimate",
    "MemoryEstimate",
    # backends
    "backends",
    # Flux models from Julia source (julia backend)
    "FluxModel",
    "flux_model",
    # errors
    "FluxHessError",
    "InputError",
    "UnknownNameError",
    "BackendUnavailableError",
    "JuliaUnavailableError",
    "UnsupportedModelError",
    "MemoryBudgetError",
    "NotFittedError",
    "NumericalWarning",
    "FluxHessWarning",
    "ConvergenceWarning",
    "BackendError",
]
