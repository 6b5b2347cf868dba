"""The layer spec: ``Chain`` of ``Dense``, activation layers, ``Flatten`` and the layers of
:mod:`fluxhess.layers` (convolutions, pools, normalisations, Dropout, residual blocks).

A spec is a plain description of a network that maps one-to-one onto a Flux ``Chain``
(:meth:`Chain.to_flux`) and onto a JAX apply function. Parameters live outside the spec,
as one flat vector θ ``(P,)`` in Flux ``destructure`` order: layers in Chain order
(residual blocks depth first); per Dense layer ``vec(W)`` (column-major, ``W`` is
``(out, in)``, NumPy ``W.ravel(order="F")``) then the bias ``b`` ``(out,)``; every other
layer's arrays likewise, each Flux's array filled column-major. :class:`ParamLayout`
names every block of θ.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Protocol, Sequence, cast, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _memory as memory
from . import _validate as check
from .errors import InputError, UnknownNameError

from ._activations import COLUMNWISE, ELEMENTWISE  # noqa: F401 (imported from here by the backends)
from ._activations import NAMES as ACTIVATIONS  # noqa: F401
from . import layers as _layers
from .layers import Shape, check_activation as _check_activation
from ._origin import Origin, describe


@dataclass(frozen=True)
class Dense:
    """A dense layer `σ.(W x .+ b)`, Flux's `Dense(in => out, σ; bias)`.

    Args:
        in_features: the input width, a positive int.
        out_features: the output width, a positive int.
        activation: an elementwise NNlib activation: `"identity"` (or `None`), `"relu"`,
            `"tanh"`, `"sigmoid"`, `"softplus"`, `"elu"`, `"leakyrelu"`, `"swish"`, `"gelu"`
            (the tanh approximation). `"softmax"`/`"logsoftmax"` act on whole outputs:
            put them after the layer as `Activation("softmax")`.
        bias: whether the layer has a bias `b` `(out,)`.

    θ holds `vec(W)` (`W` `(out, in)`, column-major) then `b`: `in·out (+ out)` entries.

    Raises:
        InputError: a width that is not a positive int, a column-wise activation, a bias
            that is not a bool.
        UnknownNameError: an unknown activation name.

    Example:
        >>> Dense(2, 5, "tanh").num_params
        15
    """

    in_features: int
    out_features: int
    activation: str | None = None
    bias: bool = True

    def __post_init__(self):
        object.__setattr__(self, "in_features", check.positive_int("Dense in", self.in_features))
        object.__setattr__(self, "out_features", check.positive_int("Dense out", self.out_features))
        act = _check_activation(self.activation)
        if act in COLUMNWISE:
            raise InputError(
                f"Dense activation {act!r} acts on whole columns; put it in the Chain as its "
                f"own layer instead: Chain(Dense(...), Activation({act!r}))"
            )
        object.__setattr__(self, "activation", act)
        if not isinstance(self.bias, bool):
            raise InputError(f"Dense bias must be True or False; got {self.bias!r}")

    @property
    def num_params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    def param_blocks(self) -> list[tuple[str, Shape]]:
        blocks: list[tuple[str, Shape]] = [("weight", (self.out_features, self.in_features))]
        return blocks + [("bias", (self.out_features,))] if self.bias else blocks

    def output_shape(self, shape: Shape) -> Shape:
        """Acts on a sample's last axis, as Flux's Dense on its first."""
        if not shape or shape[-1] != self.in_features:
            raise InputError(f"{self!r} expects {self.in_features} features on a sample's last axis; got samples of shape {shape}")
        return (*shape[:-1], self.out_features)

    def __repr__(self) -> str:
        act = "" if self.activation == "identity" else f", {self.activation!r}"
        bias = "" if self.bias else ", bias=False"
        return f"Dense({self.in_features}, {self.out_features}{act}{bias})"

    def to_flux(self) -> str:
        act = "" if self.activation == "identity" else f", {self.activation}"
        bias = "" if self.bias else "; bias=false"
        return f"Dense({self.in_features} => {self.out_features}{act}{bias})"


@dataclass(frozen=True)
class Activation:
    """A parameter-free activation layer, e.g. `Activation("softmax")`.

    Args:
        name: an NNlib activation: the elementwise ones of `Dense`, or `"softmax"` /
            `"logsoftmax"` over each sample's outputs.

    Raises:
        UnknownNameError: an unknown name.
    """

    name: str

    def __post_init__(self):
        object.__setattr__(self, "name", _check_activation(self.name))

    num_params = 0

    def param_blocks(self) -> list:
        return []

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"

    def to_flux(self) -> str:
        if self.name in COLUMNWISE:
            return self.name
        return f"Base.Fix1(broadcast, {self.name})"


@dataclass(frozen=True)
class Flatten:
    """Flattens each sample: inputs `(N, a, b, …)` become `(N, a·b·…)` (row-major per
    sample), Flux's `Flux.flatten`. Only as the first layer of a Chain."""

    num_params = 0

    def param_blocks(self) -> list:
        return []

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def __repr__(self) -> str:
        return "Flatten()"

    def to_flux(self) -> str:
        return "Flux.flatten"


