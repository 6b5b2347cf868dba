"""Seed question 4: a Flux model's loss Hessian and empirical Fisher, then a Laplace approximation.

The question, verbatim::

    model = Chain(x -> reshape(x, :, size(x, 4)), Dense(2, 5), Dense(5, 1), x -> σ.(x))
    input = randn(2, 1, 1, n_data); target = randn(1, n_data)
    loss = model -> crossentropy(model(input), target)
    # wants: the Hessian of the loss w.r.t. all parameters, the empirical Fisher, then Laplace

From Python the model is that source, unchanged, and the data are NumPy arrays batch
first: ``X`` ``(N, 2, 1, 1)`` reaches Flux as ``(1, 1, 2, N)`` — the dimensions reversed,
batch last, as the anonymous reshape expects. ``agg="sum"`` is
``crossentropy(ŷ, y; agg = sum)``; θ is ``Flux.destructure(model)[1]`` (21 numbers).

With a Julia runtime, the model runs as itself on the julia backend and
``model.to_spec()`` identifies its two anonymous functions (a flatten, found by its
effect on a probe batch, and the sigmoid, found by its values on inputs from −1e8 to
1e8), so JAX checks every Julia number: Hessian, EF and GGN. Without Julia the same
network runs as its spec on JAX, checked against ``jax.hessian`` written out by hand.

The Laplace approximation needs a likelihood: Flux's ``crossentropy`` on one sigmoid
output is ``−y·log ŷ`` only (it ignores the class-0 term), so the posterior uses the
Bernoulli likelihood — the same model without the final ``σ``, as the Laplace docs say
— around its MAP estimate; with Julia, on the Flux model itself.

Run: ``python examples/seed_4_flux_hessian_fisher.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import fluxhess as fh

SOURCE = "Chain(x -> reshape(x, :, size(x, 4)), Dense(2, 5), Dense(5, 1), x -> σ.(x))"
LOGITS = "Chain(x -> reshape(x, :, size(x, 4)), Dense(2, 5), Dense(5, 1))"  # the same, without the σ
rng = np.random.default_rng(0)
X = rng.normal(size=(8, 2, 1, 1))  # NumPy (N, 2, 1, 1) = Flux's randn(2, 1, 1, N)
y = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])


def jax_reference(theta):
    """``jax.hessian`` of the summed crossentropy, and the EF from ``vmap(grad)``, in plain JAX."""

    def per_sample(t, x, target):
        W1, b1 = jnp.reshape(t[:10], (5, 2), order="F"), t[10:15]  # Flux: vec(W) column-major, then b
        W2, b2 = jnp.reshape(t[15:20], (1, 5), order="F"), t[20:21]
        p = jax.nn.sigmoid(W2 @ (W1 @ x.reshape(-1) + b1) + b2)
        return -jnp.sum(target * jnp.log(p + jnp.finfo(p.dtype).eps))

    with jax.enable_x64(True):
        t, Xj, yj = jnp.asarray(theta), jnp.asarray(X), jnp.asarray(y)[:, None]
        total = lambda t: jnp.sum(jax.vmap(per_sample, (None, 0, 0))(t, Xj, yj))  # noqa: E731
        G = jax.vmap(jax.grad(per_sample), (None, 0, 0))(t, Xj, yj)
        return np.asarray(jax.hessian(total)(t)), np.asarray(G.T @ G)


def main() -> dict:
    """H, EF and GGN from the julia backend against JAX, then a Laplace posterior."""
    kw = dict(loss="crossentropy")
    pairs = {}
    if fh.backends()["julia"] is None:
        from fluxhess.flux import flux_model

        flux = flux_model(SOURCE)  # the user's model, verbatim
        theta = flux.params  # θ = Flux.destructure(model)[1], (21,)
        model, _ = flux.to_spec()  # its JAX twin: Chain(Flatten(), Dense(2 => 5), Dense(5 => 1), sigmoid)
        for name in ("hessian", "empirical_fisher", "ggn"):
            quantity = getattr(fh, name)
            pairs[f"{name}: julia (Flux model as written) vs jax (its to_spec twin)"] = (
                quantity(flux, theta, X, y, backend="julia", **kw),
                quantity(model, theta, X, y, backend="jax", **kw),
            )
    else:
        print("Julia is not available here (`fluxhess info` says why); the Flux model runs as its spec on JAX")
        flux = None
        model = fh.Chain(fh.Flatten(), fh.Dense(2, 5), fh.Dense(5, 1), fh.Activation("sigmoid"))
        theta = model.init(seed=0)
    print(f"model: {model.to_flux()}, P = {model.num_params}")
    print(model.layout)

    H = fh.hessian(model, theta, X, y, backend="jax", **kw)
    F = fh.empirical_fisher(model, theta, X, y, backend="jax", **kw)
    H_ref, F_ref = jax_reference(theta)
    pairs["hessian: fluxhess (jax) vs jax.hessian"] = (H, H_ref)
    pairs["empirical Fisher: fluxhess (jax) vs vmap(grad) outer products"] = (F, F_ref)
    for name, (ours, theirs) in pairs.items():
        print(f"{name}: {ours.shape}, max |difference| {np.max(np.abs(ours - theirs)):.2e}")
    eig_h, eig_f = np.linalg.eigvalsh(H), np.linalg.eigvalsh(F)
    print(f"Hessian eigenvalues from {eig_h[0]:.4g} to {eig_h[-1]:.4g} ({int(np.sum(eig_h < -1e-12))} negative); "
          f"empirical Fisher from {eig_f[0]:.3g} to {eig_f[-1]:.4g}")

    pairs.update(laplace(flux, model, theta))
    return pairs


def laplace(flux, model, theta) -> dict:
    """MAP of the Bernoulli-likelihood network (the model without its σ), then a full-GGN
    Laplace posterior around it: on the Flux model (julia) when Julia runs, and on its twin (jax)."""
    twin = fh.Chain(*model.layers[:-1])  # drops the final sigmoid
    fit = fh.fit_map(twin, theta, X, y, loss="logitbinarycrossentropy", prior_precision=1.0)
    settings = dict(curvature="ggn", structure="full", prior_precision=1.0)
    la = fh.Laplace(twin, fit.params, "classification", backend="jax", **settings).fit(X, y)
    grid = rng.normal(size=(3, 2, 1, 1)) * 4
    p = la.predictive(grid)
    print(f"Laplace ({la.curvature}, {la.structure}): log marginal likelihood {float(la.log_marginal_likelihood()):.4f}")
    for x, pl, v in zip(grid.reshape(3, 2), p.mean[:, 0], p.function_variance[:, 0]):
        print(f"  x = {np.round(x, 2)}: p(y=1) Laplace {pl:.3f}, logit variance {v:.3g}")
    # The posterior precision is the prior plus the GGN of the Bernoulli loss at θ_MAP.
    G = fh.ggn(twin, fit.params, X, y, loss="logitbinarycrossentropy", backend="jax")
    pairs = {"posterior precision: Laplace vs GGN + prior": (la.posterior_precision, G + np.eye(G.shape[0]))}
    if flux is not None:
        from fluxhess.flux import flux_model

        la_flux = fh.Laplace(flux_model(LOGITS), fit.params, "classification", backend="julia", **settings).fit(X, y)
        print(f"the same on the Flux model (julia): log marginal likelihood {float(la_flux.log_marginal_likelihood()):.4f}")
        pairs["Laplace posterior precision: Flux model (julia) vs twin (jax)"] = (la_flux.posterior_precision, la.posterior_precision)
        pairs["Laplace predictive: Flux model (julia) vs twin (jax)"] = (la_flux.predictive(grid).mean, p.mean)
        pairs["log marginal likelihood: Flux model (julia) vs twin (jax)"] = (
            np.array(float(la_flux.log_marginal_likelihood())), np.array(float(la.log_marginal_likelihood())))
    return pairs


if __name__ == "__main__":
    main()
