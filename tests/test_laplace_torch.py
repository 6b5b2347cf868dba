"""Parity with laplace-torch: same MLP, weights, data and settings give the same numbers."""

import numpy as np
import pytest

import fluxhess as fh

torch = pytest.importorskip("torch", reason="laplace-torch parity needs torch (install the peers: make peers)")
laplace = pytest.importorskip("laplace", reason="laplace-torch is not installed (install the peers: make peers)")

N, RTOL = 30, 1e-6
MODEL = fh.Chain.mlp([3, 5, 4, 3], "tanh")


def _torch_model(model, theta):
    layers, blocks = [], model.unflatten(theta)
    for i, layer in model.dense_layers:
        lin = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(blocks[f"layers.{i}.weight"]))
            lin.bias.copy_(torch.tensor(blocks[f"layers.{i}.bias"]))
        layers.append(lin)
        if layer.activation == "tanh":
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def _torch_order(model, names):
    """Positions (within the subset) of torch's parameter vector: row-major W (out, in), then b."""
    index = model.unflatten(np.arange(model.num_params, dtype=float))
    flat = np.concatenate([index[n].ravel(order="C") for n in names]).astype(int)
    offset = min(model.layout[n].offset for n in names)
    return flat - offset


def _data(likelihood, seed=0):
    rng = np.random.default_rng(seed)
    theta = MODEL.init(seed) + 0.1 * rng.normal(size=MODEL.num_params)
    X = rng.normal(size=(N, 3))
    y = rng.integers(0, 3, N) if likelihood == "classification" else rng.normal(size=(N, 3))
    return theta, X, y, rng.normal(size=(7, 3))


def _pair(likelihood, subset, structure, curvature="ggn", trained=False):
    """Ours and laplace-torch's approximation, fitted; ``trained``: at θ_MAP of the same posterior."""
    theta, X, y, Xt = _data(likelihood)
    settings = dict(prior_precision=0.7, temperature=1.3, sigma_noise=0.8 if likelihood == "regression" else 1.0)
    if trained:  # Σℓ/T + ½·0.7‖θ‖² (classification): fit_map's prior is 0.7·T
        assert likelihood == "classification"
        fit = fh.fit_map(MODEL, theta, X, y, loss="logitcrossentropy", prior_precision=0.7 * 1.3, backend="jax")
        assert fit.converged
        theta = fit.params
    ours = fh.Laplace(MODEL, theta, likelihood, curvature=curvature, structure=structure, subset=subset, backend="jax", **settings).fit(X, y)
    curv = {"ggn": laplace.curvature.CurvlinopsGGN, "ef": laplace.curvature.CurvlinopsEF}[curvature]
    theirs = laplace.Laplace(_torch_model(MODEL, theta), likelihood, subset_of_weights=subset, hessian_structure=structure,
                             backend=curv, **settings)
    target = torch.tensor(y) if likelihood == "classification" else torch.tensor(y, dtype=torch.float64)
    theirs.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(X), target), batch_size=N))
    return ours, theirs, Xt


def _rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_matches_laplace_torch(likelihood, subset, structure):
    ours, theirs, Xt = _pair(likelihood, subset, structure)
    order = _torch_order(MODEL, ours.subset)
    P_ours = ours.posterior_precision[np.ix_(order, order)]
    P_theirs = theirs.posterior_precision
    P_theirs = {"full": lambda m: m.numpy(), "diag": lambda m: np.diag(m.numpy()), "kron": lambda m: m.to_matrix().numpy()}[structure](P_theirs)
    assert _rel(P_ours, P_theirs) < RTOL, "posterior precision"
    assert float(ours.log_marginal_likelihood()) == pytest.approx(float(theirs.log_marginal_likelihood()), rel=RTOL)
    if likelihood == "classification":
        for link in ("probit", "bridge"):
            expected = theirs(torch.tensor(Xt), pred_type="glm", link_approx=link).numpy()
            assert _rel(ours.predictive(Xt, link_approx=link).mean, expected) < RTOL, f"GLM {link} predictive"
    else:
        f_mu, f_var = theirs(torch.tensor(Xt), pred_type="glm")
        p = ours.predictive(Xt)
        assert _rel(p.mean, f_mu.numpy()) < RTOL, "GLM predictive mean"
        assert _rel(p.function_covariance, f_var.numpy()) < RTOL, "GLM predictive covariance"


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_empirical_fisher_matches_laplace_torch(likelihood):
    ours, theirs, _ = _pair(likelihood, "all", "full", curvature="ef")
    order = _torch_order(MODEL, ours.subset)
    assert _rel(ours.posterior_precision[np.ix_(order, order)], theirs.posterior_precision.numpy()) < RTOL
    assert float(ours.log_marginal_likelihood()) == pytest.approx(float(theirs.log_marginal_likelihood()), rel=RTOL)


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_trained_classifier_matches_laplace_torch(subset):
    """At a converged MAP (confident training predictions, a small GGN) the scale of the curvature,
    the log marginal likelihood and the predictive still agree."""
    ours, theirs, Xt = _pair("classification", subset, "full", trained=True)
    order = _torch_order(MODEL, ours.subset)
    assert _rel(ours.posterior_precision[np.ix_(order, order)], theirs.posterior_precision.numpy()) < RTOL
    assert float(ours.log_marginal_likelihood()) == pytest.approx(float(theirs.log_marginal_likelihood()), rel=RTOL)
    expected = theirs(torch.tensor(Xt), pred_type="glm", link_approx="probit").numpy()
    assert _rel(ours.predictive(Xt).mean, expected) < RTOL


@pytest.mark.parametrize("trained", [False, True])
def test_marglik_prior_optimum_matches_laplace_torch(trained):
    """Both maximise the same function: laplace-torch's Adam run lands where our L-BFGS does."""
    ours, theirs, _ = _pair("classification", "last_layer", "full", trained=trained)
    ours.optimize_prior_precision(method="marglik")
    theirs.optimize_prior_precision(method="marglik", n_steps=1000, lr=0.05)
    assert float(ours.prior_precision[0]) == pytest.approx(float(theirs.prior_precision[0]), rel=1e-3)
