"""fluxhess: second-order derivatives of neural networks, from Flux/Zygote (Julia) or JAX.

``import fluxhess`` never starts Julia; the julia backend loads on first use.
"""

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
from .backends import backends
from .errors import (
    BackendError,
    BackendUnavailableError,
    FluxHessError,
    InputError,
    JuliaUnavailableError,
    MemoryBudgetError,
    UnknownNameError,
    UnsupportedModelError,
)
from .model import Activation, Chain, Dense, Flatten, ParamLayout

__version__ = "0.1.0"

__all__ = [
    # models
    "Chain",
    "Dense",
    "Activation",
    "Flatten",
    "ParamLayout",
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
    # backends
    "backends",
    # errors
    "FluxHessError",
    "InputError",
    "UnknownNameError",
    "BackendUnavailableError",
    "JuliaUnavailableError",
    "UnsupportedModelError",
    "MemoryBudgetError",
    "BackendError",
]
