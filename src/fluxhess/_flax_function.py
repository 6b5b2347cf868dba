"""Flax modules that are not a Chain, as a :class:`fluxhess.JaxFunction`; and the width of a
linen module's samples, read from the module itself.

- :func:`linen_function`: a ``flax.linen`` module over its ``params`` collection; every other
  collection (``batch_stats``, constants) is held fixed, cast to θ's dtype.
- :func:`nnx_function`: a ``flax.nnx`` module over its ``nnx.Param`` state; the rest of its
  state is held fixed.
- :func:`linen_input_shape`: the one sample width ``w`` for which ``module.init`` on ``(1, w)``
  makes variables of exactly the given shapes (dict order plays no part).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from .errors import InputError, UnsupportedModelError
from .jax_function import JaxFunction, _path_name, check_independent, sample_shape


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """``{"collection/path/leaf": shape}`` of a variables tree, whatever its key order."""
    import jax

    return {_path_name(path): tuple(np.shape(leaf)) for path, leaf in jax.tree_util.tree_flatten_with_path(_plain(tree))[0]}


def _plain(tree):
    """Nested plain dicts (a ``FrozenDict`` unfrozen), keys sorted by ``jax.tree`` alike."""
    return {k: _plain(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def linen_input_shape(module, variables) -> tuple[int, ...]:
    """The shape ``(w,)`` of one sample: the width for which ``module.init`` makes variables of
    the given shapes. Candidates are the sizes found in the variables' shapes."""
    import jax

    want = _shapes(variables)
    candidates = sorted({int(n) for shape in want.values() for n in shape})
    found, closest = [], None
    for w in candidates:
        try:
            made = _shapes(jax.eval_shape(module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, w), np.float32)))
        except Exception:  # the module cannot run on this width: not a candidate
            continue
        if made == want:
            found.append(w)
        differ = [k for k in sorted(set(made) | set(want)) if made.get(k) != want.get(k)]
        agree = sum(a == b for k in set(made) & set(want) for a, b in zip(made[k], want[k]))
        if closest is None or (len(differ), -agree) < (len(closest[1]), -closest[3]):
            closest = (w, differ, made, agree)
    if len(found) == 1:
        return (found[0],)
    if not found:
        detail = "" if closest is None else (
            f" On width {closest[0]} it makes "
            + "; ".join(f"{k}: {closest[2].get(k)} expected, {want.get(k)} given" for k in closest[1][:4])
            + "."
        )
        raise InputError(
            f"from_flax could not tell the shape of one sample of {type(module).__name__}: module.init on (1, w) "
            f"makes these variables for none of the widths w in {candidates}: a sample of several axes, or variables "
            f"that do not belong to this module?{detail} Pass what module.init returned for this module, and "
            "input_shape= the shape of one sample (e.g. input_shape=(28, 28, 1))"
        )
    raise InputError(
        f"from_flax: {type(module).__name__} makes these variables for samples of width {found[0]} and {found[1]}; "
        "pass input_shape= the shape of one sample"
    )


def _split_columns(signature, examples):
    """``X (N, d) -> [x, t, …]``: the inputs side by side in signature order, each shaped as its example
    (``(N,)`` for an example of one axis)."""
    bounds, start = [], 0
    for (_, width), example in zip(signature, examples):
        bounds.append((start, start + width, np.ndim(example) == 1))
        start += width
    return lambda X: [X[:, a] if vector else X[:, a:b] for a, b, vector in bounds]


def _cast_fixed(fixed, dtype):
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, fixed)


