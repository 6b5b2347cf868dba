"""Bad input gets a FluxHessError that says what arrived, what was expected and the fix."""

import re

import numpy as np
import pytest

import fluxhess as fh
from fluxhess import FluxHessError, InputError, UnknownNameError

MODEL = fh.Chain.mlp([2, 4, 3], "tanh")


def _data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return MODEL.init(seed), rng.normal(size=(n, 2)), rng.integers(0, 3, n)


def test_predictive_and_friends_before_fit():
    theta, X, _ = _data()
    la = fh.Laplace(MODEL, theta, backend="jax")
    for call in (lambda: la.predictive(X), lambda: la.log_marginal_likelihood(), lambda: la.sample(2),
                 lambda: la.posterior_precision, lambda: la.optimize_prior_precision()):
        with pytest.raises(FluxHessError, match=re.escape("call .fit(X, y)")):
            call()


def test_labels_that_do_not_fit_the_output_width():
    theta, X, y = _data()
    la = fh.Laplace(MODEL, theta, backend="jax")
    with pytest.raises(InputError, match=r"class labels in y must lie in \[0, 3\).*got values from 0 to 5"):
        la.fit(X, np.where(y == 2, 5, y))
    binary = fh.Chain.mlp([2, 4, 1], "tanh")
    with pytest.raises(InputError, match="1 output is a sigmoid .*labels in y must be 0 or 1.*give the model 3 outputs"):
        fh.Laplace(binary, binary.init(), backend="jax").fit(X, y)
    with pytest.raises(InputError, match=r"y must have shape \(12, 3\)"):
        fh.Laplace(MODEL, theta, "regression", backend="jax").fit(X, np.zeros((12, 2)))


def test_classification_needs_logits():
    model = fh.Chain(fh.Dense(2, 3), fh.Activation("softmax"))
    with pytest.raises(InputError, match=r"outputs logits.*Activation\('softmax'\)\. Drop that layer"):
        fh.Laplace(model, model.init())


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, [1.0, -2.0, 1.0, 1.0]])
def test_non_positive_prior_precision(bad):
    theta, _, _ = _data()
    with pytest.raises(InputError, match="prior_precision must be positive"):
        fh.Laplace(MODEL, theta, prior_precision=bad, backend="jax")


def test_prior_precision_of_the_wrong_length():
    theta, _, _ = _data()
    with pytest.raises(InputError, match=r"\(1,\) \(one value\), \(4,\) \(one per block\), \(27,\) \(one per parameter\); got shape \(5,\)"):
        fh.Laplace(MODEL, theta, prior_precision=np.ones(5), backend="jax")


@pytest.mark.parametrize("bad", [0.0, -0.5, np.nan])
def test_non_positive_noise_and_temperature(bad):
    theta, _, _ = _data()
    with pytest.raises(InputError, match="sigma_noise must be a positive number"):
        fh.Laplace(MODEL, theta, "regression", sigma_noise=bad, backend="jax")
    with pytest.raises(InputError, match="temperature must be a positive number"):
        fh.Laplace(MODEL, theta, temperature=bad, backend="jax")
    with pytest.raises(InputError, match="must stay 1 for classification"):
        fh.Laplace(MODEL, theta, sigma_noise=2.0, backend="jax")


def test_unknown_subset_names():
    theta, _, _ = _data()
    with pytest.raises(UnknownNameError, match="no parameter block named 'layers.5.weight'; the blocks are layers.0.weight"):
        fh.Laplace(MODEL, theta, subset=["layers.5.weight"], backend="jax")
    with pytest.raises(UnknownNameError, match="subset must be 'all', 'last_layer' or a list"):
        fh.Laplace(MODEL, theta, subset="first_layer", backend="jax")
    with pytest.raises(InputError, match="layers.1.bias appear more than once"):
        fh.Laplace(MODEL, theta, subset=["layers.1.bias", "layers.1.bias"], backend="jax")


