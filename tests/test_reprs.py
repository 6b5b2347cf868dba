"""Text views read like the HTML ones: tables and summaries, never dumps of whole arrays."""

import numpy as np

import fluxhess as fh


def test_chain_repr_is_the_expression_that_builds_it():
    model = fh.Chain(fh.Dense(3, 5, "tanh", bias=False), fh.Dense(5, 2), fh.Activation("softmax"), inputs={"x": 2, "t": 1})
    assert repr(model) == "Chain(Dense(3, 5, 'tanh', bias=False), Dense(5, 2), Activation('softmax'), inputs={'x': 2, 't': 1})"
    assert eval(repr(model), vars(fh)) == model
    assert repr(fh.Chain(fh.Flatten(), fh.Dense(4, 1))) == "Chain(Flatten(), Dense(4, 1))"


def test_fit_predictive_diagnostics_print_summaries():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 2)), rng.integers(0, 2, size=30)
    model = fh.Chain.mlp([2, 4, 2], "tanh")
    fit = fh.fit_map(model, model.init(0), X, y, loss="logitcrossentropy", backend="jax")
    la = fh.Laplace(model, fit.params, "classification", backend="jax")
    la.fit(X, y)
    pred = la.predictive(X[:6])
    diag = fh.curvature_diagnostics(model, fit.params, X, y, loss="logitcrossentropy", backend="jax")
    for obj in (fit, pred, diag):
        text, html = repr(obj), obj._repr_html_()
        assert "array(" not in text and "<table>" in html or "<ul>" in html
    assert repr(diag) == str(diag)
    assert f"θ_MAP of shape ({model.num_params},)" in repr(fit) and f"{fit.iterations} L-BFGS iterations" in repr(fit)
    assert "Predictive at 6 inputs, 2 outputs" in repr(pred)
    row = next(line for line in repr(pred).splitlines() if line.startswith("mean "))
    assert f"{pred.mean.max():.4g}" in row and "(6, 2)" in row
