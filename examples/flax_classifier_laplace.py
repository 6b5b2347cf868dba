"""A Flax classifier with LayerNorm and a residual block, through a Laplace approximation.

The network: ``Dense(32) → LayerNorm → tanh``, then a residual block ``h + tanh(Dense(32)(h))``,
then ``Dense(3)`` logits; it is no ``fluxhess.Chain``, so ``fluxhess.from_flax`` returns a
:class:`fluxhess.JaxFunction` (θ = the ``params`` leaves in ``jax.tree`` order; ``layout``
names the blocks ``"Dense_0/kernel"``, ``"LayerNorm_0/scale"``, …).

The data: three Gaussian blobs in 2-D, 150 training points. The MAP is trained with Adam
(``optax``) on the cross-entropy plus the prior's ``λ/2·‖θ‖²``; then ``fluxhess.Laplace``
(GGN, full over all parameters, and diag) fits, tunes its prior precision by the marginal
likelihood, and predicts with the linearised (GLM) predictive. Its log marginal likelihood
is checked against the closed form from the dense GGN:
``log p(y|θ) − ½ λ‖θ‖² + ½ P log λ − ½ log det(GGN + λ I)``.

Run: ``python examples/flax_classifier_laplace.py`` (needs ``flax`` and ``optax``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fluxhess as fh

STEPS, PRIOR = 600, 1.0


class ResidualClassifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.tanh(nn.LayerNorm()(nn.Dense(32)(x)))
        h = h + nn.tanh(nn.Dense(32)(h))
        return nn.Dense(3)(h)


def blobs(n_per_class: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 2.0], [-1.8, -1.0], [1.8, -1.0]])
    X = np.concatenate([c + 0.8 * rng.normal(size=(n_per_class, 2)) for c in centres])
    return X, np.repeat(np.arange(3), n_per_class)


def main(steps: int = STEPS) -> dict:
    module = ResidualClassifier()
    variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))
    model, theta0 = fh.from_flax(module, variables)
    print(f"{model!r}: model_kind {model.model_kind!r}, blocks {', '.join(model.layout.names)}")
    X, y = blobs()

    def objective(theta):  # the MAP objective: summed cross-entropy + λ/2·‖θ‖²
        logits = module.apply({"params": model.unflatten(theta)}, X)
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(y.size), y]) + 0.5 * PRIOR * jnp.sum(theta**2)

    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(theta, state):
        value, grad = jax.value_and_grad(objective)(theta)
        updates, state = optimizer.update(grad, state, theta)
        return optax.apply_updates(theta, updates), state, value

    with jax.enable_x64(True):
        theta, state = jnp.asarray(theta0), optimizer.init(jnp.asarray(theta0))
        for _ in range(steps):
            theta, state, value = step(theta, state)
    theta = np.asarray(theta)
    accuracy = float(np.mean(np.argmax(fh.forward(model, theta, X, backend="jax"), axis=1) == y))
    print(f"MAP after {steps} Adam steps: objective {float(value):.3f}, training accuracy {accuracy:.3f}")

    la = fh.Laplace(model, theta, "classification", curvature="ggn", structure="full", prior_precision=PRIOR, backend="jax").fit(X, y)
    lml = la.log_marginal_likelihood()
    # The closed form from the dense GGN of the summed loss:
    G = fh.ggn(model, theta, X, y, loss="logitcrossentropy", backend="jax")
    nll = fh.loss(model, theta, X, y, loss="logitcrossentropy", backend="jax")
    P = theta.size
    closed = -nll - 0.5 * PRIOR * theta @ theta + 0.5 * P * np.log(PRIOR) - 0.5 * np.linalg.slogdet(G + PRIOR * np.eye(P))[1]
    print(f"log marginal likelihood {lml:.6f} (closed form from the dense GGN {closed:.6f})")
    la.optimize_prior_precision()
    diag = fh.Laplace(model, theta, "classification", structure="diag", backend="jax").fit(X, y)
    diag.optimize_prior_precision()
    far = np.array([[0.0, 0.2], [6.0, 6.0]])  # between the blobs, and far away
    for name, fit in (("full", la), ("diag", diag)):
        pred = fit.predictive(far)
        print(f"{name:>4}: prior precision {float(fit.prior_precision[0]):.3g}, predictive max probability "
              f"{np.round(pred.mean.max(axis=1), 3)} at {far.tolist()}")
    return {"lml": (lml, closed), "accuracy": accuracy, "predictive": la.predictive(far), "model": model}


if __name__ == "__main__":
    main()
