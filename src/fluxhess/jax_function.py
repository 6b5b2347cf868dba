"""Any JAX function ``apply(params, X)`` as a fluxhess model: :class:`JaxFunction` and :func:`from_jax`.

fluxhess has two kinds of model on the JAX engine (``model.model_kind``):

- ``"chain"``: a :class:`fluxhess.Chain` of layers both engines know; θ in Flux's
  ``destructure`` order, a Julia twin, structured fast routes;
- ``"jax_function"``: a :class:`JaxFunction`, any pure ``apply(params, X)`` over a pytree
  of parameters. θ is the pytree's leaves, each raveled in C order, concatenated in
  ``jax.tree`` flatten order (dict keys sorted, sequences in order); ``layout`` names each
  block by its tree path (``"Dense_2/kernel"``). Every quantity runs on the JAX engine's
  generic routes (Hessian-vector products, per-sample Jacobians, ``vmap`` of per-sample
  gradients); there is no Julia twin and no KFAC.

Curvatures are sums of per-sample terms, so a function must treat its samples
independently (no batch statistics, no softmax over the batch): :func:`from_jax` checks
this on a probe and refuses a function that mixes them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from . import _validate as check
from .errors import InputError, UnsupportedModelError
from .model import Block, Chain, ParamLayout, _signature

__all__ = ["JaxFunction", "from_jax"]


def _path_name(path) -> str:
    """A tree path as ``"Dense_2/kernel"`` (dict keys, sequence indices and attribute names)."""
    parts = []
    for key in path:
        for attribute in ("key", "idx", "name"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _layout(paths, shapes) -> ParamLayout:
    """Blocks in flatten order; a block's ``layer`` numbers its parent path (the leaves of one
    tree node, e.g. a Dense layer's kernel and bias, share one), in order of first appearance."""
    blocks: list[Block] = []
    layers: dict[str, int] = {}
    offset = 0
    for path, shape in zip(paths, shapes):
        if path and getattr(path[-1], "name", None) == "value":  # a flax.nnx Variable's array
            path = path[:-1]
        parent = _path_name(path[:-1])
        layer = layers.setdefault(parent, len(layers))
        blocks.append(Block(_path_name(path) or "params", layer, tuple(shape), offset))
        offset += math.prod(shape)
    return ParamLayout(blocks)


