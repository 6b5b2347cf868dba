"""Predictive link approximations and samplers against Monte Carlo written out here."""

import numpy as np
import pytest

import fluxhess as fh
import reference as ref
from conftest import assert_close
from fluxhess.laplace import predictive as links

N_MC = 400_000


def _mc(f_mu, f_cov, rng, n=N_MC):
    """E[link(f)], f ~ N(f_μ, Σ_f), by plain NumPy sampling; and 4 standard errors (the tolerance)."""
    L = np.linalg.cholesky(f_cov)
    f = f_mu + np.einsum("nij,snj->sni", L, rng.standard_normal((n,) + f_mu.shape))
    if f_mu.shape[1] == 1:
        p = 1 / (1 + np.exp(-f))
    else:
        e = np.exp(f - f.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
    return p.mean(0), 4 * p.std(0).max() / np.sqrt(n)


def test_binary_probit_matches_monte_carlo():
    """MacKay's probit for a sigmoid: within MC error plus its own error (< 0.005 for these
    variances); the MAP plug-in sigmoid(f_μ), which ignores the variance, is far outside."""
    rng = np.random.default_rng(0)
    f_mu = rng.normal(size=(8, 1)) * 2
    f_cov = rng.uniform(0.5, 1.0, size=(8, 1, 1))
    expected, tol = _mc(f_mu, f_cov, rng)
    assert np.max(np.abs(links.probit(f_mu, f_cov) - expected)) < tol + 0.005
    assert np.max(np.abs(links.link(f_mu) - expected)) > 4 * (tol + 0.005)  # the test can tell


def _dirichlet_gaussian(alpha):
    """The logit Gaussian of a Dirichlet(α) (the Laplace bridge's forward map, Hobbhahn et al. 2022)."""
    K = alpha.shape[1]
    log_a = np.log(alpha)
    mu = log_a - log_a.mean(1, keepdims=True)
    inv = 1 / alpha
    cov = np.einsum("kl,nk->nkl", np.eye(K), inv) - (inv[:, :, None] + inv[:, None, :]) / K + inv.sum(1)[:, None, None] / K**2
    return mu, cov + 0.3 * np.ones((K, K))  # variance along (1, ..., 1) does not change a softmax


def test_bridge_inverts_the_dirichlet_map_and_matches_monte_carlo():
    rng = np.random.default_rng(1)
    alpha = rng.dirichlet(3 * np.ones(3), size=6) * 5000  # a concentrated Dirichlet: the bridge's regime
    mu, cov = _dirichlet_gaussian(alpha)
    bridge = links.bridge(mu, cov)
    assert_close(bridge, alpha / alpha.sum(1, keepdims=True), rtol=1e-12, what="bridge of a Dirichlet's Gaussian")
    expected, tol = _mc(mu, cov, rng)
    assert np.max(np.abs(bridge - expected)) < tol + 3 / 5000  # MC error + the Laplace approximation's O(1/α₀)


def _classifier(C=3, seed=0):
    rng = np.random.default_rng(seed)
    model = fh.Chain.mlp([2, 6, C], "tanh")
    X = rng.normal(size=(40, 2))
    y = rng.integers(0, max(C, 2), 40)
    theta = model.init(seed) + 0.2 * rng.normal(size=model.num_params)
    return model, theta, X, y, rng.normal(size=(5, 2))


@pytest.mark.parametrize("C", [1, 3])
def test_mc_link_matches_independent_monte_carlo(C):
    """GLM + mc link against sampling J Σ Jᵀ built from the reference Jacobian and a NumPy inverse."""
    model, theta, X, y, Xt = _classifier(C)
    la = fh.Laplace(model, theta, "classification", prior_precision=2.0, backend="jax").fit(X, y)
    J = ref.param_jacobian(model, theta, Xt)
    f_cov = np.einsum("ncp,pq,nkq->nck", J, np.linalg.inv(la.posterior_precision), J)
    f_mu = ref.forward(model, theta, Xt)
    expected, tol = _mc(f_mu, f_cov, np.random.default_rng(7), n=100_000)
    p = la.predictive(Xt, link_approx="mc", n_samples=100_000, seed=3)
    assert_close(p.function_covariance, f_cov, rtol=1e-8, what="function covariance")
    assert np.max(np.abs(p.mean - expected)) < 2 * tol  # two independent estimates
    assert_close(p.variance, p.mean * (1 - p.mean), rtol=1e-12, what="label variance")


def test_nn_predictive_of_a_linear_model_matches_the_glm():
    """For a linear model the sampled-network predictive is the GLM one, up to MC error."""
    rng = np.random.default_rng(2)
    model = fh.Chain(fh.Dense(3, 2))
    X, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    la = fh.Laplace(model, rng.normal(size=model.num_params), "regression", sigma_noise=0.5, prior_precision=0.3,
                    backend="jax").fit(X, y)
    Xt = rng.normal(size=(4, 3))
    glm, nn = la.predictive(Xt), la.predictive(Xt, pred_type="nn", n_samples=20_000, seed=1)
    sd = np.sqrt(glm.function_variance)
    assert np.all(np.abs(nn.mean - glm.mean) < 4 * sd / np.sqrt(20_000))
    assert np.all(np.abs(nn.function_variance / glm.function_variance - 1) < 4 * np.sqrt(2 / 20_000))
    assert_close(nn.variance, nn.function_variance + 0.25, rtol=1e-12, what="variance with noise")


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
def test_samples_have_the_posterior_mean_and_covariance(structure):
    model, theta, X, y, _ = _classifier()
    la = fh.Laplace(model, theta, "classification", structure=structure, prior_precision=1.5, backend="jax").fit(X, y)
    n = 20_000
    S = la.sample(n, seed=4)
    assert S.shape == (n, la.n_params)
    cov = np.linalg.inv(la.posterior_precision)  # NumPy's inverse of the precision, not our covariance
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(S.mean(0) - la.mean) < 4.5 * sd / np.sqrt(n))
    corr_err = (np.cov(S.T) - cov) / np.outer(sd, sd)
    assert np.max(np.abs(corr_err)) < 4.5 * np.sqrt(2 / n)
    np.testing.assert_array_equal(la.sample(3, seed=9), la.sample(3, seed=9))


