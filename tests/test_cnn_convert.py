"""from_torch and from_flax on convolutional networks: the Chain reproduces the module, θ
follows Flux's destructure order, and what has no twin is refused by name."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fluxhess as fh

torch = pytest.importorskip("torch")
nn = torch.nn


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding="same")
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return x + torch.relu(self.bn(self.conv(x)))


class TwoBranches(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Conv2d(c, c, 1)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.Tanh())

    def forward(self, x):
        return self.a(x) + self.b(x)


def _randomise_norms(net):
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return net.eval()


def _net():
    torch.manual_seed(0)
    return _randomise_norms(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), Residual(4), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 2, groups=2, padding="same"), TwoBranches(4), nn.AvgPool2d(2, padding=1),
        nn.Dropout(0.3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 6),
        nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3),
    ).double())


def test_from_torch_maps_a_residual_cnn():
    net = _net()
    model, theta = fh.from_torch(net, input_shape=(1, 8, 8))
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds == [
        "CrossCor", "Activation", "SkipConnection", "MaxPool", "Conv", "Parallel", "MeanPool", "Dropout",
        "GlobalMeanPool", "Flatten", "LayerNorm", "Dense", "BatchNorm", "Activation", "Dense",
    ]
    # θ is the parameters in forward order, each PyTorch array read in C order (Linear: column-major),
    # a grouped conv's kernel flipped (it became Flux's Conv), BatchNorm's β before γ.
    expected = []
    for name, p in net.named_parameters():
        a = p.detach().numpy()
        if name.startswith("4."):  # the grouped conv
            a = np.flip(a, axis=(2, 3)) if a.ndim == 4 else a
        if a.ndim == 2:
            a = a.T
        expected.append(np.ascontiguousarray(a).ravel())
    bn_pairs = {"2.bn", "12"}  # torch lists weight (γ) then bias (β); Flux holds β then γ
    names = [n for n, _ in net.named_parameters()]
    for k, n in enumerate(names):
        if n.rsplit(".", 1)[0] in bn_pairs and n.endswith("weight"):
            expected[k], expected[k + 1] = expected[k + 1], expected[k]
    np.testing.assert_array_equal(theta, np.concatenate(expected))
    X = np.random.default_rng(0).normal(size=(5, 1, 8, 8))
    np.testing.assert_allclose(fh.forward(model, theta, X, backend="jax"), net(torch.tensor(X)).detach().numpy(), rtol=1e-12, atol=1e-13)


def test_from_torch_conv1d_and_float32_module():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv1d(2, 3, 3, stride=2, dilation=2, padding=2), nn.Sigmoid(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(9, 2))
    model, theta = fh.from_torch(net, input_shape=(2, 12))
    assert model.layers[0] == fh.CrossCor((3,), 2, 3, stride=2, dilation=2, padding=2)
    X = np.random.default_rng(1).normal(size=(4, 2, 12))
    expected = net(torch.tensor(X, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(fh.forward(model, theta, X, backend="jax"), expected, rtol=1e-5, atol=1e-6)


def test_torch_same_padding_puts_the_larger_half_last():
    net = nn.Sequential(nn.Conv2d(1, 1, (4, 2), padding="same"), nn.Flatten()).double()
    model, _ = fh.from_torch(net, input_shape=(1, 5, 5))
    assert model.layers[0].padding == ((1, 2), (0, 1))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), "needs input_shape"),
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect"), nn.Flatten()), "zero padding"),
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten()), "ceil_mode"),
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2, padding=1, count_include_pad=False), nn.Flatten()), "count_include_pad"),
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten()), "training mode"),
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LayerNorm(18, bias=False)), "no bias"),
    ],
    ids=["no-input-shape", "reflect", "ceil", "count-pad", "bn-train", "ln-no-bias"],
)
def test_from_torch_refuses_what_has_no_twin(make, match):
    net = make()
    kwargs = {} if match == "needs input_shape" else {"input_shape": (1, 6, 6)}
    with pytest.raises((fh.UnsupportedModelError, fh.InputError), match=match):
        fh.from_torch(net, **kwargs)


def test_from_torch_refuses_a_module_that_mixes_more_than_it_maps():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return x * self.conv(x)

    with pytest.raises(fh.UnsupportedModelError, match="takes 2 tensors"):
        fh.from_torch(nn.Sequential(Gate(), nn.Flatten()), input_shape=(1, 4, 4))


# --- Flax ----------------------------------------------------------------------


def _flax_cnn():
    nn = pytest.importorskip("flax.linen")

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), padding="SAME")(x)
            x = nn.BatchNorm(use_running_average=True)(x)
            x = nn.relu(x)
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            x = nn.Conv(6, (3, 2), padding="VALID", feature_group_count=2)(x)
            x = nn.tanh(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            x = nn.Dense(5)(x)
            x = nn.LayerNorm()(x)
            return nn.Dense(3)(nn.tanh(x))

    return CNN()


def test_from_flax_maps_a_cnn_with_nhwc_turned_nchw():
    import jax
    import jax.numpy as jnp

    module = _flax_cnn()
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        v = module.init(jax.random.PRNGKey(0), jnp.ones((1, 10, 9, 2)))
        stats = {k: {"mean": jnp.asarray(rng.normal(size=4)), "var": jnp.asarray(rng.uniform(0.5, 2, 4))} for k in v["batch_stats"]}
        variables = {"params": v["params"], "batch_stats": stats}
        as_function, _ = fh.from_flax(module, variables, input_shape=(10, 9, 2))  # Flax's own layout by default
        model, theta = fh.from_flax(module, variables, input_shape=(10, 9, 2), channels_first=True)
        X = rng.normal(size=(4, 10, 9, 2))
        expected = np.asarray(module.apply(variables, jnp.asarray(X)))
    assert as_function.model_kind == "jax_function" and "channels_first=True" in as_function.why_not_chain
    assert model.input_shape == (2, 10, 9)
    assert [type(l).__name__ for l in model.layers] == [
        "CrossCor", "BatchNorm", "Activation", "MeanPool", "Conv", "Activation", "MaxPool", "Flatten",
        "Dense", "LayerNorm", "Activation", "Dense",
    ]
    kernel = np.asarray(v["params"]["Conv_0"]["kernel"])  # (k_h, k_w, cin, cout) → Flux's (k_w, k_h, cin, cout)
    np.testing.assert_array_equal(model.unflatten(theta)["layers.0.weight"], kernel.transpose(1, 0, 2, 3))
    np.testing.assert_allclose(fh.forward(model, theta, X.transpose(0, 3, 1, 2), backend="jax"), expected, rtol=1e-12, atol=1e-13)


def test_from_flax_maps_a_residual_add_to_a_jax_function_naming_the_layers():
    """A Flax residual add has no Chain mapping: from_flax gives a JaxFunction (the same
    function of the params), and says which layers stopped the Chain."""
    import jax
    import jax.numpy as jnp

    nn = pytest.importorskip("flax.linen")

    class Res(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(2, (3, 3), padding="SAME")(x)
            x = x + nn.Conv(2, (3, 3), padding="SAME")(x)
            return nn.Dense(1)(x.reshape((x.shape[0], -1)))

    with jax.enable_x64(True):
        v = Res().init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 2)))
        model, theta = fh.from_flax(Res(), v, input_shape=(4, 4, 2), channels_first=True)
        X = np.random.default_rng(0).normal(size=(3, 4, 4, 2))
        expected = np.asarray(Res().apply(v, jnp.asarray(X)))
    assert model.model_kind == "jax_function"
    assert re.search("between Conv_1 .*Residual adds", model.why_not_chain, re.S)
    np.testing.assert_allclose(fh.forward(model, theta, X.reshape(3, -1), backend="jax"), expected, rtol=1e-12)
