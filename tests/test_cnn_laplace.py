"""Last-layer Laplace on a LeNet-like CNN equals laplace-torch on the same weights, with
laplace-torch's BackPACK GGN backend (exact, ``laplace.curvature.BackPackGGN``)."""

from __future__ import annotations

import numpy as np
import pytest

import fluxhess as fh

torch = pytest.importorskip("torch")
laplace = pytest.importorskip("laplace", reason="laplace-torch is not installed (install the peers: shared/install-peers.sh)")
pytest.importorskip("backpack", reason="BackPACK is not installed (install the peers: shared/install-peers.sh)")

N, RTOL = 40, 1e-10


def _lenet():
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 10),
    ).double().eval()


def _torch_order(model, names):
    """Positions (within the subset) of torch's parameter vector: row-major W (out, in), then b."""
    index = model.unflatten(np.arange(model.num_params, dtype=float))
    flat = np.concatenate([index[n].ravel(order="C") for n in names]).astype(int)
    return flat - min(model.layout[n].offset for n in names)


def _rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("structure", ["full", "diag"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_last_layer_laplace_on_a_cnn_matches_laplace_torch_backpack(likelihood, structure):
    from laplace.curvature import BackPackGGN

    net = _lenet()
    model, theta = fh.from_torch(net, input_shape=(1, 12, 12))
    rng = np.random.default_rng(0)
    X, Xt = rng.normal(size=(N, 1, 12, 12)), rng.normal(size=(5, 1, 12, 12))
    y = rng.integers(0, 10, N) if likelihood == "classification" else rng.normal(size=(N, 10))
    settings = dict(prior_precision=0.7, temperature=1.3, sigma_noise=0.8 if likelihood == "regression" else 1.0)
    ours = fh.Laplace(model, theta, likelihood, subset="last_layer", structure=structure, backend="jax", **settings).fit(X, y)
    theirs = laplace.Laplace(net, likelihood, subset_of_weights="last_layer", hessian_structure=structure, backend=BackPackGGN, **settings)
    target = torch.tensor(y) if likelihood == "classification" else torch.tensor(y, dtype=torch.float64)
    theirs.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(X), target), batch_size=N))
    assert ours.subset == ["layers.9.weight", "layers.9.bias"]
    order = _torch_order(model, ours.subset)
    if structure == "full":
        assert _rel(ours.posterior_precision[np.ix_(order, order)], theirs.posterior_precision.numpy()) < RTOL
    else:
        assert _rel(np.diag(ours.posterior_precision)[order], theirs.posterior_precision.numpy()) < RTOL
    assert float(ours.log_marginal_likelihood()) == pytest.approx(float(theirs.log_marginal_likelihood()), rel=RTOL)
    if likelihood == "classification":
        expected = theirs(torch.tensor(Xt), pred_type="glm", link_approx="probit").numpy()
        assert _rel(ours.predictive(Xt).mean, expected) < RTOL
    else:
        f_mu, f_var = theirs(torch.tensor(Xt), pred_type="glm")
        p = ours.predictive(Xt)
        assert _rel(p.mean, f_mu.numpy()) < RTOL
        assert _rel(p.function_covariance, f_var.numpy()) < RTOL


def test_a_cnn_laplace_saves_and_loads_with_its_layers(tmp_path):
    net = _lenet()
    model, theta = fh.from_torch(net, input_shape=(1, 12, 12))
    model = fh.Chain(*model.layers[:7], fh.SkipConnection(fh.Dense(16, 16, "tanh")), fh.Parallel(fh.Dense(16, 16), ()),
                     *model.layers[7:], input_shape=(1, 12, 12))  # residual blocks after the Flatten
    cut = model.layout["layers.7.0.weight"].offset
    theta = np.concatenate([theta[:cut], np.full(2 * (16 * 16 + 16), 0.01), theta[cut:]])
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(N, 1, 12, 12)), rng.integers(0, 10, N)
    la = fh.Laplace(model, theta, "classification", subset="last_layer", backend="jax").fit(X, y)
    la.save(tmp_path / "cnn.npz")
    back = fh.Laplace.load(tmp_path / "cnn.npz")
    assert back.model == model
    np.testing.assert_array_equal(back.posterior_precision, la.posterior_precision)
