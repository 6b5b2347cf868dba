"""How a model prints: in the words of the framework it came from.

A :class:`fluxhess.Chain` carries an :class:`Origin` (set by the converter that made it);
:func:`describe` renders it with that framework's printer from :data:`PRINTERS`: torch
modules for :func:`fluxhess.from_torch`, Flax layers for :func:`fluxhess.from_flax`,
Flux syntax for a Flux model's spec, and fluxhess's own spec syntax (the expression that
builds it) for a Chain written by hand. Layers without a word in a framework's table
(layers added later) print as their spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable



@dataclass(frozen=True)
class Origin:
    """Where a model came from: ``framework`` (a key of :data:`PRINTERS`) and the
    original's class name (``"Sequential"``, a Flax module's class), if any."""

    framework: str = "fluxhess"
    name: str = ""


#: torch's module for each activation (as ``from_torch`` maps them).
TORCH_ACTIVATIONS = {
    "identity": "Identity()",
    "relu": "ReLU()",
    "tanh": "Tanh()",
    "sigmoid": "Sigmoid()",
    "swish": "SiLU()",
    "gelu": "GELU(approximate='tanh')",
    "leakyrelu": "LeakyReLU()",
    "elu": "ELU()",
    "softplus": "Softplus(threshold=inf)",
    "softmax": "Softmax(dim=-1)",
    "logsoftmax": "LogSoftmax(dim=-1)",
}

#: Flax's function for each activation (as ``from_flax`` identifies them).
FLAX_ACTIVATIONS = {
    "identity": "",
    "relu": "nn.relu",
    "tanh": "nn.tanh",
    "sigmoid": "nn.sigmoid",
    "swish": "nn.swish",
    "gelu": "nn.gelu",
    "leakyrelu": "nn.leaky_relu",
    "elu": "nn.elu",
    "softplus": "nn.softplus",
    "softmax": "nn.softmax",
    "logsoftmax": "nn.log_softmax",
}


def _torch_dense(layer: Any) -> list[str]:
    bias = "" if layer.bias else ", bias=False"
    act = [] if layer.activation == "identity" else [TORCH_ACTIVATIONS[layer.activation]]
    return [f"Linear({layer.in_features}, {layer.out_features}{bias})", *act]


def _flax_dense(layer: Any) -> list[str]:
    bias = "" if layer.bias else ", use_bias=False"
    act = [] if layer.activation == "identity" else [FLAX_ACTIVATIONS[layer.activation]]
    return [f"nn.Dense({layer.out_features}{bias})", *act]


#: Each spec layer in torch's words, by layer class.
TORCH_LAYERS: dict[str, Callable[[Any], list[str]]] = {
    "Dense": _torch_dense,
    "Activation": lambda layer: [TORCH_ACTIVATIONS[layer.name]],
    "Flatten": lambda layer: ["Flatten()"],
}

#: Each spec layer in Flax's words, by layer class.
FLAX_LAYERS: dict[str, Callable[[Any], list[str]]] = {
    "Dense": _flax_dense,
    "Activation": lambda layer: [FLAX_ACTIVATIONS[layer.name] or "identity"],
    "Flatten": lambda layer: ["x.reshape(x.shape[0], -1)"],
}


def _words(table: dict[str, Callable[[Any], list[str]]], chain: Any) -> list[str]:
    """Every layer of ``chain`` in a framework's words (its spec where the table has none)."""
    return [w for layer in chain.layers for w in table.get(type(layer).__name__, lambda l: [repr(l)])(layer)]


def _signature(chain: Any) -> str:
    return "" if chain.inputs is None else ", ".join(name for name, _ in chain.inputs)


def _torch(chain: Any) -> str:
    body = "Sequential(" + ", ".join(_words(TORCH_LAYERS, chain)) + ")"
    if chain.inputs is None:
        return body if chain.origin.name in ("", "Sequential") else f"{chain.origin.name}: {body}"
    args = _signature(chain)
    return f"{chain.origin.name or 'Module'}.forward({args}) = {body}(torch.cat([{args}], dim=1))"


def _flax(chain: Any) -> str:
    calls = " → ".join(_words(FLAX_LAYERS, chain))
    args = _signature(chain) or "x"
    head = f"{chain.origin.name or 'Module'}.__call__({args})"
    start = "x" if chain.inputs is None else f"jnp.hstack([{args}])"
    return f"{head}: {start} → {calls}"


#: One printer per origin: ``model -> str`` in that framework's words.
PRINTERS: dict[str, Callable[[Any], str]] = {
    "fluxhess": repr,
    "flux": lambda chain: chain.to_flux(),
    "torch": _torch,
    "flax": _flax,
}


def describe(model: Any) -> str:
    """``model`` in the words of the framework it came from (a FluxModel: its Flux source)."""
    origin = getattr(model, "origin", None)
    if origin is None:
        return repr(model)
    return PRINTERS[origin.framework](model)
