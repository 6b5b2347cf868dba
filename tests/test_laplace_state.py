"""A Laplace object's state: a failed fit or search changes nothing, and readers in other threads
see the posterior before a change or after it, never a value in between."""

import threading

import numpy as np
import pytest

import fluxhess as fh
from fluxhess import api


def _data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    return X, X @ np.array([0.5, -1.0]) + 0.3 * rng.normal(size=n)


def _fitted(structure="full"):
    model = fh.Chain.mlp([2, 4, 1], "tanh")
    X, y = _data(10, 0)
    return fh.Laplace(model, model.init(2), "regression", structure=structure, sigma_noise=0.5, backend="jax").fit(X, y)


@pytest.mark.parametrize("structure", ["full", "diag", "kron", "lowrank"])
def test_a_failed_refit_leaves_the_previous_posterior_exactly(monkeypatch, structure):
    la = _fitted(structure)
    before = (la.posterior_precision, la.loss, la.n_data, float(la.log_marginal_likelihood()), la.fitted_curvature)

    def failing_loss(*args, **kwargs):
        raise RuntimeError("the loss failed after the curvature was computed")

    monkeypatch.setattr(api, "loss", failing_loss)
    X, y = _data(25, 1)
    with pytest.raises(RuntimeError, match="loss failed"):
        la.fit(X, y)
    np.testing.assert_array_equal(la.posterior_precision, before[0])
    assert (la.loss, la.n_data, float(la.log_marginal_likelihood())) == before[1:4]
    assert la.fitted_curvature is before[4]


def test_a_failed_first_fit_leaves_it_unfitted(monkeypatch):
    model = fh.Chain.mlp([2, 4, 1], "tanh")
    la = fh.Laplace(model, model.init(2), "regression", backend="jax")
    monkeypatch.setattr(api, "loss", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        la.fit(*_data(10, 0))
    assert not la.fitted and la.fitted_curvature is None and la.loss is None and la.n_data is None
    with pytest.raises(fh.NotFittedError):
        la.predictive(np.zeros((1, 2)))


def test_a_failed_search_leaves_the_prior_as_it_was():
    la = _fitted()
    la.prior_precision = 2.0
    with pytest.raises(fh.InputError, match="no prior precision in grid gives a positive definite posterior"):
        la.optimize_prior_precision("gridsearch", val=_data(5, 3), grid=[1e-300])
    np.testing.assert_array_equal(la.prior_precision, [2.0])


def _read_while(la, change, read):
    """Values ``read(la)`` returned in another thread while ``change(la)`` ran in this one."""
    seen, done = [], threading.Event()

    def reader():
        while not done.is_set():
            seen.append(read(la))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        change(la)
    finally:
        done.set()
        thread.join()
    seen.append(read(la))
    return seen


@pytest.mark.parametrize("method", ["gridsearch", "marglik"])
def test_readers_see_the_prior_before_or_after_a_search_never_a_candidate(method):
    la = _fitted()
    old_prior, old_sigma = float(la.prior_precision[0]), la.sigma_noise
    old_lml = float(la.log_marginal_likelihood())
    kw = dict(val=_data(8, 4), grid=np.logspace(-2, 2, 40)) if method == "gridsearch" else dict(tune_sigma_noise=True)
    seen = _read_while(la, lambda la: la.optimize_prior_precision(method, **kw),
                       lambda la: (float(la.prior_precision[0]), la.sigma_noise, float(la.log_marginal_likelihood())))
    new = (float(la.prior_precision[0]), la.sigma_noise, float(la.log_marginal_likelihood()))
    assert new[:2] != (old_prior, old_sigma)  # the search did change them
    assert len(seen) > 3
    for prior, sigma, lml in seen:
        assert (prior, sigma) in {(old_prior, old_sigma), new[:2]}, "a reader saw a value the search was trying"
        assert lml == pytest.approx(old_lml, rel=1e-12) or lml == pytest.approx(new[2], rel=1e-12)


def test_readers_see_the_old_or_the_new_fit():
    """One reading call (here the log marginal likelihood, which needs the curvature, the loss and N)
    sees one fit; two property reads may of course straddle a change."""
    la = _fitted()
    old = float(la.log_marginal_likelihood())
    X, y = _data(30, 5)
    seen = _read_while(la, lambda la: la.fit(X, y), lambda la: float(la.log_marginal_likelihood()))
    new = float(la.log_marginal_likelihood())
    assert la.n_data == 30 and new != old
    assert all(v == pytest.approx(old, rel=1e-12) or v == pytest.approx(new, rel=1e-12) for v in seen)
