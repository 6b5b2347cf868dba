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

import math
from typing import Any, Sequence

import numpy as np

from .errors import InputError, UnsupportedModelError
from . import _activations as A
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
        "Softmax(dim=-1), LogSoftmax(dim=-1) and a leading Flatten())"
    )


def from_torch(sequential: Any, *, inputs: Sequence[Any] | None = None) -> tuple[Chain, np.ndarray]:
    """A torch module as `(Chain, θ)` with the same weights.

    Layer `i` of the Sequential becomes layer `i` of the Chain, so θ's blocks are named
    like the Sequential's `state_dict`: `"layers.0.weight"` is `"0.weight"`.
    `Linear(in, out)` → `Dense(in, out)` (its `weight` `(out, in)` as is), an activation
    module → `Activation(name)`, a leading `Flatten()` → `Flatten()`. The Chain prints as
    torch modules. θ ↔ `parameters_to_vector` order: `fluxhess.torch_params`.

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
        UnsupportedModelError: a layer without an NNlib twin (naming it and what maps), a
            module that is not a Sequential (without `inputs`), a `forward` that does not
            trace.
        InputError: parameters on the meta device or not real floats; `inputs` that do not
            match `forward`.

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
        model, theta = _torch_sequential(sequential)
    return model.with_origin(Origin("torch", type(sequential).__name__)), theta


def _torch_sequential(sequential, signature=None) -> tuple[Chain, np.ndarray]:
    import torch.nn as nn

    if not isinstance(sequential, nn.Sequential):
        raise UnsupportedModelError(
            f"from_torch takes a torch.nn.Sequential of Linear and activation modules; got "
            f"{type(sequential).__name__}. Write the network as nn.Sequential(nn.Linear(...), nn.Tanh(), ...)"
        )
    _check_torch_parameters(sequential)
    layers: list[Layer] = []
    arrays: dict[str, np.ndarray] = {}
    for i, layer in enumerate(sequential):
        if type(layer) is nn.Linear:
            layers.append(Dense(layer.in_features, layer.out_features, bias=layer.bias is not None))
            arrays[f"layers.{i}.weight"] = _torch_numpy(layer.weight)
            if layer.bias is not None:
                arrays[f"layers.{i}.bias"] = _torch_numpy(layer.bias)
        elif type(layer) is nn.Flatten and layer.start_dim == 1 and layer.end_dim == -1:
            layers.append(Flatten())
        else:
            name, why = _torch_activation(layer, nn)
            if name is None:
                raise UnsupportedModelError(f"layer {i} of the Sequential ({layer!r}) cannot be mapped: {why}")
            layers.append(Activation(name))
    return _chain(layers, arrays, "the Sequential", signature)


def _torch_several_inputs(module, inputs) -> tuple[Chain, np.ndarray]:
    """``forward(x, t, ...)`` = layers applied to ``torch.cat([x, t, ...], dim=1)``, as a Chain with a signature."""
    import torch
    import torch.fx
    import torch.nn as nn

    if not isinstance(inputs, (tuple, list)) or not inputs:
        raise InputError(f"inputs must be a tuple of example tensors, one per forward argument; got {type(inputs).__name__}")
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
    module: Any, variables: Any, *, input_shape: tuple[int, ...] | None = None, inputs: Sequence[Any] | None = None,
) -> tuple[Chain, np.ndarray]:
    """A `flax.linen` MLP as `(Chain, θ)` with the same weights.

    The module may be any linen module whose `__call__` applies `nn.Dense` layers in
    sequence with elementwise activations (or softmax/log_softmax) between them, such as
    the common `MLP(features)` with `nn.tanh`. It is traced with `module.apply`: the
    order of the Dense calls gives the layers, and each activation is identified by
    substituting a grid of values for the preceding Dense output and matching what reaches
    the next layer against NNlib's formulas. Finally the Chain's output is checked against
    `module.apply` on random inputs. The Chain prints as Flax layers; θ ↔ variables:
    `fluxhess.jax.flax_params`.

    Args:
        module: a `flax.linen.Module`.
        variables: what `module.init` returned (`{"params": ...}`).
        input_shape: the shape of one sample, default `(in,)` of the first Dense kernel; a
            multi-dimensional shape puts `Flatten()` first (the module must flatten too).
        inputs: for a `__call__(self, x, t, …)` of several arrays that it concatenates along
            the feature axis, one example array per argument (`(N, width)`, or `(N,)` for
            width 1); the Chain then carries the input signature `{"x": width, "t": width}`
            named after the `__call__` parameters.

    Returns:
        `(model, params)`: the Chain, and θ `(P,)` float64 in Flux `destructure` order
        (`W` is the kernel transposed).

    Raises:
        UnsupportedModelError: a layer or function without an NNlib twin (the exact gelu,
            `selu`, a `LayerNorm`, a residual connection, …), naming it.
        InputError: `variables` that are not the module's (naming the parameters that
            differ), `inputs` that do not match `__call__`.

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
    model, theta, _ = flax_chain(module, variables, input_shape=input_shape, inputs=inputs)
    return model.with_origin(Origin("flax", type(module).__name__)), theta