#: Every layer a Chain may hold.
LAYERS = (Dense, Activation, Flatten, *_layers.LAYERS)
Layer = Dense | Activation | Flatten | _layers.Conv | _layers.MeanPool | _layers.AdaptiveMeanPool | \
    _layers.GlobalMeanPool | _layers.BatchNorm | _layers.LayerNorm | _layers.Dropout | \
    _layers.SkipConnection | _layers.Parallel


@dataclass(frozen=True)
class Block:
    """One named block of θ: `theta[offset:offset + size]` reshaped (column-major) to `shape`.

    Attributes:
        name: e.g. `"layers.0.weight"` (`(out, in)`) or `"layers.0.bias"` (`(out,)`).
        layer: the index of its layer in the Chain.
        shape: the block's shape.
        offset: where it starts in θ.
    """

    name: str
    layer: int
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


class ParamLayout(Sequence[Block]):
    """The blocks of θ in Flux `destructure` order: `layers.{i}.weight` `(out, in)`,
    `layers.{i}.bias` `(out,)` for each Dense layer `i`.

    A sequence of `Block`s, indexed by position or by name (`layout["layers.0.weight"]`,
    `UnknownNameError` for a name it does not hold).

    Example:
        >>> Chain(Dense(2, 3), Dense(3, 1)).layout["layers.1.weight"]
        Block(name='layers.1.weight', layer=1, shape=(1, 3), offset=9)
    """

    def __init__(self, blocks: Sequence[Block]):
        self._blocks = tuple(blocks)
        self._by_name = {b.name: b for b in self._blocks}

    def __getitem__(self, index):
        if isinstance(index, str):
            try:
                return self._by_name[index]
            except KeyError:
                raise UnknownNameError(
                    f"no parameter block named {index!r}; the blocks are {', '.join(self.names)}"
                ) from None
        if isinstance(index, bool) or not isinstance(index, (int, np.integer, slice)):
            raise InputError(f"a layout is indexed by a block name or a position; got {index!r:.80}")
        return self._blocks[index]

    def __len__(self) -> int:
        return len(self._blocks)

    def __iter__(self) -> Iterator[Block]:
        return iter(self._blocks)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self._blocks]

    @property
    def num_params(self) -> int:
        return sum(b.size for b in self._blocks)

    def __repr__(self) -> str:
        rows = [f"  {b.name:<20} {str(b.shape):<12} [{b.offset}:{b.offset + b.size}]" for b in self]
        return "ParamLayout(\n" + "\n".join(rows) + "\n)"


