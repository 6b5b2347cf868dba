"""Type aliases of the public signatures (for annotations only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from ._backends.julia.flux_model import FluxModel
    from .model import Chain

#: A model every public function takes: a spec, or a Flux model (julia backend).
Model = Union["Chain", "FluxModel"]
#: ``X``: ``(N, d)`` (a FluxModel also ``(N, a, b, …)``), or the tuple ``(x, t, …)`` of a
#: model with an input signature.
Inputs = Union[ArrayLike, "tuple[ArrayLike, ...]"]
#: ``wrt=``: one input name, or several, of a model with an input signature.
InputNames = Union[str, Sequence[str], None]
