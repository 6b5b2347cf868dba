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
from ..model import Block, Chain, Dense


@dataclass(frozen=True)
class Subset:
    """The subset's blocks and the head/tail split of the Chain around them."""

    blocks: tuple[Block, ...]  # the chosen blocks, in layout order
    head: Chain | None  # layers before the tail (None: the tail is the whole model)
    tail: Chain  # the layers that hold the subset, and every layer after them
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
        """The tail's inputs: the head's output for ``X`` ``(N, d)`` (``X`` itself without a head)."""
        if self.head is None:
            return X
        return api.forward(self.head, theta[: self.tail_offset], X, backend=backend)

    def jacobian(self, theta: np.ndarray, features: np.ndarray, backend: str) -> np.ndarray:
        """``∂f(x_n)/∂θ_subset`` ``(N, C, P_subset)`` at the tail's inputs."""
        J = api.param_jacobian(self.tail, self.tail_params(theta), features, backend=backend)
        return J if self.index.size == J.shape[2] else np.ascontiguousarray(J[:, :, self.index])


def resolve(model: Chain, subset) -> Subset:
    """``subset`` (``"all"``, ``"last_layer"`` or block names) as a :class:`Subset` of ``model``."""
    layout = model.layout
    if isinstance(subset, str):
        if subset == "all":
            names = layout.names
        elif subset == "last_layer":
            last = model.dense_layers[-1][0]
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
    start = first if any(isinstance(l, Dense) for l in model.layers[:first]) else 0
    head = Chain(*model.layers[:start], inputs=model.inputs) if start else None
    tail = Chain(*model.layers[start:])
    tail_offset = sum(l.num_params for l in model.layers[:start])
    index = np.concatenate([np.arange(b.offset, b.offset + b.size) for b in chosen]) - tail_offset
    return Subset(chosen, head, tail, tail_offset, index)


def tail_block(subset: Subset, block: Block) -> str:
    """The name of ``block`` in the tail's own layout (its layers are numbered from 0)."""
    start = block.layer - (len(subset.head.layers) if subset.head is not None else 0)
    return f"layers.{start}.{block.name.rsplit('.', 1)[1]}"