class JaxFunction:
    """A model that is a JAX function of a pytree of parameters (``model_kind == "jax_function"``).

    Built by :func:`from_jax`, or by :func:`fluxhess.from_flax` for a module that is not a
    Chain. Attributes:

    - ``layout``: a :class:`fluxhess.ParamLayout`; block ``"a/b"`` is the leaf at tree path
      ``a/b``, ``theta[block.slice].reshape(block.shape)`` (C order); its ``layer`` numbers the
      leaf's parent node, so ``"last_layer"`` in :class:`fluxhess.Laplace` is the last node that
      holds parameters;
    - ``input_shape``: one sample's shape; ``X`` is ``(N, *input_shape)`` flattened to
      ``(N, d)``, ``d = in_features`` (input derivatives are in that flattened sample);
    - ``out_features``: C; ``batched``: whether ``apply`` takes the whole batch (else one
      sample, ``vmap``-ed); ``inputs``: the input signature, as for a Chain;
    - ``source``: what it was made from (for its repr), ``why_not_chain``: for a Flax module,
      why it was not converted to a Chain (None otherwise).

    :meth:`unflatten` maps θ back to the pytree, :meth:`flatten` the pytree to θ.
    """

    model_kind = "jax_function"

    def __init__(self, apply: Callable, params: Any, input_shape: int | Sequence[int], *, batched: bool = True,
                 inputs: Mapping[str, int] | Sequence[tuple[str, int]] | None = None,
                 source: str | None = None, why_not_chain: str | None = None):
        if not callable(apply):
            raise InputError(f"apply must be a function apply(params, X); got {type(apply).__name__}")
        if not isinstance(batched, bool):
            raise InputError(f"batched must be True or False; got {batched!r}")
        leaves_with_paths, self._treedef = jax.tree_util.tree_flatten_with_path(params)
        if not leaves_with_paths:
            raise InputError("params must be a pytree holding at least one array; got none")
        paths, leaves = zip(*leaves_with_paths)
        for path, leaf in zip(paths, leaves):
            kind = np.asarray(leaf).dtype.kind if not isinstance(leaf, jax.Array) else np.dtype(leaf.dtype).kind
            if kind != "f":
                raise InputError(
                    f"params: every leaf must be a real floating-point array; {_path_name(path) or 'params'} has "
                    f"dtype {getattr(leaf, 'dtype', type(leaf).__name__)}. Keep integers and constants out of params "
                    "(close over them in apply)"
                )
        self.layout = _layout(paths, [np.shape(leaf) for leaf in leaves])
        self.apply = apply
        self.batched = batched
        self.input_shape = sample_shape(input_shape)
        self.source = source or getattr(apply, "__name__", type(apply).__name__)
        self.why_not_chain = why_not_chain
        self.in_features = math.prod(self.input_shape)
        self._activation_floats: int | None = None
        self.out_features, self._vector_output = self._output_width(leaves)
        self.inputs = _signature(inputs, self)

    # -- shape of the function -------------------------------------------------
    def _output_width(self, leaves) -> tuple[int, bool]:
        """``(C, whether apply returns (N,) rather than (N, C))``, from ``apply``'s abstract evaluation."""
        params = jax.tree.unflatten(self._treedef, [jax.ShapeDtypeStruct(np.shape(a), jnp.float64) for a in leaves])
        x = jax.ShapeDtypeStruct(((2,) if self.batched else ()) + self.input_shape, jnp.float64)
        with jax.enable_x64(True):
            try:
                out = jax.eval_shape(self.apply, params, x)
            except Exception as e:
                raise UnsupportedModelError(
                    f"apply(params, X) failed on X of shape {x.shape}: {type(e).__name__}: {e}. "
                    "input_shape must be the shape of one sample, and apply must "
                    + ("take a batch (N, *input_shape)" if self.batched else "take one sample (batched=False)")
                ) from e
        shape = getattr(out, "shape", None)
        lead = (2,) if self.batched else ()
        if shape is None or shape[: len(lead)] != lead or len(shape) - len(lead) > 1:
            expected = "(N, C) or (N,)" if self.batched else "(C,) or ()"
            raise UnsupportedModelError(
                f"apply must return one array {expected}; on X of shape {x.shape} it returned "
                f"{shape if shape is not None else type(out).__name__}"
            )
        return (shape[-1], False) if len(shape) > len(lead) else (1, True)

    @property
    def num_params(self) -> int:
        return self.layout.num_params

    @property
    def flattens_input(self) -> bool:
        """Samples have more than one axis: ``X`` ``(N, *input_shape)`` is flattened to ``(N, d)``."""
        return len(self.input_shape) > 1

    input_columns = Chain.input_columns

    # -- θ and the pytree ---------------------------------------------------------
    def unflatten(self, theta: Any) -> Any:
        """The parameter pytree of θ ``(P,)``: NumPy copies for a NumPy θ, JAX arrays (differentiable,
        jittable) for a ``jax.Array`` θ."""
        xp = jnp if isinstance(theta, jax.Array) else np
        theta = theta if xp is jnp else np.asarray(theta)
        if theta.shape != (self.num_params,):
            raise InputError(f"theta must have shape ({self.num_params},) for this model; got {theta.shape}")
        leaves = [xp.reshape(theta[b.slice], b.shape) for b in self.layout]
        return jax.tree.unflatten(self._treedef, [np.array(a) for a in leaves] if xp is np else leaves)

    def flatten(self, params: Any) -> Any:
        """θ ``(P,)`` of a parameter pytree of this model's structure: a float64 NumPy array, or a
        ``jax.Array`` (differentiable) when any leaf is one."""
        leaves, treedef = jax.tree.flatten(params)
        # jax's PyTreeDef is an alias of jaxlib's compiled (stub-less) class, which mypy cannot compare
        if treedef != self._treedef:  # type: ignore[operator]
            raise InputError(f"params must have this model's tree structure {self._treedef}; got {treedef}")
        for leaf, b in zip(leaves, self.layout):
            if tuple(np.shape(leaf)) != b.shape:
                raise InputError(f"params: {b.name} must have shape {b.shape}; got {tuple(np.shape(leaf))}")
        if any(isinstance(leaf, jax.Array) for leaf in leaves):
            return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
        return np.concatenate([np.asarray(leaf, dtype=np.float64).ravel() for leaf in leaves])

    # -- the function of (θ, x) ---------------------------------------------------
    def function(self, theta: Any, x: Any) -> Any:
        """``f(θ, x)``: ``(C,)`` for one sample ``x`` ``(d,)``, ``(N, C)`` for ``X`` ``(N, d)``; in θ's dtype."""
        params = jax.tree.unflatten(self._treedef, [theta[b.slice].reshape(b.shape) for b in self.layout])
        X = x.reshape((-1,) + self.input_shape)
        out = self.apply(params, X) if self.batched else jax.vmap(self.apply, (None, 0))(params, X)
        out = jnp.reshape(out, (X.shape[0], self.out_features))
        return out[0] if x.ndim == 1 else out

    def split(self, start: int) -> tuple[None, JaxFunction]:
        """``(None, self)``: a function has no layers to split at (:mod:`fluxhess.laplace.subset`)."""
        if start != 0:
            raise InputError(f"a JaxFunction cannot be split at layer {start}; it is one function")
        return None, self

    @property
    def dense_shapes(self):
        """Refused: KFAC needs a network's layers, which a function does not show."""
        raise UnsupportedModelError(
            f"kron (KFAC) needs the Dense layers of a fluxhess.Chain; {self!r} is a JAX function whose layers "
            "fluxhess cannot see. What works on it: diagonal(kind='ggn'|'ef'|'hessian'), hvp, the full ggn/"
            "empirical_fisher/hessian, and Laplace with structure='diag', 'lowrank' or 'full'"
        )

    @property
    def activation_floats(self) -> int:
        """Floats of every intermediate value of one sample's forward pass that depends on the
        sample (not the reshapes of θ, whose size does not grow with the batch): what the
        memory estimates count per sample."""
        if self._activation_floats is None:
            theta = jax.ShapeDtypeStruct((self.num_params,), jnp.float64)
            x = jax.ShapeDtypeStruct((self.in_features,), jnp.float64)
            with jax.enable_x64(True):
                jaxpr = jax.make_jaxpr(self.function)(theta, x).jaxpr
            self._activation_floats = max(1, _dependent_floats(jaxpr, {jaxpr.invars[1]}))
        return self._activation_floats

    def __repr__(self) -> str:
        inputs = "" if self.inputs is None else f", inputs={dict(self.inputs)!r}"
        how = "batched" if self.batched else "per sample (vmap)"
        return (f"JaxFunction({self.source}, input_shape={self.input_shape}, outputs={self.out_features}, "
                f"P={self.num_params}, {how}{inputs})")


