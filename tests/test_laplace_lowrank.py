"""``structure="lowrank"``: the Woodbury posterior against ``structure="full"`` where both fit,
and alone where ``full`` is refused (P ≫ N·C)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fluxhess as fh

TOL = 1e-10


def _problem(likelihood: str, N: int, widths=(3, 8, 3), seed: int = 0):
    rng = np.random.default_rng(seed)
    model = fh.Chain.mlp(list(widths), "tanh")
    theta = model.init(seed) + 0.3 * rng.normal(size=model.num_params)
    X = rng.normal(size=(N, widths[0]))
    C = widths[-1]
    y = rng.integers(0, C, size=N) if likelihood == "classification" else rng.normal(size=(N, C))
    return model, theta, X, y


def _pair(likelihood, curvature, N, prior, subset="all", sigma=1.0):
    model, theta, X, y = _problem(likelihood, N)
    kw = dict(curvature=curvature, subset=subset, prior_precision=prior, backend="jax")
    if likelihood == "regression":
        kw["sigma_noise"] = sigma
    full = fh.Laplace(model, theta, likelihood, structure="full", **kw).fit(X, y)
    low = fh.Laplace(model, theta, likelihood, structure="lowrank", **kw).fit(X, y)
    return full, low, X


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


CASES = [
    ("classification", "ggn", 10),  # R = N·C = 30 < P = 59
    ("classification", "ef", 40),  # R = N = 40
    ("classification", "ggn", 40),  # R = 120 > P: every eigenvalue of H from U Uᵀ
    ("regression", "ggn", 12),
]


@pytest.mark.parametrize("likelihood, curvature, N", CASES)
def test_lowrank_equals_full(likelihood, curvature, N):
    P = 59
    prior_per_param = np.linspace(0.5, 2.0, P)
    full, low, X = _pair(likelihood, curvature, N, 0.7, sigma=0.8)
    assert _rel(low.posterior_precision, full.posterior_precision) < TOL
    assert _rel(low.posterior_covariance, full.posterior_covariance) < TOL
    assert _rel(low.posterior_variance, full.posterior_variance) < TOL
    for prior in (None, np.array([0.3, 1.0, 2.0, 4.0]), prior_per_param):  # scalar, per block, per parameter
        assert abs(float(low.log_marginal_likelihood(prior)) - float(full.log_marginal_likelihood(prior))) < TOL * abs(
            float(full.log_marginal_likelihood(prior))
        )
    Xt = np.random.default_rng(1).normal(size=(7, 3))
    p_full, p_low = full.predictive(Xt), low.predictive(Xt)
    assert _rel(p_low.function_covariance, p_full.function_covariance) < TOL
    assert _rel(p_low.mean, p_full.mean) < TOL
    # samples: the square root S (rows of S for Z = I) satisfies S Sᵀ = P⁻¹ for both structures
    with jax.enable_x64(True):
        roots = [np.asarray(la.fitted_curvature.scale(la._decomposition(), jnp.eye(P))) for la in (full, low)]
    for M in roots:
        assert _rel(M.T @ M, full.posterior_covariance) < TOL
    draws = low.sample(4000, seed=3)
    assert _rel(np.cov(draws.T), full.posterior_covariance) < 0.2  # the sampler uses the root


def test_lowrank_marglik_gradient_and_optimisation_match_full():
    full, low, _ = _pair("regression", "ggn", 12, 1.0, sigma=0.5)
    for la in (full, low):
        la.optimize_prior_precision(method="marglik", prior_structure="layerwise", tune_sigma_noise=True)
    assert _rel(low.prior_precision, full.prior_precision) < 1e-6
    assert abs(low.sigma_noise - full.sigma_noise) < 1e-6 * full.sigma_noise


def test_lowrank_last_layer_save_load(tmp_path):
    full, low, X = _pair("classification", "ggn", 10, 2.0, subset="last_layer")
    assert _rel(low.posterior_variance, full.posterior_variance) < TOL
    low.save(tmp_path / "la.npz")
    back = fh.Laplace.load(tmp_path / "la.npz")
    assert back.structure == "lowrank"
    assert _rel(back.predictive(X).function_covariance, full.predictive(X).function_covariance) < TOL


def test_lowrank_refuses_the_hessian():
    model, theta, X, y = _problem("classification", 5)
    with pytest.raises(fh.InputError, match="lowrank.*ggn"):
        fh.Laplace(model, theta, curvature="hessian", structure="lowrank")


def _p_much_larger_than_n(widths, N, seed=0):
    """``full`` is refused (its (P, P) does not fit); ``lowrank`` answers, checked against a
    solve by a QR factorisation ``Uᵀ = Q R`` (``P = I + Q R Rᵀ Qᵀ`` acts as ``I + R Rᵀ`` on
    the span of ``Q`` and as ``I`` beside it) rather than the eigendecomposition it uses."""
    model, theta, X, y = _problem("classification", N, widths, seed)
    P = model.num_params
    with pytest.raises(fh.MemoryBudgetError):
        fh.Laplace(model, theta, structure="full", prior_precision=1.0, backend="jax").fit(X, y)
    low = fh.Laplace(model, theta, structure="lowrank", prior_precision=1.0, backend="jax").fit(X, y)
    U = low.fitted_curvature.U
    assert U.shape == (N * widths[-1], P)
    x = X[:2]
    J = fh.param_jacobian(model, theta, x, backend="jax").reshape(-1, P)  # (2·C, P)
    Q, R = np.linalg.qr(U.T)
    inside = Q.T @ J.T
    solved = (J.T - Q @ inside + Q @ np.linalg.solve(np.eye(R.shape[0]) + R @ R.T, inside)).T
    C = widths[-1]
    direct = (J @ solved.T).reshape(2, C, 2, C)  # J P⁻¹ Jᵀ for both samples; the predictive keeps each one's (C, C)
    assert _rel(low.predictive(x).function_covariance, np.stack([direct[n, :, n, :] for n in range(2)])) < TOL
    assert np.isfinite(float(low.log_marginal_likelihood()))
    return low


def test_lowrank_where_full_is_refused():
    # P = 84,490 (full needs ~114 GB), N·C = 100
    _p_much_larger_than_n((100, 240, 240, 10), 10)


@pytest.mark.slow
def test_lowrank_p_200k():
    # P = 200,890 (full needs ~645 GB), N·C = 2,000
    _p_much_larger_than_n((200, 480, 200, 10), 200)


# -- the smaller side of Woodbury ------------------------------------------------------------


@pytest.mark.parametrize("R, P", [(6, 9), (9, 9), (40, 7)], ids=["rows-side", "square", "columns-side"])
def test_both_sides_of_woodbury_equal_dense_linear_algebra(R, P):
    """Each question ``LowRank`` answers, against NumPy on the dense ``P = c·UᵀU + diag(p₀)``."""
    from fluxhess.laplace import posterior

    rng = np.random.default_rng(R + P)
    U = rng.normal(size=(R, P))
    c, p0, sizes = 0.7, rng.uniform(0.5, 2.0, size=P), [P]
    dense = c * U.T @ U + np.diag(p0)
    cov = np.linalg.inv(dense)
    low = posterior.LowRank(U)
    with jax.enable_x64(True):
        dec = low.decompose(c, jnp.asarray(p0), sizes)
        assert dec[1].shape == (min(R, P), P)
        assert _rel(low.covariance(dec), cov) < TOL
        assert _rel(low.variance(dec), np.diag(cov)) < TOL
        J = rng.normal(size=(3, 2, P))
        assert _rel(low.inv_quad(dec, J), np.einsum("ncp,pq,nkq->nck", J, cov, J)) < TOL
        S = np.asarray(low.scale(dec, np.eye(P)))
        assert _rel(S.T @ S, cov) < TOL
        assert abs(float(low.logdet(c, jnp.asarray(p0), sizes)) - np.linalg.slogdet(dense)[1]) < TOL * abs(np.linalg.slogdet(dense)[1])
    assert _rel(low.eigenvalues(), np.linalg.eigvalsh(U.T @ U)) < TOL


def test_lowrank_with_many_more_rows_than_parameters_never_forms_the_rows_gram_matrix(monkeypatch):
    """R = N·C = 600 ≫ P_s = 27 (the last layer): every matrix factorised is at most (P_s, P_s)."""
    model, theta, X, y = _problem("classification", 200)
    la = fh.Laplace(model, theta, structure="lowrank", subset="last_layer", prior_precision=0.5, backend="jax").fit(X, y)
    full = fh.Laplace(model, theta, structure="full", subset="last_layer", prior_precision=0.5, backend="jax").fit(X, y)
    R, P = la.fitted_curvature.U.shape
    assert (R, P) == (600, 27)
    sizes = []

    def recording(f):
        def g(a, *args, **kwargs):
            sizes.append(np.shape(a)[-1])
            return f(a, *args, **kwargs)
        return g

    for module, name in ((np.linalg, "eigh"), (np.linalg, "eigvalsh"), (jnp.linalg, "cholesky")):
        monkeypatch.setattr(module, name, recording(getattr(module, name)))
    checked = []
    from fluxhess import _memory

    require = _memory.require
    monkeypatch.setattr(_memory, "require", lambda q, nbytes, shape, **kw: (checked.append((q, nbytes)), require(q, nbytes, shape, **kw)))
    values = [float(la.log_marginal_likelihood()), float(la.log_marginal_likelihood(np.array([0.3, 2.0])))]
    variance, predictive = la.posterior_variance, la.predictive(X[:5])
    monkeypatch.undo()
    assert sizes and max(sizes) <= P
    decomposition = [n for q, n in checked if q == "Laplace low-rank decomposition"]
    assert decomposition and max(decomposition) < 8 * R * R  # the guard's estimate is the small side's
    expected = [float(full.log_marginal_likelihood()), float(full.log_marginal_likelihood(np.array([0.3, 2.0])))]
    assert _rel(values, expected) < TOL
    assert _rel(variance, full.posterior_variance) < TOL
    assert _rel(predictive.function_covariance, full.predictive(X[:5]).function_covariance) < TOL