def test_unknown_options():
    theta, X, y = _data()
    with pytest.raises(UnknownNameError, match="structure must be one of 'full', 'diag', 'kron', 'lowrank'; got 'kfac'"):
        fh.Laplace(MODEL, theta, structure="kfac")
    with pytest.raises(InputError, match="structure='kron' needs curvature='ggn' or 'ef'"):
        fh.Laplace(MODEL, theta, structure="kron", curvature="hessian")
    la = fh.Laplace(MODEL, theta, backend="jax").fit(X, y)
    with pytest.raises(InputError, match="pred_type='nn' samples networks, so its link is link_approx='mc'"):
        la.predictive(X, pred_type="nn", link_approx="probit")
    with pytest.raises(InputError, match="link_approx applies to classification only"):
        fh.Laplace(MODEL, theta, "regression", backend="jax").fit(X, np.zeros((12, 3))).predictive(X, link_approx="probit")
    with pytest.raises(InputError, match="method='gridsearch' needs validation data"):
        la.optimize_prior_precision(method="gridsearch")
    binary = fh.Chain.mlp([2, 4, 1], "tanh")
    lb = fh.Laplace(binary, binary.init(), backend="jax").fit(X, y % 2)
    with pytest.raises(InputError, match="link_approx='bridge' .* needs C >= 2"):
        lb.predictive(X, link_approx="bridge")


def _indefinite():
    """A relu network far from a minimum: its loss Hessian has clearly negative eigenvalues."""
    rng = np.random.default_rng(3)
    model = fh.Chain.mlp([2, 6, 1], "tanh")
    X = rng.normal(size=(30, 2))
    y = X[:, 0] * 3 + rng.normal(size=30)
    theta = 2 * rng.normal(size=model.num_params)
    return model, theta, X, y


def test_indefinite_hessian_is_reported_with_the_fix():
    model, theta, X, y = _indefinite()
    H = fh.hessian(model, theta, X, y, loss="mse", backend="jax")
    h_min = np.linalg.eigvalsh(H)[0] / 2  # the NLL with σ = 1 is mse / 2
    assert h_min < -1
    la = fh.Laplace(model, theta, "regression", curvature="hessian", prior_precision=1e-3, backend="jax").fit(X, y)
    message = rf"not positive definite.*indefinite at these parameters \(most negative eigenvalue {h_min:.6g}.*curvature='ggn'.*clip_negative_eigenvalues=True"
    for call in (lambda: la.predictive(X), lambda: la.log_marginal_likelihood(), lambda: la.sample(3)):
        with pytest.raises(InputError, match=message):
            call()
    with pytest.raises(InputError, match="marginal likelihood is undefined for small prior precisions"):
        la.optimize_prior_precision()


def test_clipping_reports_what_it_clipped():
    model, theta, X, y = _indefinite()
    lam = np.linalg.eigvalsh(fh.hessian(model, theta, X, y, loss="mse", backend="jax"))
    with pytest.warns(fh.FluxHessWarning, match=rf"clipped {np.sum(lam < 0)} of {lam.size} negative eigenvalues"):
        la = fh.Laplace(model, theta, "regression", curvature="hessian", clip_negative_eigenvalues=True,
                        prior_precision=1e-3, backend="jax").fit(X, y)
    assert la.clipped.count == np.sum(lam < 0) and la.clipped.total == lam.size
    assert la.clipped.most_negative == pytest.approx(lam[0], rel=1e-8)
    eig = np.linalg.eigvalsh(la.posterior_precision)
    assert eig.min() == pytest.approx(1e-3, rel=1e-6)  # the clipped directions keep only the prior
    assert np.all(np.isfinite(la.predictive(X).variance))
    with pytest.raises(InputError, match="applies to curvature='hessian' only"):
        fh.Laplace(model, theta, "regression", clip_negative_eigenvalues=True)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_sample_counts_must_be_positive_integers(bad):
    theta, X, y = _data()
    la = fh.Laplace(MODEL, theta, backend="jax").fit(X, y)
    with pytest.raises(InputError, match=f"n must be a positive integer; got {re.escape(repr(bad))}"):
        la.sample(bad)
    with pytest.raises(InputError, match=f"n_samples must be a positive integer; got {re.escape(repr(bad))}"):
        la.predictive(X, link_approx="mc", n_samples=bad)