def _dependent_floats(jaxpr, dependent: set) -> int:
    """Sizes of the values of ``jaxpr`` that depend on the variables in ``dependent``, summed; a
    nested jaxpr (pjit, custom_jvp) that takes such a value counts with its own inputs marked."""
    total = 0
    for eqn in jaxpr.eqns:
        marked = [i for i, v in enumerate(eqn.invars) if not isinstance(v, Literal) and v in dependent]  # literals: constants
        if not marked:
            continue
        dependent.update(eqn.outvars)
        total += sum(math.prod(getattr(v.aval, "shape", ())) for v in eqn.outvars)
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns") and len(inner.invars) == len(eqn.invars):
                total += _dependent_floats(inner, {inner.invars[i] for i in marked})
    return total


def sample_shape(input_shape) -> tuple[int, ...]:
    shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool) else input_shape
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if not shape or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
        raise InputError(f"input_shape must be the shape of one sample, e.g. 3 or (28, 28, 1); got {input_shape!r}")
    return tuple(int(s) for s in shape)


#: Samples in the independence probe, and the relative change that counts as "mixed".
PROBE_SAMPLES = 4
MIXING_TOLERANCE = 1e-10


def check_independent(model: JaxFunction, theta) -> None:
    """Refuse a ``model`` whose output for one sample depends on the others (batch statistics, a
    softmax over the batch): the curvature routes sum per-sample terms, which such a function
    does not have. On a probe of :data:`PROBE_SAMPLES` normal samples at parameters ``theta`` ``(P,)``:
    changing sample 0 must leave every other output unchanged, and each sample's output alone
    must equal its row of the batch's."""
    if not model.batched:
        return  # vmap applies it to each sample on its own
    rng = np.random.default_rng(0)
    X = rng.normal(size=(PROBE_SAMPLES, model.in_features))
    moved = X.copy()
    moved[0] += 1.0 + rng.normal(size=model.in_features)
    with jax.enable_x64(True):
        theta = jnp.asarray(theta, dtype=jnp.float64)
        f = jax.jit(model.function)
        out, out_moved = np.asarray(f(theta, X)), np.asarray(f(theta, moved))
        alone = np.concatenate([np.asarray(f(theta, X[n : n + 1])) for n in range(PROBE_SAMPLES)])
    scale = max(1.0, float(np.max(np.abs(out), initial=0.0)))
    changed = np.max(np.abs(out_moved[1:] - out[1:]), initial=0.0) / scale
    apart = np.max(np.abs(alone - out), initial=0.0) / scale
    if not (changed <= MIXING_TOLERANCE and apart <= MIXING_TOLERANCE):  # NaN counts as mixed
        raise UnsupportedModelError(
            f"{model.source} mixes its samples: on a probe of {PROBE_SAMPLES} samples, "
            + (f"changing sample 0 changed the other samples' outputs by {changed:.3g} (relative)"
               if not changed <= MIXING_TOLERANCE else
               f"each sample alone gave outputs {apart:.3g} (relative) away from its row of the batch's")
            + ". fluxhess's curvatures sum per-sample terms, which need each output to depend on its own "
            "sample only: use batch statistics in inference mode (BatchNorm(use_running_average=True)), "
            "no softmax or normalisation over the batch axis"
        )


