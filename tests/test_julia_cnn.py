"""Flux CNNs written as Flux source: their spec twin (``FluxModel.to_spec``) on the JAX backend
against the Flux model itself on the julia backend, on the same θ.

Skipped, with the reason, when no Julia runtime is found (``fluxhess.backends()``). Each
model is small (P of a few hundred, N = 8) but for the model-zoo LeNet-5 (P = 44426), of
which the forward pass, the gradient and the parameter Jacobian are compared.
"""

from __future__ import annotations

import numpy as np
import pytest

import fluxhess as fh
from fluxhess.errors import UnsupportedModelError
from fluxhess.flux import flux_model

RTOL = 1e-12
N = 8

#: name -> (Flux source, one sample's shape in NumPy order, loss, the spec's layer names).
CASES = {
    "lenet-small": (
        ("Chain(Conv((3, 3), 1 => 2, relu), MaxPool((2, 2)), Conv((3, 3), 2 => 3, relu), MaxPool((2, 2)), "
         "Flux.flatten, Dense(12 => 8, relu), Dense(8 => 6, relu), Dense(6 => 3))"),
        (1, 14, 14), "logitcrossentropy",
        ["Conv", "MaxPool", "Conv", "MaxPool", "Flatten", "Dense", "Dense", "Dense"],
    ),
    # curved activations on the julia backend's convolutional route (each adds its own
    # Hessian term there), against the JAX backend's generic Hessian
    "curved": (
        ("Chain(Conv((3, 3), 1 => 3, sigmoid; pad = 1), MeanPool((2, 2)), Conv((2, 2), 3 => 4, softplus), "
         "Flux.flatten, Dense(16 => 5, tanh), Dense(5 => 3))"),
        (1, 6, 6), "mse",
        ["Conv", "MeanPool", "Conv", "Flatten", "Dense", "Dense"],
    ),
    "conv1d": (
        ("Chain(Conv((3,), 2 => 4, tanh; pad = 1, stride = 2), CrossCor((2,), 4 => 2, swish; dilation = 2), "
         "x -> reshape(x, :, size(x, 3)), Dense(6 => 2))"),
        (2, 9), "mse",
        ["Conv", "CrossCor", "Flatten", "Dense"],
    ),
    "residual": (
        ("Chain(Conv((3, 3), 2 => 3, tanh; pad = SamePad()), "
         "SkipConnection(Chain(Conv((3, 3), 3 => 3, softplus; pad = 1), Conv((1, 1), 3 => 3)), +), "
         "GlobalMeanPool(), Flux.flatten, Dense(3 => 2))"),
        (2, 5, 4), "logitcrossentropy",
        ["Conv", "SkipConnection", "GlobalMeanPool", "Flatten", "Dense"],
    ),
    "parallel": (
        ("Chain(CrossCor((2, 2), 1 => 2, elu), Parallel(+, identity, Conv((3, 3), 2 => 2, tanh; pad = SamePad()), "
         "Chain(Conv((1, 1), 2 => 4; groups = 2), Conv((1, 1), 4 => 2))), Flux.flatten, Dense(18 => 2))"),
        (1, 4, 4), "mse",
        ["CrossCor", "Parallel", "Flatten", "Dense"],
    ),
    "pools": (
        ("Chain(Conv((2, 3), 1 => 3, relu; stride = (2, 1)), MeanPool((2, 2); pad = (1, 0, 0, 1), stride = 1), "
         "MaxPool((2, 2); stride = (1, 2)), AdaptiveMeanPool((2, 1)), Flux.flatten, Dense(6 => 3), softmax)"),
        (1, 6, 7), "crossentropy",
        ["Conv", "MeanPool", "MaxPool", "AdaptiveMeanPool", "Flatten", "Dense", "Activation"],
    ),
    "batchnorm": (
        ("let bn = BatchNorm(3, tanh); bn.μ .= [0.3, -0.2, 0.1]; bn.σ² .= [1.5, 0.6, 2.0]; "
         "Chain(Conv((3, 3), 1 => 3; bias = false), bn, MaxPool((2, 2)), Flux.flatten, Dense(12 => 2)) end"),
        (1, 6, 6), "logitbinarycrossentropy",
        ["Conv", "BatchNorm", "MaxPool", "Flatten", "Dense"],
    ),
    "layernorm": (
        "Chain(Conv((2,), 2 => 3, tanh), LayerNorm(4, 3, relu), Flux.flatten, Dense(12 => 5), LayerNorm(5), Dense(5 => 2))",
        (2, 5), "mse",
        ["Conv", "LayerNorm", "Flatten", "Dense", "LayerNorm", "Dense"],
    ),
}

LENET5 = (
    "Chain(Conv((5, 5), 1 => 6, relu), MaxPool((2, 2)), Conv((5, 5), 6 => 16, relu), MaxPool((2, 2)), "
    "Flux.flatten, Dense(256 => 120, relu), Dense(120 => 84, relu), Dense(84 => 10))"
)


