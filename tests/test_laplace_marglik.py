"""Tuning the prior precision (and σ): the optimiser's answer against grids and finite differences."""

import numpy as np
import pytest

import fluxhess as fh


def _fitted(likelihood="classification", structure="full", seed=0):
    rng = np.random.default_rng(seed)
    model = fh.Chain.mlp([2, 5, 3 if likelihood == "classification" else 1], "tanh")
    X = rng.normal(size=(40, 2))
    y = rng.integers(0, 3, 40) if likelihood == "classification" else np.sin(2 * X[:, 0]) + 0.1 * rng.normal(size=40)
    theta = model.init(seed) + 0.3 * rng.normal(size=model.num_params)
    return fh.Laplace(model, theta, likelihood, structure=structure, backend="jax").fit(X, y), rng


def _lml(la, **kw):
    return float(la.log_marginal_likelihood(**kw))


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
def test_scalar_marglik_optimum_is_the_fine_grid_maximum(structure):
    la, _ = _fitted(structure=structure)
    la.optimize_prior_precision(method="marglik", prior_structure="scalar")
    best = float(la.prior_precision[0])
    log_grid = np.log(best) + np.linspace(-3, 3, 1201)  # spacing 0.005 in log λ
    values = np.array([_lml(la, prior_precision=np.exp(g)) for g in log_grid])
    assert abs(log_grid[np.argmax(values)] - np.log(best)) <= 0.005 + 1e-12
    assert _lml(la) >= values.max() - 1e-9


def test_joint_prior_and_noise_optimum_is_the_grid_maximum():
    la, _ = _fitted("regression")
    la.optimize_prior_precision(tune_sigma_noise=True)
    lam, sigma = float(la.prior_precision[0]), la.sigma_noise
    offsets = np.linspace(-1, 1, 41)  # spacing 0.05 in log λ and log σ
    grid = np.array([[_lml(la, prior_precision=lam * np.exp(a), sigma_noise=sigma * np.exp(b)) for b in offsets] for a in offsets])
    i, j = np.unravel_index(np.argmax(grid), grid.shape)
    assert (offsets[i], offsets[j]) == (0.0, 0.0)
    assert _lml(la) >= grid.max() - 1e-9


def test_layerwise_optimum_has_zero_finite_difference_gradient():
    la, _ = _fitted()
    la.optimize_prior_precision(prior_structure="layerwise")
    prior = la.prior_precision
    assert prior.shape == (len(la.subset),)
    h = 1e-4
    for b in range(prior.size):
        up, down = prior.copy(), prior.copy()
        up[b] *= np.exp(h)
        down[b] *= np.exp(-h)
        slope = (_lml(la, prior_precision=up) - _lml(la, prior_precision=down)) / (2 * h)  # d/d log λ_b
        assert abs(slope) < 1e-4, f"block {la.subset[b]}: d lml / d log λ = {slope}"


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_gridsearch_picks_the_grid_value_with_the_lowest_validation_nll(likelihood):
    la, rng = _fitted(likelihood)
    X_val = rng.normal(size=(30, 2))
    y_val = rng.integers(0, 3, 30) if likelihood == "classification" else np.sin(2 * X_val[:, 0])
    grid = np.logspace(-2, 2, 9)
    nll = []
    for g in grid:  # the validation NLL, written out here from the predictive (a Cholesky solve per value)
        la.prior_precision = g
        p = la.predictive(X_val)
        if likelihood == "classification":
            nll.append(-np.mean(np.log(p.mean[np.arange(30), y_val])))
        else:
            nll.append(np.mean(0.5 * np.log(2 * np.pi * p.variance[:, 0]) + (y_val - p.mean[:, 0]) ** 2 / (2 * p.variance[:, 0])))
    assert len(set(np.round(nll, 8))) == grid.size, "the validation NLL must tell the grid values apart"
    la.optimize_prior_precision(method="gridsearch", val=(X_val, y_val), grid=grid)
    assert float(la.prior_precision[0]) == grid[int(np.argmin(nll))]
