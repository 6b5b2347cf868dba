"""Seed question 1: u_XX of a Flax MLP at 32 points, shape (32, 3, 3).

The question. A Flax MLP ``u = MLP([20, 20, 20, 20, 20, 1])`` with tanh maps a point
``x`` of width 3 to one number. For a PINN loss one needs its Hessian with respect to
the input at a batch of 32 points, ``u_XX`` of shape ``(32, 3, 3)``. The first attempt,
``jax.vmap(jax.grad(jax.grad(u)))(X)``, fails with::

    TypeError: Gradient only defined for scalar-output functions. Output had shape: (1,).

Why. ``jax.grad`` differentiates functions that return one scalar. ``u(x)`` returns
shape ``(1,)`` (the last Dense layer has one feature), so the inner ``grad`` fails.
Squeezing it (``lambda x: u(x)[0]``) does not help for long: ``grad(u)`` then returns
a vector ``(3,)``, and the outer ``grad`` fails with ``Output had shape: (3,)``. The
derivative of a vector-valued function is a Jacobian, not a gradient.

The fix in JAX: the Hessian of the scalar function, batched,
``jax.vmap(jax.hessian(lambda x: u(x)[0]))(X)`` — ``jax.hessian`` is
``jacfwd(jacrev(...))``. The fix with fluxhess: convert the module once and ask for
the input Hessian of every output at every point, ``(32, 1, 3, 3)``.

Run: ``python examples/seed_1_flax_uxx.py``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import fluxhess as fh


class MLP(nn.Module):
    """The MLP of the question: tanh between Dense layers, a linear last layer."""

    features: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for feat in self.features[:-1]:
            x = nn.tanh(nn.Dense(feat, param_dtype=jnp.float64)(x))
        return nn.Dense(self.features[-1], param_dtype=jnp.float64)(x)


def main() -> dict:
    """Print the failing attempt, both answers and their difference; return both answers."""
    with jax.enable_x64(True):
        module = MLP([20, 20, 20, 20, 20, 1])
        X = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(32, 3)))
        variables = module.init(jax.random.PRNGKey(0), X[:1])
        u = lambda x: module.apply(variables, x)  # noqa: E731  (3,) -> (1,)

        try:
            jax.vmap(jax.grad(jax.grad(u)))(X)
        except TypeError as e:
            print(f"vmap(grad(grad(u))) fails: {e}")
        try:
            jax.vmap(jax.grad(jax.grad(lambda x: u(x)[0])))(X)
        except TypeError as e:
            print(f"with u squeezed to a scalar it still fails: {e}")

        u_xx_jax = np.asarray(jax.vmap(jax.hessian(lambda x: u(x)[0]))(X))

    model, theta = fh.from_flax(module, variables)
    print(f"converted: {model}, P = {model.num_params}")
    u_xx = fh.input_hessian(model, theta, np.asarray(X))[:, 0]  # (32, 1, 3, 3) -> (32, 3, 3)

    print(f"jax.vmap(jax.hessian(u)) : {u_xx_jax.shape}")
    print(f"fluxhess.input_hessian   : {u_xx.shape}")
    print(f"first point, JAX:\n{u_xx_jax[0]}\nfirst point, fluxhess:\n{u_xx[0]}")
    print(f"max |difference| = {np.max(np.abs(u_xx - u_xx_jax)):.2e}")
    return {"u_xx": (u_xx, u_xx_jax)}


if __name__ == "__main__":
    main()