def linen_function(module, variables, *, input_shape, signature=None, examples=None, why_not_chain=None):
    """``(JaxFunction, θ)`` of a linen ``module`` over ``variables["params"]``, the other collections fixed."""
    import jax
    import jax.numpy as jnp
    from flax import errors as flax_errors

    params = _plain(variables["params"])
    fixed = {k: _plain(v) for k, v in variables.items() if k != "params"}
    split = _split_columns(signature, examples) if signature is not None else (lambda X: [X])

    def apply(p, X):
        dtype = jnp.result_type(*jax.tree.leaves(p))
        return module.apply({"params": p, **_cast_fixed(fixed, dtype)}, *split(X))

    apply.__name__ = f"{type(module).__name__} (flax.linen)"
    return _function(apply, params, input_shape, signature, why_not_chain, (flax_errors.ModifyScopeVariableError,))


def nnx_function(module, *, input_shape=None, inputs=None):
    """``(JaxFunction, θ)`` of a ``flax.nnx`` module over its ``nnx.Param`` state, the rest fixed."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    # two filters give exactly (graphdef, state, state); flax types the states after the first as *State
    graphdef, params, rest = cast("tuple[nnx.GraphDef[Any], nnx.State, nnx.State]", nnx.split(module, nnx.Param, ...))
    signature = examples = None
    shape: tuple[int, ...]
    if inputs is not None:
        from .convert import _call_signature

        signature, examples = _call_signature(module, inputs), inputs
        shape = (sum(signature.values()),)
    elif input_shape is None:
        shape = _nnx_input_shape(graphdef, params, rest, module)
    else:
        shape = sample_shape(input_shape)
    split = _split_columns(tuple(signature.items()), examples) if signature is not None else (lambda X: [X])

    def apply(p, X):
        dtype = jnp.result_type(*jax.tree.leaves(p))
        return nnx.merge(graphdef, p, _cast_fixed(rest, dtype))(*split(X))

    apply.__name__ = f"{type(module).__name__} (flax.nnx)"
    why = "from_flax maps flax.linen modules onto a Chain; a flax.nnx module comes back as a JAX function of its nnx.Param state"
    return _function(apply, params, shape, signature, why, ())


def _nnx_input_shape(graphdef, params, rest, module) -> tuple[int, ...]:
    """The one width ``w`` of the sizes in the parameters' shapes on which the module runs."""
    import jax
    from flax import nnx

    sizes = sorted({int(n) for leaf in jax.tree.leaves(params) for n in np.shape(leaf)})
    found = []
    for w in sizes:
        try:
            jax.eval_shape(lambda p, X: nnx.merge(graphdef, p, rest)(X), params, jax.ShapeDtypeStruct((2, w), np.float32))
        except Exception:
            continue
        found.append(w)
    if len(found) != 1:
        seen = f"it runs on widths {found}" if found else f"it runs on none of the widths {sizes}"
        raise InputError(
            f"from_flax could not tell the shape of one sample of {type(module).__name__} ({seen}); pass input_shape="
        )
    return (found[0],)


def _function(apply, params, input_shape, signature, why_not_chain, mixing_errors) -> tuple[JaxFunction, np.ndarray]:
    """The JaxFunction of ``apply`` with θ float64, refused where it mixes samples (also where Flax says
    it would update a statistic of the batch: ``mixing_errors``)."""
    import jax

    try:
        model = JaxFunction(apply, params, input_shape, inputs=signature, source=apply.__name__, why_not_chain=why_not_chain)
        theta = model.flatten(jax.tree.map(lambda a: np.asarray(a, dtype=np.float64), params))
        check_independent(model, theta)
    except UnsupportedModelError as e:
        if mixing_errors and isinstance(e.__cause__, mixing_errors):
            raise UnsupportedModelError(
                f"{apply.__name__} updates a statistic of the batch when applied ({e.__cause__.__class__.__name__}: a "
                "layer in training mode, such as BatchNorm(use_running_average=False)), so its samples are not "
                "independent and fluxhess's per-sample curvatures would be wrong. Build it in inference mode "
                "(use_running_average=True) with its batch_stats in the variables"
            ) from e
        raise
    return model, np.ascontiguousarray(theta, dtype=np.float64)
