"""The spec's layers beyond Dense: convolutions, pools, normalisations, Dropout, residual blocks.

Every layer maps one-to-one onto a Flux layer (``to_flux()`` gives its Julia source) and
onto a JAX function (:mod:`fluxhess._backends.jax.layers`). Shapes are one sample's, in
NumPy order: a 2-d convolution takes ``(C, H, W)`` (PyTorch's NCHW without the batch),
which is Flux's ``(W, H, C)`` reversed (the same memory). Every size and tuple a layer
takes (``kernel_size``, ``stride``, ``padding``, ``dilation``, a pool's ``window``, a
LayerNorm's ``shape``) is in that NumPy order too; ``to_flux()`` reverses them.

θ keeps Flux's ``destructure`` order. A layer's blocks (:meth:`param_blocks`) are
``(field, shape)`` with the shape in Julia order, filled column-major from θ, as for
Dense: a Conv weight block is Flux's ``(k_w, k_h, cin ÷ groups, cout)``, which is the
C-order array ``(cout, cin ÷ groups, k_h, k_w)`` (PyTorch's layout) read the other way.

Conventions that differ between frameworks, and which layer holds which:

- ``Conv`` is Flux's ``Conv``: a true convolution (the kernel flipped in every spatial
  axis). ``CrossCor`` is Flux's ``CrossCor``: no flip, as PyTorch's ``Conv2d`` and Flax's
  ``nn.Conv`` compute.
- ``padding="same"`` is Flux's ``SamePad()``: ``(k_eff - 1)`` in all per axis, the larger
  half first (``k_eff = k + (k - 1)(dilation - 1)``); PyTorch and Flax put the larger
  half last, so their converters write explicit pairs.
- ``MeanPool`` divides by the whole window, padding included (NNlib, and PyTorch's and
  Flax's defaults); ``MaxPool`` pads with -∞.
- ``BatchNorm`` in inference mode: ``γ (x - μ) / sqrt(σ² + ϵ) + β`` per channel (axis 0 of
  a sample) with the running ``mean`` μ and ``var`` σ² fixed; θ holds β then γ (Flux's
  field order). ``LayerNorm(shape)`` normalises over a sample's trailing ``shape`` axes,
  ``(x - mean) / sqrt(var + ϵ)`` (Flux ≥ 0.16.11 and PyTorch; Flux 0.16.0–0.16.10 added
  ϵ² instead), then ``γ ⋅ + β``; θ holds γ then β (Flux's ``Scale``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, cast

from . import _validate as check
from ._activations import COLUMNWISE, NAMES as ACTIVATIONS
from .errors import InputError, UnknownNameError

if TYPE_CHECKING:
    from .model import Layer

Shape = tuple[int, ...]
_Pads = tuple[tuple[int, int], ...]


def check_activation(name) -> str:
    """An activation name of the registry (``None`` is ``"identity"``)."""
    if name is None:
        return "identity"
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise UnknownNameError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {name!r}")
    return name


def _elementwise(layer: str, name) -> str:
    act = check_activation(name)
    if act in COLUMNWISE:
        raise InputError(f"{layer} activation {act!r} acts on whole columns; put it in the Chain as its own layer")
    return act


def _ints(argument: str, value, rank: int, minimum: int = 1) -> tuple[int, ...]:
    """An int or a tuple of ``rank`` ints, each >= minimum, as a tuple."""
    values = (value,) * rank if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(values, (tuple, list))
        or len(values) != rank
        or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values)
    ):
        raise InputError(f"{argument} must be an int >= {minimum} or a tuple of {rank} of them; got {value!r}")
    return tuple(int(v) for v in values)


def _padding(argument: str, value, rank: int):
    """``"same"``, or ``((lo, hi), …)`` per spatial axis from an int, ``rank`` ints, or ``rank`` pairs."""
    if value == "same":
        return "same"
    if isinstance(value, (tuple, list)) and len(value) == rank and all(isinstance(p, (tuple, list)) for p in value):
        pairs = tuple(tuple(p) for p in value)
        if all(len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p) for p in pairs):
            return pairs
        raise InputError(f"{argument} pairs must be (lo, hi) of ints >= 0; got {value!r}")
    return tuple((p, p) for p in _ints(argument, value, rank, minimum=0))


def same_padding(kernel: Shape, dilation: Shape) -> tuple[tuple[int, int], ...]:
    """Flux's ``SamePad()``: ``k_eff - 1`` per axis, ``(ceil, floor)`` of its half."""
    total = [k + (k - 1) * (d - 1) - 1 for k, d in zip(kernel, dilation)]
    return tuple(((t + 1) // 2, t // 2) for t in total)


def _jl(values) -> str:
    """A Julia tuple literal, ``(3,)`` for one element."""
    values = tuple(values)
    return f"({values[0]},)" if len(values) == 1 else "(" + ", ".join(map(str, values)) + ")"


def _jl_pad(padding, rank: int) -> str:
    """Flux's ``pad``: ``SamePad()`` or ``(lo_1, hi_1, lo_2, hi_2, …)`` in Julia's axis order."""
    if padding == "same":
        return "SamePad()"
    return _jl(v for pair in reversed(padding) for v in pair)


def _windowed(shape: Shape, kernel, stride, pads, dilation, layer: str) -> Shape:
    """Spatial output sizes of a window sliding over ``shape``'s spatial axes."""
    out = []
    for n, k, s, (lo, hi), d in zip(shape, kernel, stride, pads, dilation):
        span = n + lo + hi - (k - 1) * d - 1
        if span < 0:
            raise InputError(f"{layer}: its window ({k}, dilation {d}) is larger than the padded input ({n} + {lo} + {hi})")
        out.append(span // s + 1)
    return tuple(out)


def _spatial(shape: Shape, rank: int, layer: str) -> None:
    if len(shape) != rank + 1:
        raise InputError(
            f"{layer} takes samples (C, {', '.join('spatial' for _ in range(rank))}) of rank {rank + 1}; got shape {shape}"
        )


# ---------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """``Conv(kernel_size, in_channels, out_channels, activation=None, *, stride=1, padding=0,
    dilation=1, groups=1, bias=True)``: Flux's ``Conv``, a true convolution (kernel flipped).

    ``kernel_size``: a tuple of 1 to 3 ints (its length is the number of spatial axes),
    NumPy order (``(k_h, k_w)``). ``padding``: ``"same"`` (Flux's ``SamePad()``), an int,
    one int per axis, or ``(lo, hi)`` per axis. Samples are ``(in_channels, *spatial)``.
    θ: ``weight`` ``(*reversed(kernel_size), in_channels ÷ groups, out_channels)`` (Flux's
    array; column-major), then ``bias`` ``(out_channels,)``.

    >>> Conv((5, 5), 1, 6, "relu").to_flux()
    'Conv((5, 5), 1 => 6, relu)'
    """

    kernel_size: tuple[int, ...]
    in_channels: int
    out_channels: int
    activation: str | None = None
    stride: int | tuple = 1
    padding: int | str | tuple = 0
    dilation: int | tuple = 1
    groups: int = 1
    bias: bool = True

    #: Whether the kernel is flipped (a true convolution); CrossCor sets False.
    flips_kernel = True
    flux_name = "Conv"

    def __post_init__(self):
        name = type(self).__name__
        k = self.kernel_size
        if isinstance(k, int) or not isinstance(k, (tuple, list)) or not 1 <= len(k) <= 3:
            raise InputError(f"{name} kernel_size must be a tuple of 1 to 3 ints (one per spatial axis); got {k!r}")
        rank = len(k)
        set_ = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731
        set_("kernel_size", _ints(f"{name} kernel_size", tuple(k), rank))
        set_("in_channels", check.positive_int(f"{name} in_channels", self.in_channels))
        set_("out_channels", check.positive_int(f"{name} out_channels", self.out_channels))
        set_("activation", _elementwise(name, self.activation))
        set_("stride", _ints(f"{name} stride", self.stride, rank))
        set_("dilation", _ints(f"{name} dilation", self.dilation, rank))
        set_("padding", _padding(f"{name} padding", self.padding, rank))
        set_("groups", check.positive_int(f"{name} groups", self.groups))
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise InputError(
                f"{name} groups={self.groups} must divide in_channels={self.in_channels} and out_channels={self.out_channels}"
            )
        if not isinstance(self.bias, bool):
            raise InputError(f"{name} bias must be True or False; got {self.bias!r}")

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    @property
    def pads(self) -> tuple[tuple[int, int], ...]:
        """``(lo, hi)`` per spatial axis, ``"same"`` resolved as Flux does."""
        # __post_init__ normalised dilation to a tuple and padding to "same" or (lo, hi) pairs
        return same_padding(self.kernel_size, cast(Shape, self.dilation)) if self.padding == "same" else cast(_Pads, self.padding)

    @property
    def weight_shape(self) -> Shape:
        """The kernel as PyTorch lays it out (C order): ``(out, in ÷ groups, *kernel_size)``."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def param_blocks(self) -> list[tuple[str, Shape]]:
        blocks = [("weight", tuple(reversed(self.weight_shape)))]
        return blocks + [("bias", (self.out_channels,))] if self.bias else blocks

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for _, s in self.param_blocks())

    def output_shape(self, shape: Shape) -> Shape:
        _spatial(shape, self.rank, repr(self))
        if shape[0] != self.in_channels:
            raise InputError(f"{self!r} expects {self.in_channels} input channels; got samples of shape {shape}")
        return (self.out_channels, *_windowed(shape[1:], self.kernel_size, self.stride, self.pads, self.dilation, repr(self)))

    def _options(self, flux: bool) -> list[str]:
        rank, out = self.rank, []
        fmt = (lambda t: _jl(reversed(t))) if flux else (lambda t: repr(t))  # noqa: E731
        if self.stride != (1,) * rank:
            out.append(f"stride={fmt(self.stride)}")
        if self.padding != ((0, 0),) * rank:
            out.append(f"pad={_jl_pad(self.padding, rank)}" if flux else f"padding={self.padding!r}")
        if self.dilation != (1,) * rank:
            out.append(f"dilation={fmt(self.dilation)}")
        if self.groups != 1:
            out.append(f"groups={self.groups}")
        if not self.bias:
            out.append("bias=false" if flux else "bias=False")
        return out

    def __repr__(self) -> str:
        act = "" if self.activation == "identity" else f", {self.activation!r}"
        opts = "".join(", " + o for o in self._options(flux=False))
        return f"{type(self).__name__}({self.kernel_size!r}, {self.in_channels}, {self.out_channels}{act}{opts})"

    def to_flux(self) -> str:
        act = "" if self.activation == "identity" else f", {self.activation}"
        opts = self._options(flux=True)
        kw = "; " + ", ".join(opts) if opts else ""
        return f"{self.flux_name}({_jl(reversed(self.kernel_size))}, {self.in_channels} => {self.out_channels}{act}{kw})"


@dataclass(frozen=True, repr=False)
class CrossCor(Conv):
    """Flux's ``CrossCor``: as :class:`Conv` but a cross-correlation (no flip), which is what
    PyTorch's ``Conv1d/2d/3d`` and Flax's ``nn.Conv`` compute. Groups are not in Flux's
    ``CrossCor``; ``groups > 1`` is refused.

    >>> CrossCor((3,), 2, 4, padding="same").to_flux()
    'CrossCor((3,), 2 => 4; pad=SamePad())'
    """

    flips_kernel = False
    flux_name = "CrossCor"

    def __post_init__(self):
        super().__post_init__()
        if self.groups != 1:
            raise InputError(f"CrossCor has no groups in Flux; got groups={self.groups} (use Conv with a flipped kernel)")


# ---------------------------------------------------------------------------
# Pools
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanPool:
    """``MeanPool(window, *, stride=window, padding=0)``: the mean over each window,
    padding counted (NNlib). ``window`` a tuple of 1 to 3 ints, NumPy order.

    >>> MeanPool((2, 2)).to_flux()
    'MeanPool((2, 2))'
    """

    window: tuple[int, ...]
    stride: int | tuple | None = None
    padding: int | str | tuple = 0

    num_params = 0
    flux_name = "MeanPool"

    def __post_init__(self):
        name = type(self).__name__
        w = self.window
        if isinstance(w, int) or not isinstance(w, (tuple, list)) or not 1 <= len(w) <= 3:
            raise InputError(f"{name} window must be a tuple of 1 to 3 ints (one per spatial axis); got {w!r}")
        rank = len(w)
        object.__setattr__(self, "window", _ints(f"{name} window", tuple(w), rank))
        stride = self.window if self.stride is None else self.stride
        object.__setattr__(self, "stride", _ints(f"{name} stride", stride, rank))
        object.__setattr__(self, "padding", _padding(f"{name} padding", self.padding, rank))

    @property
    def rank(self) -> int:
        return len(self.window)

    @property
    def pads(self) -> tuple[tuple[int, int], ...]:
        # __post_init__ normalised padding to "same" or (lo, hi) pairs
        return same_padding(self.window, (1,) * self.rank) if self.padding == "same" else cast(_Pads, self.padding)

    def param_blocks(self) -> list:
        return []

    def output_shape(self, shape: Shape) -> Shape:
        _spatial(shape, self.rank, repr(self))
        return (shape[0], *_windowed(shape[1:], self.window, self.stride, self.pads, (1,) * self.rank, repr(self)))

    def __repr__(self) -> str:
        opts = "" if self.stride == self.window else f", stride={self.stride!r}"
        opts += "" if self.padding == ((0, 0),) * self.rank else f", padding={self.padding!r}"
        return f"{type(self).__name__}({self.window!r}{opts})"

    def to_flux(self) -> str:
        opts = []
        if self.padding != ((0, 0),) * self.rank:
            opts.append(f"pad={_jl_pad(self.padding, self.rank)}")
        if self.stride != self.window:
            opts.append(f"stride={_jl(reversed(cast(Shape, self.stride)))}")  # a tuple after __post_init__
        kw = "; " + ", ".join(opts) if opts else ""
        return f"{self.flux_name}({_jl(reversed(self.window))}{kw})"


@dataclass(frozen=True, repr=False)
class MaxPool(MeanPool):
    """``MaxPool(window, *, stride=window, padding=0)``: the largest value in each window
    (padding is -∞). Arguments as :class:`MeanPool`."""

    flux_name = "MaxPool"


@dataclass(frozen=True)
class AdaptiveMeanPool:
    """``AdaptiveMeanPool(output_size)``: Flux's, a mean pool with ``stride = in ÷ out`` and
    window ``in - (out - 1)·stride`` per spatial axis (PyTorch's ``AdaptiveAvgPool`` agrees
    when ``out`` divides ``in``). ``output_size`` a tuple, NumPy order."""

    output_size: tuple[int, ...]

    num_params = 0

    def __post_init__(self):
        o = self.output_size
        if isinstance(o, int) or not isinstance(o, (tuple, list)) or not 1 <= len(o) <= 3:
            raise InputError(f"AdaptiveMeanPool output_size must be a tuple of 1 to 3 ints; got {o!r}")
        object.__setattr__(self, "output_size", _ints("AdaptiveMeanPool output_size", tuple(o), len(o)))

    def pool(self, shape: Shape) -> MeanPool:
        """The :class:`MeanPool` this layer is on samples of ``shape``."""
        _spatial(shape, len(self.output_size), repr(self))
        if any(o > n for o, n in zip(self.output_size, shape[1:])):
            raise InputError(f"{self!r} cannot give more outputs than its input {shape} has")
        stride = tuple(n // o for n, o in zip(shape[1:], self.output_size))
        window = tuple(n - (o - 1) * s for n, o, s in zip(shape[1:], self.output_size, stride))
        return MeanPool(window, stride=stride)

    def param_blocks(self) -> list:
        return []

    def output_shape(self, shape: Shape) -> Shape:
        return self.pool(shape).output_shape(shape)

    def __repr__(self) -> str:
        return f"AdaptiveMeanPool({self.output_size!r})"

    def to_flux(self) -> str:
        return f"AdaptiveMeanPool({_jl(reversed(self.output_size))})"


@dataclass(frozen=True)
class GlobalMeanPool:
    """``GlobalMeanPool()``: the mean over all spatial axes; ``(C, *spatial)`` → ``(C, 1, …, 1)``
    as in Flux (follow it with ``Flatten()``)."""

    num_params = 0

    def pool(self, shape: Shape) -> MeanPool:
        if len(shape) < 2:
            raise InputError(f"GlobalMeanPool takes samples (C, spatial...); got shape {shape}")
        return MeanPool(tuple(shape[1:]))

    def param_blocks(self) -> list:
        return []

    def output_shape(self, shape: Shape) -> Shape:
        return self.pool(shape).output_shape(shape)

    def __repr__(self) -> str:
        return "GlobalMeanPool()"

    def to_flux(self) -> str:
        return "GlobalMeanPool()"


# ---------------------------------------------------------------------------
# Normalisation in inference mode, Dropout
# ---------------------------------------------------------------------------


def _floats(argument: str, values, n: int, positive: bool = False) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{argument} must be {n} numbers; got {values!r:.80}") from None
    if len(out) != n or not all(math.isfinite(v) and (v >= 0 or not positive) for v in out):
        kind = "finite numbers >= 0" if positive else "finite numbers"
        raise InputError(f"{argument} must be {n} {kind}; got {len(out)} values {out[:4]}...")
    return out


def _float_literal(v: float) -> str:
    """A Julia Float64 literal that parses to exactly ``v``."""
    text = repr(float(v))
    return text if any(c in text for c in ".en") else text + ".0"


@dataclass(frozen=True)
class BatchNorm:
    """``BatchNorm(channels, activation=None, *, mean=0, var=1, eps=1e-5, affine=True)`` in
    inference mode: ``σ(γ (x - mean) / sqrt(var + eps) + β)`` per channel (axis 0 of a sample).

    ``mean``, ``var``: the running statistics ``(channels,)``, fixed (not in θ).
    θ: ``bias`` β ``(channels,)`` then ``scale`` γ ``(channels,)`` (Flux's β, γ) when ``affine``.
    """

    channels: int
    activation: str | None = None
    mean: tuple[float, ...] | None = None
    var: tuple[float, ...] | None = None
    eps: float = 1e-5
    affine: bool = True

    def __post_init__(self):
        c = check.positive_int("BatchNorm channels", self.channels)
        object.__setattr__(self, "channels", c)
        object.__setattr__(self, "activation", _elementwise("BatchNorm", self.activation))
        mean = (0.0,) * c if self.mean is None else _floats("BatchNorm mean", self.mean, c)
        var = (1.0,) * c if self.var is None else _floats("BatchNorm var", self.var, c, positive=True)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "var", var)
        object.__setattr__(self, "eps", check.positive_number("BatchNorm eps", self.eps))
        if not isinstance(self.affine, bool):
            raise InputError(f"BatchNorm affine must be True or False; got {self.affine!r}")

    def param_blocks(self) -> list[tuple[str, Shape]]:
        return [("bias", (self.channels,)), ("scale", (self.channels,))] if self.affine else []

    @property
    def num_params(self) -> int:
        return 2 * self.channels if self.affine else 0

    def output_shape(self, shape: Shape) -> Shape:
        if not shape or shape[0] != self.channels:
            raise InputError(f"BatchNorm({self.channels}) takes samples with {self.channels} channels (axis 0); got shape {shape}")
        return shape

    def __repr__(self) -> str:
        act = "" if self.activation == "identity" else f", {self.activation!r}"
        stats = "" if self.mean == (0.0,) * self.channels and self.var == (1.0,) * self.channels else f", mean={self.mean!r}, var={self.var!r}"
        opts = ("" if self.eps == 1e-5 else f", eps={self.eps!r}") + ("" if self.affine else ", affine=False")
        return f"BatchNorm({self.channels}{act}{stats}{opts})"

    def to_flux(self) -> str:
        act = "" if self.activation == "identity" else f", {self.activation}"
        affine = "" if self.affine else ", affine=false"
        # momentum only so that both are Float64: Flux 0.16.10's BatchNorm wants eps and momentum of one type
        layer = f"BatchNorm({self.channels}{act}; eps={_float_literal(self.eps)}, momentum=0.1{affine})"
        if self.mean == (0.0,) * self.channels and self.var == (1.0,) * self.channels:
            return layer
        # Running statistics in Float64 (f64 first), so that none is rounded to Float32.
        vec = lambda vs: "[" + ", ".join(map(_float_literal, vs)) + "]"  # noqa: E731
        return f"let l = Flux.f64({layer}); copyto!(l.μ, {vec(self.mean)}); copyto!(l.σ², {vec(self.var)}); l end"


@dataclass(frozen=True)
class LayerNorm:
    """``LayerNorm(shape, activation=None, *, eps=1e-5, affine=True)``: normalise each sample
    over its trailing ``shape`` axes (NumPy order; an int for the last axis alone),
    ``σ(γ (x - mean) / sqrt(var + eps) + β)`` with γ, β of ``shape``.

    θ: ``scale`` γ then ``bias`` β, each Flux's ``reversed(shape)`` column-major (the C-order
    array of ``shape``), when ``affine``.
    """

    shape: tuple[int, ...]
    activation: str | None = None
    eps: float = 1e-5
    affine: bool = True

    def __post_init__(self):
        s = (self.shape,) if isinstance(self.shape, int) and not isinstance(self.shape, bool) else self.shape
        if not isinstance(s, (tuple, list)) or not s:
            raise InputError(f"LayerNorm shape must be an int or a tuple of ints; got {self.shape!r}")
        object.__setattr__(self, "shape", _ints("LayerNorm shape", tuple(s), len(s)))
        object.__setattr__(self, "activation", _elementwise("LayerNorm", self.activation))
        object.__setattr__(self, "eps", check.positive_number("LayerNorm eps", self.eps))
        if not isinstance(self.affine, bool):
            raise InputError(f"LayerNorm affine must be True or False; got {self.affine!r}")

    def param_blocks(self) -> list[tuple[str, Shape]]:
        flux = tuple(reversed(self.shape))
        return [("scale", flux), ("bias", flux)] if self.affine else []

    @property
    def num_params(self) -> int:
        return 2 * math.prod(self.shape) if self.affine else 0

    def output_shape(self, shape: Shape) -> Shape:
        n = len(self.shape)
        if tuple(shape[len(shape) - n :]) != self.shape or len(shape) < n:
            raise InputError(f"{self!r} normalises trailing axes {self.shape}; got samples of shape {shape}")
        return shape

    def __repr__(self) -> str:
        act = "" if self.activation == "identity" else f", {self.activation!r}"
        opts = ("" if self.eps == 1e-5 else f", eps={self.eps!r}") + ("" if self.affine else ", affine=False")
        return f"LayerNorm({self.shape!r}{act}{opts})"

    def to_flux(self) -> str:
        size = ", ".join(map(str, reversed(self.shape)))
        act = "" if self.activation == "identity" else f", {self.activation}"
        affine = "" if self.affine else ", affine=false"
        return f"LayerNorm({size}{act}; eps={_float_literal(self.eps)}{affine})"


@dataclass(frozen=True)
class Dropout:
    """``Dropout(p)``: the identity (fluxhess differentiates in inference mode)."""

    p: float = 0.5

    num_params = 0

    def __post_init__(self):
        p = self.p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise InputError(f"Dropout p must be a number in [0, 1]; got {p!r}")
        object.__setattr__(self, "p", float(p))

    def param_blocks(self) -> list:
        return []

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def to_flux(self) -> str:
        return f"Dropout({_float_literal(self.p)})"


# ---------------------------------------------------------------------------
# Residual blocks
# ---------------------------------------------------------------------------


def children(layer) -> tuple:
    """The layers inside a residual block, in θ order (none for other layers)."""
    return CHILDREN.get(type(layer), lambda _: ())(layer)


def _sequence_shape(layers, shape: Shape) -> Shape:
    for layer in layers:
        shape = layer.output_shape(shape)
    return shape


def _sequence_flux(layers) -> str:
    if not layers:
        return "identity"
    return layers[0].to_flux() if len(layers) == 1 else "Chain(" + ", ".join(l.to_flux() for l in layers) + ")"


@dataclass(frozen=True, init=False)
class SkipConnection:
    """``SkipConnection(layer, …)``: ``x + f(x)`` with ``f`` the layers in order (Flux's
    ``SkipConnection(Chain(layer, …), +)``). Blocks are named ``layers.{i}.{j}.{field}``."""

    layers: tuple

    def __init__(self, *layers: Layer) -> None:
        if not layers:
            raise InputError("SkipConnection needs at least one layer")
        object.__setattr__(self, "layers", tuple(layers))

    def param_blocks(self) -> list[tuple[str, Shape]]:
        return [(f"{j}.{field}", s) for j, layer in enumerate(self.layers) for field, s in layer.param_blocks()]

    @property
    def num_params(self) -> int:
        return sum(l.num_params for l in self.layers)

    def output_shape(self, shape: Shape) -> Shape:
        out = _sequence_shape(self.layers, shape)
        if out != shape:
            raise InputError(f"a SkipConnection's layers must keep the sample shape {shape}; they give {out}")
        return shape

    def __repr__(self) -> str:
        return "SkipConnection(" + ", ".join(map(repr, self.layers)) + ")"

    def to_flux(self) -> str:
        return f"SkipConnection({_sequence_flux(self.layers)}, +)"


@dataclass(frozen=True, init=False)
class Parallel:
    """``Parallel(branch, …)``: the sum of the branches' outputs (Flux's ``Parallel(+, …)``).
    A branch is a layer, a list/tuple of layers applied in order, or ``()`` for the identity.
    Blocks are named ``layers.{i}.{branch}.{j}.{field}``."""

    branches: tuple

    def __init__(self, *branches: Layer | Sequence[Layer]) -> None:
        if len(branches) < 2:
            raise InputError(f"Parallel needs at least two branches; got {len(branches)}")
        seqs = tuple(tuple(br) if isinstance(br, (list, tuple)) else (br,) for br in branches)
        object.__setattr__(self, "branches", seqs)

    def param_blocks(self) -> list[tuple[str, Shape]]:
        return [
            (f"{b}.{j}.{field}", s)
            for b, branch in enumerate(self.branches)
            for j, layer in enumerate(branch)
            for field, s in layer.param_blocks()
        ]

    @property
    def num_params(self) -> int:
        return sum(l.num_params for branch in self.branches for l in branch)

    def output_shape(self, shape: Shape) -> Shape:
        outs = [_sequence_shape(branch, shape) for branch in self.branches]
        if len(set(outs)) != 1:
            raise InputError(f"Parallel's branches must give one sample shape to add; they give {outs}")
        return outs[0]

    def __repr__(self) -> str:
        return "Parallel(" + ", ".join(repr(list(b)) for b in self.branches) + ")"

    def to_flux(self) -> str:
        return "Parallel(+, " + ", ".join(_sequence_flux(b) for b in self.branches) + ")"


#: The layers inside each kind of residual block.
CHILDREN = {
    SkipConnection: lambda l: l.layers,
    Parallel: lambda l: tuple(layer for branch in l.branches for layer in branch),
}

#: This module's layers (the spec's vocabulary adds Dense, Activation and Flatten).
LAYERS = (
    Conv, CrossCor, MeanPool, MaxPool, AdaptiveMeanPool, GlobalMeanPool, BatchNorm, LayerNorm, Dropout,
    SkipConnection, Parallel,
)

__all__ = [
    "Conv", "CrossCor", "MeanPool", "MaxPool", "AdaptiveMeanPool", "GlobalMeanPool",
    "BatchNorm", "LayerNorm", "Dropout", "SkipConnection", "Parallel",
]
