"""θ ↔ a torch module's own parameter vector (``torch.nn.utils.parameters_to_vector``).

θ is in Flux ``destructure`` order (each weight ``(out, in)`` flattened column-major, then
its bias; layers in the order they are applied); ``parameters_to_vector(net.parameters())``
flattens each parameter row-major in the order the module registered them. The two
differ by a permutation, which :func:`torch_params` finds by converting a float64 copy
of the module whose every parameter entry holds its own index in torch's vector: θ of
that copy *is* the permutation, whatever the converter did with the layers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .errors import InputError, UnsupportedModelError
from .model import Chain


@dataclass(frozen=True)
class TorchParams:
    """A torch module's :class:`fluxhess.Chain` and the maps between θ and its parameter vector.

    ``model``: the Chain :func:`fluxhess.from_torch` builds; ``order``: ``(P,)`` int64,
    ``theta = vector[order]``. The maps copy; neither keeps a reference to its argument.
    """

    model: Chain
    order: np.ndarray

    def theta(self, vector: Any) -> np.ndarray:
        """θ ``(P,)`` float64 (Flux order) from ``parameters_to_vector(net.parameters())``
        (a torch tensor or an array of shape ``(P,)``)."""
        v = _numpy_vector(vector, self.order.size, "vector")
        return v[self.order]

    def vector(self, theta: ArrayLike, like: Any = None) -> Any:
        """The torch parameter vector ``(P,)`` (``parameters_to_vector`` order) of θ ``(P,)``,
        a float64 CPU tensor, or of ``like``'s dtype and device (e.g. a parameter of the
        module), ready for ``torch.nn.utils.vector_to_parameters``."""
        import torch

        t = _numpy_vector(theta, self.order.size, "theta")
        out = np.empty_like(t)
        out[self.order] = t
        tensor = torch.from_numpy(out)
        return tensor if like is None else tensor.to(dtype=like.dtype, device=like.device)


def _numpy_vector(value: Any, size: int, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().double().numpy()
    a = np.array(value, dtype=np.float64, copy=True)
    if a.shape != (size,):
        raise InputError(f"{name} must have shape ({size},); got {a.shape}")
    return a


def torch_params(net: Any, *, inputs: Any = None) -> TorchParams:
    """The :class:`TorchParams` of a torch module: its Chain, and θ ↔ ``parameters_to_vector``.

    Args:
        net: what :func:`fluxhess.from_torch` takes (an ``nn.Sequential`` of ``Linear`` and
            activation modules, or a module whose ``forward(x, t)`` concatenates its inputs).
        inputs: as for :func:`fluxhess.from_torch`: one example tensor ``(N, width)`` per
            ``forward`` argument, for a module of several inputs.

    Returns:
        A :class:`TorchParams` with ``model``, ``theta(vector)`` and ``vector(theta)``.

    Raises:
        UnsupportedModelError: the module does not convert (as in :func:`fluxhess.from_torch`),
            or it holds parameters its forward pass does not use.

    Example:
        >>> import torch, numpy as np, fluxhess as fh
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> tp = fh.torch_params(net)
        >>> v = torch.nn.utils.parameters_to_vector(net.parameters())
        >>> theta = tp.theta(v)                                  # (26,) in Flux order
        >>> bool(np.array_equal(theta, fh.from_torch(net)[1]))
        True
        >>> bool(torch.equal(tp.vector(theta, like=v), v))
        True
    """
    import torch

    from .convert import from_torch

    indexed = copy.deepcopy(net).double()
    P = sum(p.numel() for p in indexed.parameters())
    with torch.no_grad():
        start = 0
        for p in indexed.parameters():
            p.copy_(torch.arange(start, start + p.numel(), dtype=torch.float64).reshape(p.shape))
            start += p.numel()
    model, theta = from_torch(indexed, inputs=None if inputs is None else tuple(torch.as_tensor(x).double() for x in inputs))
    order = np.rint(theta).astype(np.int64)
    if model.num_params != P or not np.array_equal(np.sort(order), np.arange(P)):
        raise UnsupportedModelError(
            f"{type(net).__name__} has {P} parameters but its Chain uses {model.num_params}; torch_params maps "
            "modules whose every parameter takes part in the forward pass"
        )
    return TorchParams(model, order)
