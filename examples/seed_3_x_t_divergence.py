"""Seed question 3: a network of (x, t) — ∂f/∂x, ∂f/∂t and the gradient of the divergence.

The question. A field ``f(x, t)`` with ``x`` in R³ and ``t`` in R, values in R³ (a
velocity, say), is a Flax MLP on the concatenated input ``[x, t]`` of width 4. At 10
points one needs ``∂f/∂x`` ``(10, 3, 3)``, ``∂f/∂t`` ``(10, 3)``, the divergence in
space ``∇·f = Σ_i ∂f_i/∂x_i`` ``(10,)`` and its gradient ``∇_x(∇·f)`` ``(10, 3)``.

In JAX: ``jax.vmap(jax.jacfwd(f, argnums=(0, 1)))(x, t)`` gives both Jacobians; the
gradient of the divergence is ``jax.grad`` of the trace of the x-Jacobian.

With fluxhess the network is one function of ``z = [x, t]``: ``input_jacobian``
``(10, 3, 4)`` holds ``∂f/∂x`` in its first three columns and ``∂f/∂t`` in the last;
``input_hessian`` ``(10, 3, 4, 4)`` holds every second derivative, and
``∂(∇·f)/∂x_j = Σ_i ∂²f_i/∂x_i∂x_j`` is a contraction of its x-block.
(``fluxhess.divergence`` needs as many outputs as inputs, here 3 ≠ 4, so the trace
is taken over the x-part by hand.)

Run: ``python examples/seed_3_x_t_divergence.py``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import fluxhess as fh


class Field(nn.Module):
    """``f(z)``, ``z = [x, t]`` of width 4, three outputs; tanh hidden layers."""

    @nn.compact
    def __call__(self, z):
        for width in (32, 32):
            z = nn.tanh(nn.Dense(width, param_dtype=jnp.float64)(z))
        return nn.Dense(3, param_dtype=jnp.float64)(z)


def main() -> dict:
    """Each quantity from JAX autodiff and from fluxhess; return both."""
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(10, 3)), rng.uniform(size=(10,))
    with jax.enable_x64(True):
        module = Field()
        variables = module.init(jax.random.PRNGKey(1), jnp.zeros((1, 4)))
        f = lambda x, t: module.apply(variables, jnp.concatenate([x, t[None]]))  # noqa: E731  (3,), () -> (3,)

        df_dx_jax, df_dt_jax = jax.vmap(jax.jacfwd(f, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(t))
        div = lambda x, t: jnp.trace(jax.jacfwd(f)(x, t))  # noqa: E731
        div_jax = jax.vmap(div)(jnp.asarray(x), jnp.asarray(t))
        grad_div_jax = jax.vmap(jax.grad(div))(jnp.asarray(x), jnp.asarray(t))

    model, theta = fh.from_flax(module, variables)
    Z = np.hstack([x, t[:, None]])  # (10, 4)
    J = fh.input_jacobian(model, theta, Z)  # (10, 3, 4)
    df_dx, df_dt = J[:, :, :3], J[:, :, 3]
    H = fh.input_hessian(model, theta, Z)  # (10, 3, 4, 4)
    div_fh = np.trace(df_dx, axis1=1, axis2=2)  # (10,)
    grad_div = np.einsum("niij->nj", H[:, :, :3, :3])  # (10, 3)

    pairs = {
        "df/dx": (df_dx, np.asarray(df_dx_jax)),
        "df/dt": (df_dt, np.asarray(df_dt_jax)),
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
