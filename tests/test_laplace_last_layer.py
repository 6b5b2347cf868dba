"""Last-layer Laplace is full Laplace of the linear last layer on the penultimate features."""

import numpy as np
import pytest

import fluxhess as fh
import reference as ref
from conftest import assert_close

MODEL = fh.Chain(fh.Dense(3, 6, "tanh"), fh.Dense(6, 5, "softplus"), fh.Dense(5, 3))
HEAD = fh.Chain(fh.Dense(3, 6, "tanh"), fh.Dense(6, 5, "softplus"))
LAST = fh.Chain(fh.Dense(5, 3))


def _data(likelihood, seed=0):
    rng = np.random.default_rng(seed)
    theta = MODEL.init(seed) + 0.1 * rng.normal(size=MODEL.num_params)
    X = rng.normal(size=(20, 3))
    y = rng.integers(0, 3, 20) if likelihood == "classification" else rng.normal(size=(20, 3))
    return theta, X, y, rng.normal(size=(6, 3))


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_last_layer_equals_linear_model_on_features(backend, likelihood, structure):
    theta, X, y, Xt = _data(likelihood)
    n_head = HEAD.num_params
    # features from the independent NumPy forward pass of the reference module
    phi, phi_t = ref.forward(HEAD, theta[:n_head], X), ref.forward(HEAD, theta[:n_head], Xt)
    kw = dict(structure=structure, prior_precision=[0.5, 2.0], backend=backend,
              sigma_noise=0.7 if likelihood == "regression" else 1.0)
    ll = fh.Laplace(MODEL, theta, likelihood, subset="last_layer", **kw).fit(X, y)
    lin = fh.Laplace(LAST, theta[n_head:], likelihood, subset="all", **kw).fit(phi, y)
    assert ll.subset == ["layers.2.weight", "layers.2.bias"]
    assert_close(ll.mean, theta[n_head:], rtol=0, atol=0, what="posterior mean")
    assert_close(ll.posterior_precision, lin.posterior_precision, rtol=1e-10, what="posterior precision")
    assert float(ll.log_marginal_likelihood()) == pytest.approx(float(lin.log_marginal_likelihood()), rel=1e-10)
    p_ll, p_lin = ll.predictive(Xt), lin.predictive(phi_t)
    assert_close(p_ll.mean, p_lin.mean, rtol=1e-10, what="predictive mean")
    assert_close(p_ll.function_covariance, p_lin.function_covariance, rtol=1e-10, what="function covariance")


def test_block_subset_selects_the_blocks_of_the_full_posterior():
    """A subset of blocks is the corresponding sub-block of the curvature (before adding the prior)."""
    theta, X, y, _ = _data("regression")
    names = ["layers.1.bias", "layers.2.weight"]
    sub = fh.Laplace(MODEL, theta, "regression", subset=names, prior_precision=1.0, backend="jax").fit(X, y)
    full = fh.Laplace(MODEL, theta, "regression", subset="all", prior_precision=1.0, backend="jax").fit(X, y)
    idx = np.concatenate([np.arange(MODEL.layout[n].offset, MODEL.layout[n].offset + MODEL.layout[n].size) for n in names])
    assert sub.subset == names and sub.n_params == idx.size
    assert_close(sub.posterior_precision, full.posterior_precision[np.ix_(idx, idx)], rtol=1e-10, what="sub-block")
    assert_close(sub.mean, theta[idx], rtol=0, atol=0, what="subset mean")