@pytest.mark.parametrize("bad", [0, -1, "10", 2.5])
def test_optimize_prior_precision_validates_max_iter_and_stores_nothing(bad):
    theta, X, y = _data()
    la = fh.Laplace(MODEL, theta, prior_precision=0.5, backend="jax").fit(X, y)
    with pytest.raises(InputError, match=f"max_iter must be a positive integer; got {re.escape(repr(bad))}"):
        la.optimize_prior_precision(max_iter=bad)
    np.testing.assert_array_equal(la.prior_precision, [0.5])


def test_optimize_prior_precision_warns_when_it_stops_before_converging():
    theta, X, y = _data()
    la = fh.Laplace(MODEL, theta, prior_precision=1e3, backend="jax").fit(X, y)
    with pytest.warns(fh.ConvergenceWarning, match="stopped after 1 iterations without converging"):
        la.optimize_prior_precision(max_iter=1)
    converged = fh.Laplace(MODEL, theta, prior_precision=1e3, backend="jax").fit(X, y)
    converged.optimize_prior_precision()  # no warning: warnings from fluxhess are errors in the tests
    assert abs(np.log(la.prior_precision[0] / converged.prior_precision[0])) > 1e-3  # it did stop short


def test_gridsearch_validates_n_samples_before_scoring():
    theta, X, y = _data()
    la = fh.Laplace(MODEL, theta, backend="jax").fit(X, y)
    with pytest.raises(InputError, match="n_samples must be a positive integer; got 0"):
        la.optimize_prior_precision("gridsearch", val=(X, y), link_approx="mc", n_samples=0, grid=[1.0, 2.0])
    with pytest.raises(InputError, match="grid must be a numeric array"):
        la.optimize_prior_precision("gridsearch", val=(X, y), grid="1, 2")


@pytest.mark.parametrize("bad", [-1, 1.5, "a", True])
def test_seeds_must_be_non_negative_integers(bad):
    theta, X, y = _data()
    la = fh.Laplace(MODEL, theta, backend="jax").fit(X, y)
    message = f"seed must be a non-negative integer .*; got {re.escape(repr(bad))}"
    for call in (lambda: la.sample(2, seed=bad), lambda: la.predictive(X, pred_type="nn", n_samples=2, seed=bad),
                 lambda: MODEL.init(bad)):
        with pytest.raises(InputError, match=message):
            call()


@pytest.mark.parametrize("argument", ["prior_precision", "prior_mean"])
@pytest.mark.parametrize("bad", ["1.0", None, [1.0, "a"]])
def test_prior_arguments_that_are_not_numbers(argument, bad):
    theta, _, _ = _data()
    with pytest.raises(InputError, match=f"{argument} must be a numeric array"):
        fh.Laplace(MODEL, theta, backend="jax", **{argument: bad})


@pytest.mark.parametrize("setting, value", [("temperature", 2.0), ("sigma_noise", 0.5), ("prior_precision", 3.0)])
def test_a_setter_after_use_gives_the_posterior_of_a_fresh_approximation(setting, value):
    """Setting a hyperparameter on a used approximation: no stale posterior from before."""
    rng = np.random.default_rng(0)
    model = fh.Chain.mlp([3, 4, 1], "tanh")
    X, y = rng.normal(size=(8, 3)), rng.normal(size=8)
    la = fh.Laplace(model, model.init(), "regression", backend="jax").fit(X, y)
    la.posterior_covariance, la.log_marginal_likelihood()  # computed and cached at the old value
    setattr(la, setting, value)
    fresh = fh.Laplace(model, model.init(), "regression", backend="jax", **{setting: value}).fit(X, y)
    np.testing.assert_allclose(la.posterior_covariance, fresh.posterior_covariance, rtol=1e-12)
    assert float(la.log_marginal_likelihood()) == pytest.approx(float(fresh.log_marginal_likelihood()), rel=1e-12)
    with pytest.raises(InputError, match=f"{setting} must be"):
        setattr(la, setting, -1.0)


