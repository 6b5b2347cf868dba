"""fit_map: full-batch MAP training against closed forms and an independent gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fluxhess as fh
import reference as ref
from conftest import assert_close


def test_ridge_regression_closed_form(backend):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 2))
    model = fh.Chain(fh.Dense(4, 2))
    lam = 0.7
    fit = fh.fit_map(model, np.zeros(model.num_params), X, y, loss="mse", prior_precision=lam, backend=backend)
    Xbar = np.hstack([X, np.ones((30, 1))])
    # ∇: 2 Σ (f - y) x̄ᵀ + λ θ = 0  per output  →  (2 X̄ᵀX̄ + λ I) w_c = 2 X̄ᵀ y_c
    W = np.linalg.solve(2 * Xbar.T @ Xbar + lam * np.eye(5), 2 * Xbar.T @ y)  # (5, 2): rows [x; 1]
    expected = np.concatenate([W[:4].T.ravel(order="F"), W[4]])
    assert fit.converged and fit.gradient_norm < 1e-7
    assert_close(fit.params, expected, rtol=1e-8, what="θ_MAP")


def test_classifier_map_is_a_stationary_point_of_the_reference_objective():
    rng = np.random.default_rng(1)
    model = fh.Chain.mlp([2, 4, 3], "tanh")
    X, y = rng.normal(size=(20, 2)), rng.integers(0, 3, 20)
    lam = np.full(model.num_params, 2.0)
    fit = fh.fit_map(model, model.init(0), X, y, loss="logitcrossentropy", prior_precision=lam)
    Y = np.eye(3)[y]
    with jax.enable_x64(True):
        objective = lambda t: ref.total_loss(model, t, X, Y, "logitcrossentropy", "sum", jnp) + 0.5 * jnp.sum(lam * t**2)  # noqa: E731
        grad = np.asarray(jax.grad(objective)(jnp.asarray(fit.params)))
        value = float(objective(jnp.asarray(fit.params)))
    assert np.max(np.abs(grad)) < 1e-6
    assert fit.objective == pytest.approx(value, rel=1e-12)


def test_bad_arguments_and_non_convergence():
    model = fh.Chain.mlp([2, 3, 1])
    X, y = np.random.default_rng(2).normal(size=(10, 2)), np.zeros(10)
    with pytest.raises(fh.InputError, match="prior_precision must be finite and >= 0"):
        fh.fit_map(model, model.init(), X, y, prior_precision=-1.0)
    with pytest.raises(fh.InputError, match=r"prior_precision must be a scalar or have shape \(13,\)"):
        fh.fit_map(model, model.init(), X, y, prior_precision=np.ones(3))
    with pytest.raises(fh.InputError, match="max_iter must be a positive integer"):
        fh.fit_map(model, model.init(), X, y, max_iter=0)
    with pytest.warns(fh.ConvergenceWarning, match="fit_map stopped after 1 iterations without converging"):
        fit = fh.fit_map(model, model.init(), X, np.sin(X[:, 0]), max_iter=1)
    assert not fit.converged


def test_newton_polish_finishes_where_the_loss_value_is_only_rounding():
    """A value that carries no information (as the loss's rounding near a minimum) stops
    L-BFGS's line search; Newton steps judged by the gradient alone still converge."""
    from fluxhess.train import lbfgs, newton_polish

    rng = np.random.default_rng(0)
    Q = rng.normal(size=(6, 6))
    A, b = Q @ Q.T + 6 * np.eye(6), rng.normal(size=6)

    def objective(x):
        return 1.0, A @ x - b  # a flat value: no decrease to be seen

    x0 = np.zeros(6)
    result = lbfgs(objective, x0, max_iter=50, gtol=1e-10, desc="test")
    assert not result.success
    x, _, grad, steps = newton_polish(objective, lambda x, v: A @ v, result.x, 1.0, objective(result.x)[1], 1e-10)
    assert np.max(np.abs(grad)) <= 1e-10 and 1 <= steps <= 5
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-10)
