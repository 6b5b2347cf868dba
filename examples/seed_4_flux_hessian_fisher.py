"""Seed question 4: a Flux model's loss Hessian and empirical Fisher, then a Laplace approximation.

The question. A small Flux classifier, ``Chain(Flux.flatten, Dense(2 => 5), Dense(5 => 1,
sigmoid))``, trained with ``Flux.crossentropy`` on 5 points: what is the Hessian of the
summed loss with respect to all 21 parameters, what is the empirical Fisher, and how
does one turn that curvature into a Laplace approximation of the posterior?

Parameters are θ in ``Flux.destructure`` order (``model.layout`` names the blocks), and
``agg="sum"`` is ``Flux.crossentropy(ŷ, y; agg=sum)``. With a Julia runtime the Flux
source runs as itself on the julia backend and Zygote's own ``Zygote.hessian`` is shown
beside it; without one the same network runs as a spec on JAX, and ``jax.hessian`` of
the loss written out in plain ``jax.numpy`` is shown instead.

The Laplace approximation needs a likelihood: Flux's ``crossentropy`` on one sigmoid
output is ``−y·log ŷ`` only (it ignores the class-0 term), so the posterior uses the
Bernoulli likelihood — the same network without the final sigmoid, whose logits enter
``logitbinarycrossentropy`` — around its MAP estimate.

Run: ``python examples/seed_4_flux_hessian_fisher.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import fluxhess as fh

SOURCE = "Chain(Flux.flatten, Dense(2 => 5), Dense(5 => 1, sigmoid))"
X = np.random.default_rng(0).normal(size=(5, 2))
y = np.array([0.0, 1.0, 1.0, 0.0, 1.0])

ZYGOTE = """
(source, θ, X, y) -> begin
    sandbox = Module(:Seed4)
    Core.eval(sandbox, :(using Flux))
    _, re = Flux.destructure(Flux.f64(Base.include_string(sandbox, source)))
    θ = Vector{Float64}(θ)
    Xj = permutedims(Matrix{Float64}(X))          # features × batch
    yj = reshape(Vector{Float64}(y), 1, :)
    L(t, cols) = Flux.crossentropy(re(t)(Xj[:, cols]), yj[:, cols]; agg = sum)
    H = Zygote.hessian(t -> L(t, axes(Xj, 2)), θ)
    G = reduce(hcat, [Zygote.gradient(t -> L(t, n:n), θ)[1] for n in axes(Xj, 2)])
    (H, G * G')
end
"""


def jax_reference(theta):
    """``jax.hessian`` of the summed crossentropy, and the EF from ``vmap(grad)``, in plain JAX."""

    def per_sample(t, x, target):
        W1, b1 = jnp.reshape(t[:10], (5, 2), order="F"), t[10:15]  # Flux: vec(W) column-major, then b
        W2, b2 = jnp.reshape(t[15:20], (1, 5), order="F"), t[20:21]
        p = jax.nn.sigmoid(W2 @ (W1 @ x + b1) + b2)
        return -jnp.sum(target * jnp.log(p + jnp.finfo(p.dtype).eps))

    with jax.enable_x64(True):
        t, Xj, yj = jnp.asarray(theta), jnp.asarray(X), jnp.asarray(y)[:, None]
        total = lambda t: jnp.sum(jax.vmap(per_sample, (None, 0, 0))(t, Xj, yj))  # noqa: E731
        G = jax.vmap(jax.grad(per_sample), (None, 0, 0))(t, Xj, yj)
        return np.asarray(jax.hessian(total)(t)), np.asarray(G.T @ G)


def main() -> dict:
    """H and EF from fluxhess and from the framework's autodiff, then a Laplace posterior."""
    julia_why_not = fh.backends()["julia"]
    pairs = {}
    if julia_why_not is None:
        from juliacall import Main as jl

        from fluxhess.flux import flux_model

        flux = flux_model(SOURCE)
        model, theta = flux.to_spec()
        H = fh.hessian(flux, theta, X, y, loss="crossentropy", backend="julia")
        F = fh.empirical_fisher(flux, theta, X, y, loss="crossentropy", backend="julia")
        jl.seval("import Flux, Zygote")
        H_zy, F_zy = (np.asarray(M) for M in jl.seval(ZYGOTE)(SOURCE, theta, X, y))
        pairs["hessian: fluxhess (julia) vs Zygote.hessian"] = (H, H_zy)
        pairs["empirical Fisher: fluxhess (julia) vs Zygote per-sample gradients"] = (F, F_zy)
    else:
        print("Julia is not available here (`fluxhess info` says why); the Flux model runs as a spec on JAX")
        model = fh.Chain(fh.Flatten(), fh.Dense(2, 5), fh.Dense(5, 1, "sigmoid"))
        theta = model.init(seed=0)
    print(f"model: {model.to_flux()}, P = {model.num_params}")
    print(model.layout)

    H_jax_api = fh.hessian(model, theta, X, y, loss="crossentropy", backend="jax")
    F_jax_api = fh.empirical_fisher(model, theta, X, y, loss="crossentropy", backend="jax")
    H_ref, F_ref = jax_reference(theta)
    pairs["hessian: fluxhess (jax) vs jax.hessian"] = (H_jax_api, H_ref)
    pairs["empirical Fisher: fluxhess (jax) vs vmap(grad) outer products"] = (F_jax_api, F_ref)
    for name, (ours, theirs) in pairs.items():
        print(f"{name}: {ours.shape}, max |difference| {np.max(np.abs(ours - theirs)):.2e}")
    eig_h, eig_f = np.linalg.eigvalsh(H_jax_api), np.linalg.eigvalsh(F_jax_api)
    print(f"Hessian eigenvalues from {eig_h[0]:.4g} to {eig_h[-1]:.4g} ({int(np.sum(eig_h < -1e-12))} negative); "
          f"empirical Fisher from {eig_f[0]:.3g} to {eig_f[-1]:.4g}")

    pairs.update(laplace(model, theta))
    return pairs


def laplace(model, theta) -> dict:
    """MAP of the Bernoulli-likelihood network, then a full-GGN Laplace posterior around it."""
    logits = fh.Chain(*model.layers[:-1], fh.Dense(5, 1))  # the same weights, without the sigmoid
    fit = fh.fit_map(logits, theta, X, y, loss="logitbinarycrossentropy", prior_precision=1.0)
    la = fh.Laplace(logits, fit.params, "classification", curvature="ggn", structure="full", prior_precision=1.0)
    la.fit(X, y)
    grid = np.array([[0.0, 0.0], [3.0, 3.0], [-8.0, 8.0]])
    p = la.predictive(grid)
    p_map = 1 / (1 + np.exp(-fh.forward(logits, fit.params, grid)))
    print(f"Laplace ({la.curvature}, {la.structure}): log marginal likelihood {float(la.log_marginal_likelihood()):.4f}")
    for x, pm, pl, v in zip(grid, p_map[:, 0], p.mean[:, 0], p.function_variance[:, 0]):
        print(f"  x = {x}: p(y=1) MAP {pm:.3f}, Laplace {pl:.3f}, logit variance {v:.3g}")
    # The posterior precision is the prior plus the GGN of the Bernoulli loss at θ_MAP.
    G = fh.ggn(logits, fit.params, X, y, loss="logitbinarycrossentropy")
    return {"posterior precision: Laplace vs GGN + prior": (la.posterior_precision, G + np.eye(G.shape[0]))}


if __name__ == "__main__":
    main()
