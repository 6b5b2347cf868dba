"""Seed question 3: a network of (x, t) — ∂f/∂x, ∂f/∂t and the gradient of the divergence.

The question. A field ``f(x, t)`` with ``x`` in R³ and ``t`` in R, values in R³ (a
velocity, say), is a Flax module whose ``__call__(self, x, t)`` hstacks ``x (b, 3)`` and
``t (b, 1)`` and applies an MLP. At 10 points one needs ``∂f/∂x`` ``(10, 3, 3)``,
``∂f/∂t`` ``(10, 3)``, the divergence in space ``∇·f = Σ_i ∂f_i/∂x_i`` ``(10,)`` and its
gradient ``∇_x(∇·f)`` ``(10, 3)``.

In JAX: ``jax.vmap(jax.jacfwd(f, argnums=(0, 1)))(x, t)`` gives both Jacobians; the
gradient of the divergence is ``jax.grad`` of the trace of the x-Jacobian.

With fluxhess: ``from_flax(module, variables, inputs=(x, t))`` gives a model with the
input signature ``x`` (3 columns), ``t`` (1), named after ``__call__``'s parameters; each
quantity is one call with ``wrt="x"`` or ``wrt="t"``. ``input_hessian(..., wrt="x")``
``(10, 3, 3, 3)`` holds the second derivatives in x, and
``∂(∇·f)/∂x_j = Σ_i ∂²f_i/∂x_i∂x_j`` is a contraction of it.

Run: ``python examples/seed_3_x_t_divergence.py``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import fluxhess as fh


class Field(nn.Module):
    """``f(x, t)``: ``x (b, 3)`` and ``t (b, 1)`` side by side, three outputs; tanh hidden layers."""

    @nn.compact
    def __call__(self, x, t):
        z = jnp.hstack([x, t])
        for width in (32, 32):
            z = nn.tanh(nn.Dense(width, param_dtype=jnp.float64)(z))
        return nn.Dense(3, param_dtype=jnp.float64)(z)


def main() -> dict:
    """Each quantity from JAX autodiff and from fluxhess; return both."""
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(10, 3)), rng.uniform(size=(10, 1))
    with jax.enable_x64(True):
        module = Field()
        variables = module.init(jax.random.PRNGKey(1), x, t)
        f = lambda x, t: module.apply(variables, x[None], t[None])[0]  # noqa: E731  (3,), (1,) -> (3,)

        df_dx_jax, df_dt_jax = jax.vmap(jax.jacfwd(f, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(t))
        div = lambda x, t: jnp.trace(jax.jacfwd(f)(x, t))  # noqa: E731
        div_jax = jax.vmap(div)(jnp.asarray(x), jnp.asarray(t))
        grad_div_jax = jax.vmap(jax.grad(div))(jnp.asarray(x), jnp.asarray(t))

    model, theta = fh.from_flax(module, variables, inputs=(x, t))  # model.inputs: (("x", 3), ("t", 1))
    df_dx = fh.input_jacobian(model, theta, (x, t), wrt="x")  # (10, 3, 3)
    df_dt = fh.input_jacobian(model, theta, (x, t), wrt="t")  # (10, 3, 1)
    div_fh = fh.divergence(model, theta, (x, t), wrt="x")  # (10,)
    grad_div = np.einsum("niij->nj", fh.input_hessian(model, theta, (x, t), wrt="x"))  # (10, 3)

    pairs = {
        "df/dx": (df_dx, np.asarray(df_dx_jax)),
        "df/dt": (df_dt[:, :, 0], np.asarray(df_dt_jax)[:, :, 0]),
        "div_x f": (div_fh, np.asarray(div_jax)),
        "grad_x div_x f": (grad_div, np.asarray(grad_div_jax)),
    }
    for name, (ours, theirs) in pairs.items():
        print(f"{name:15} fluxhess {str(ours.shape):11} JAX {str(theirs.shape):11} "
              f"max |difference| {np.max(np.abs(ours - theirs)):.2e}")
    print(f"grad of the divergence at the first point: fluxhess {grad_div[0]}, JAX {np.asarray(grad_div_jax)[0]}")
    return pairs


if __name__ == "__main__":
    main()
