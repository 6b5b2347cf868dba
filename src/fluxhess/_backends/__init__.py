"""Backend registry: which backends exist, which can run here, and ``auto``.

Each backend is a package of its own (:mod:`.jax`, :mod:`.julia`) satisfying the
:class:`~.base.Backend` Protocol: its methods take the call's
:class:`fluxhess._problem.Problem`. All of it is internal; the public door is :mod:`fluxhess`.
"""

from __future__ import annotations

from ..errors import BackendUnavailableError, JuliaUnavailableError, UnknownNameError, UnsupportedModelError
from .base import Backend
from .jax import JaxBackend, sharded
from .julia import JULIA

NAMES = ("jax", "julia")
#: Each backend of this process by name (the same objects :func:`get` hands out).
REGISTRY: dict[str, Backend] = {"jax": JaxBackend(), "julia": JULIA}


def backends() -> dict[str, str | None]:
    """Which backends can run here, and why not.

    Never starts Julia and never downloads anything.

    Returns:
        `{name: None}` for each backend that can run here, `{name: why not}` (with how to
        fix it) otherwise; names `"julia"` and `"jax"`.

    Example:
        >>> import fluxhess as fh
        >>> fh.backends()["jax"] is None
        True
    """
    return {name: b.unavailable_reason() for name, b in REGISTRY.items()}


def get(name: str, model=None) -> Backend:
    """The backend called ``name`` (or the one ``"auto"`` picks for ``model``), ready to use.

    ``auto`` is julia when a Julia runtime is already installed, else jax; it never
    installs anything. An explicitly named backend that cannot run raises at once.
    """
    julia = REGISTRY["julia"]
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
    if name not in REGISTRY:
        raise UnknownNameError(f"backend must be 'auto' or one of {', '.join(NAMES)}; got {name!r}")
    backend = REGISTRY[name]
    # A model the backend can never run is refused first: installing it would not help.
    why = None if model is None else backend.unsupported_reason(model)
    if why is not None:
        raise UnsupportedModelError(why)
    reason = backend.unavailable_reason()
    if reason is not None:
        error = JuliaUnavailableError if name == "julia" else BackendUnavailableError
        raise error(f"backend {name!r} is unavailable: {reason}")
    return backend


def _runs_only_in_julia(model) -> bool:
    return REGISTRY["jax"].unsupported_reason(model) is not None and REGISTRY["julia"].unsupported_reason(model) is None


__all__ = ["Backend", "NAMES", "REGISTRY", "backends", "get", "sharded"]