# -- an overflow is named as one, not as "use a larger prior_precision" ------------------


def _regression(n=12):
    rng = np.random.default_rng(4)
    model = fh.Chain.mlp([2, 4, 1], "relu")
    return model, model.init(4), rng.normal(size=(n, 2)), rng.normal(size=n)


@pytest.mark.parametrize("setting, value, formula", [
    ("sigma_noise", 1e-160, r"1/\(2·sigma_noise²·temperature\)"),
    ("temperature", 1e-310, r"1/\(2·sigma_noise²·temperature\)"),
])
def test_a_likelihood_factor_that_overflows_is_refused_where_it_is_set(setting, value, formula):
    model, theta, X, y = _regression()
    with pytest.raises(InputError, match=rf"likelihood factor {formula} overflows float64 at .*{setting}={value:.6g}"):
        fh.Laplace(model, theta, "regression", backend="jax", **{setting: value})
    la = fh.Laplace(model, theta, "regression", backend="jax").fit(X, y)
    with pytest.raises(InputError, match="overflows float64"):
        setattr(la, setting, value)
    assert getattr(la, setting) == 1.0
    if setting == "sigma_noise":
        with pytest.raises(InputError, match=r"likelihood factor .* overflows float64 at sigma_noise=1e-160"):
            la.log_marginal_likelihood(sigma_noise=1e-160)
    with pytest.raises(InputError, match=r"likelihood factor 1/temperature overflows float64 at sigma_noise=1, temperature=1e-310"):
        fh.Laplace(MODEL, MODEL.init(), temperature=1e-310, backend="jax")


def test_a_factor_times_curvature_that_overflows_is_named():
    model, theta, X, y = _regression()
    la = fh.Laplace(model, theta, "regression", sigma_noise=1e-154, backend="jax").fit(X, y)  # factor 5e307, finite
    for call in (la.log_marginal_likelihood, lambda: la.predictive(X), lambda: la.sample(2)):
        with pytest.raises(InputError, match=r"posterior precision overflows float64: the likelihood factor 5e\+307 "
                                             r"\(sigma_noise=1e-154, temperature=1\) times a curvature"):
            call()


def test_parameters_far_out_of_scale_are_named_not_the_prior():
    """θ ~ 1e60 in a relu network: a finite curvature ~1e120 beside which the prior 1 is rounding."""
    model, theta, X, y = _regression()
    la = fh.Laplace(model, theta * 1e60, "regression", backend="jax").fit(X, y)
    with pytest.raises(InputError, match=r"not positive definite.*curvature's entries reach \d.*e\+1\d\d .*largest \|θ\| = "
                                         r"\d.*e\+\d\d\), so a prior precision of 1 is below its rounding error.*far out of scale"):
        la.log_marginal_likelihood()


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # NumPy's own word on the overflow, in the backend
def test_parameters_whose_network_overflows_are_refused_at_fit():
    model, theta, X, y = _regression()
    la = fh.Laplace(model, theta * 1e160, "regression", backend="jax")
    with pytest.raises(FluxHessError, match=r"non-finite values .* overflowed at these parameters|not finite.*largest \|θ\|"):
        la.fit(X, y)
    assert not la.fitted


def test_a_noise_whose_square_overflows_is_refused():
    model, theta, X, y = _regression()
    la = fh.Laplace(model, theta, "regression", backend="jax").fit(X, y)
    with pytest.raises(InputError, match=r"sigma_noise=1e\+200 is too large: its square \(the noise variance\) overflows"):
        la.sigma_noise = 1e200
    with pytest.raises(InputError, match=r"sigma_noise=1e\+200 is too large"):
        la.log_marginal_likelihood(sigma_noise=1e200)
    assert np.isfinite(float(la.log_marginal_likelihood(sigma_noise=1e150)))  # c = 5e-301: the prior alone, finite
