"""save/load: a reloaded approximation answers every question as the original did."""

import numpy as np
import pytest

import fluxhess as fh
from fluxhess import InputError


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
def test_save_load_round_trip(tmp_path, structure):
    rng = np.random.default_rng(0)
    model = fh.Chain(fh.Flatten(), fh.Dense(4, 5, "relu"), fh.Dense(5, 2))
    X, y = rng.normal(size=(20, 2, 2)), rng.normal(size=(20, 2))
    la = fh.Laplace(model, model.init(1), "regression", structure=structure, subset=["layers.2.weight"],
                    prior_precision=[3.0], sigma_noise=0.4, temperature=0.9, backend="jax").fit(X, y)
    path = tmp_path / "la.npz"
    la.save(path)
    back = fh.Laplace.load(path)
    assert (back.likelihood, back.structure, back.subset, back.sigma_noise, back.temperature) == (
        la.likelihood, la.structure, la.subset, la.sigma_noise, la.temperature)
    assert back.model == model
    np.testing.assert_array_equal(back.posterior_precision, la.posterior_precision)
    assert float(back.log_marginal_likelihood()) == float(la.log_marginal_likelihood())
    np.testing.assert_array_equal(back.predictive(X[:3]).variance, la.predictive(X[:3]).variance)
    np.testing.assert_array_equal(back.sample(4, seed=2), la.sample(4, seed=2))


def test_unfitted_round_trip_and_foreign_files(tmp_path):
    model = fh.Chain.mlp([2, 3, 2])
    fh.Laplace(model, model.init(), backend="jax").save(tmp_path / "a.npz")
    assert not fh.Laplace.load(tmp_path / "a.npz").fitted
    np.savez(tmp_path / "b.npz", x=np.ones(3))
    with pytest.raises(InputError, match="not a saved fluxhess Laplace approximation"):
        fh.Laplace.load(tmp_path / "b.npz")
