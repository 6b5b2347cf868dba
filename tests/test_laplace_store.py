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


def _saved_without(tmp_path, entry: str, meta_key: bool):
    """A file save wrote, with one array entry (or one key of its meta) removed."""
    import json

    model = fh.Chain.mlp([2, 3, 1])
    la = fh.Laplace(model, model.init(), "regression", backend="jax").fit(np.ones((4, 2)), np.zeros(4))
    la.save(tmp_path / "full.npz")
    with np.load(tmp_path / "full.npz") as f:
        data = dict(f)
    if meta_key:
        meta = json.loads(str(data["meta"]))
        del meta[entry]
        data["meta"] = np.array(json.dumps(meta))
    else:
        del data[entry]
    np.savez(tmp_path / "broken.npz", **data)
    return tmp_path / "broken.npz"


@pytest.mark.parametrize(
    "write, why",
    [
        (lambda p: np.save(p / "x.npy", np.ones(3)) or p / "x.npy", "single array of shape \\(3,\\)"),
        (lambda p: (p / "x.txt").write_text("not numpy") and p / "x.txt", "not a NumPy .npz archive"),
        (lambda p: _saved_without(p, "params", meta_key=False), "entry 'params' is missing"),
        (lambda p: _saved_without(p, "likelihood", meta_key=True), "entry 'likelihood' is missing"),
        (lambda p: p / "absent.npz", "FileNotFoundError"),
    ],
    ids=["npy", "text", "array-entry-missing", "meta-entry-missing", "absent"],
)
def test_load_of_anything_else_says_it_is_not_a_saved_laplace(tmp_path, write, why):
    path = write(tmp_path)
    with pytest.raises(InputError, match=f"not a saved fluxhess Laplace approximation \\(.*{why}"):
        fh.Laplace.load(path)


def test_save_and_load_name_a_path_that_is_not_one(tmp_path):
    model = fh.Chain.mlp([2, 3, 1])
    la = fh.Laplace(model, model.init(), "regression", backend="jax")
    with pytest.raises(InputError, match="path must be a file name .*; got NoneType"):
        la.save(None)
    with pytest.raises(InputError, match="path must be a file name .*; got NoneType"):
        fh.Laplace.load(None)
    with pytest.raises(InputError, match="cannot be written: IsADirectoryError"):
        la.save(tmp_path)
