"""Flux models as their users write them: N-d inputs, anonymous layers, Laplace, weights from Julia.

The Julia tests take the ``julia`` fixture and are skipped, with the reason, where no
Julia runtime is found; the message tests at the end run everywhere.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

import fluxhess as fh
from fluxhess._backends import REGISTRY
from fluxhess.errors import JuliaUnavailableError, UnsupportedModelError
from fluxhess.flux import flux_model

#: The question this project was born from, verbatim.
SEED = "Chain(x -> reshape(x, :, size(x, 4)), Dense(2, 5), Dense(5, 1), x -> σ.(x))"
SEED_LOGITS = "Chain(x -> reshape(x, :, size(x, 4)), Dense(2, 5), Dense(5, 1))"
QUANTITIES = ("hessian", "ggn", "empirical_fisher", "gradient")
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def julia():
    reason = fh.backends()["julia"]
    if reason is not None:
        pytest.skip(f"julia backend unavailable: {reason}")
    return REGISTRY["julia"].julia()


def _data(shape, n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)), (rng.random(n) > 0.5).astype(float)


# --- N-d inputs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "source, flat_source, shape",
    [
        # 4-d: (N, 3, 2, 2) is Julia's (2, 2, 3, N); Flux.flatten takes it back to C order.
        ("Chain(Flux.flatten, Dense(12 => 4, tanh), Dense(4 => 1))", "Chain(Dense(12 => 4, tanh), Dense(4 => 1))", (3, 2, 2)),
        # 3-d: Julia's dims = 1 is NumPy's last axis, so this sums X over axis 2.
        ("Chain(x -> dropdims(sum(x; dims = 1); dims = 1), Dense(3 => 4, tanh), Dense(4 => 1))",
         "Chain(Dense(3 => 4, tanh), Dense(4 => 1))", (3, 5)),
    ],
    ids=["4d-flatten", "3d-sum-over-last-numpy-axis"],
)
def test_nd_inputs_reach_flux_with_dimensions_reversed(julia, source, flat_source, shape):
    model, flat = flux_model(source), flux_model(flat_source)
    X, y = _data(shape)
    X2 = X.reshape(len(X), -1) if len(shape) == 3 else X.sum(axis=2)
    theta = model.params
    assert np.array_equal(theta, flat.params)  # the same seed builds the same Dense weights
    kw = dict(loss="logitbinarycrossentropy", backend="julia")
    np.testing.assert_allclose(fh.forward(model, theta, X, backend="julia"), fh.forward(flat, theta, X2, backend="julia"), **TOL)
    for q in QUANTITIES:
        np.testing.assert_allclose(getattr(fh, q)(model, theta, X, y, **kw), getattr(fh, q)(flat, theta, X2, y, **kw), **TOL)
    np.testing.assert_allclose(fh.param_jacobian(model, theta, X, backend="julia"),
                               fh.param_jacobian(flat, theta, X2, backend="julia"), **TOL)


def test_nd_input_derivatives_are_per_flattened_sample(julia):
    model = flux_model("Chain(Flux.flatten, Dense(6 => 4, tanh), Dense(4 => 2))")
    spec, theta = model.to_spec()
    X, _ = _data((3, 2))
    for q in ("input_jacobian", "input_hessian", "laplacian"):
        got = getattr(fh, q)(model, theta, X, backend="julia")
        np.testing.assert_allclose(got, getattr(fh, q)(spec, theta, X.reshape(len(X), -1), backend="jax"), **TOL)


def test_a_spec_chain_refuses_nd_data_and_says_how(julia):
    with pytest.raises(fh.InputError, match=r"2-D \(N, d\).*Flatten"):
        fh.forward(fh.Chain(fh.Dense(6, 1)), np.zeros(7), np.zeros((4, 3, 2)), backend="jax")


# --- the seed's model, checked by JAX -------------------------------------------


def test_the_seed_model_verbatim_agrees_with_its_jax_twin(julia):
    m = flux_model(SEED)
    spec, theta = m.to_spec()
    assert [type(l).__name__ for l in spec.layers] == ["Flatten", "Dense", "Dense", "Activation"]
    assert spec.layers[-1].name == "sigmoid"
    X, y = _data((2, 1, 1))
    kw = dict(loss="crossentropy")
    for q in ("hessian", "ggn", "empirical_fisher"):
        np.testing.assert_allclose(getattr(fh, q)(m, theta, X, y, backend="julia", **kw),
                                   getattr(fh, q)(spec, theta, X, y, backend="jax", **kw), rtol=0, atol=1e-10)


# --- anonymous layers ---------------------------------------------------------------

IDENTIFIED = {
    "x -> relu.(x)": "relu", "x -> max.(x, 0)": "relu", "x -> tanh.(x)": "tanh", "x -> σ.(x)": "sigmoid",
    "x -> 1 ./ (1 .+ exp.(-x))": "sigmoid", "x -> softplus.(x)": "softplus", "x -> elu.(x)": "elu",
    "x -> leakyrelu.(x)": "leakyrelu", "x -> x .* σ.(x)": "swish", "x -> gelu.(x)": "gelu", "x -> x": "identity",
    "Base.Fix1(broadcast, x -> tanh(x))": "tanh", "x -> softmax(x)": "softmax", "x -> logsoftmax(x; dims = 1)": "logsoftmax",
}


@pytest.mark.parametrize("function, name", IDENTIFIED.items(), ids=list(IDENTIFIED.values()))
def test_an_anonymous_layer_is_identified_by_what_it_does(julia, function, name):
    spec, theta = flux_model(f"Chain(Dense(3 => 4), {function})").to_spec()
    assert spec.layers[1] == fh.Activation(name)


@pytest.mark.parametrize("activation, name", [("x -> tanh(x)", "tanh"), ("x -> max(x, 0)", "relu")])
def test_an_anonymous_dense_activation_is_identified(julia, activation, name):
    spec, _ = flux_model(f"Chain(Dense(3 => 4, {activation}), Dense(4 => 1))").to_spec()
    assert spec.layers[0].activation == name


@pytest.mark.parametrize(
    "function",
    ["x -> reshape(x, :, size(x, 4))", "x -> reshape(x, :, size(x, ndims(x)))", "x -> reshape(x, :, last(size(x)))"],
)
def test_a_reshape_lambda_is_a_flatten(julia, function):
    spec, _ = flux_model(f"Chain({function}, Dense(24 => 1))").to_spec()
    assert spec.layers[0] == fh.Flatten()


@pytest.mark.parametrize(
    "function",
    ["x -> relu6.(x)", "x -> clamp.(tanh.(x), -0.99, 0.99)", "x -> 2 .* σ.(x)", "x -> clamp.(x, -10, 10)",
     "x -> leakyrelu.(x, 0.2)", "x -> reshape(permutedims(x, (2, 1, 3, 4)), :, size(x, 4))"],
    ids=["relu6", "clipped-tanh", "scaled-sigmoid", "clip-at-10", "leakyrelu-0.2", "permuted-flatten"],
)
def test_a_near_miss_is_refused_naming_the_layer(julia, function):
    with pytest.raises(UnsupportedModelError, match=r"layer 2 .*cannot be identified"):
        flux_model(f"Chain(Dense(3 => 4), {function})").to_spec()


def test_the_flatten_probe_uses_the_input_shape_when_given(julia):
    m = flux_model("Chain(x -> reshape(x, 2, :), Dense(2 => 1))")  # a flatten only for samples of 2 values
    with pytest.raises(UnsupportedModelError, match="cannot be identified"):
        m.to_spec()
    spec, _ = m.to_spec(input_shape=(2, 1, 1))
    assert spec.layers[0] == fh.Flatten()


# --- Laplace on a Flux model ---------------------------------------------------------


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_laplace_on_a_flux_model_equals_laplace_on_its_spec_twin(julia, structure, subset):
    m = flux_model(SEED_LOGITS)
    spec, theta = m.to_spec()
    X, y = _data((2, 1, 1), n=30)
    X_test, _ = _data((2, 1, 1), n=5, seed=1)
    las = [fh.Laplace(model, theta, "classification", structure=structure, subset=subset, backend=backend).fit(X, y)
           for model, backend in ((m, "julia"), (spec, "jax"))]
    a, b = las
    assert a.subset == b.subset
    assert float(a.log_marginal_likelihood()) == pytest.approx(float(b.log_marginal_likelihood()), rel=1e-8)
    with warnings.catch_warnings():  # L-BFGS may stop at round-off (ABNORMAL) at the optimum; both are compared
        warnings.simplefilter("ignore", fh.ConvergenceWarning)
        for la in las:
            la.optimize_prior_precision(method="marglik")
    np.testing.assert_allclose(a.prior_precision, b.prior_precision, rtol=1e-6)  # the optimiser's own tolerance
    a.prior_precision = b.prior_precision
    np.testing.assert_allclose(a.posterior_precision, b.posterior_precision, rtol=1e-8, atol=1e-10)
    assert float(a.log_marginal_likelihood()) == pytest.approx(float(b.log_marginal_likelihood()), rel=1e-8)
    for kw in (dict(), dict(pred_type="nn", n_samples=20)):
        pa, pb = a.predictive(X_test, **kw), b.predictive(X_test, **kw)
        np.testing.assert_allclose(pa.mean, pb.mean, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(pa.function_variance, pb.function_variance, rtol=1e-8, atol=1e-12)


def test_laplace_refuses_the_seed_model_with_its_final_sigmoid(julia):
    with pytest.raises(fh.InputError, match="outputs logits.*sigmoid"):
        fh.Laplace(flux_model(SEED), flux_model(SEED).params, "classification")


CONV = "Chain(Conv((3, 3), 1 => 2, tanh), Flux.flatten, Dense(8 => 3))"


def test_laplace_last_layer_of_a_conv_model_equals_laplace_on_its_features(julia, tmp_path):
    """The last-layer Laplace of a Conv model is that of its last Dense layer on the features
    Flux itself computes (outside fluxhess), as a spec Chain on the jax backend."""
    from juliacall import Main as jl

    m = flux_model(CONV)
    theta = m.params
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(25, 1, 4, 4)), rng.integers(0, 3, 25)  # NCHW 1×4×4 → Flux 4×4×1×N
    la = fh.Laplace(m, theta, "classification", subset="last_layer", backend="julia").fit(X, y)
    assert la.subset == ["layers.2.weight", "layers.2.bias"]
    head = jl.seval("""(θ, X) -> begin
        F = FluxHess.Flux
        m = F.f64(F.Chain(F.Conv((3, 3), 1 => 2, tanh), F.flatten))
        m[1].weight .= reshape(θ[1:18], 3, 3, 1, 2); m[1].bias .= θ[19:20]
        permutedims(m(permutedims(Array{Float64}(X), (4, 3, 2, 1))))
    end""")
    features = np.asarray(head(theta, X))
    twin = fh.Laplace(fh.Chain(fh.Dense(8, 3)), theta[20:], "classification", backend="jax").fit(features, y)
    np.testing.assert_allclose(la.posterior_precision, twin.posterior_precision, rtol=1e-9, atol=1e-11)
    assert float(la.log_marginal_likelihood()) == pytest.approx(float(twin.log_marginal_likelihood()), rel=1e-9)
    np.testing.assert_allclose(la.predictive(X[:4]).mean, twin.predictive(features[:4]).mean, rtol=1e-9)
    path = tmp_path / "conv.npz"
    la.save(path)
    with pytest.raises(fh.InputError, match="holds its Flux model as Julia source code"):
        fh.Laplace.load(path)  # the model is Julia code: not run unless trusted
    again = fh.Laplace.load(path, trust_source=True)  # this test wrote the file
    np.testing.assert_allclose(again.predictive(X[:4]).mean, la.predictive(X[:4]).mean, rtol=1e-12)


# --- weights from Julia ---------------------------------------------------------------


def test_weights_saved_by_flux_come_back_as_params(julia, tmp_path):
    from juliacall import Main as jl

    state = tmp_path / "state.jls"
    jl.seval("import Serialization")
    trained = jl.seval("""path -> begin
        F = FluxHess.Flux
        model = F.Chain(F.Dense(2 => 5, tanh), F.Dense(5 => 1))   # Float32, as Flux trains by default
        model[1].weight .= reshape(1:10, 5, 2) ./ 10; model[2].bias .= [0.5]
        Serialization.serialize(path, F.state(model))
        Float64.(F.destructure(model)[1])
    end""")
    expected = np.asarray(trained(str(state)))
    m = flux_model(f"""
        using Serialization
        model = Chain(Dense(2 => 5, tanh), Dense(5 => 1))
        Flux.loadmodel!(model, deserialize({json.dumps(str(state))}))
    """)
    np.testing.assert_array_equal(m.params, expected)
    np.testing.assert_array_equal(m.params[:10], np.arange(1, 11, dtype=np.float32) / np.float32(10))


# --- without Julia ----------------------------------------------------------------------


@pytest.fixture
def no_julia(monkeypatch):
    """As on a machine without Julia: no runtime found, none started in this process."""
    julia_backend = REGISTRY["julia"]
    julia_module = sys.modules[type(julia_backend).__module__]
    monkeypatch.setattr(julia_module, "find_runtime", lambda: (None, "no Julia runtime found"))
    monkeypatch.setattr(julia_backend, "_fh", None)
    monkeypatch.setattr(julia_backend, "_failure", None)
    monkeypatch.setattr(julia_backend, "_models", {})


@pytest.mark.parametrize("backend", ["auto", "jax"])
def test_without_julia_a_flux_model_says_first_that_julia_is_missing(no_julia, backend):
    with pytest.raises(JuliaUnavailableError, match=r"^FluxModel is a Flux model, which runs only in Julia, and Julia is unavailable here: no Julia runtime found.*setup-julia"):
        fh.hessian(flux_model(SEED), np.zeros(21), np.zeros((3, 2, 1, 1)), np.zeros(3), backend=backend)


def test_without_julia_params_and_to_spec_say_julia_is_missing(no_julia):
    m = flux_model(SEED)
    for use in (lambda: m.params, m.to_spec, lambda: m.layout):
        with pytest.raises(JuliaUnavailableError, match="setup-julia"):
            use()
