"""Numerics at the edges: huge logits, probabilities of exactly 0 and 1, float32 rounding,
and Laplace posteriors that are not positive definite.

References are closed forms (Flux's ϵ is ``eps`` of the output's float type, 2⁻⁵² or
2⁻²³) and SciPy's softmax/logsumexp, never fluxhess itself.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
from scipy import special

import fluxhess as fh
import reference as ref
from conftest import assert_close

EPS = {"float64": 2.0**-52, "float32": 2.0**-23}  # Flux: ϵ = eps(eltype(ŷ))
DTYPES = ("float64", "float32")
CURVATURE = {"hessian": fh.hessian, "ggn": fh.ggn, "empirical_fisher": fh.empirical_fisher}


# --- logits of magnitude 1e4 ------------------------------------------------------


def _huge_logits():
    """Dense(2, 3) whose logits reach ±1e4, with ties and near-ties between classes."""
    W = np.array([[1e4, 0.0], [0.0, 1e4], [-1e4, 5e3]])  # (out, in)
    b = np.array([0.0, 1.0, -3.0])
    theta = np.concatenate([W.ravel(order="F"), b])
    X = np.array([[1.0, -1.0], [1.0, 1.0], [-1.0, 0.5], [0.0, 0.0], [2e-4, 1e-4]])
    return theta, X, X @ W.T + b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head", ["softmax", "logsoftmax"])
def test_softmax_layers_are_finite_and_exact_for_logits_of_1e4(backend, dtype, head):
    theta, X, Z = _huge_logits()
    model = fh.Chain(fh.Dense(2, 3), fh.Activation(head))
    out = fh.forward(model, theta, X, backend=backend, dtype=dtype)
    expected = special.softmax(Z, axis=1) if head == "softmax" else special.log_softmax(Z, axis=1)
    assert np.all(np.isfinite(out))
    tol = 1e-13 if dtype == "float64" else 1e-6
    assert_close(out, expected, rtol=tol, atol=tol, what=f"{head} ({dtype})")
    Y = np.eye(3)[[2, 0, 1, 1, 2]]
    loss = "crossentropy" if head == "softmax" else "mse"
    assert np.all(np.isfinite(fh.gradient(model, theta, X, Y, loss=loss, backend=backend, dtype=dtype)))
    assert np.all(np.isfinite(fh.hessian(model, theta, X, Y, loss=loss, backend=backend, dtype=dtype)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_logit_losses_are_finite_and_exact_for_logits_of_1e4(backend, dtype):
    theta, X, Z = _huge_logits()
    model = fh.Chain(fh.Dense(2, 3))
    labels = np.array([2, 0, 1, 1, 2])
    expected = np.sum(special.logsumexp(Z, axis=1) - Z[np.arange(5), labels])  # -Σ log softmax(z)_y
    got = fh.loss(model, theta, X, labels, loss="logitcrossentropy", backend=backend, dtype=dtype)
    assert got == pytest.approx(expected, rel=1e-12 if dtype == "float64" else 1e-6)
    Yb = np.array([[1.0, 0.0, 1.0]] * 5)
    expected_b = np.sum((1 - Yb) * Z + np.logaddexp(0.0, -Z))  # Flux: (1 - y)·z + softplus(-z)
    got_b = fh.loss(model, theta, X, Yb, loss="logitbinarycrossentropy", backend=backend, dtype=dtype)
    assert got_b == pytest.approx(expected_b, rel=1e-12 if dtype == "float64" else 1e-6)
    for loss, y in (("logitcrossentropy", labels), ("logitbinarycrossentropy", Yb)):
        assert np.all(np.isfinite(fh.gradient(model, theta, X, y, loss=loss, backend=backend, dtype=dtype)))
        assert np.all(np.isfinite(fh.hessian(model, theta, X, y, loss=loss, backend=backend, dtype=dtype))), loss


# --- probabilities of exactly 0 and 1 ----------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_crossentropy_on_exact_zero_and_one_uses_flux_epsilon(backend, dtype):
    """softmax([1e4, -1e4]) is exactly (1, 0): ℓ = -log(0 + ϵ) for the wrong class, -log(1 + ϵ) for the right one."""
    model = fh.Chain(fh.Dense(1, 2), fh.Activation("softmax"))
    theta = np.array([1e4, -1e4, 0.0, 0.0])
    X = np.ones((1, 1))
    assert fh.forward(model, theta, X, backend=backend, dtype=dtype).tolist() == [[1.0, 0.0]]
    eps = EPS[dtype]
    rel = 1e-14 if dtype == "float64" else 1e-6
    wrong = fh.loss(model, theta, X, np.array([1]), loss="crossentropy", backend=backend, dtype=dtype)
    assert wrong == pytest.approx(-math.log(eps), rel=rel)  # 36.04 (float64), 15.94 (float32)
    right = fh.loss(model, theta, X, np.array([0]), loss="crossentropy", backend=backend, dtype=dtype)
    assert right == pytest.approx(-math.log1p(eps), rel=1e-3)  # tiny and negative, as in Flux
    assert right < 0
    for y in (np.array([0]), np.array([1]), np.array([[0.5, 0.5]])):
        assert np.all(np.isfinite(fh.gradient(model, theta, X, y, loss="crossentropy", backend=backend, dtype=dtype)))
    for name, fn in CURVATURE.items():  # Λ = y/(ŷ + ϵ)² is 1/ϵ² where ŷ == 0
        assert np.all(np.isfinite(fn(model, theta, X, np.array([1]), loss="crossentropy", backend=backend, dtype=dtype))), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight", [1e4, -1e4])
def test_binarycrossentropy_on_exact_zero_and_one_uses_flux_epsilon(backend, dtype, weight):
    """sigmoid(±1e4) is exactly 1 or 0: ℓ = -y·log(ŷ + ϵ) - (1 - y)·log(1 - ŷ + ϵ) with xlogy(0, ·) = 0."""
    model = fh.Chain(fh.Dense(1, 1, "sigmoid"))
    theta = np.array([weight, 0.0])
    X = np.ones((1, 1))
    yhat = fh.forward(model, theta, X, backend=backend, dtype=dtype)
    assert yhat.tolist() == [[1.0 if weight > 0 else 0.0]]
    eps = EPS[dtype]
    for y in (0.0, 1.0):
        agrees = (y == 1.0) == (weight > 0)
        expected = -math.log1p(eps) if agrees else -math.log(eps)
        got = fh.loss(model, theta, X, np.array([y]), loss="binarycrossentropy", backend=backend, dtype=dtype)
        assert got == pytest.approx(expected, rel=1e-3 if agrees else 1e-6), y
        assert np.all(np.isfinite(fh.hessian(model, theta, X, np.array([y]), loss="binarycrossentropy", backend=backend, dtype=dtype)))


# --- float32 Hessians of ill-conditioned models ------------------------------------


def _cancelling(scale: float):
    """One sample repeated with targets ±scale: the residual terms of the Hessian cancel exactly
    in exact arithmetic, while float32 leaves rounding of size eps·scale."""
    model = fh.Chain.mlp([3, 8, 8, 2], "tanh")
    theta = model.init(0)
    X = np.repeat(np.random.default_rng(0).normal(size=(1, 3)), 10, axis=0)
    Y = scale * np.where(np.arange(10)[:, None] % 2 == 1, 1.0, -1.0) * np.ones((10, 2))
    return model, theta, X, Y


def _relative_error(H32, H64) -> float:
    return float(np.abs(H32 - H64).max() / np.abs(H64).max())


def test_float32_hessian_of_an_ill_conditioned_model_warns(backend):
    model, theta, X, Y = _cancelling(1e5)
    H64 = fh.hessian(model, theta, X, Y, backend=backend)
    with pytest.warns(fh.NumericalWarning, match=r"float32.*symmetry error.*float64") as record:
        H32 = fh.hessian(model, theta, X, Y, backend=backend, dtype="float32")
    assert len(record) == 1
    # the warning was right: float32 lost more than 3 of its ~7 digits here
    assert _relative_error(H32, H64) > 1e-4


@pytest.mark.parametrize("scale", [1.0, 1e2])
def test_float32_hessian_of_a_well_conditioned_model_does_not_warn(backend, scale):
    model, theta, X, Y = _cancelling(scale)
    X = X + np.random.default_rng(1).normal(size=X.shape)  # distinct samples: nothing cancels
    with warnings.catch_warnings():
        warnings.simplefilter("error", fh.NumericalWarning)
        H32 = fh.hessian(model, theta, X, Y, backend=backend, dtype="float32")
        fh.hessian(model, theta, X, Y, backend=backend)  # float64 is never checked
    assert _relative_error(H32, fh.hessian(model, theta, X, Y, backend=backend)) < 1e-5


# --- Laplace: an indefinite posterior precision is never factorised silently -------


def _saddle():
    """A regression MLP away from its minimum, where the loss Hessian is indefinite."""
    model = fh.Chain.mlp([2, 3, 1], "tanh")
    rng = np.random.default_rng(4)
    theta = model.init(1) + rng.normal(size=model.num_params)
    X, y = rng.normal(size=(6, 2)), 3 * rng.normal(size=(6, 1))
    return model, theta, X, y


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_laplace_refuses_an_indefinite_hessian_posterior(backend, structure):
    model, theta, X, y = _saddle()
    # independent check that the precision is indefinite: Hessian of Σ mse/(2σ²) plus the prior
    H = fh.hessian(model, theta, X, y, loss="mse", backend=backend) / 2
    precision = H + 1e-3 * np.eye(model.num_params)
    lowest = np.linalg.eigvalsh(precision).min() if structure == "full" else np.diag(precision).min()
    assert lowest < 0, "the test point must be a saddle"
    la = fh.Laplace(model, theta, "regression", curvature="hessian", structure=structure, prior_precision=1e-3, backend=backend)
    la.fit(X, y)
    for what, use in [
        ("posterior_covariance", lambda: la.posterior_covariance),
        ("sample", lambda: la.sample(3)),
        ("log_marginal_likelihood", lambda: la.log_marginal_likelihood()),
        ("predictive", lambda: la.predictive(X)),
    ]:
        with pytest.raises(fh.FluxHessError, match="not positive definite") as info:
            use()
        text = str(info.value)
        assert "indefinite" in text and "curvature='ggn'" in text, what
        reported = re.search(r"most negative eigenvalue is (\S+?)\.(\s|$)", text)
        assert reported and float(reported.group(1)) == pytest.approx(lowest, rel=1e-4), what


def test_laplace_clipping_reports_what_it_removed(backend):
    model, theta, X, y = _saddle()
    la = fh.Laplace(model, theta, "regression", curvature="hessian", prior_precision=1e-3, backend=backend, clip_negative_eigenvalues=True)
    with pytest.warns(fh.FluxHessWarning, match="clipped"):
        la.fit(X, y)
    cov = la.posterior_covariance
    assert np.all(np.isfinite(cov)) and np.linalg.eigvalsh(cov).min() > 0
    assert la.clipped is not None


def test_laplace_with_a_vanishing_prior_is_refused_not_nan(backend):
    """More parameters than data: the GGN ``JᵀJ`` has rank 2 of 17, so the precision's smallest
    eigenvalue is the prior's 1e-300, far below float64 rounding (~1e-16·‖JᵀJ‖): no
    factorisation can hold it, and every use must say so instead of returning NaN or inf."""
    import reference as ref

    model = fh.Chain.mlp([2, 4, 1], "tanh")
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(2, 2)), rng.normal(size=(2, 1))
    theta = model.init(2)
    J = ref.param_jacobian(model, theta, X).reshape(-1, model.num_params)
    assert np.linalg.matrix_rank(J) == 2 < model.num_params
    la = fh.Laplace(model, theta, "regression", prior_precision=1e-300, backend=backend).fit(X, y)
    uses = [lambda: la.posterior_covariance, lambda: la.sample(2), lambda: la.log_marginal_likelihood(), lambda: la.predictive(X)]
    for use in uses:
        with pytest.raises(fh.InputError, match="not positive definite"):
            use()


# --- crossentropy on outputs in [0, 1] whose rows do not sum to 1 --------------------


def test_crossentropy_on_independent_sigmoids_is_flux_value_with_one_warning(backend):
    """Flux computes -Σ y·log(ŷ + ϵ) for any ŷ in [0, 1]: so does fluxhess, with a warning
    that names the usual choices; outside [0, 1] the loss is undefined and refused."""
    model = fh.Chain(fh.Dense(3, 2, "sigmoid"))
    theta = model.init(0)
    X = np.random.default_rng(0).normal(size=(5, 3))
    labels = np.array([0, 1, 1, 0, 1])
    W, b = theta[:6].reshape(2, 3, order="F"), theta[6:]
    yhat = special.expit(X @ W.T + b)
    assert np.abs(yhat.sum(axis=1) - 1).max() > 0.1  # the rows really do not sum to 1
    expected = -np.sum(np.log(yhat[np.arange(5), labels] + EPS["float64"]))
    with pytest.warns(fh.FluxHessWarning, match=r"rows do not sum to 1.*computed as Flux does.*softmax.*binarycrossentropy") as record:
        got = fh.loss(model, theta, X, labels, loss="crossentropy", backend=backend)
    assert len(record) == 1
    assert got == pytest.approx(expected, rel=1e-12)
    with pytest.raises(fh.InputError, match="probabilities in \\[0, 1\\]"):
        fh.loss(fh.Chain(fh.Dense(3, 2)), theta, 10 * X, labels, loss="crossentropy", backend=backend)


# --- soft targets whose rows do not sum to 1 (multi-label, label smoothing) -------------


@pytest.mark.parametrize("loss, model", [
    ("crossentropy", fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 3), fh.Activation("softmax"))),
    ("logitcrossentropy", fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 3))),
])
@pytest.mark.parametrize("targets, agg", [("multi-label", "mean"), ("label-smoothing", "sum"), ("zero-rows", "sum")])
def test_soft_targets_are_computed_as_flux_does(loss, model, targets, agg):
    """Before: refused ("each row of y must sum to 1"), where Flux computes
    -Σ y·log(ŷ + ϵ) / -Σ y·logsoftmax(ŷ) for any rows. The loss, gradient, Hessian, GGN and EF
    against jax.hessian of the loss written out, the linearized loss's Hessian and the
    per-sample gradients (tests/reference.py)."""
    rng = np.random.default_rng(3)
    N = 6
    X = rng.normal(size=(N, 3))
    theta = model.init(1) + 0.2 * rng.normal(size=model.num_params)
    Y = {
        "multi-label": rng.integers(0, 2, size=(N, 3)).astype(float),  # rows sum to 0..3
        "label-smoothing": 0.9 * np.eye(3)[rng.integers(0, 3, size=N)] + 0.1 / 3 + 0.05,  # rows sum to 1.15
        "zero-rows": np.vstack([np.zeros((2, 3)), rng.uniform(size=(N - 2, 3))]),
    }[targets]
    assert np.abs(Y.sum(axis=1) - 1).max() > 0.1
    kw = dict(loss=loss, agg=agg, backend="jax")
    assert fh.loss(model, theta, X, Y, **kw) == pytest.approx(ref.total_loss(model, theta, X, Y, loss, agg), rel=1e-12)
    assert_close(fh.hessian(model, theta, X, Y, **kw), ref.jax_hessian(model, theta, X, Y, loss, agg), rtol=1e-10, atol=1e-12, what="hessian")
    assert_close(fh.ggn(model, theta, X, Y, **kw), ref.linearized_ggn(model, theta, X, Y, loss, agg), rtol=1e-10, atol=1e-12, what="ggn")
    G = ref.per_sample_gradients(model, theta, X, Y, loss)
    s = ref.scale(loss, agg, *Y.shape)
    assert_close(fh.empirical_fisher(model, theta, X, Y, **kw), s * G.T @ G, rtol=1e-10, atol=1e-12, what="ef")