class Chain:
    """A sequence of layers applied in order, like Flux's `Chain`: the model every
    fluxhess function takes. Parameters live outside it, as θ `(P,)` in Flux
    `destructure` order (`layout` names the blocks).

    Args:
        *layers: layers of the vocabulary (`Dense`, `Activation`, `Flatten`, and those of
            `fluxhess.layers`: `Conv`, `CrossCor`, pools, `BatchNorm`, `LayerNorm`,
            `Dropout`, `SkipConnection`, `Parallel`), or one list of them, with matching shapes.
        inputs: the input signature of a network of several arrays that it concatenates
            along the feature axis, `{name: width}` in the order of concatenation, e.g.
            `{"x": 2, "t": 1}`; the widths add up to the input width. Inputs `X` may then
            be the tuple of those arrays, and input derivatives take `wrt=` one or more
            names.

    Attributes:
        layers: the layers, a tuple.
        layout: the `ParamLayout` of θ.
        inputs: the input signature as `((name, width), …)`, or None.
        origin: where the Chain came from (`from_torch`, `from_flax`, a Flux model's
            `to_spec()`); `str(model)` prints it in that framework's words, `repr` as the
            expression that builds it.

        input_shape: one sample's shape in NumPy order, e.g. `(1, 28, 28)` for images
            `X (N, 1, 28, 28)` (PyTorch's NCHW; Flux's WHCN reversed). Needed when the Chain
            does not start with a Dense layer (after optional Flatten/Activation/Dropout
            layers), where it is `(in,)`. `X` may come as `(N, *input_shape)` or flattened,
            `(N, d)`.

    `model_kind` is `"chain"` (a `fluxhess.JaxFunction`'s is `"jax_function"`).

    Raises:
        InputError: no layers, shapes that do not chain, a bad signature or input shape.

    Example:
        >>> model = Chain(Dense(2, 5, "tanh"), Dense(5, 1))
        >>> model.num_params
        21
        >>> model.to_flux()
        'Chain(Dense(2 => 5, tanh), Dense(5 => 1))'
        >>> Chain(Dense(3, 1), inputs={"x": 2, "t": 1}).input_columns("t")
        [2]
        >>> from fluxhess.layers import Conv, MaxPool
        >>> cnn = Chain(Conv((3, 3), 1, 2, "relu"), MaxPool((2, 2)), Flatten(), Dense(8, 3), input_shape=(1, 6, 6))
        >>> cnn.shapes
        ((1, 6, 6), (2, 4, 4), (2, 2, 2), (8,), (3,))
        >>> cnn.layout["layers.0.weight"].shape   # Flux's (k_w, k_h, cin, cout)
        (3, 3, 1, 2)
    """

    model_kind = "chain"

    def __init__(
        self, *layers: Layer | Sequence[Layer], inputs: Mapping[str, int] | Sequence[tuple[str, int]] | None = None,
        input_shape: Sequence[int] | None = None,
    ):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        layers = cast("tuple[Layer, ...]", layers)
        if not layers:
            raise InputError("Chain needs at least one layer; got none")
        for path, layer in _walk(layers):
            if isinstance(layer, type) and issubclass(layer, LAYERS):
                call = "()" if layer in (Flatten, _layers.GlobalMeanPool) else "(...)"
                raise InputError(f"layer {path} is the class {layer.__name__}; write {layer.__name__}{call} instead")
            if not isinstance(layer, LAYERS):
                names = ", ".join(c.__name__ for c in LAYERS)
                raise InputError(f"layer {path} must be one of {names}; got {type(layer).__name__}")
        dense = [(i, l) for i, l in enumerate(layers) if isinstance(l, Dense)]
        for (i, a), (j, b) in zip(dense, dense[1:]):
            if a.out_features != b.in_features:
                raise InputError(
                    f"layer {j} expects {b.in_features} inputs but layer {i} gives {a.out_features}"
                )
        if not any(layer.num_params for layer in layers):
            raise InputError("Chain needs at least one layer with parameters (Dense, Conv, ...)")
        self.layers: tuple[Layer, ...] = tuple(layers)
        self.input_shape: Shape = _input_shape(self.layers, input_shape)
        shapes = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                shapes.append(layer.output_shape(shapes[-1]))
            except InputError as e:
                raise InputError(f"layer {i}: {e}") from None
        if len(shapes[-1]) != 1:
            raise InputError(
                f"a Chain must give each sample a vector of outputs; this one gives shape {shapes[-1]} "
                "(end it with Flatten())"
            )
        #: One sample's shape before each layer, and after the last (NumPy order).
        self.shapes: tuple[Shape, ...] = tuple(shapes)
        blocks, offset = [], 0
        for i, layer in enumerate(self.layers):
            for field, shape in layer.param_blocks():
                blocks.append(Block(f"layers.{i}.{field}", i, shape, offset))
                offset += blocks[-1].size
        self.layout = ParamLayout(blocks)
        self.inputs: tuple[tuple[str, int], ...] | None = _signature(inputs, self)

    def input_columns(self: _Signed, wrt: str | Sequence[str]) -> list[int]:
        """The columns of `X` `(N, d)` that the inputs named in `wrt` (a name or a list) occupy.

        Raises `InputError` for a Chain without an input signature, `UnknownNameError` for
        a name it does not have."""
        if self.inputs is None:
            raise InputError(
                f"wrt={wrt!r} names inputs, but this model has one input of width {self.in_features} "
                "and no input signature; build it with inputs={name: width, ...} (from_flax/from_torch "
                "do with inputs=(x, t))"
            )
        names = [wrt] if isinstance(wrt, str) else list(wrt) if isinstance(wrt, (list, tuple)) else None
        known = dict(self.inputs)
        if not names or any(not isinstance(n, str) or n not in known for n in names) or len(set(names)) < len(names):
            raise UnknownNameError(
                f"wrt must be one or more distinct input names of {', '.join(known)}; got {wrt!r}"
            )
        start, offsets = 0, {}
        for name, width in self.inputs:
            offsets[name] = range(start, start + width)
            start += width
        return [c for n in names for c in offsets[n]]

    @classmethod
    def mlp(cls, widths: Sequence[int], activation: str = "tanh", output: str | None = None, bias: bool = True) -> "Chain":
        """A multilayer perceptron `Chain.mlp([d, h1, ..., C], activation="tanh", output=None)`.

        Args:
            widths: the layer widths `[in, h1, …, out]`, at least two.
            activation: the hidden Dense layers' activation (a `Dense` activation name).
            output: an `Activation` after the last, linear, Dense layer (e.g. `"softmax"`),
                or None.
            bias: whether the Dense layers have biases.

        Example:
            >>> Chain.mlp([2, 16, 3], "tanh", output="softmax")
            Chain(Dense(2, 16, 'tanh'), Dense(16, 3), Activation('softmax'))
        """
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
            raise InputError(f"mlp widths must be a list of layer widths [in, h1, ..., out]; got {widths!r:.80}")
        widths = list(widths)
        if len(widths) < 2:
            raise InputError(f"mlp widths need at least [in, out]; got {widths}")
        layers: list[Layer] = [
            Dense(a, b, activation, bias) for a, b in zip(widths[:-2], widths[1:-1])
        ]
        layers.append(Dense(widths[-2], widths[-1], None, bias))
        if output is not None:
            layers.append(Activation(output))
        return cls(*layers)

    @property
    def dense_layers(self) -> list[tuple[int, Dense]]:
        return [(i, l) for i, l in enumerate(self.layers) if isinstance(l, Dense)]

    @property
    def dense_shapes(self) -> list[tuple[str, int, int, bool]]:
        """``(layer name, in, out, has bias)`` of every Dense layer, in order (the layers KFAC covers)."""
        return [(f"layers.{i}", l.in_features, l.out_features, l.bias) for i, l in self.dense_layers]

    def split(self, start: int) -> tuple["Chain | None", "Chain"]:
        """``(layers before start or None, layers from start on)``, each a Chain."""
        head = Chain(*self.layers[:start], inputs=self.inputs, input_shape=self.input_shape) if start else None
        return head, Chain(*self.layers[start:], input_shape=self.shapes[start])

    @property
    def in_features(self) -> int:
        """d, the length of one sample flattened (the product of :attr:`input_shape`)."""
        return math.prod(self.input_shape)

    @property
    def out_features(self) -> int:
        return self.shapes[-1][0]

    @property
    def is_mlp(self) -> bool:
        """Dense and Activation layers (after an optional leading Flatten) on vectors: the
        chains the structured Dense routes and KFAC cover."""
        body = self.layers[1:] if isinstance(self.layers[0], Flatten) else self.layers
        return len(self.input_shape) == 1 and all(isinstance(l, (Dense, Activation)) for l in body)

    @property
    def num_params(self) -> int:
        return self.layout.num_params

    @property
    def flattens_input(self) -> bool:
        """Whether samples may arrive as ``(N, a, b, …)`` (the Chain starts with Flatten, or its
        :attr:`input_shape` has several axes); they are flattened to ``(N, d)`` in C order."""
        return isinstance(self.layers[0], Flatten) or len(self.input_shape) > 1

    def init(self, seed: int = 0, dtype: str = "float64") -> np.ndarray:
        """θ `(P,)` of `dtype` (`"float64"` or `"float32"`) with Flux's default init:
        glorot_uniform weights, zero biases, unit scales.

        Weights are uniform on ``±sqrt(6 / (fan_in + fan_out))`` (a Dense ``(out, in)``:
        ``in``, ``out``; a Conv ``(k…, cin, cout)``: ``prod(k)·cin``, ``prod(k)·cout``, as
        Flux's ``nfan``); the random stream is NumPy's, not Julia's, so the numbers differ
        from Flux's (the distribution does not).

        Raises :class:`~fluxhess.errors.MemoryBudgetError` before allocating when θ cannot fit
        (it is built in float64, one layer's draw beside it, then cast to ``dtype``).
        """
        rng = np.random.default_rng(check.seed("seed", seed))
        out_dtype = check.float_dtype(dtype)
        largest = max((b.size for b in self.layout), default=0)
        memory.require("init", 8 * (self.num_params + largest) + out_dtype.itemsize * self.num_params, (self.num_params,))
        theta = np.zeros(self.num_params, dtype=np.float64)
        for block in self.layout:
            field = block.name.rsplit(".", 1)[1]
            if field == "weight":
                shape = block.shape
                if len(shape) == 2:
                    fan_out, fan_in = shape
                else:
                    fan_in, fan_out = math.prod(shape[:-2]) * shape[-2], math.prod(shape[:-2]) * shape[-1]
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                theta[block.slice] = rng.uniform(-limit, limit, size=block.size)
            elif field == "scale":
                theta[block.slice] = 1.0
        return theta.astype(out_dtype)

    def unflatten(self, params: ArrayLike) -> dict[str, np.ndarray]:
        """Split θ ``(P,)`` into ``{block name: array}``; weights ``(out, in)``."""
        params = np.asarray(params)
        if params.shape != (self.num_params,):
            raise InputError(f"params must have shape ({self.num_params},); got {params.shape}")
        return {b.name: params[b.slice].reshape(b.shape, order="F") for b in self.layout}

    def flatten(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`unflatten`: ``{block name: array}`` → θ ``(P,)``."""
        if not hasattr(arrays, "keys"):
            raise InputError(f"arrays must be a dict {{block name: array}}; got {type(arrays).__name__}")
        missing = set(self.layout.names) - set(arrays)
        extra = set(arrays) - set(self.layout.names)
        if missing or extra:
            raise InputError(
                f"arrays must have exactly the blocks {self.layout.names}; "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        parts = []
        for b in self.layout:
            a = np.asarray(arrays[b.name])
            if a.shape != b.shape:
                raise InputError(f"{b.name} must have shape {b.shape}; got {a.shape}")
            parts.append(a.ravel(order="F"))
        return np.concatenate(parts)

    def to_flux(self) -> str:
        """The Julia source of the same model as a Flux ``Chain``."""
        return "Chain(" + ", ".join(layer.to_flux() for layer in self.layers) + ")"

    #: Where this Chain came from (``from_torch``, ``from_flax``, a Flux model's ``to_spec``);
    #: ``str(model)`` prints it in that framework's words. Not part of equality.
    origin: Origin = Origin()

    def with_origin(self, origin: Origin) -> "Chain":
        """The same Chain, printing in the words of ``origin``'s framework."""
        twin = copy.copy(self)  # every attribute shared (all immutable); only the origin differs
        twin.origin = origin
        return twin

    def __repr__(self) -> str:
        inputs = "" if self.inputs is None else f", inputs={dict(self.inputs)!r}"
        shape = "" if _input_shape(self.layers, None, required=False) == self.input_shape else f", input_shape={self.input_shape!r}"
        return "Chain(" + ", ".join(map(repr, self.layers)) + inputs + shape + ")"

    def __str__(self) -> str:
        return describe(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """A notebook shows the model as ``print`` does, in its framework's words."""
        printer.text(str(self))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @property
    def _key(self) -> tuple:
        return (self.layers, self.inputs, self.input_shape)


def _walk(layers, prefix: str = ""):
    """``(path, layer)`` for every layer, residual blocks opened (paths like ``2.0``)."""
    for i, layer in enumerate(layers):
        path = f"{prefix}{i}"
        yield path, layer
        if not isinstance(layer, type):
            yield from _walk(_layers.children(layer), path + ".")


@overload
def _input_shape(layers, given, required: Literal[True] = ...) -> Shape: ...
@overload
def _input_shape(layers, given, required: bool) -> Shape | None: ...
def _input_shape(layers, given, required: bool = True) -> Shape | None:
    """One sample's shape: ``given`` (NumPy order), or ``(in,)`` of the first Dense layer when
    only Flatten, Activation and Dropout layers come before it."""
    if given is not None:
        if isinstance(given, int) and not isinstance(given, bool):
            given = (given,)
        if not isinstance(given, (tuple, list)) or not given:
            raise InputError(f"input_shape must be one sample's shape, a tuple of ints such as (1, 28, 28); got {given!r}")
        return tuple(check.positive_int("input_shape entry", n) for n in given)
    for layer in layers:
        if isinstance(layer, Dense):
            return (layer.in_features,)
        if not isinstance(layer, (Flatten, Activation, _layers.Dropout)):
            break
    if not required:
        return None
    raise InputError(
        f"this Chain starts with {type(layer).__name__}, so it needs input_shape=(one sample's shape), "
        "NumPy order, e.g. Chain(Conv((3, 3), 1, 4), ..., input_shape=(1, 28, 28))"
    )


class _InputWidth(Protocol):
    """What :func:`_signature` reads of a model: a :class:`Chain` or a :class:`~fluxhess.JaxFunction`."""

    @property
    def in_features(self) -> int: ...

    @property
    def flattens_input(self) -> bool: ...


class _Signed(_InputWidth, Protocol):
    """A model with an input signature (:meth:`Chain.input_columns`, shared by ``JaxFunction``)."""

    @property
    def inputs(self) -> tuple[tuple[str, int], ...] | None: ...


def _signature(inputs, chain: _InputWidth) -> tuple[tuple[str, int], ...] | None:
    """``inputs`` (``{name: width}`` or ``[(name, width), ...]``) as a tuple of pairs, checked."""
    if inputs is None:
        return None
    try:
        pairs = tuple((name, check.positive_int(f"input {name!r} width", width)) for name, width in dict(inputs).items())
    except (TypeError, ValueError):
        raise InputError(f"inputs must map input names to widths, e.g. {{'x': 2, 't': 1}}; got {inputs!r}") from None
    if not pairs or any(not isinstance(name, str) or not name.isidentifier() for name, _ in pairs):
        raise InputError(f"inputs must map input names (identifiers) to widths, e.g. {{'x': 2, 't': 1}}; got {inputs!r}")
    if chain.flattens_input or sum(w for _, w in pairs) != chain.in_features:
        raise InputError(
            f"the widths of inputs {dict(pairs)} must add up to the model's input width {chain.in_features} "
            "(and the model must not start with Flatten)"
        )
    return pairs