@pytest.fixture(scope="module", autouse=True)
def julia_available():
    reason = fh.backends()["julia"]
    if reason is not None:
        pytest.skip(f"julia backend unavailable: {reason}")


def _targets(rng, loss: str, C: int) -> np.ndarray:
    if loss == "mse":
        return rng.normal(size=(N, C))
    if loss in ("crossentropy", "logitcrossentropy"):
        return rng.dirichlet(np.ones(C), size=N)
    return rng.uniform(0.05, 0.95, size=(N, C))


def _close(got, want, what: str):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300)
    assert err <= RTOL, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("name", CASES)
def test_the_spec_twin_of_a_flux_cnn_computes_what_flux_does(name):
    source, shape, loss, layers = CASES[name]
    model = flux_model(source, seed=3)
    spec, theta = model.to_spec(input_shape=shape)
    assert [type(l).__name__ for l in spec.layers] == layers
    assert spec.input_shape == shape and spec.num_params == theta.size == model.num_params
    rng = np.random.default_rng(7)
    theta = theta + 0.1 * rng.normal(size=theta.shape)  # away from Flux's initial biases (zeros)
    X = rng.normal(size=(N, *shape))
    Y = _targets(rng, loss, spec.out_features)
    both = {"julia": model, "jax": spec}
    got = {b: {} for b in both}
    for backend, m in both.items():
        kw = {"loss": loss, "agg": "sum", "backend": backend}
        out = got[backend]
        out["forward"] = fh.forward(m, theta, X, backend=backend)
        out["param_jacobian"] = fh.param_jacobian(m, theta, X, backend=backend)
        for q in ("gradient", "hessian", "ggn", "empirical_fisher"):
            out[q] = getattr(fh, q)(m, theta, X, Y, **kw)
        for kind in ("hessian", "ggn", "ef"):
            out[f"diagonal_{kind}"] = fh.diagonal(m, theta, X, Y, kind=kind, **kw)
    for q, want in got["julia"].items():
        _close(got["jax"][q], want, q)


@pytest.mark.slow  # the julia backend's Jacobian of P = 44426 parameters by forward mode
def test_the_model_zoo_lenet5_on_28x28_images():
    model = flux_model(LENET5)
    spec, theta = model.to_spec(input_shape=(1, 28, 28))
    assert spec.num_params == theta.size == 44426
    assert spec.out_features == 10
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(3, 1, 28, 28)), rng.dirichlet(np.ones(10), size=3)
    for q, args in (("forward", ()), ("param_jacobian", ()), ("gradient", (Y,))):
        kw = {"loss": "logitcrossentropy"} if args else {}
        want = getattr(fh, q)(model, theta, X, *args, backend="julia", **kw)
        _close(getattr(fh, q)(spec, theta, X, *args, backend="jax", **kw), want, q)


def test_a_cnn_layout_names_its_blocks_in_theta_order():
    source, shape, *_ = CASES["batchnorm"]
    model = flux_model(source, seed=3)
    assert [s.split("(")[0] for s in model.layer_summaries[:3]] == ["Conv", "BatchNorm", "MaxPool"]
    blocks = [(b.name, b.shape, b.offset) for b in model.layout]
    assert blocks == [("layers.0.weight", (3, 3, 1, 3), 0), ("layers.1.β", (3,), 27), ("layers.1.γ", (3,), 30),
                      ("layers.4.weight", (2, 12), 33), ("layers.4.bias", (2,), 57)]
    spec, _ = model.to_spec(input_shape=shape)
    assert [(b.shape, b.offset) for b in spec.layout] == [(s, o) for _, s, o in blocks]


@pytest.mark.parametrize(
    "source, match",
    [
        ("Chain(Conv((3, 3), 1 => 2), GlobalMaxPool(), Flux.flatten)", r"layer 2 \(GlobalMaxPool\(\)\) cannot be identified"),
        ("Chain(ConvTranspose((2, 2), 1 => 1))", r"layer 1 .*ConvTranspose.*has parameters and no spec twin"),
        ("Chain(BatchNorm(2; track_stats = false))", r"layer 1 .*no running statistics"),
        ("Chain(SkipConnection(Dense(2 => 2), (a, b) -> a .+ b))", r"layer 1 .*joins its branches with"),
        ("Chain(Dense(2 => 2), Parallel(+, identity, Chain(Dense(2 => 2), Dense(2 => 2, x -> x^3))))",
         r"layer 2\.2\.2 .*has activation"),
    ],
    ids=["globalmaxpool", "convtranspose", "batchnorm-no-stats", "skip-not-plus", "nested-activation"],
)
def test_a_layer_without_a_twin_is_refused_by_name(source, match):
    with pytest.raises(UnsupportedModelError, match=match):
        flux_model(source).to_spec(input_shape=(1, 5, 5) if "Conv" in source else None)
