"""Laplace on a linear-Gaussian model is exact Bayesian linear regression: check it against the closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import fluxhess as fh
from conftest import assert_close

N, D, SIGMA, LAM = 25, 3, 0.6, 2.5


def _data(C=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D))
    W = rng.normal(size=(C, D))
    y = X @ W.T + 0.4 + SIGMA * rng.normal(size=(N, C))
    return X, (y[:, 0] if C == 1 else y)


def _closed_form(X, y, C=1, sigma=SIGMA, lam=LAM, T=1.0):
    """Posterior precision/mean/covariance of θ = [vec(W); b] (Flux order) and the exact log evidence."""
    Xbar = np.hstack([X, np.ones((X.shape[0], 1))])
    Y = y.reshape(X.shape[0], C)
    precision = np.kron(Xbar.T @ Xbar, np.eye(C)) / (sigma**2 * T) + lam * np.eye((D + 1) * C)
    cov = np.linalg.inv(precision)
    mean = cov @ (np.kron(Xbar.T, np.eye(C)) @ Y.ravel() / (sigma**2 * T))
    K = sigma**2 * np.eye(X.shape[0]) + Xbar @ Xbar.T / lam  # prior predictive covariance of each output
    evidence = sum(multivariate_normal(np.zeros(X.shape[0]), K).logpdf(Y[:, c]) for c in range(C))
    return Xbar, precision, mean, cov, evidence


@pytest.mark.parametrize("C", [1, 2])
def test_linear_gaussian_posterior_evidence_and_predictive(backend, C):
    X, y = _data(C)
    Xbar, precision, mean, cov, evidence = _closed_form(X, y, C)
    model = fh.Chain(fh.Dense(D, C))
    la = fh.Laplace(model, mean, "regression", prior_precision=LAM, sigma_noise=SIGMA, backend=backend).fit(X, y)
    assert_close(la.mean, mean, rtol=1e-12, what="posterior mean")
    assert_close(la.posterior_precision, precision, rtol=1e-8, what="posterior precision")
    assert_close(la.posterior_covariance, cov, rtol=1e-8, what="posterior covariance")
    assert_close(la.posterior_variance, np.diag(cov), rtol=1e-8, what="posterior variance")
    assert float(la.log_marginal_likelihood()) == pytest.approx(evidence, rel=1e-8, abs=1e-8)

    Xt = np.random.default_rng(5).normal(size=(6, D))
    Xt_bar = np.hstack([Xt, np.ones((6, 1))])
    p = la.predictive(Xt)
    f_cov = np.stack([np.kron(x[None], np.eye(C)) @ cov @ np.kron(x[None], np.eye(C)).T for x in Xt_bar])
    assert_close(p.mean, (np.kron(Xt_bar, np.eye(C)) @ mean).reshape(6, C), rtol=1e-8, what="predictive mean")
    assert_close(p.function_covariance, f_cov, rtol=1e-8, what="function covariance")
    assert_close(p.function_variance, np.diagonal(f_cov, axis1=1, axis2=2), rtol=1e-8, what="function variance")
    assert_close(p.variance, np.diagonal(f_cov, axis1=1, axis2=2) + SIGMA**2, rtol=1e-8, what="variance with noise")


def test_map_from_fit_map_is_the_posterior_mean(backend):
    X, y = _data()
    mean = _closed_form(X, y)[2]
    model = fh.Chain(fh.Dense(D, 1))
    # Σ (y - f)²/(2σ²) + λ/2 ‖θ‖²  ∝  Σ (y - f)² + (2σ²λ)/2 ‖θ‖²
    fit = fh.fit_map(model, np.zeros(model.num_params), X, y, loss="mse", prior_precision=2 * SIGMA**2 * LAM, backend=backend)
    assert fit.converged
    assert_close(fit.params, mean, rtol=1e-8, what="θ_MAP")


def test_temperature_scales_the_likelihood_precision():
    X, y = _data()
    T = 0.7
    _, precision, mean, _, _ = _closed_form(X, y, T=T)
    la = fh.Laplace(fh.Chain(fh.Dense(D, 1)), mean, "regression", prior_precision=LAM, sigma_noise=SIGMA,
                    temperature=T, backend="jax").fit(X, y)
    assert_close(la.posterior_precision, precision, rtol=1e-10, what="tempered precision")


def test_diag_and_kron_structures_keep_the_blocks_they_promise():
    """diag keeps the diagonal; kron (weight block A⊗G, bias block 1⊗G) is exact per block on one layer."""
    X, y = _data()
    _, precision, mean, _, _ = _closed_form(X, y)
    model = fh.Chain(fh.Dense(D, 1))
    kw = dict(prior_precision=LAM, sigma_noise=SIGMA, backend="jax")
    diag = fh.Laplace(model, mean, "regression", structure="diag", **kw).fit(X, y)
    assert_close(diag.posterior_precision, np.diag(np.diag(precision)), rtol=1e-10, what="diag")
    kron = fh.Laplace(model, mean, "regression", structure="kron", **kw).fit(X, y)
    blockwise = precision.copy()
    blockwise[:D, D:] = blockwise[D:, :D] = 0  # weight-bias cross terms are dropped
    assert_close(kron.posterior_precision, blockwise, rtol=1e-10, what="kron")


def test_log_marginal_likelihood_is_differentiable_in_prior_and_noise():
    """jax.grad of the Laplace evidence equals finite differences of the exact evidence (linear model)."""
    X, y = _data()
    model = fh.Chain(fh.Dense(D, 1))

    def exact(log_lam, log_sigma):
        lam, sigma = np.exp(log_lam), np.exp(log_sigma)
        return _closed_form(X, y, sigma=sigma, lam=lam)[4]

    log_lam, log_sigma = np.log(LAM), np.log(SIGMA)
    mean = _closed_form(X, y)[2]
    la = fh.Laplace(model, mean, "regression", prior_precision=LAM, sigma_noise=SIGMA, backend="jax").fit(X, y)
    with jax.enable_x64(True):
        g = jax.grad(lambda a, b: la.log_marginal_likelihood(prior_precision=jnp.exp(a), sigma_noise=jnp.exp(b)), argnums=(0, 1))(
            jnp.float64(log_lam), jnp.float64(log_sigma)
        )
    # At θ_MAP the Laplace evidence *is* the exact evidence, and θ_MAP depends on (λ, σ) only through
    # terms whose derivative vanishes there (the evidence is stationary in θ at the MAP).
    h = 1e-5
    fd_lam = (exact(log_lam + h, log_sigma) - exact(log_lam - h, log_sigma)) / (2 * h)
    fd_sigma = (exact(log_lam, log_sigma + h) - exact(log_lam, log_sigma - h)) / (2 * h)
    assert float(g[0]) == pytest.approx(fd_lam, rel=1e-6, abs=1e-8)
    assert float(g[1]) == pytest.approx(fd_sigma, rel=1e-6, abs=1e-8)
