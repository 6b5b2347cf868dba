"""Common Flax and PyTorch MLPs as a :class:`fluxhess.Chain` with the same weights.

- :func:`from_flax` takes a ``flax.linen`` module and the ``variables`` that
  ``module.init`` returned; Flax ``Dense`` kernels are ``(in, out)`` and are
  transposed into Flux's ``W`` ``(out, in)``.
- :func:`from_torch` takes a ``torch.nn.Sequential`` of ``Linear`` and activation
  modules; torch weights are already ``(out, in)``.
- Flux source converts through ``fluxhess.flux.flux_model(source).to_spec()``.

A network of several inputs (``__call__(self, x, t)`` / ``forward(self, x, t)`` that
concatenates them along the feature axis) converts with ``inputs=(x, t)``: one example
array per argument; the Chain then carries the input signature (``model.inputs``).

Each returns ``(model, params)``: a Chain and θ ``(P,)`` float64 in Flux
``destructure`` order. An activation is mapped only where its formula is the
one fluxhess computes (NNlib's): gelu is the tanh approximation, leakyrelu has
slope 0.01, elu has α = 1, swish is x·σ(x), softplus never switches to x. A
layer or activation without such a twin raises :class:`UnsupportedModelError`
naming it. Neither torch nor flax is imported until its converter is called.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError, UnsupportedModelError
from . import _activations as A
from ._flax_function import linen_function, linen_input_shape, nnx_function
from .jax_function import JaxFunction, sample_shape
from . import _flax_cnn
from .layers import (
    AdaptiveMeanPool, BatchNorm, Conv, CrossCor, Dropout, GlobalMeanPool, LayerNorm, MaxPool, MeanPool, Parallel,
    SkipConnection,
)
from ._origin import Origin
from .model import COLUMNWISE, Activation, Chain, Dense, Flatten, Layer

# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------


def _torch_activation(layer, nn) -> tuple[str | None, str | None]:
    """``(fluxhess activation name, None)`` for ``layer``, or ``(None, why not)``."""
    kind = type(layer)
    plain = {
        nn.Identity: "identity",
        nn.ReLU: "relu",
        nn.Tanh: "tanh",
        nn.Sigmoid: "sigmoid",
        nn.SiLU: "swish",
    }
    if kind in plain:
        return plain[kind], None
    if kind is nn.GELU:
        if layer.approximate == "tanh":
            return "gelu", None
        return None, "nn.GELU() is the exact (erf) gelu; NNlib's gelu is nn.GELU(approximate='tanh')"
    if kind is nn.LeakyReLU:
        if layer.negative_slope == 0.01:
            return "leakyrelu", None
        return None, f"nn.LeakyReLU has slope {layer.negative_slope}; NNlib's leakyrelu has slope 0.01"
    if kind is nn.ELU:
        if layer.alpha == 1.0:
            return "elu", None
        return None, f"nn.ELU has alpha={layer.alpha}; NNlib's elu has alpha=1"
    if kind is nn.Softplus:
        if layer.beta == 1.0 and math.isinf(layer.threshold):
            return "softplus", None
        return None, (
            f"nn.Softplus(beta={layer.beta}, threshold={layer.threshold}) returns x above the threshold, "
            "NNlib's softplus never does; use nn.Softplus(threshold=float('inf'))"
        )
    if kind in (nn.Softmax, nn.LogSoftmax):
        name = "softmax" if kind is nn.Softmax else "logsoftmax"
        if layer.dim in (1, -1):
            return name, None
        return None, f"{kind.__name__}(dim={layer.dim}) must act over the outputs of each sample: dim=1 or dim=-1"
    return None, (
        f"{kind.__name__} has no NNlib twin in fluxhess (it maps Linear, Identity, ReLU, Tanh, Sigmoid, "
        "SiLU, GELU(approximate='tanh'), LeakyReLU(0.01), ELU(1.0), Softplus(threshold=inf), "
        "Softmax(dim=-1), LogSoftmax(dim=-1), and the layers of fluxhess.convert.TORCH_LAYERS())"
    )


def from_torch(
    sequential: Any, *, inputs: Sequence[Any] | None = None, input_shape: tuple[int, ...] | None = None,
) -> tuple[Chain, np.ndarray]:
    """A ``torch.nn.Sequential`` (or a module whose ``forward`` chains modules and residual
    adds) as ``(Chain, θ)`` with the same weights.

    Layer ``i`` of a flat Sequential becomes layer ``i`` of the Chain, so θ's blocks are
    named like the Sequential's ``state_dict``: ``"layers.0.weight"`` is ``"0.weight"``.
    Mapped (:data:`TORCH_LAYERS`): ``Linear`` → ``Dense`` (``weight`` ``(out, in)`` as is);
    ``Conv1d/2d/3d`` → ``CrossCor`` (``Conv`` with the kernel flipped when ``groups > 1``;
    the kernel ``(cout, cin, k…)`` in C order is Flux's array column-major; ``padding="same"``
    as PyTorch pads, the larger half last); ``MaxPool``, ``AvgPool`` (``count_include_pad``),
    ``AdaptiveAvgPool`` (to 1 → ``GlobalMeanPool``, else ``AdaptiveMeanPool`` where the output
    divides the input); ``BatchNorm1d/2d/3d`` in eval mode (running statistics fixed);
    ``LayerNorm``; ``Dropout``; ``Flatten()``; nested Sequentials (spliced); the activation
    modules. Other modules are traced with ``torch.fx``: ``x + f(x)`` becomes
    ``SkipConnection(f…)`` and ``f(x) + g(x)`` ``Parallel(f…, g…)``; ``torch.relu``,
    ``torch.tanh``, ``torch.sigmoid`` and ``torch.flatten(x, 1)`` calls are mapped too.

    ``input_shape``: one sample's shape, ``(C, H, W)`` as PyTorch's NCHW without the batch,
    for a network that does not start with ``Linear`` (a CNN); the Chain's output is then
    checked against the module's on random inputs.
    The Chain prints as torch modules; θ ↔ `parameters_to_vector` order: `fluxhess.torch_params`.

    Args:
        sequential: a `torch.nn.Sequential` of `Linear` and activation modules (`Identity`,
            `ReLU`, `Tanh`, `Sigmoid`, `SiLU`, `GELU(approximate="tanh")`, `LeakyReLU()`,
            `ELU()`, `Softplus(threshold=inf)`, `Softmax(dim=-1)`, `LogSoftmax(dim=-1)`), or
            with `inputs`, a module whose `forward(x, t, …)` concatenates its arguments
            along the feature axis (`torch.cat([x, t], dim=1)`) and passes the result
            through its Linear and activation modules in order.
        inputs: for such a module, one example tensor `(N, width)` per `forward` argument;
            the Chain then carries the input signature `{"x": width, "t": width}` named after
            the `forward` parameters. The module is traced with `torch.fx`, its modules are
            taken in the order they are called (θ's blocks are numbered in that order), and
            the Chain's output is checked against the module's.

    Returns:
        `(model, params)`: the Chain, and θ `(P,)` float64 in Flux `destructure` order.

    Raises:
        UnsupportedModelError: a layer without a twin in the Chain's vocabulary (naming it and
            what maps), a `forward` that does not trace, shared weights (one module, or one
            parameter tensor, in two places: a Chain gives every layer its own parameters),
            and, with `inputs`, a `forward` with keyword-only or variadic parameters.
        InputError: parameters on the meta device or not real floats; `inputs` that do not
            match `forward`; a network that does not start with `Linear` without `input_shape`.

    Example:
        >>> import torch, fluxhess as fh
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> model, theta = fh.from_torch(net)
        >>> print(model)
        Sequential(Linear(3, 4), Tanh(), Linear(4, 2))
        >>> theta.shape
        (26,)
    """
    if inputs is not None:
        model, theta = _torch_several_inputs(sequential, inputs)
    else:
        model, theta = _torch_sequential(sequential, input_shape=input_shape)
    return model.with_origin(Origin("torch", type(sequential).__name__)), theta


def _torch_sequential(sequential, signature=None, input_shape=None) -> tuple[Chain, np.ndarray]:
    import torch.nn as nn

    if not isinstance(sequential, nn.Module) or type(sequential) in TORCH_LAYERS():
        raise UnsupportedModelError(
            f"from_torch takes a torch.nn.Sequential (or a module whose forward chains modules and "
            f"residual adds); got {type(sequential).__name__}. Write the network as "
            "nn.Sequential(nn.Linear(...), nn.Tanh(), ...)"
        )
    _check_torch_parameters(sequential)
    _check_not_shared(sequential)
    items = _torch_items(sequential)
    layers, blocks = _torch_unzip(items)
    if input_shape is None and not _starts_dense(layers):
        raise InputError(
            f"from_torch needs input_shape=(one sample's shape), e.g. (1, 28, 28) for NCHW images, for a network "
            f"that starts with {type(layers[0]).__name__ if layers else 'no layer'}"
        )
    model, theta = _chain_blocks(layers, blocks, "the Sequential", signature, input_shape)
    if input_shape is not None:
        import torch

        dtype = next((p.dtype for p in sequential.parameters()), torch.float64)
        probe = _probe_inputs(model.input_shape)
        with torch.no_grad():
            output = sequential(torch.as_tensor(probe).to(dtype)).numpy()  # its dtype sets the tolerance
        _check_same_output(model, theta, probe, output, f"{type(sequential).__name__}'s")
    return model, theta


# --- PyTorch layers: one mapper per module class -----------------------------------


def _torch_padding(module, rank: int):
    """A PyTorch conv's padding as fluxhess pairs: ``"same"`` as PyTorch pads it (the larger half last)."""
    if module.padding_mode != "zeros":
        raise UnsupportedModelError(f"padding_mode={module.padding_mode!r}; only zero padding has a Flux twin")
    if module.padding == "valid":
        return 0
    if module.padding == "same":
        totals = [d * (k - 1) for k, d in zip(module.kernel_size, module.dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple(module.padding)


def _torch_conv(module, nn):
    rank = len(module.kernel_size)
    w = _torch_numpy(module.weight)  # (cout, cin ÷ groups, k…)
    kind, w = (CrossCor, w) if module.groups == 1 else (Conv, np.flip(w, axis=tuple(range(2, w.ndim))))
    layer = kind(
        tuple(module.kernel_size), module.in_channels, module.out_channels, stride=tuple(module.stride),
        padding=_torch_padding(module, rank), dilation=tuple(module.dilation), groups=module.groups,
        bias=module.bias is not None,
    )
    arrays = [w.transpose()] + ([_torch_numpy(module.bias)] if module.bias is not None else [])
    return layer, arrays


def _rank_tuple(value, rank: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank


def _torch_pool(kind, rank: int):
    def mapper(module, nn):
        if module.ceil_mode:
            raise UnsupportedModelError("ceil_mode=True has no Flux twin (Flux pools floor)")
        if kind is MaxPool and (module.return_indices or _rank_tuple(module.dilation, rank) != (1,) * rank):
            raise UnsupportedModelError("a MaxPool with dilation or return_indices has no Flux twin")
        if kind is MeanPool and (not module.count_include_pad or module.divisor_override is not None):
            raise UnsupportedModelError("an AvgPool must count the padding (count_include_pad=True, no divisor_override), as NNlib does")
        window = _rank_tuple(module.kernel_size, rank)
        stride = window if module.stride is None else _rank_tuple(module.stride, rank)
        return kind(window, stride=stride, padding=_rank_tuple(module.padding, rank)), []

    return mapper


def _torch_adaptive(rank: int):
    def mapper(module, nn):
        size = _rank_tuple(module.output_size, rank)
        if None in size:
            raise UnsupportedModelError("an AdaptiveAvgPool output_size with None has no Flux twin")
        return (GlobalMeanPool() if size == (1,) * rank else AdaptiveMeanPool(size)), []

    return mapper


def _torch_batchnorm(module, nn):
    if module.training:
        raise UnsupportedModelError(f"{type(module).__name__} is in training mode; call module.eval() first (fluxhess differentiates in inference mode)")
    if module.running_mean is None:
        raise UnsupportedModelError(f"{type(module).__name__} has no running statistics (track_running_stats=False)")
    layer = BatchNorm(
        module.num_features, mean=tuple(_torch_numpy(module.running_mean)), var=tuple(_torch_numpy(module.running_var)),
        eps=module.eps, affine=module.affine,
    )
    return layer, ([_torch_numpy(module.bias), _torch_numpy(module.weight)] if module.affine else [])


def _torch_layernorm(module, nn):
    affine = module.weight is not None
    if affine and module.bias is None:
        raise UnsupportedModelError("a LayerNorm with a weight but no bias has no Flux twin (Flux's Scale has both)")
    arrays = [_torch_numpy(p).transpose() for p in (module.weight, module.bias)] if affine else []
    return LayerNorm(tuple(module.normalized_shape), eps=module.eps, affine=affine), arrays


def _torch_linear(module, nn):
    arrays = [_torch_numpy(module.weight)] + ([_torch_numpy(module.bias)] if module.bias is not None else [])
    return Dense(module.in_features, module.out_features, bias=module.bias is not None), arrays


def _torch_flatten(module, nn):
    if (module.start_dim, module.end_dim) != (1, -1):
        raise UnsupportedModelError(f"Flatten(start_dim={module.start_dim}, end_dim={module.end_dim}) must flatten each sample: Flatten(1, -1)")
    return Flatten(), []


_TORCH_TABLE: dict = {}


def TORCH_LAYERS() -> dict:
    """``{torch module class: mapper(module, nn) -> (layer, arrays in θ order, Flux's shapes)}``."""
    if not _TORCH_TABLE:
        import torch.nn as nn

        _TORCH_TABLE.update({
            nn.Linear: _torch_linear,
            nn.Conv1d: _torch_conv, nn.Conv2d: _torch_conv, nn.Conv3d: _torch_conv,
            **{getattr(nn, f"MaxPool{r}d"): _torch_pool(MaxPool, r) for r in (1, 2, 3)},
            **{getattr(nn, f"AvgPool{r}d"): _torch_pool(MeanPool, r) for r in (1, 2, 3)},
            **{getattr(nn, f"AdaptiveAvgPool{r}d"): _torch_adaptive(r) for r in (1, 2, 3)},
            nn.BatchNorm1d: _torch_batchnorm, nn.BatchNorm2d: _torch_batchnorm, nn.BatchNorm3d: _torch_batchnorm,
            nn.LayerNorm: _torch_layernorm,
            nn.Dropout: lambda module, nn: (Dropout(module.p), []),
            nn.Flatten: _torch_flatten,
        })
    return _TORCH_TABLE


def _torch_leaf(node, root):
    """``("leaf", layer, arrays)`` for one traced call, or :class:`UnsupportedModelError`."""
    import torch
    import torch.nn as nn

    F = torch.nn.functional
    functions = {torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", torch.sigmoid: "sigmoid"}
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        mapper = TORCH_LAYERS().get(type(module))
        if mapper is not None:
            try:
                layer, arrays = mapper(module, nn)
            except (UnsupportedModelError, InputError) as e:
                raise UnsupportedModelError(f"layer {node.target} ({module!r}) cannot be mapped: {e}") from None
            return ("leaf", layer, arrays)
        name, why = _torch_activation(module, nn)
        if name is None:
            raise UnsupportedModelError(f"layer {node.target} ({module!r}) cannot be mapped: {why}")
        return ("leaf", Activation(name), [])
    if node.op == "call_function" and node.target in functions and len(node.args) == 1:
        return ("leaf", Activation(functions[node.target]), [])
    if node.op == "call_method" and node.target in ("relu", "tanh", "sigmoid") and len(node.args) == 1:
        return ("leaf", Activation(node.target), [])
    flatten_args = tuple(node.args[1:]) + tuple(node.kwargs.values())
    if (node.op, node.target) in (("call_function", torch.flatten), ("call_method", "flatten")) and flatten_args in ((1,), (1, -1)):
        return ("leaf", Flatten(), [])
    raise UnsupportedModelError(
        f"the traced forward does {node.op} {node.target}; from_torch maps modules of torch.nn (see "
        "fluxhess.convert.TORCH_LAYERS), torch.relu/tanh/sigmoid, torch.flatten(x, 1) and residual adds"
    )


def _is_add(node) -> bool:
    import operator

    import torch

    return (node.op == "call_function" and node.target in (operator.add, torch.add)) or (
        node.op == "call_method" and node.target == "add"
    )


def _torch_items(module) -> list:
    """The module's layers, traced with torch.fx: ``("leaf", layer, arrays)``, ``("skip", items)``
    and ``("parallel", [items, items])`` in forward order."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as e:
        raise UnsupportedModelError(f"from_torch could not trace {type(module).__name__}.forward with torch.fx: {e}") from e
    nodes = list(graph.nodes)
    called = [n.target for n in nodes if n.op == "call_module" and any(True for _ in module.get_submodule(n.target).parameters())]
    twice = sorted({t for t in called if called.count(t) > 1})
    if twice:
        raise UnsupportedModelError(
            f"{type(module).__name__}.forward calls {twice[0]} more than once (shared weights); a Chain gives each "
            "layer its own parameters, so θ would count them twice. Use separate modules (copy.deepcopy) if that "
            "is the network you mean"
        )
    order = {n: k for k, n in enumerate(nodes)}
    inputs = [n for n in nodes if n.op == "placeholder"]
    output = next(n for n in nodes if n.op == "output")
    if len(inputs) != 1 or len(output.all_input_nodes) != 1:
        raise UnsupportedModelError(f"{type(module).__name__}.forward must take one tensor and return one (use inputs= for several)")

    def ancestors(node) -> set:
        seen, stack = set(), [node]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(n.all_input_nodes)
        return seen

    def path(node, stop) -> list:
        items = []
        while node is not stop:
            if node.op == "placeholder":
                raise UnsupportedModelError(f"{type(module).__name__}.forward is not a chain of layers and residual adds")
            if _is_add(node) and len(node.args) == 2 and len(node.all_input_nodes) == 2:
                p, q = node.all_input_nodes
                fork = max(ancestors(p) & ancestors(q), key=order.__getitem__)
                a, b = path(p, fork), path(q, fork)
                items.append(("skip", a or b) if not (a and b) else ("parallel", [a, b]))
                node = fork
                continue
            if len(node.all_input_nodes) != 1:
                raise UnsupportedModelError(f"{node.op} {node.target} in the traced forward takes {len(node.all_input_nodes)} tensors; only residual adds may take two")
            items.append(_torch_leaf(node, module))
            node = node.all_input_nodes[0]
        return items[::-1]

    return path(output.all_input_nodes[0], inputs[0])


def _torch_unzip(items) -> tuple[list, list]:
    """Layers and their arrays (depth first, θ's order) from :func:`_torch_items`."""
    layers, arrays = [], []

    def sequence(items) -> list:
        out = []
        for item in items:
            if item[0] == "leaf":
                out.append(item[1])
                arrays.extend(item[2])
            elif item[0] == "skip":
                out.append(SkipConnection(*sequence(item[1])))
            else:
                out.append(Parallel(*[sequence(branch) or () for branch in item[1]]))
        return out

    layers = sequence(items)
    return layers, arrays


def _starts_dense(layers) -> bool:
    for layer in layers:
        if isinstance(layer, Dense):
            return True
        if not isinstance(layer, (Flatten, Activation, Dropout)):
            return False
    return False


def _torch_several_inputs(module, inputs) -> tuple[Chain, np.ndarray]:
    """``forward(x, t, ...)`` = layers applied to ``torch.cat([x, t, ...], dim=1)``, as a Chain with a signature."""
    import torch
    import torch.fx
    import torch.nn as nn

    if not isinstance(inputs, (tuple, list)) or not inputs:
        raise InputError(f"inputs must be a tuple of example tensors, one per forward argument; got {type(inputs).__name__}")
    _check_positional(module)
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as e:
        raise UnsupportedModelError(f"from_torch could not trace {type(module).__name__}.forward with torch.fx: {e}") from e
    nodes = [n for n in graph.nodes if n.op != "output"]
    names = [n.target for n in nodes if n.op == "placeholder"]
    if len(names) != len(inputs):
        raise InputError(f"inputs holds {len(inputs)} tensors but {type(module).__name__}.forward takes {len(names)} ({', '.join(names)})")
    cat = nodes[len(names)] if len(nodes) > len(names) else None
    concatenates = (
        cat is not None and cat.target is torch.cat and list(cat.args[0]) == nodes[: len(names)]
        and cat.kwargs.get("dim", cat.args[1] if len(cat.args) > 1 else 0) in (1, -1)
    )
    if not concatenates:
        raise UnsupportedModelError(
            f"{type(module).__name__}.forward must begin with torch.cat([{', '.join(names)}], dim=1) of its "
            "arguments in order; from_torch(inputs=...) maps that concatenation followed by Linear and activation modules"
        )
    functions = {torch.tanh: nn.Tanh, torch.sigmoid: nn.Sigmoid, torch.relu: nn.ReLU}
    layers: list = []  # torch modules
    previous = cat
    for node in nodes[len(names) + 1 :]:
        called = functions.get(node.target) if node.op == "call_function" else None
        if node.op == "call_module":
            called = module.get_submodule(node.target)
        if called is None or list(node.all_input_nodes) != [previous]:
            raise UnsupportedModelError(
                f"{type(module).__name__}.forward does {node.op} {node.target} after the concatenation; "
                "from_torch(inputs=...) maps a chain of Linear and activation modules (or torch.tanh, "
                "torch.sigmoid, torch.relu) applied one after another"
            )
        layers.extend(called if isinstance(called, nn.Sequential) else [called() if isinstance(called, type) else called])
        previous = node
    signature = {}
    for name, x in zip(names, inputs):
        shape = tuple(x.shape)
        if len(shape) != 2:
            raise InputError(f"inputs: the example for {name!r} must be (N, width); got shape {shape}")
        signature[name] = shape[1]
    model, theta = _torch_sequential(nn.Sequential(*layers), signature)
    dtype = next((p.dtype for p in module.parameters()), torch.float64)
    rng = np.random.default_rng(0)
    probes = [torch.as_tensor(rng.normal(size=(_PROBE_ROWS, w))).to(dtype) for w in signature.values()]
    with torch.no_grad():
        output = module(*probes).numpy()  # in the module's dtype, which sets the tolerance
    _check_same_output(model, theta, torch.cat(probes, dim=1).double().numpy(), output, f"{type(module).__name__}'s")
    return model, theta


def _check_positional(module) -> None:
    """Refuse a ``forward`` with keyword-only, ``*args`` or ``**kwargs`` parameters: the inputs are
    passed by position, one tensor each, in the order of ``forward``'s parameters."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return
    other = [p.name for p in parameters if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if other:
        raise UnsupportedModelError(
            f"{type(module).__name__}.forward has keyword-only or variadic parameters ({', '.join(other)}); "
            "from_torch(inputs=...) passes one tensor per positional parameter: write forward(self, x, t) instead"
        )


def _check_not_shared(module) -> None:
    """Refuse a module that holds one module, or one parameter tensor, in two places (shared
    weights): each place would become its own layer with its own copy of the weights, and θ
    would have more entries than the model has parameters."""
    owner: dict[int, str] = {}
    for where, p in module.named_parameters(remove_duplicate=False):
        if id(p) in owner:
            raise UnsupportedModelError(
                f"the module's parameter {where} is the same tensor as {owner[id(p)]} (a module or weight used "
                "twice: shared weights); a Chain gives each layer its own parameters, so θ would count them "
                "twice. Use separate modules (copy.deepcopy) if that is the network you mean"
            )
        owner[id(p)] = where


def _check_torch_parameters(sequential) -> None:
    """Refuse parameters that hold no values (the meta device) or are not real floats."""
    for name, p in sequential.named_parameters():
        if p.is_meta:
            raise InputError(
                f"sequential has parameters on the meta device, which hold no values ({name!r}, shape "
                f"{tuple(p.shape)}); materialise them first, e.g. sequential.to_empty(device='cpu') and load "
                "the weights"
            )
        if not p.dtype.is_floating_point:
            raise InputError(f"sequential parameter {name!r} must be real floating point; got {p.dtype}")


def _torch_numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy().copy()


# ---------------------------------------------------------------------------
# Flax (linen)
# ---------------------------------------------------------------------------

#: Rows of probe data fed through the module while it is traced.
_PROBE_ROWS = 64


def _probe_inputs(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``(_PROBE_ROWS, *shape)`` normal samples, row ``i`` scaled by ``10^(-1 … 3)``: the
    converted Chain must reproduce the module on large inputs too, not only near 0."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(-1.0, 3.0, _PROBE_ROWS).reshape(-1, *(1,) * len(shape))
    return rng.normal(size=(_PROBE_ROWS, *shape)) * scales


def from_flax(
    module: Any, variables: Any = None, *, input_shape: tuple[int, ...] | None = None,
    inputs: Sequence[Any] | None = None, channels_first: bool = False,
) -> tuple[Chain | JaxFunction, np.ndarray]:
    """Any Flax module as ``(model, θ)`` with the same weights: a :class:`fluxhess.Chain` where
    every layer maps onto the Chain's, else a :class:`fluxhess.JaxFunction`.

    *A Chain* (``model.model_kind == "chain"``) comes back for a ``flax.linen`` module whose
    ``__call__`` applies ``nn.Dense`` layers in sequence with elementwise activations (or
    softmax/log_softmax) between them, such as the common ``MLP(features)`` with ``nn.tanh``:
    θ in Flux's order (``W`` is the kernel transposed), a Julia twin, the structured routes.
    The module is traced with ``module.apply``: the order of the Dense calls gives the layers,
    and each activation is identified by substituting a grid of values for the preceding
    Dense output and matching what reaches the next layer against NNlib's formulas. Finally
    the Chain's output is checked against ``module.apply`` on random inputs.

    *A JaxFunction* (``model.model_kind == "jax_function"``) comes back for every other linen
    module (residual blocks, LayerNorm, convolutions, constants in other collections, …) and
    for every ``flax.nnx`` module: θ is the ``params`` collection's leaves (an nnx module's
    ``nnx.Param`` state) in ``jax.tree`` order, named by tree path in ``model.layout``; every
    other collection (``batch_stats``, constants) is held fixed; ``model.why_not_chain`` says
    why it is not a Chain. See :func:`fluxhess.from_jax`. A module whose samples are not
    independent (BatchNorm in training mode, a softmax over the batch) is refused.

    ``variables``: what ``module.init`` returned (``{"params": ...}``, other collections
    beside it), in any key order and float dtype; None for an nnx module, which holds its own.
    ``input_shape``: the shape of one sample; by default read from the module itself (the
    width on which ``module.init`` makes these variables; for nnx, on which it runs); a
    sample of several axes (images) needs it. For a Chain a multi-dimensional shape puts
    ``Flatten()`` first (the module must flatten too).
    ``inputs``: for a ``__call__(self, x, t, ...)`` of several arrays that it concatenates
    along the feature axis, one example array per argument (``(N, width)``, or ``(N,)``
    for width 1); the model then carries the input signature ``{"x": width, "t": width}``
    named after the ``__call__`` parameters (see :class:`fluxhess.Chain`), and ``X`` may be
    the tuple ``(x, t)``; ``wrt=`` takes those names.

    ``channels_first``: a convolutional module's samples are ``(H, W, C)`` in Flax, and by
    default it comes back as a JaxFunction on exactly those samples. With
    ``channels_first=True`` a module whose layers all map (``nn.Conv``, pools, BatchNorm in
    inference mode, LayerNorm, Dense) comes back as a Chain on **channels-first** samples
    ``(C, H, W)`` — Flux's and PyTorch's layout, pass ``X.transpose(0, 3, 1, 2)`` — with a
    Julia twin and the structured convolution routes. Never a silent change of layout.

    A Chain prints as Flax layers; θ ↔ variables: :func:`fluxhess.jax.flax_params`.

    Returns: ``(model, params)``, params ``(P,)`` float64.

    Raises: :class:`UnsupportedModelError` for a module whose samples are not independent;
    :class:`InputError` for ``variables`` that are not the module's (naming the parameters
    that differ) or ``inputs`` that do not match ``__call__``.

    Example:
        >>> import jax, flax.linen as nn, fluxhess as fh
        >>> module = nn.Sequential([nn.Dense(4), nn.tanh, nn.Dense(1)])
        >>> variables = module.init(jax.random.PRNGKey(0), jax.numpy.ones((1, 3)))
        >>> model, theta = fh.from_flax(module, variables)
        >>> print(model)
        Sequential.__call__(x): x → nn.Dense(4) → nn.tanh → nn.Dense(1)
        >>> theta.shape
        (21,)
    """
    nnx = _nnx_module_class()
    if nnx is not None and isinstance(module, nnx):
        if variables is not None:
            raise InputError("a flax.nnx module holds its own parameters: call from_flax(module) without variables")
        return nnx_function(module, input_shape=input_shape, inputs=inputs)
    _check_linen(module, variables, input_shape, inputs)
    try:
        model, theta, _ = flax_chain(module, variables, input_shape=input_shape, inputs=inputs, channels_first=channels_first)
        return model.with_origin(Origin("flax", type(module).__name__)), theta
    except UnsupportedModelError as e:
        why = str(e)
    if inputs is not None:
        signature = tuple(_call_signature(module, inputs).items())
        shape: tuple[int, ...] = (sum(w for _, w in signature),)
    else:
        signature, shape = None, _flax_input_shape(module, variables, input_shape)
    return linen_function(module, variables, input_shape=shape, signature=signature, examples=inputs, why_not_chain=why)


def _nnx_module_class():
    """``flax.nnx.Module``, or None where the installed Flax has no nnx."""
    try:
        from flax import nnx
    except ImportError:
        return None
    return nnx.Module


def _check_linen(module, variables, input_shape, inputs) -> None:
    import flax.linen as nn

    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(
            f"from_flax takes a flax.linen Module (with the variables module.init returned) or a flax.nnx Module; "
            f"got {type(module).__module__}.{type(module).__name__}"
        )
    if not isinstance(variables, dict) and not hasattr(variables, "keys"):
        raise InputError(f"variables must be the dict module.init returned; got {type(variables).__name__}")
    if "params" not in variables:
        raise InputError(
            f"variables must be the dict module.init returned, with a 'params' entry; got keys "
            f"{sorted(map(str, variables.keys()))}. If you hold the parameters alone, pass {{'params': params}}"
        )
    if inputs is not None and input_shape is not None:
        raise InputError("pass input_shape= (one input array) or inputs= (several), not both")


def flax_chain(module, variables, *, input_shape=None, inputs=None, channels_first=False):
    """:func:`from_flax`'s ``(model, params)`` and the Flax path of each Dense layer's parameters
    (``(model layer index, path tuple)`` in Chain order). A convolutional module maps only with
    ``channels_first`` (its Chain takes ``(C, H, W)`` samples, not Flax's ``(H, W, C)``)."""
    import flax.linen as nn
    import jax

    _check_linen(module, variables, input_shape, inputs)
    with jax.enable_x64(True):
        if inputs is None:
            shape = _flax_input_shape(module, variables, input_shape)
            args, signature = [_probe_inputs(shape)], None
        else:
            signature = _call_signature(module, inputs)
            args = [_probe_inputs(np.shape(x)[1:], seed) for seed, x in enumerate(inputs)]
            shape = (sum(signature.values()),)
        _check_flax_variables(module, variables, args)
        if inputs is None and _flax_cnn.uses_cnn_layers(module, variables, args):
            if not channels_first:
                raise UnsupportedModelError(
                    f"{type(module).__name__} is convolutional: its samples are Flax's (H, W, C), which a Chain "
                    "takes channels-first; from_flax(..., channels_first=True) gives that Chain (pass "
                    "X.transpose(0, 3, 1, 2)), with a Julia twin and the structured convolution routes"
                )
            cnn_layers, cnn_arrays, chain_shape, output = _flax_cnn.flax_cnn_chain(module, variables, shape, args[0])
            model, theta = _chain_blocks(cnn_layers, cnn_arrays, "the Flax module", None, chain_shape)
            X = args[0].transpose(0, args[0].ndim - 1, *range(1, args[0].ndim - 1)) if args[0].ndim > 2 else args[0]
            _check_same_output(model, theta, X, output, "the Flax module's")
            return model, theta, []
        dense, output = _flax_dense_calls(module, variables, args, nn)
        acts = _flax_activations(module, variables, [np.zeros_like(a) for a in args], dense, nn)
        layers: list[Layer] = [Flatten()] if len(shape) > 1 else []
        arrays: dict[str, np.ndarray] = {}
        paths: list[tuple[int, tuple[str, ...]]] = []
        for (_, path, kernel, bias, _), act in zip(dense, acts):
            i = len(layers)
            paths.append((i, path))
            layers.append(Dense(kernel.shape[0], kernel.shape[1], None if act in COLUMNWISE else act, bias is not None))
            arrays[f"layers.{i}.weight"] = kernel.T
            if bias is not None:
                arrays[f"layers.{i}.bias"] = bias
            if act in COLUMNWISE:
                layers.append(Activation(act))
        model, theta = _chain(layers, arrays, "the Flax module", signature)
        _check_same_output(model, theta, _stacked(args), output, "the Flax module's")
    return model, theta, paths


def _stacked(args) -> np.ndarray:
    """The probe arrays side by side, ``(rows, d)``, as the first Dense layer sees them."""
    return np.concatenate([a.reshape(a.shape[0], -1) for a in args], axis=1)


def _call_signature(module, inputs) -> dict[str, int]:
    """``{parameter name: width}`` for the example ``inputs`` of ``module.__call__``."""
    import inspect

    if not isinstance(inputs, (tuple, list)) or not inputs:
        raise InputError(f"inputs must be a tuple of example arrays, one per __call__ argument; got {type(inputs).__name__}")
    params = [
        p.name for p in inspect.signature(type(module).__call__).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) < len(inputs):
        raise InputError(
            f"inputs holds {len(inputs)} arrays but {type(module).__name__}.__call__ takes "
            f"{len(params)} ({', '.join(params)})"
        )
    signature = {}
    for name, x in zip(params, inputs):
        shape = np.shape(x)
        if len(shape) not in (1, 2) or shape[0] < 1:
            raise InputError(f"inputs: the example for {name!r} must be (N, width) or (N,); got shape {shape}")
        signature[name] = shape[1] if len(shape) == 2 else 1
    return signature


def _flax_input_shape(module, variables, input_shape) -> tuple[int, ...]:
    """``input_shape`` checked, or the module's own sample width (never a guess from dict order)."""
    if input_shape is not None:
        return sample_shape(input_shape)
    import inspect

    takes = [p for p in inspect.signature(type(module).__call__).parameters.values()
             if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(takes) > 1:
        raise UnsupportedModelError(f"{type(module).__name__}.__call__ takes several arrays. {_hint(module, 1)}")
    return linen_input_shape(module, variables)


def _check_flax_variables(module, variables, args) -> None:
    """Refuse ``variables`` whose parameters are not the ones ``module.init`` makes (those of
    another module, or of this one on other input widths), naming the first difference."""
    import jax
    from flax.traverse_util import flatten_dict

    try:
        expected = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
    except Exception:  # the module cannot run on X at all: _flax_dense_calls says so, with the reason
        return
    want = {"/".join(map(str, k)): tuple(v.shape) for k, v in flatten_dict(dict(expected.get("params", {}))).items()}
    got = {"/".join(map(str, k)): tuple(np.shape(v)) for k, v in flatten_dict(dict(variables["params"])).items()}
    if want == got:
        return
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shapes = [f"{k}: {want[k]} expected, {got[k]} given" for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    detail = "; ".join(
        part for part in (
            f"missing {', '.join(missing[:4])}" if missing else "",
            f"unexpected {', '.join(extra[:4])}" if extra else "",
            "; ".join(shapes[:4]),
        ) if part
    )
    raise InputError(
        f"variables['params'] do not belong to this {type(module).__name__} on samples of shape "
        f"{', '.join(str(a.shape[1:]) for a in args)} "
        f"({detail}). Pass what module.init returned for this module (and input_shape= the shape of one sample "
        "if it is not the first kernel's input width)"
    )


def _module_name(module) -> str:
    return f"{'/'.join(map(str, module.path))} ({type(module).__name__})"


def _flax_dense_calls(module, variables, args, nn):
    """Apply the module to ``args``; return its Dense calls ``(name, path, kernel, bias, input)`` and output.

    Any flax layer other than ``nn.Dense`` raises :class:`UnsupportedModelError` naming it.
    """
    calls, seen, mappers = [], set(), _flax_layer_mappers(nn)

    def record(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name != "__call__" or m.scope is None or not m.path:
            return next_fun(*args, **kwargs)
        mapper = mappers.get(type(m))
        if mapper is not None:
            if m.path in seen:
                raise UnsupportedModelError(
                    f"layer {_module_name(m)} is called more than once (shared weights); a Chain cannot express that"
                )
            seen.add(m.path)
            calls.append(mapper(m, args, kwargs))
        elif type(m).__module__.startswith("flax."):
            raise UnsupportedModelError(
                f"layer {_module_name(m)} cannot be mapped: from_flax converts nn.Dense layers and the "
                "activations between them"
            )
        return next_fun(*args, **kwargs)

    shapes = ", ".join(str(a.shape) for a in args)
    try:
        with nn.intercept_methods(record):
            output = np.asarray(module.apply(variables, *args))
    except UnsupportedModelError:
        raise
    except Exception as e:
        raise UnsupportedModelError(
            f"from_flax could not apply the module to inputs of shape {shapes}: {type(e).__name__}: {e}. "
            f"{_hint(module, len(args))}"
        ) from e
    if not calls:
        raise UnsupportedModelError("from_flax found no nn.Dense call in the module; it converts Dense MLPs")
    first, X = calls[0], _stacked(args)
    if first[4].shape != (X.shape[0], first[2].shape[0]) or not np.array_equal(first[4], X):
        raise UnsupportedModelError(
            f"the input reaches the first Dense layer {first[0]} changed (by something other "
            "than flattening each sample or concatenating the inputs in order); from_flax maps only "
            "Dense layers and activations"
        )
    return calls, output


def _dense_call(m, args, kwargs):
    """An ``nn.Dense`` call as ``(name, path, kernel (in, out), bias or None, input)``."""
    params = m.variables["params"]
    kernel = np.asarray(params["kernel"], dtype=np.float64)
    bias = np.asarray(params["bias"], dtype=np.float64) if m.use_bias else None
    return _module_name(m), tuple(m.path), kernel, bias, np.asarray(_dense_input(args, kwargs))


def _flax_layer_mappers(nn) -> dict:
    """The flax layer types that map onto the Chain's layers, each with the function that
    records one call of it (any other flax layer makes the module a JaxFunction)."""
    return {nn.Dense: _dense_call}


def _hint(module, given: int) -> str:
    """What to pass when the module could not be applied to ``given`` probe arrays."""
    import inspect

    params = [p for p in inspect.signature(type(module).__call__).parameters if p != "self"]
    if len(params) > given:
        names = ", ".join(params)
        return (f"{type(module).__name__}.__call__ takes ({names}): pass one example array per argument, "
                f"inputs=({names})")
    return "Pass input_shape= if one sample has another shape"


def _dense_input(args, kwargs):
    """The input of a ``Dense.__call__(inputs)``, passed by position or by name."""
    return args[0] if args else kwargs["inputs"]


#: The pre-activation values every probe grid is drawn from: 0, values spread densely over
#: [-8, 8] (where activations differ in shape) and ± log-spaced magnitudes from 10 to 1e6.
_POOL_SIZE = 4096


@functools.lru_cache(maxsize=1)
def _pool() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The probe values and every elementwise activation on them, computed once per process."""
    large = np.logspace(1.0, 6.0, _POOL_SIZE // 4)
    values = np.concatenate([[0.0], np.linspace(-8.0, 8.0, _POOL_SIZE - 1 - 2 * large.size), large, -large])
    with np.errstate(over="ignore"):
        return values, {name: fn(values) for name, fn in NUMPY_ACTIVATIONS.items() if name in A.ELEMENTWISE}


def _sigmoid(x):
    t = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + t), t / (1 + t))


def _softmax(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _logsoftmax(z):
    shifted = z - np.max(z, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


#: NNlib's formulas of :mod:`fluxhess._activations` in NumPy, for the probe: evaluating the JAX
#: functions eagerly compiled each of them for each grid shape, seconds per conversion (a test
#: checks the two agree).
NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "relu": lambda x: np.where(x < 0, 0.0, x),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "softplus": lambda x: np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x))),
    "elu": lambda x: np.where(x >= 0, x, np.exp(np.minimum(x, 0.0)) - 1),
    "leakyrelu": lambda x: np.where(x > 0, x, 0.01 * x),
    "swish": lambda x: x * _sigmoid(x),
    "gelu": lambda x: x / 2 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "softmax": _softmax,
    "logsoftmax": _logsoftmax,
}


def activation_probe(rows: int, cols: int, seed: int):
    """A grid of pre-activations ``(rows, cols)`` and the test of what a function made of it.

    The grid holds 0, values spread densely over [-8, 8] (where activations differ in shape)
    and ± log-spaced magnitudes from 10 to 1e6, shuffled (:func:`_pool`, evenly over it): a
    function that agrees with an NNlib activation near 0 but not everywhere (``relu6``, a clip
    at ±10, a saturating approximation) disagrees somewhere on it. ``match(values)``, with
    ``values`` what the function returned on the grid, gives the names of the activations
    fluxhess computes (elementwise, or softmax/logsoftmax over each row) that agree with it at
    every point, to 1e-12 relative.

    Returns: ``(grid, match)``.
    """
    values, images = _pool()
    n = rows * cols
    index = np.round(np.linspace(0, values.size - 1, n)).astype(int) if n <= values.size else np.arange(n) % values.size
    index = np.random.default_rng(seed).permutation(index).reshape(rows, cols)
    grid = values[index]

    def match(seen) -> list[str]:
        seen = np.asarray(seen)
        if seen.shape != grid.shape:
            return []
        found = [name for name, image in images.items() if _same(image[index], seen)]
        return found + [name for name in A.COLUMNWISE if _same(NUMPY_ACTIVATIONS[name](grid), seen)]

    return grid, match


def _flax_activations(module, variables, args, dense, nn) -> list[str]:
    """The activation after each Dense call, identified by :func:`activation_probe`."""
    probes = [activation_probe(_PROBE_ROWS, kernel.shape[1], k) for k, (_, _, kernel, _, _) in enumerate(dense)]
    grids = [grid for grid, _ in probes]
    reached, k = [], iter(range(len(dense)))

    def substitute(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == "__call__" and type(m) is nn.Dense and m.scope is not None and m.path:
            reached.append(np.asarray(_dense_input(args, kwargs)))
            return grids[next(k)]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(substitute):
        output = np.asarray(module.apply(variables, *args))
    after = reached[1:] + [output]
    names = []
    for (where, _, _, _, _), (_, match), seen in zip(dense, probes, after):
        found = match(seen)
        if not found:
            raise UnsupportedModelError(
                f"the function applied to the output of layer {where} matches none of the activations fluxhess "
                f"computes with NNlib's formulas ({', '.join({**A.ELEMENTWISE, **A.COLUMNWISE})}) at every point, "
                "from 0 to magnitudes of 1e6. Flax functions that do: nn.relu, "
                "nn.tanh, nn.sigmoid, nn.softplus, nn.elu (alpha=1), nn.leaky_relu (negative_slope=0.01), "
                "nn.swish/nn.silu, nn.gelu (approximate=True), nn.softmax, nn.log_softmax; the exact gelu, "
                "selu, celu, relu6, hard_tanh, clips and the like have no NNlib twin here"
            )
        names.append(found[0])
    return names


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(np.abs(a - b) <= 1e-12 * np.maximum(1.0, np.abs(b))))


# ---------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------


def _chain(layers, arrays, what: str, inputs=None) -> tuple[Chain, np.ndarray]:
    try:
        model = Chain(*layers, inputs=inputs)
    except InputError as e:
        raise UnsupportedModelError(f"{what} cannot be written as a fluxhess.Chain: {e}") from e
    return model, np.ascontiguousarray(model.flatten(arrays), dtype=np.float64)


def _chain_blocks(layers, arrays, what: str, inputs=None, input_shape=None) -> tuple[Chain, np.ndarray]:
    """A Chain of ``layers`` and θ from each layer's arrays (Flux's shapes) in θ order."""
    try:
        model = Chain(*layers, inputs=inputs, input_shape=input_shape)
    except InputError as e:
        raise UnsupportedModelError(f"{what} cannot be written as a fluxhess.Chain: {e}") from e
    sizes = [b.size for b in model.layout]
    if len(arrays) != len(sizes) or any(np.size(a) != n for a, n in zip(arrays, sizes)):
        raise UnsupportedModelError(f"{what}'s parameters do not fill the Chain's blocks {model.layout.names}")
    theta = np.concatenate([np.asarray(a, dtype=np.float64).ravel(order="F") for a in arrays])
    return model, np.ascontiguousarray(theta)


def _check_same_output(model: Chain, theta: np.ndarray, X: np.ndarray, expected: np.ndarray, whose: str) -> None:
    """Refuse a conversion whose Chain does not reproduce the original output. The Chain runs op by
    op, not compiled: its operations are the module's, whose kernels the probe has compiled already."""
    import jax

    from ._backends.jax.model import run

    with jax.enable_x64(True):
        got = np.asarray(run(model, np.asarray(theta, dtype=np.float64), np.asarray(X, dtype=np.float64)))
    tol = 1e4 * np.finfo(expected.dtype).eps * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    if got.shape != expected.shape or not np.all(np.abs(got - expected) <= tol):
        detail = (
            f"shape {got.shape} vs {expected.shape}" if got.shape != expected.shape
            else f"max difference {np.max(np.abs(got - expected)):.3g}"
        )
        raise UnsupportedModelError(
            f"the converted Chain {model!r} does not reproduce {whose} output ({detail}); "
            "the module does more than the layers it was mapped to"
        )


__all__ = ["from_flax", "from_torch"]
