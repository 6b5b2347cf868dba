"""Flux models written in Julia: :func:`flux_model` and :class:`FluxModel`.

A :class:`FluxModel` holds Julia source whose last expression is a Flux model
(for example ``"Chain(Dense(2 => 5, tanh), Dense(5 => 1))"``). It runs on the
julia backend; when it is made only of spec layers, :meth:`FluxModel.to_spec`
turns it into a :class:`fluxhess.Chain` with the same weights, which every
backend runs.

The model is built in Julia by evaluating the source in a fresh module that has
``using Flux``, after ``Random.seed!(seed)``, then converted with ``f64``/``f32``
to the requested dtype and put in ``testmode!``. Its parameters θ are
``Flux.destructure(model)[1]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError


def _julia_backend():
    from .backends import _REGISTRY

    return _REGISTRY["julia"]


class FluxModel:
    """A Flux model from Julia source, for the julia backend.

    ``source``: Julia code whose last expression is the model; ``seed``: the seed of
    Julia's default RNG while the source runs (it fixes the initial weights).
    """

    def __init__(self, source: str, seed: int = 0, filename: str = "model source"):
        if not isinstance(source, str) or not source.strip():
            raise InputError(f"source must be a non-empty string of Julia code; got {source!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer; got {seed!r}")
        self.source = source
        self.seed = int(seed)
        self.filename = str(filename)
        self._params: np.ndarray | None = None

    @property
    def params(self) -> np.ndarray:
        """θ ``(P,)`` as float64, in Flux ``destructure`` order (a copy). Starts Julia."""
        if self._params is None:
            theta = _julia_backend().parameters(self, "float64")
            theta.setflags(write=False)
            self._params = theta
        return self._params.copy()

    @property
    def num_params(self) -> int:
        """P, the length of θ. Starts Julia."""
        if self._params is None:
            self.params
        return int(self._params.shape[0])

    def to_spec(self):
        """``(fluxhess.Chain, θ)`` with the same layers and weights, so any backend can run it.

        Raises :class:`fluxhess.UnsupportedModelError` naming the first layer that is
        not a spec layer (Dense with a spec activation, ``Base.Fix1(broadcast, act)``,
        ``softmax``, ``logsoftmax``, ``Flux.flatten``).
        """
        return _julia_backend().to_spec(self)

    def __repr__(self) -> str:
        src = self.source if len(self.source) <= 60 else self.source[:57] + "..."
        where = "" if self.filename == "model source" else f", filename={self.filename!r}"
        return f"FluxModel({src!r}, seed={self.seed}{where})"

    def __eq__(self, other) -> bool:
        return isinstance(other, FluxModel) and (self.source, self.seed) == (other.source, other.seed)

    def __hash__(self) -> int:
        return hash((self.source, self.seed))


def flux_model(source_or_path, seed: int = 0) -> FluxModel:
    """A :class:`FluxModel` from Julia source, or from the path of a ``.jl`` file.

    >>> m = flux_model("Chain(Dense(2 => 3, tanh), Dense(3 => 1))")
    >>> m
    FluxModel('Chain(Dense(2 => 3, tanh), Dense(3 => 1))', seed=0)

    The source's last expression must be the model. A string counts as a path
    when it ends in ``.jl`` (or is a ``pathlib.Path``).
    """
    if isinstance(source_or_path, os.PathLike) or (
        isinstance(source_or_path, str) and source_or_path.strip().endswith(".jl") and "\n" not in source_or_path
    ):
        path = Path(source_or_path).expanduser()
        if not path.is_file():
            raise InputError(f"no Julia file at {str(path)!r}")
        return FluxModel(path.read_text(encoding="utf-8"), seed, filename=str(path.resolve()))
    return FluxModel(source_or_path, seed)


__all__ = ["FluxModel", "flux_model"]