def flax_chain(module, variables, *, input_shape=None, inputs=None):
    """:func:`from_flax`'s ``(model, params)`` and the Flax path of each Dense layer's parameters
    (``(model layer index, path tuple)`` in Chain order)."""
    import flax.linen as nn
    import jax

    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(
            f"from_flax takes a flax.linen Module (with the variables module.init returned); "
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
    with jax.enable_x64(True):
        if inputs is None:
            shape = _flax_input_shape(variables, input_shape)
            args, signature = [_probe_inputs(shape)], None
        else:
            signature = _call_signature(module, inputs)
            args = [_probe_inputs(np.shape(x)[1:], seed) for seed, x in enumerate(inputs)]
            shape = (sum(signature.values()),)
        _check_flax_variables(module, variables, args)
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


def _flax_input_shape(variables, input_shape) -> tuple[int, ...]:
    if input_shape is not None:
        shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) else tuple(input_shape)
        if not shape or any(not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
            raise InputError(f"input_shape must be the shape of one sample, e.g. (3,); got {input_shape!r}")
        return tuple(int(s) for s in shape)
    from flax.traverse_util import flatten_dict

    for path, leaf in flatten_dict(dict(variables["params"])).items():
        if path[-1] == "kernel" and np.ndim(leaf) == 2:
            return (int(np.shape(leaf)[0]),)
    raise UnsupportedModelError(
        "from_flax found no Dense kernel (a 2-D 'kernel' parameter) in variables['params']; "
        "it converts MLPs made of nn.Dense layers"
    )


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
    calls, seen = [], set()

    def record(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name != "__call__" or m.scope is None or not m.path:
            return next_fun(*args, **kwargs)
        if type(m) is nn.Dense:
            if m.path in seen:
                raise UnsupportedModelError(
                    f"layer {_module_name(m)} is called more than once (shared weights); a Chain cannot express that"
                )
            seen.add(m.path)
            params = m.variables["params"]
            kernel = np.asarray(params["kernel"], dtype=np.float64)
            bias = np.asarray(params["bias"], dtype=np.float64) if m.use_bias else None
            calls.append((_module_name(m), tuple(m.path), kernel, bias, np.asarray(_dense_input(args, kwargs))))
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


def activation_probe(rows: int, cols: int, seed: int):
    """A grid of pre-activations ``(rows, cols)`` and the test of what a function made of it.

    The grid holds 0, values spread densely over [-8, 8] (where activations differ in shape)
    and ± log-spaced magnitudes from 10 to 1e6, shuffled: a function that agrees with an
    NNlib activation near 0 but not everywhere (``relu6``, a clip at ±10, a saturating
    approximation) disagrees somewhere on it. ``match(values)``, with ``values`` what the
    function returned on the grid, gives the names of the activations fluxhess computes
    (elementwise, or softmax/logsoftmax over each row) that agree with it at every point,
    to 1e-12 relative.

    Returns: ``(grid, match)``.
    """
    n = rows * cols
    large = np.logspace(1.0, 6.0, n // 4)
    values = np.concatenate([[0.0], np.linspace(-8.0, 8.0, n - 1 - 2 * large.size), large, -large])
    grid = np.random.default_rng(seed).permutation(values).reshape(rows, cols)
    candidates = {**A.ELEMENTWISE, **A.COLUMNWISE}

    def match(seen) -> list[str]:
        seen = np.asarray(seen)
        if seen.shape != grid.shape:
            return []
        return [name for name, fn in candidates.items() if _same(np.asarray(fn(grid)), seen)]

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


def _check_same_output(model: Chain, theta: np.ndarray, X: np.ndarray, expected: np.ndarray, whose: str) -> None:
    """Refuse a conversion whose Chain does not reproduce the original output."""
    from .api import forward

    got = forward(model, theta, X, backend="jax")
    tol = 1e4 * np.finfo(expected.dtype).eps * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    if got.shape != expected.shape or not np.all(np.abs(got - expected) <= tol):
        detail = (
            f"shape {got.shape} vs {expected.shape}" if got.shape != expected.shape
            else f"max difference {np.max(np.abs(got - expected)):.3g}"
        )
        raise UnsupportedModelError(
            f"the converted Chain {model!r} does not reproduce {whose} output ({detail}); "
            "the module does more than Dense layers and activations"
        )


__all__ = ["from_flax", "from_torch"]
