"""The julia backend (:class:`JuliaBackend`, the process's one :data:`JULIA`) and Flux models:

- :mod:`.backend` — finding and starting Julia, loading the bundled FluxHess.jl, one call per
  quantity, installing (:func:`setup_julia`);
- :mod:`.flux_model` — :class:`FluxModel`, a Flux model built by Julia source, public as
  :mod:`fluxhess.flux`.

All of it is internal; the public door is :mod:`fluxhess`.
"""

from .backend import (
    JULIA,
    JuliaBackend,
    find_runtime,
    julia_error,
    julia_message,
    juliapkg_state,
    module_path,
    package_path,
    setup_julia,
)
from .flux_model import FluxModel, flux_model

__all__ = [
    "JULIA",
    "FluxModel",
    "JuliaBackend",
    "find_runtime",
    "flux_model",
    "julia_error",
    "julia_message",
    "juliapkg_state",
    "module_path",
    "package_path",
    "setup_julia",
]
