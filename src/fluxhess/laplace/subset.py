"""Which parameters a Laplace approximation covers, and the smallest network that holds them.

A subset is a set of blocks of ``model.layout`` (``"all"``, ``"last_layer"`` — the
blocks of the last Dense layer — or a list of block names). Every quantity of the
subset is computed on the *tail* of the Chain: the layers from the first Dense layer
that holds a subset block onwards, fed with the *features* that the layers before it
(the *head*) compute from ``X``. The parameters outside the subset are fixed, so the
curvature, Jacobian and predictive of the subset are exactly those of the tail at its
inputs; for ``"last_layer"`` the tail is one linear layer on the penultimate features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import api
from ..errors import InputError, UnknownNameError
from ..jax_function import JaxFunction
from ..model import Block


@dataclass(frozen=True)
class Subset:
    """The subset's blocks and the head/tail split of the model around them."""

    blocks: tuple[Block, ...]  # the chosen blocks, in layout order
    start: int  # the tail's first layer in the model
    head: object  # layers before the tail, as a model of the same kind (None: the tail is the whole model)
    tail: object  # the layers that hold the subset, and every layer after them
    tail_offset: int  # θ[tail_offset:] are the tail's parameters
    index: np.ndarray  # (P_subset,) positions of the subset in the tail's θ

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    @property
    def sizes(self) -> list[int]:
        return [b.size for b in self.blocks]

    @property
    def num_params(self) -> int:
        return int(self.index.size)

    @property
    def global_index(self) -> np.ndarray:
        """Positions of the subset in the full θ ``(P,)``."""
        return self.index + self.tail_offset

    def tail_params(self, theta: np.ndarray) -> np.ndarray:
        return theta[self.tail_offset :]

    def features(self, theta: np.ndarray, X, backend: str) -> np.ndarray:
        """The tail's inputs: the head's output for ``X`` ``(N, ...)`` (``X`` itself without a head)."""
        if self.head is None:
            return X
        return api.forward(self.head, theta[: self.tail_offset], X, backend=backend)

    def jacobian(self, theta: np.ndarray, features: np.ndarray, backend: str) -> np.ndarray:
        """``∂f(x_n)/∂θ_subset`` ``(N, C, P_subset)`` at the tail's inputs."""
        J = api.param_jacobian(self.tail, self.tail_params(theta), features, backend=backend)
        return J if self.index.size == J.shape[2] else np.ascontiguousarray(J[:, :, self.index])


def resolve(model, subset) -> Subset:
    """``subset`` (``"all"``, ``"last_layer"`` or block names) as a :class:`Subset` of ``model``.

    ``model``: a :class:`fluxhess.Chain`, a :class:`fluxhess.FluxModel` (anything with
    ``layout`` and ``split``) or a :class:`fluxhess.JaxFunction` (always its whole self).
    ``"last_layer"`` is the last layer that has parameters (a JaxFunction's last tree node
    holding parameters).
    """
    layout = model.layout
    if isinstance(subset, str):
        if subset == "all":
            names = layout.names
        elif subset == "last_layer":
            last = max(b.layer for b in layout)
            names = [b.name for b in layout if b.layer == last]
        else:
            raise UnknownNameError(
                f"subset must be 'all', 'last_layer' or a list of block names from model.layout "
                f"({', '.join(layout.names)}); got {subset!r}"
            )
    else:
        try:
            names = list(subset)
        except TypeError:
            raise InputError(f"subset must be 'all', 'last_layer' or a list of block names; got {subset!r}") from None
        if not names:
            raise InputError(f"subset must name at least one block of model.layout ({', '.join(layout.names)})")
        for n in names:
            if not isinstance(n, str):
                raise InputError(f"subset must hold block names (strings) from model.layout; got {n!r}")
            layout[n]  # raises UnknownNameError listing the blocks
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"subset names each block at most once; {', '.join(twice)} appear more than once")
    chosen = tuple(b for b in layout if b.name in set(names))
    first = min(b.layer for b in chosen)
    # A JaxFunction is one function: its subsets are computed on the whole of it.
    start = first if not isinstance(model, JaxFunction) and any(b.layer < first for b in layout) else 0
    head, tail = model.split(start)
    tail_offset = min(b.offset for b in layout if b.layer >= start)
    index = np.concatenate([np.arange(b.offset, b.offset + b.size) for b in chosen]) - tail_offset
    return Subset(chosen, start, head, tail, tail_offset, index)


def tail_block(subset: Subset, block: Block) -> str:
    """The name of ``block`` in the tail's own layout (its layers are numbered from 0)."""
    return f"layers.{block.layer - subset.start}.{block.name.split('.', 2)[2]}"
