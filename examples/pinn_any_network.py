"""PINNs on networks that are no Chain: a Fourier-feature Flax MLP and a "modified MLP" in plain JAX.

The problem is examples/pinn_poisson.py's: ``−Δu = 2π² sin(πx) sin(πy)`` on ``[0, 1]²``,
``u = 0`` on the boundary, exact solution ``u* = sin(πx) sin(πy)``. Two networks that PINN
users write and that fluxhess's Chain cannot express:

- ``fourier``: a ``flax.linen`` MLP on Fourier features ``[sin(2π x B), cos(2π x B)]`` with a
  fixed random ``B`` ``(2, 16)`` kept in a ``"consts"`` collection. ``fluxhess.from_flax``
  returns a :class:`fluxhess.JaxFunction` over the ``params`` collection; ``B`` stays fixed.
- ``modified``: the "modified MLP" of Wang, Teng & Perdikaris (2021), written as a plain JAX
  function of a pytree and handed to ``fluxhess.from_jax``: two encoders ``U = tanh(x W_u)``,
  ``V = tanh(x W_v)`` and layers ``H ← (1 − Z) ⊙ U + Z ⊙ V`` with ``Z = tanh(H W + b)``.

Both are trained with Adam (``optax``) on ``mean (Δu_θ + f)² + 100·mean u_θ(boundary)²``,
where ``Δu_θ`` is ``fluxhess.jax.laplacian(model)``: a function of ``(θ, X)`` that ``jax.grad``
and ``jax.jit`` go through. ``model.unflatten(θ)`` gives the trained pytree back.

Run: ``python examples/pinn_any_network.py`` (needs ``flax`` and ``optax``). With the default
1000 steps each (float32, a few seconds each on 2 cores) the relative L2 error drops from
about 1 to about 0.01.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fluxhess as fh
import fluxhess.jax as fhj

STEPS, INTERIOR, BOUNDARY = 1000, 300, 30
BOUNDARY_WEIGHT = 100.0


def exact(P):
    return jnp.sin(jnp.pi * P[:, 0]) * jnp.sin(jnp.pi * P[:, 1])


def points(seed: int = 0):
    rng = np.random.default_rng(seed)
    s = np.linspace(0.0, 1.0, BOUNDARY)
    zero, one = np.zeros_like(s), np.ones_like(s)
    sides = [np.column_stack(c) for c in ((s, zero), (s, one), (zero, s), (one, s))]
    return (jnp.asarray(rng.uniform(size=(INTERIOR, 2)), jnp.float32),
            jnp.asarray(np.concatenate(sides), jnp.float32))


# --- the two networks ------------------------------------------------------------------


def fourier_model():
    """A Flax MLP on fixed Fourier features, as ``(JaxFunction, θ, apply)``."""
    import flax.linen as nn

    class FourierMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            B = self.variable("consts", "B", lambda: jax.random.normal(jax.random.PRNGKey(1), (2, 16))).value
            h = jnp.concatenate([jnp.sin(2 * jnp.pi * x @ B), jnp.cos(2 * jnp.pi * x @ B)], axis=-1)
            h = nn.tanh(nn.Dense(32)(h))
            return nn.Dense(1)(nn.tanh(nn.Dense(32)(h)))

    module = FourierMLP()
    variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))
    model, theta = fh.from_flax(module, variables)
    return model, theta, lambda params, X: module.apply({"params": params, "consts": variables["consts"]}, X)


def modified_apply(p, X):
    """The modified MLP, batched: ``(N, 2) -> (N, 1)``."""
    U = jnp.tanh(X @ p["U"]["kernel"] + p["U"]["bias"])
    V = jnp.tanh(X @ p["V"]["kernel"] + p["V"]["bias"])
    H = jnp.tanh(X @ p["in"]["kernel"] + p["in"]["bias"])
    for layer in p["hidden"]:
        Z = jnp.tanh(H @ layer["kernel"] + layer["bias"])
        H = (1 - Z) * U + Z * V
    return H @ p["out"]["kernel"] + p["out"]["bias"]


def modified_model(width: int = 32, depth: int = 2):
    """The modified MLP as ``(JaxFunction, θ, apply)``; weights Glorot-normal, biases 0."""
    rng = np.random.default_rng(0)

    def dense(a, b):
        return {"kernel": rng.normal(size=(a, b)) * np.sqrt(2 / (a + b)), "bias": np.zeros(b)}

    params = {"U": dense(2, width), "V": dense(2, width), "in": dense(2, width),
              "hidden": [dense(width, width) for _ in range(depth)], "out": dense(width, 1)}
    model, theta = fh.from_jax(modified_apply, params, 2)
    return model, theta, modified_apply


MODELS = {"fourier": fourier_model, "modified": modified_model}


# --- training -----------------------------------------------------------------------------


def train(name: str, steps: int) -> dict:
    model, theta0, apply = MODELS[name]()
    u, laplacian = fhj.forward(model), fhj.laplacian(model)  # (θ, X) -> (N, 1), (N, 1)
    interior, boundary = points()
    f = 2 * jnp.pi**2 * exact(interior)

    def loss(theta):
        residual = laplacian(theta, interior)[:, 0] + f
        return jnp.mean(residual**2) + BOUNDARY_WEIGHT * jnp.mean(u(theta, boundary) ** 2)

    optimizer = optax.adam(optax.exponential_decay(5e-3, max(1, steps // 3), 0.5))

    @jax.jit
    def step(theta, state):
        value, grad = jax.value_and_grad(loss)(theta)
        updates, state = optimizer.update(grad, state, theta)
        return optax.apply_updates(theta, updates), state, value

    g = np.linspace(0.0, 1.0, 31)
    grid = jnp.asarray(np.column_stack([a.ravel() for a in np.meshgrid(g, g)]), jnp.float32)

    def error(theta):
        diff = u(theta, grid)[:, 0] - exact(grid)
        return float(jnp.linalg.norm(diff) / jnp.linalg.norm(exact(grid)))

    theta = jnp.asarray(theta0, jnp.float32)
    before, state = error(theta), optimizer.init(theta)
    for _ in range(steps):
        theta, state, value = step(theta, state)
    after = error(theta)
    print(f"{name:>8}: {model!r}\n          relative L2 error {before:.3f} before, {after:.4f} after {steps} steps")
    # The Laplacian in the loss, against the trace of JAX's own input Hessian of the user's apply:
    params = model.unflatten(np.asarray(theta, np.float64))
    with jax.enable_x64(True):
        one = lambda x: apply(params, x[None])[0, 0]  # noqa: E731
        theirs = jax.vmap(lambda x: jnp.trace(jax.hessian(one)(x)))(jnp.asarray(interior[:8], jnp.float64))
    ours = fh.laplacian(model, np.asarray(theta, np.float64), np.asarray(interior[:8], np.float64), backend="jax")[:, 0]
    return {"before": before, "after": after, "laplacian": (ours, np.asarray(theirs)), "model": model}


def main(steps: int = STEPS) -> dict:
    return {name: train(name, steps) for name in MODELS}


if __name__ == "__main__":
    main()