# -- large logits: probabilities stay a distribution -------------------------------------------


def _bridge_in_long_double(f_mu, f_cov):
    """The bridge's formula as written (laplace-torch's), in 80-bit long double, where e^800 does not overflow."""
    f_mu, f_cov = f_mu.astype(np.longdouble), f_cov.astype(np.longdouble)
    row, total = f_cov.sum(-1), f_cov.sum((1, 2))[:, None]
    mu = f_mu - row * f_mu.sum(-1, keepdims=True) / total
    var = np.diagonal(f_cov, axis1=1, axis2=2) - row * f_cov.sum(-2) / total
    K = f_mu.shape[1]
    alpha = (1 - 2 / K + np.exp(mu) / K**2 * np.exp(-mu).sum(1, keepdims=True)) / var
    return alpha / alpha.sum(1, keepdims=True)


@pytest.mark.skipif(np.finfo(np.longdouble).maxexp < 2048, reason="this platform's long double is float64")
def test_bridge_with_large_logits_equals_the_formula_in_long_double():
    rng = np.random.default_rng(1)
    f_mu = np.array([[800.0, 0.0, -800.0], [0.0, 1000.0, 3.0], [-700.0, -710.0, 705.0], [1.0, 2.0, 3.0]])
    A = rng.normal(size=(4, 3, 3))
    f_cov = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(3)
    p = links.bridge(f_mu, f_cov)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p, _bridge_in_long_double(f_mu, f_cov).astype(np.float64), rtol=1e-12, atol=1e-300)


def test_bridge_without_variance_is_an_error_not_a_guess():
    with pytest.raises(fh.InputError, match=r"bridge' needs a positive function variance .* 1 of 2 inputs have none \(first: row 1\)"):
        links.bridge(np.array([[1.0, 2.0], [3.0, 4.0]]), np.stack([np.eye(2), np.zeros((2, 2))]))


@pytest.mark.parametrize("pred_type, link", [("glm", "probit"), ("glm", "bridge"), ("glm", "mc"), ("nn", "mc")])
def test_every_link_gives_a_distribution_at_large_logits(pred_type, link):
    """Logits of ±1e3 (weights scaled up): every row finite, in [0, 1], summing to 1."""
    rng = np.random.default_rng(2)
    model = fh.Chain(fh.Dense(2, 3))
    X = rng.normal(size=(20, 2))
    theta = 400.0 * rng.normal(size=model.num_params)
    la = fh.Laplace(model, theta, prior_precision=1e-3, backend="jax").fit(X, rng.integers(0, 3, 20))
    p = la.predictive(X, pred_type, link, n_samples=50).mean
    assert np.abs(la.predictive(X).function_mean).max() > 500
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=0, atol=1e-9)


# -- the GLM predictive streams over chunks --------------------------------------------------


def test_glm_predictive_holds_one_chunk_of_jacobians_at_a_time(monkeypatch):
    import weakref

    from fluxhess import _memory
    from fluxhess.laplace.subset import Subset

    rng = np.random.default_rng(3)
    model = fh.Chain.mlp([3, 6, 4], "tanh")
    X = rng.normal(size=(40, 3))
    la = fh.Laplace(model, model.init(3), backend="jax").fit(X, rng.integers(0, 4, 40))
    whole = la.predictive(X)
    alive, most, calls = [0], [0], [0]
    jacobian = Subset.jacobian

    def counted(self, theta, features, backend):
        J = jacobian(self, theta, features, backend)
        most[0] = max(most[0], alive[0])  # Jacobians of earlier chunks still held when this one exists
        alive[0] += 1
        calls[0] += 1
        weakref.finalize(J, lambda: alive.__setitem__(0, alive[0] - 1))
        return J

    monkeypatch.setattr(Subset, "jacobian", counted)
    monkeypatch.setattr(_memory, "chunk_size", lambda bytes_per_item, total, budget=None: 3)
    streamed = la.predictive(X)
    assert calls[0] == 14 and most[0] == 0
    np.testing.assert_allclose(streamed.function_covariance, whole.function_covariance, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-12)


def test_glm_predictive_is_refused_before_any_jacobian_when_its_working_set_does_not_fit(monkeypatch):
    from fluxhess import _memory
    from fluxhess.laplace.subset import Subset

    rng = np.random.default_rng(3)
    model = fh.Chain.mlp([3, 6, 4], "tanh")
    X = rng.normal(size=(40, 3))
    la = fh.Laplace(model, model.init(3), backend="jax").fit(X, rng.integers(0, 4, 40))
    la.predictive(X[:1])  # the posterior's factorisation exists
    calls = []
    monkeypatch.setattr(Subset, "jacobian", lambda *a: calls.append(a))
    monkeypatch.setattr(_memory, "available_bytes", lambda: 40 * 4 * 4 * 8)  # less than f_MAP + J P⁻¹ Jᵀ
    with pytest.raises(fh.MemoryBudgetError, match=r"predictive of shape \(40, 4, 4\) needs about"):
        la.predictive(X)
    assert calls == []
