"""Flux models written in Julia: :func:`flux_model` and :class:`FluxModel` (public as :mod:`fluxhess.flux`).

A :class:`FluxModel` holds Julia source whose last expression is a Flux model
(for example ``"Chain(Dense(2 => 5, tanh), Dense(5 => 1))"``), exactly as its user
wrote it: anonymous functions, reshapes, Conv layers, weights loaded with
``Flux.loadmodel!``. It runs on the julia backend; when its layers have spec twins
(Dense, Conv, CrossCor, the pools, BatchNorm and LayerNorm in test mode, Dropout,
``SkipConnection(…, +)``, ``Parallel(+, …)``, and parameter-free layers identified by
what they do), :meth:`FluxModel.to_spec` turns it into a :class:`fluxhess.Chain` with
the same weights, which every backend runs.

The model is built in Julia by evaluating the source in a fresh module that has
``using Flux``, after ``Random.seed!(seed)``, then converted with ``f64``/``f32``
to the requested dtype and put in ``testmode!``. Its parameters θ are
``Flux.destructure(model)[1]``.

Inputs: ``X`` ``(N, a, b, …)``, batch first in C order as NumPy holds it, reaches the
model as the Julia array ``(…, b, a, N)`` (the same memory; PyTorch's NCHW is Flux's
WHCN). Input derivatives are with respect to each sample flattened in C order,
``d = a·b·…``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import InputError
from ...model import Block, Chain, ParamLayout
from .backend import JULIA


class FluxModel:
    """A Flux model from Julia source, for the julia backend.

    ``source``: Julia code whose last expression is the model; ``seed``: the seed of
    Julia's default RNG while the source runs (it fixes the initial weights).
    ``layers``: ``(start, stop)``, 0-based, to use only those layers of the flattened
    layer list (nested Chains opened), as :meth:`part` gives; ``input_shape``: one
    sample's shape in NumPy order, as the fluxhess functions set it for N-d ``X``.
    """

    def __init__(
        self, source: str, seed: int = 0, filename: str = "model source", *,
        layers: tuple[int, int] | None = None, input_shape: tuple[int, ...] | None = None,
    ) -> None:
        if not isinstance(source, str) or not source.strip():
            raise InputError(f"source must be a non-empty string of Julia code; got {source!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer; got {seed!r}")
        self.source = source
        self.seed = int(seed)
        self.filename = str(filename)
        self.layers = None if layers is None else (int(layers[0]), int(layers[1]))
        self.input_shape = None if input_shape is None else tuple(int(n) for n in input_shape)
        self._params: np.ndarray | None = None
        self._layer_table: list | None = None

    # -- views of the same model ----------------------------------------------
    def _view(self, layers=None, input_shape=None) -> "FluxModel":
        return FluxModel(self.source, self.seed, self.filename, layers=layers, input_shape=input_shape)

    def with_input_shape(self, shape: tuple[int, ...]) -> "FluxModel":
        """The same model fed samples of ``shape`` (NumPy order), e.g. ``(2, 1, 1)`` for ``X (N, 2, 1, 1)``;
        ``None``: as written (a ``d × N`` matrix)."""
        return self._view(self.layers, None if shape is None else tuple(shape))

    def part(self, start: int, stop: int | None = None) -> "FluxModel":
        """Layers ``start:stop`` (0-based, of :attr:`layer_summaries`) as a model of their own."""
        n = len(self._table())
        stop = n if stop is None else stop
        if not 0 <= start < stop <= n:
            raise InputError(f"a part of this model needs 0 <= start < stop <= {n} (its layers); got {start}:{stop}")
        offset = self.layers[0] if self.layers is not None else 0
        return self._view((offset + start, offset + stop))

    @property
    def key(self) -> tuple:
        """What identifies the Julia model (the dtype aside)."""
        return (self.source, self.seed, self.filename, self.layers, self.input_shape)

    # -- what Julia says about it -----------------------------------------------
    def _table(self) -> list:
        if self._layer_table is None:
            self._layer_table = JULIA.layer_table(self)
        return self._layer_table

    @property
    def params(self) -> np.ndarray:
        """θ ``(P,)`` as float64, in Flux ``destructure`` order (a copy). Starts Julia."""
        if self._params is None:
            theta = JULIA.parameters(self, "float64")
            theta.setflags(write=False)
            self._params = theta
        return self._params.copy()

    @property
    def num_params(self) -> int:
        """P, the length of θ. Starts Julia."""
        if self._params is None:
            self.params
        return int(self._params.shape[0])

    @property
    def layout(self) -> ParamLayout:
        """θ's blocks, ``layers.{i}.{field}`` (``i`` 0-based over the flattened layers, shape in Julia order)."""
        return ParamLayout(
            [Block(f"layers.{i}.{b['name']}", i, tuple(b["shape"]), b["offset"]) for i, layer in enumerate(self._table()) for b in layer["blocks"]]
        )

    @property
    def layer_summaries(self) -> list[str]:
        """How Flux prints each layer of the flattened layer list."""
        return [layer["summary"] for layer in self._table()]

    @property
    def layer_specs(self) -> list:
        """Each parameter-free layer's spec twin (``Activation``/``Flatten``) when it is identified, else None."""
        return [layer["spec"] for layer in self._table()]

    @property
    def dense_shapes(self) -> list[tuple[str, int, int, bool]]:
        """``(layer name, in, out, has bias)`` of every Dense layer, in order (the layers KFAC covers)."""
        return [(f"layers.{i}", *layer["dense"]) for i, layer in enumerate(self._table()) if layer["dense"] is not None]

    def split(self, start: int) -> tuple["FluxModel | None", "FluxModel"]:
        """``(layers before start or None, layers from start on)``."""
        return (self.part(0, start) if start else None), self.part(start)

    def to_spec(self, input_shape: tuple[int, ...] | None = None) -> tuple[Chain, np.ndarray]:
        """``(fluxhess.Chain, θ)`` with the same layers and weights, so any backend can run it.

        ``input_shape``: one sample's shape, NumPy order (``(1, 28, 28)`` for LeNet-5);
        by default this model's own (:meth:`with_input_shape`), if any; a model that
        starts with a Conv or a pool needs one. Flux's layers map onto the spec's
        (``fluxhess.layers``): Conv (a true convolution) and CrossCor with their stride,
        padding, dilation and groups, MeanPool, MaxPool, AdaptiveMeanPool,
        GlobalMeanPool, BatchNorm with its running statistics, LayerNorm (its ϵ as the
        loaded Flux applies it: Flux before 0.16.11 adds ϵ² to the variance), Dropout (the
        identity), ``SkipConnection(layer, +)`` and ``Parallel(+, …)`` with their layers.
        Parameter-free layers are identified by what they do: a function that maps a
        probe batch to ``reshape(x, :, N)`` is a ``Flatten`` (on the samples it gets, when
        ``input_shape`` is known); an elementwise function is an
        ``Activation`` when it equals an NNlib activation on inputs from -1e8 to 1e8
        (so relu6, a clipped tanh or a scaled sigmoid are refused). Raises
        :class:`fluxhess.UnsupportedModelError` naming the first layer without a spec
        twin, and why.
        """
        from ..._origin import Origin

        chain, theta = JULIA.to_spec(self, self.input_shape if input_shape is None else input_shape)
        return chain.with_origin(Origin("flux")), theta

    def __repr__(self) -> str:
        src = self.source if len(self.source) <= 60 else self.source[:57] + "..."
        extra = "" if self.filename == "model source" else f", filename={self.filename!r}"
        extra += "" if self.layers is None else f", layers={self.layers}"
        extra += "" if self.input_shape is None else f", input_shape={self.input_shape}"
        return f"FluxModel({src!r}, seed={self.seed}{extra})"

    def __eq__(self, other) -> bool:
        return isinstance(other, FluxModel) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


def flux_model(source_or_path: str | os.PathLike, seed: int = 0) -> FluxModel:
    """A `FluxModel` from Julia source, or from the path of a `.jl` file (julia backend).

    Args:
        source_or_path: Julia source whose last expression is the model (evaluated with
            `using Flux` in a fresh module), or the path of a `.jl` file.
        seed: `Random.seed!(seed)` before the source runs (its initial weights).

    Returns:
        A `FluxModel`; nothing runs until it is used (then Julia starts, once per process).

    Raises:
        InputError: a path to no file.

    Example:
        >>> m = flux_model("Chain(Dense(2 => 3, tanh), Dense(3 => 1))")
        >>> m
        FluxModel('Chain(Dense(2 => 3, tanh), Dense(3 => 1))', seed=0)

    The source's last expression must be the model. A string counts as a path
    when it ends in ``.jl`` (or is a ``pathlib.Path``). Trained weights come in
    through Flux's own API inside the source, e.g.::

        flux_model('''
            using Serialization
            model = Chain(Dense(2 => 5, tanh), Dense(5 => 1))
            Flux.loadmodel!(model, deserialize("state.jls"))   # saved with serialize(path, Flux.state(model))
        ''')

    and ``m.params`` is then θ of those weights.
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
