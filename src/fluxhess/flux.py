"""Flux models written in Julia, run by the julia backend: :func:`flux_model` and :class:`FluxModel`.

They live with the julia backend (:mod:`fluxhess._backends.julia.flux_model`); this is their public door.
"""

from ._backends.julia import FluxModel, flux_model

__all__ = ["FluxModel", "flux_model"]