def from_jax(
    apply: Callable, params: Any, input_shape: int | Sequence[int], *, batched: bool = True,
    inputs: Mapping[str, int] | Sequence[tuple[str, int]] | None = None,
) -> tuple[JaxFunction, np.ndarray]:
    """Any JAX function as ``(model, θ)``.

    ``apply(params, X)``: pure, ``X`` ``(N, *input_shape)`` → ``(N, C)`` or ``(N,)``; with
    ``batched=False`` it takes one sample ``x`` ``input_shape`` → ``(C,)`` or ``()`` and is
    ``vmap``-ed over the batch. ``params``: any pytree of float arrays (dicts, lists, tuples,
    Flax ``FrozenDict``); it is read, never kept (θ is a copy). ``input_shape``: one sample's
    shape (an int ``d`` or a tuple); ``X`` of several axes reaches fluxhess flattened,
    ``(N, d)``. ``inputs``: an input signature ``{name: width}`` when ``X`` concatenates
    several arrays (``wrt=`` then takes those names).

    θ is the leaves in ``jax.tree`` flatten order (dict keys sorted), each raveled in C
    order; ``model.layout`` names each block by its tree path and ``model.unflatten(θ)``
    gives the pytree back. A batched ``apply`` is probed first: one that mixes samples
    raises :class:`fluxhess.UnsupportedModelError`.

    Returns: ``(model, params)``: a :class:`JaxFunction` and θ ``(P,)`` float64.

    Raises: :class:`fluxhess.InputError` for an ``apply`` that is not callable, ``params``
    that are not float arrays or an ``input_shape`` that ``apply`` does not take;
    :class:`fluxhess.UnsupportedModelError` for a function that mixes samples.

    Example:
        >>> import jax.numpy as jnp, numpy as np, fluxhess as fh
        >>> def apply(p, X): return jnp.tanh(X @ p["w"]) @ p["v"]
        >>> model, theta = fh.from_jax(apply, {"w": np.ones((2, 3)), "v": np.ones(3)}, 2)
        >>> model.layout.names, theta.shape
        (['v', 'w'], (9,))
    """
    model = JaxFunction(apply, params, input_shape, batched=batched, inputs=inputs)
    theta = model.flatten(jax.tree.map(lambda a: np.asarray(a, dtype=np.float64), params))
    check_independent(model, theta)
    return model, np.ascontiguousarray(check.cast("params", np.array(theta), np.dtype(np.float64)))
