"""Spec layers from FluxHess.jl's description of each Flux layer (``FluxHess.to_spec``).

``to_spec`` in Julia returns one Dict per layer of the flattened layer list, with a
``"kind"``. :data:`KINDS` maps each kind to ``(layer, {block field: array})``; every size
and tuple in a description is in Julia order (as Flux stores it) and is reversed here
into the spec's NumPy order; arrays are Flux's (their shape is the block's shape).

The description of each kind (keys beyond ``"kind"``):

=================== ==========================================================================
``dense``            ``in``, ``out``, ``activation``, ``bias`` (Bool), ``weight`` (out × in),
                     ``bias_values`` (or nothing)
``conv``/``crosscor`` ``kernel`` (k_w, k_h, …), ``in``, ``out``, ``activation``, ``stride``,
                     ``pad`` (lo_1, hi_1, lo_2, hi_2, … as Flux stores it), ``dilation``,
                     ``groups``, ``bias`` (Bool), ``weight`` (k…, cin ÷ groups, cout), ``bias_values``
``meanpool``/``maxpool`` ``window``, ``stride``, ``pad`` (as for conv)
``adaptivemeanpool`` ``out`` (the output's spatial size)
``globalmeanpool``   (nothing)
``batchnorm``        ``channels``, ``activation``, ``eps``, ``affine``, ``mean`` (μ), ``var`` (σ²),
                     ``beta``, ``gamma`` (or nothing when not affine)
``layernorm``        ``size``, ``activation``, ``eps``, ``affine``, ``scale``, ``bias_values``
``dropout``          ``p``
``skip``             ``layers``: the descriptions of the SkipConnection's layers (a Chain opened)
``parallel``         ``branches``: per branch the descriptions of its layers ([] for identity)
``activation``, ``flatten`` as before (``activation``: the NNlib name)
=================== ==========================================================================
"""

from __future__ import annotations

import numpy as np

from ... import layers as L
from ...model import Activation, Dense, Flatten


def _numpy(value) -> np.ndarray:
    to_numpy = getattr(value, "to_numpy", None)  # juliacall.ArrayValue
    return to_numpy(order="C") if to_numpy is not None else np.array(value, dtype=np.float64)


def _rev(values) -> tuple[int, ...]:
    return tuple(int(v) for v in reversed(list(values)))


def _pads(pad) -> tuple[tuple[int, int], ...]:
    """Flux's ``(lo_1, hi_1, lo_2, hi_2, …)`` (Julia axis order) as NumPy-order pairs."""
    pad = [int(v) for v in pad]
    return tuple((pad[2 * k], pad[2 * k + 1]) for k in reversed(range(len(pad) // 2)))


def _weights(d) -> dict:
    out = {"weight": _numpy(d["weight"])}
    if bool(d["bias"]):
        out["bias"] = _numpy(d["bias_values"])
    return out


def _conv(kind):
    def mapper(d):
        layer = kind(
            _rev(d["kernel"]), int(d["in"]), int(d["out"]), str(d["activation"]), stride=_rev(d["stride"]),
            padding=_pads(d["pad"]), dilation=_rev(d["dilation"]), groups=int(d["groups"]), bias=bool(d["bias"]),
        )
        return layer, _weights(d)

    return mapper


def _pool(kind):
    return lambda d: (kind(_rev(d["window"]), stride=_rev(d["stride"]), padding=_pads(d["pad"])), {})


def _batchnorm(d):
    affine = bool(d["affine"])
    layer = L.BatchNorm(int(d["channels"]), str(d["activation"]), mean=_numpy(d["mean"]), var=_numpy(d["var"]),
                        eps=float(d["eps"]), affine=affine)
    return layer, ({"bias": _numpy(d["beta"]), "scale": _numpy(d["gamma"])} if affine else {})


def _layernorm(d):
    affine = bool(d["affine"])
    layer = L.LayerNorm(_rev(d["size"]), str(d["activation"]), eps=float(d["eps"]), affine=affine)
    return layer, ({"scale": _numpy(d["scale"]), "bias": _numpy(d["bias_values"])} if affine else {})


def _sequence(descriptions, prefix: str, arrays: dict) -> list:
    """The spec layers of ``descriptions``; their arrays go into ``arrays`` under ``prefix{j}.{field}``."""
    out = []
    for j, d in enumerate(descriptions):
        layer, fields = KINDS[str(d["kind"])](dict(d), f"{prefix}{j}.", arrays)
        arrays.update({f"{prefix}{j}.{field}": a for field, a in fields.items()})
        out.append(layer)
    return out


def _leaf(mapper):
    return lambda d, prefix, arrays: mapper(d)


def _skip(d, prefix, arrays):
    return L.SkipConnection(*_sequence(d["layers"], prefix, arrays)), {}


def _parallel(d, prefix, arrays):
    branches = [_sequence(branch, f"{prefix}{b}.", arrays) or () for b, branch in enumerate(d["branches"])]
    return L.Parallel(*branches), {}


#: ``kind -> mapper(description, block prefix, arrays) -> (layer, {field: array})``.
KINDS = {
    "dense": _leaf(lambda d: (Dense(int(d["in"]), int(d["out"]), str(d["activation"]), bool(d["bias"])), _weights(d))),
    "activation": _leaf(lambda d: (Activation(str(d["activation"])), {})),
    "flatten": _leaf(lambda d: (Flatten(), {})),
    "conv": _leaf(_conv(L.Conv)),
    "crosscor": _leaf(_conv(L.CrossCor)),
    "meanpool": _leaf(_pool(L.MeanPool)),
    "maxpool": _leaf(_pool(L.MaxPool)),
    "adaptivemeanpool": _leaf(lambda d: (L.AdaptiveMeanPool(_rev(d["out"])), {})),
    "globalmeanpool": _leaf(lambda d: (L.GlobalMeanPool(), {})),
    "batchnorm": _leaf(_batchnorm),
    "layernorm": _leaf(_layernorm),
    "dropout": _leaf(lambda d: (L.Dropout(float(d["p"])), {})),
    "skip": _skip,
    "parallel": _parallel,
}


def spec_layers(descriptions) -> tuple[list, dict]:
    """The Chain's layers and ``{block name: Flux array}`` from Julia's descriptions."""
    arrays: dict = {}
    return _sequence(descriptions, "layers.", arrays), arrays
