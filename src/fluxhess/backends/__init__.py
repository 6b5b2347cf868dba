"""Backend registry: which backends exist, which can run here, and ``auto``."""

from __future__ import annotations

from ..errors import BackendUnavailableError, JuliaUnavailableError, UnknownNameError, UnsupportedModelError
from . import sharded
from .base import Backend
from .jax import JaxBackend
from .julia import JULIA

NAMES = ("jax", "julia")
_REGISTRY: dict[str, Backend] = {"jax": JaxBackend(), "julia": JULIA}


def backends() -> dict[str, str | None]:
    """``{name: None}`` for each backend that can run here, ``{name: why not}`` otherwise.

    Never starts Julia and never downloads anything.
    """
    return {name: b.unavailable_reason() for name, b in _REGISTRY.items()}


def get(name: str, model=None) -> Backend:
    """The backend called ``name`` (or the one ``"auto"`` picks for ``model``), ready to use.

    ``auto`` is julia when a Julia runtime is already installed, else jax; it never
    installs anything. An explicitly named backend that cannot run raises at once.
    """
    julia = _REGISTRY["julia"]
    if name in ("auto", "jax") and model is not None and _runs_only_in_julia(model):
        reason = julia.unavailable_reason()
        if reason is not None:
            raise JuliaUnavailableError(
                f"{type(model).__name__} is a Flux model, which runs only in Julia, and Julia is unavailable here: "
                f"{reason}. (Once Julia runs, model.to_spec() also gives the same network as a fluxhess.Chain "
                "for backend='jax'.)"
            )
    if name == "auto":
        if julia.unavailable_reason() is None and (model is None or julia.unsupported_reason(model) is None):
            return julia
        name = "jax"
    if name not in _REGISTRY:
        raise UnknownNameError(f"backend must be 'auto' or one of {', '.join(NAMES)}; got {name!r}")
    backend = _REGISTRY[name]
    reason = backend.unavailable_reason()
    if reason is not None:
        error = JuliaUnavailableError if name == "julia" else BackendUnavailableError
        raise error(f"backend {name!r} is unavailable: {reason}")
    if model is not None:
        why = backend.unsupported_reason(model)
        if why is not None:
            raise UnsupportedModelError(why)
    return backend


def _runs_only_in_julia(model) -> bool:
    return _REGISTRY["jax"].unsupported_reason(model) is not None and _REGISTRY["julia"].unsupported_reason(model) is None


__all__ = ["Backend", "NAMES", "backends", "get", "sharded"]
