"""Which layers KFAC (:func:`fluxhess.kron`) factors, and the sizes of their factors.

A layer with parameters is factored when it is linear in them through its unfolded input:
Dense (``A`` over ``[a; 1]``) and Conv/CrossCor without groups (``A`` over the patches
``[u; 1]``, ``K = in_channels × kernel`` rows, the KFC "expand" convention). A Chain with any
other layer that has parameters (BatchNorm or LayerNorm with affine parameters, a grouped
convolution) is refused, naming the layer.
"""

from __future__ import annotations

import math

from .errors import UnsupportedModelError
from .layers import Conv, CrossCor, children
from .model import Chain, Dense, _walk

#: ``(rows of A, rows of G)`` of each layer class KFAC factors.
FACTOR_SIZES = {
    Dense: lambda l: (l.in_features + int(l.bias), l.out_features),
    Conv: lambda l: (l.in_channels * math.prod(l.kernel_size) + int(l.bias), l.out_channels),
    CrossCor: lambda l: (l.in_channels * math.prod(l.kernel_size) + int(l.bias), l.out_channels),
}


def _refusal(layer) -> str | None:
    """Why KFAC does not factor ``layer`` (a layer with parameters), or None."""
    if type(layer) not in FACTOR_SIZES:
        return f"{type(layer).__name__} has parameters that are not a Dense or Conv weight"
    if isinstance(layer, Conv) and layer.groups > 1:
        return f"a grouped convolution (groups={layer.groups}) has no single input factor A"
    return None


def kron_layers(model: Chain) -> list[tuple[str, int, int]]:
    """``(layer name, rows of A, rows of G)`` of each layer with parameters, in θ order.

    Raises: UnsupportedModelError naming the first layer KFAC does not factor.
    """
    factored = []
    for path, layer in _walk(model.layers):
        if children(layer) or not layer.num_params:
            continue
        why = _refusal(layer)
        if why is not None:
            raise UnsupportedModelError(
                f"kron (KFAC) factors Dense and Conv layers; layer {path} ({layer!r}): {why}. "
                "Use diagonal() or the full ggn() for this model"
            )
        factored.append(layer)
    names = list(dict.fromkeys(b.name.rsplit(".", 1)[0] for b in model.layout))
    return [(name, *FACTOR_SIZES[type(l)](l)) for name, l in zip(names, factored)]
