"""What fluxhess's system image is built to have compiled (``fluxhess setup-julia --sysimage``).

Julia runs :func:`run` through PythonCall while PackageCompiler records what it compiles:
every public quantity on the julia backend, in float64 and float32, for a spec Chain and a
Flux model from source (a regression and a classification loss, ``out=``, N-d inputs),
through juliacall exactly as a user's first calls go.
"""

from __future__ import annotations

import numpy as np


def run() -> None:
    import fluxhess as fh

    rng = np.random.default_rng(0)
    X, y, labels = rng.normal(size=(16, 3)), rng.normal(size=(16, 2)), rng.integers(0, 2, size=16)
    models = [
        (fh.Chain(fh.Dense(3, 8, "tanh"), fh.Dense(8, 2)), None),
        (fh.flux_model("Chain(Dense(3 => 8, tanh), Dense(8 => 2))"), None),
        (fh.flux_model("Chain(Flux.flatten, Dense(3 => 8, tanh), Dense(8 => 2))"), (16, 3, 1)),
    ]
    for model, shape in models:
        theta = model.params if isinstance(model, fh.FluxModel) else model.init()
        Xm = X if shape is None else X.reshape(shape)
        for dtype in ("float64", "float32"):
            kw = dict(backend="julia", dtype=dtype)
            _every_quantity(fh, model, theta, Xm, y, labels, kw)
    field = fh.Chain(fh.Dense(3, 8, "tanh"), fh.Dense(8, 3))  # as many outputs as inputs
    fh.divergence(field, field.init(), X, backend="julia")


def _every_quantity(fh, model, theta, X, y, labels, kw) -> None:
    P = theta.shape[0]
    V = np.ones((P, 2))
    fh.forward(model, theta, X, **kw)
    for target, loss in ((y, "mse"), (labels, "logitcrossentropy")):
        for agg in ("sum", "mean"):
            fh.loss(model, theta, X, target, loss=loss, agg=agg, **kw)
            fh.gradient(model, theta, X, target, loss=loss, agg=agg, **kw)
            for quantity in (fh.hessian, fh.ggn, fh.empirical_fisher):
                quantity(model, theta, X, target, loss=loss, agg=agg, **kw)
        out = np.empty((P, P), dtype=kw["dtype"])
        fh.hessian(model, theta, X, target, loss=loss, out=out, **kw)
        for kind in ("hessian", "ggn", "ef"):
            fh.hvp(model, theta, X, target, V, kind=kind, loss=loss, **kw)
            fh.diagonal(model, theta, X, target, kind=kind, loss=loss, **kw)
        for kind in ("ggn", "ef"):
            fh.kron(model, theta, X, target, kind=kind, loss=loss, **kw)
    fh.param_jacobian(model, theta, X, **kw)
    fh.input_jacobian(model, theta, X, **kw)
    fh.input_hessian(model, theta, X, **kw)
    fh.laplacian(model, theta, X, **kw)
