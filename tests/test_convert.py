"""from_flax / from_torch / Flux to_spec: same outputs and input Hessians as the original framework."""

from typing import Callable, Sequence

import numpy as np
import pytest

import fluxhess as fh
from conftest import assert_close

# ---------------------------------------------------------------------------
# Flax
# ---------------------------------------------------------------------------

flax_nn = pytest.importorskip("flax.linen", reason="flax is not installed (pip install 'fluxhess[flax]')")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


class MLP(flax_nn.Module):
    """The seed questions' MLP: ``act`` between Dense layers, ``out`` after the last one."""

    features: Sequence[int]
    act: Callable = flax_nn.tanh
    out: Callable | None = None
    use_bias: bool = True

    @flax_nn.compact
    def __call__(self, x):
        for feat in self.features[:-1]:
            x = self.act(flax_nn.Dense(feat, use_bias=self.use_bias, param_dtype=jnp.float64)(x))
        x = flax_nn.Dense(self.features[-1], param_dtype=jnp.float64)(x)
        return x if self.out is None else self.out(x)


def _flax(module, d, seed=0):
    with jax.enable_x64(True):
        variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, d)))
    X = np.random.default_rng(seed).normal(size=(7, d))
    return variables, X


FLAX_ACTIVATIONS = {  # flax function -> the NNlib activation with the same formula
    "tanh": (flax_nn.tanh, "tanh"),
    "relu": (flax_nn.relu, "relu"),
    "sigmoid": (flax_nn.sigmoid, "sigmoid"),
    "softplus": (flax_nn.softplus, "softplus"),
    "elu": (flax_nn.elu, "elu"),
    "leaky_relu": (flax_nn.leaky_relu, "leakyrelu"),
    "silu": (flax_nn.silu, "swish"),
    "gelu-tanh": (flax_nn.gelu, "gelu"),
}


@pytest.mark.parametrize("name", list(FLAX_ACTIVATIONS))
def test_from_flax_maps_each_activation_and_reproduces_the_output(name, backend):
    act, expected = FLAX_ACTIVATIONS[name]
    module = MLP([6, 5, 2], act)
    variables, X = _flax(module, 3)
    model, theta = fh.from_flax(module, variables)
    assert [l.activation for _, l in model.dense_layers] == [expected, expected, "identity"]
    with jax.enable_x64(True):
        expected_out = np.asarray(module.apply(variables, X))
    assert_close(fh.forward(model, theta, X, backend=backend), expected_out, rtol=1e-12, atol=1e-12, what=f"forward ({name})")


def test_from_flax_seed_mlp_forward_and_input_hessian_match_jax(backend):
    """MLP([20]*5 + [1]) on width 3: forward to 1e-12, input_hessian == vmap(jax.hessian(module.apply))."""
    module = MLP([20, 20, 20, 20, 20, 1])
    variables, X = _flax(module, 3)
    model, theta = fh.from_flax(module, variables)
    assert model.num_params == 3 * 20 + 20 + 4 * (20 * 20 + 20) + 21
    with jax.enable_x64(True):
        out = np.asarray(module.apply(variables, X))
        H = np.asarray(jax.vmap(jax.hessian(lambda x: module.apply(variables, x)))(jnp.asarray(X)))
    assert_close(fh.forward(model, theta, X, backend=backend), out, rtol=1e-12, atol=1e-12, what="forward")
    assert_close(fh.input_hessian(model, theta, X, backend=backend), H, rtol=1e-10, atol=1e-12, what="input_hessian")


def test_from_flax_weights_are_kernels_transposed():
    module = MLP([4, 2], use_bias=False)
    variables, _ = _flax(module, 3)
    model, theta = fh.from_flax(module, variables)
    arrays = model.unflatten(theta)
    params = variables["params"]
    np.testing.assert_array_equal(arrays["layers.0.weight"], np.asarray(params["Dense_0"]["kernel"]).T)
    np.testing.assert_array_equal(arrays["layers.1.weight"], np.asarray(params["Dense_1"]["kernel"]).T)
    assert not model.layers[0].bias and model.layers[1].bias


@pytest.mark.parametrize("out, name", [(flax_nn.softmax, "softmax"), (flax_nn.log_softmax, "logsoftmax")])
def test_from_flax_output_softmax_becomes_an_activation_layer(out, name):
    module = MLP([5, 3], out=out)
    variables, X = _flax(module, 2)
    model, theta = fh.from_flax(module, variables)
    assert model.layers[-1] == fh.Activation(name)
    with jax.enable_x64(True):
        expected = np.asarray(module.apply(variables, X))
    assert_close(fh.forward(model, theta, X, backend="jax"), expected, rtol=1e-12, atol=1e-12, what=name)


def test_from_flax_flattens_image_like_inputs():
    class Flat(flax_nn.Module):
        @flax_nn.compact
        def __call__(self, x):
            x = x.reshape((x.shape[0], -1))
            return flax_nn.Dense(2, param_dtype=jnp.float64)(flax_nn.tanh(flax_nn.Dense(4, param_dtype=jnp.float64)(x)))

    module = Flat()
    with jax.enable_x64(True):
        variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 3)))
        X = np.random.default_rng(1).normal(size=(5, 2, 3))
        expected = np.asarray(module.apply(variables, X))
    model, theta = fh.from_flax(module, variables, input_shape=(2, 3))
    assert isinstance(model.layers[0], fh.Flatten)
    assert_close(fh.forward(model, theta, X, backend="jax"), expected, rtol=1e-12, atol=1e-12, what="flatten")


class _WithLayerNorm(flax_nn.Module):
    @flax_nn.compact
    def __call__(self, x):
        return flax_nn.Dense(2)(flax_nn.LayerNorm()(flax_nn.Dense(4)(x)))


class _Residual(flax_nn.Module):
    @flax_nn.compact
    def __call__(self, x):
        h = flax_nn.tanh(flax_nn.Dense(3)(x))
        return flax_nn.Dense(3)(h) + h


@pytest.mark.parametrize(
    "module, match",
    [
        (MLP([4, 1], act=lambda x: flax_nn.gelu(x, approximate=False)), "output of layer Dense_0"),
        (MLP([4, 1], act=flax_nn.selu), "matches none of the activations"),
        (MLP([4, 1], act=lambda x: flax_nn.leaky_relu(x, 0.2)), "Dense_0"),
        (_WithLayerNorm(), "LayerNorm_0"),
        (_Residual(), "Dense_1"),
    ],
    ids=["exact-gelu", "selu", "leaky-0.2", "layernorm", "residual"],
)
def test_from_flax_names_what_it_cannot_map(module, match):
    variables, _ = _flax(module, 3)
    with pytest.raises(fh.UnsupportedModelError, match=match):
        fh.from_flax(module, variables)


def test_from_flax_rejects_bad_arguments():
    module = MLP([4, 1])
    variables, _ = _flax(module, 3)
    with pytest.raises(fh.InputError, match="'params' entry"):
        fh.from_flax(module, variables["params"])
    with pytest.raises(fh.UnsupportedModelError, match="flax.linen Module"):
        fh.from_flax(object(), variables)


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0, a CPU wheel)")


def _torch_cases(nn):
    """Each mappable torch activation module and the NNlib activation with its formula."""
    return [
        (nn.Tanh(), "tanh"),
        (nn.ReLU(), "relu"),
        (nn.Sigmoid(), "sigmoid"),
        (nn.SiLU(), "swish"),
        (nn.GELU(approximate="tanh"), "gelu"),
        (nn.LeakyReLU(), "leakyrelu"),
        (nn.ELU(), "elu"),
        (nn.Softplus(threshold=float("inf")), "softplus"),
        (nn.Identity(), "identity"),
    ]


def _torch_reference(net, X):
    """``net(X)`` and ``vmap(hessian(net))(X)`` ``(N, C, d, d)`` from torch in float64."""
    import torch
    from torch.func import hessian, vmap

    x = torch.as_tensor(X, dtype=torch.float64)
    with torch.no_grad():
        out = net(x).numpy()
    return out, vmap(hessian(net))(x).detach().numpy()


def test_from_torch_maps_each_activation_forward_and_input_hessian(backend):
    torch = _torch()
    nn = torch.nn
    X = np.random.default_rng(0).normal(size=(6, 3))
    for act, name in _torch_cases(nn):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 5), act, nn.Linear(5, 2)).double()
        model, theta = fh.from_torch(net)
        assert model.layers[1] == fh.Activation(name)
        out, H = _torch_reference(net, X)
        assert_close(fh.forward(model, theta, X, backend=backend), out, rtol=1e-12, atol=1e-12, what=f"forward ({name})")
        assert_close(fh.input_hessian(model, theta, X, backend=backend), H, rtol=1e-9, atol=1e-12, what=f"input_hessian ({name})")


def test_from_torch_pinn_and_softmax_output(backend):
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8, bias=False), nn.GELU(approximate="tanh"),
                        nn.Linear(8, 3), nn.Softmax(dim=-1)).double()
    model, theta = fh.from_torch(net)
    X = np.random.default_rng(2).normal(size=(5, 2))
    out, H = _torch_reference(net, X)
    assert_close(fh.forward(model, theta, X, backend=backend), out, rtol=1e-12, atol=1e-12, what="forward")
    assert_close(fh.input_hessian(model, theta, X, backend=backend), H, rtol=1e-9, atol=1e-12, what="input_hessian")


def test_from_torch_blocks_are_named_like_the_state_dict():
    torch = _torch()
    nn = torch.nn
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    model, theta = fh.from_torch(net)
    arrays = model.unflatten(theta)
    state = {k: v.double().numpy() for k, v in net.state_dict().items()}
    assert sorted(arrays) == sorted(f"layers.{k}" for k in state)
    for key, value in state.items():
        np.testing.assert_array_equal(arrays[f"layers.{key}"], value)


def test_from_torch_flatten_first():
    torch = _torch()
    nn = torch.nn
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).double()
    model, theta = fh.from_torch(net)
    X = np.random.default_rng(0).normal(size=(4, 2, 3))
    with torch.no_grad():
        expected = net(torch.as_tensor(X)).numpy()
    assert_close(fh.forward(model, theta, X, backend="jax"), expected, rtol=1e-12, atol=1e-12, what="flatten")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda nn: nn.GELU(), "exact \\(erf\\) gelu"),
        (lambda nn: nn.LeakyReLU(0.2), "slope 0.2"),
        (lambda nn: nn.ELU(alpha=0.5), "alpha=0.5"),
        (lambda nn: nn.Softplus(), "threshold"),
        (lambda nn: nn.Softmax(dim=0), "dim=0"),
        (lambda nn: nn.BatchNorm1d(4), "BatchNorm1d"),
        (lambda nn: nn.Sequential(nn.Tanh()), "Sequential"),
    ],
    ids=["gelu-exact", "leaky-0.2", "elu-0.5", "softplus-threshold", "softmax-dim0", "batchnorm", "nested"],
)
def test_from_torch_names_the_layer_it_cannot_map(make, match):
    torch = _torch()
    nn = torch.nn
    net = nn.Sequential(nn.Linear(3, 4), make(nn), nn.Linear(4, 1))
    with pytest.raises(fh.UnsupportedModelError, match=f"layer 1 .*{match}"):
        fh.from_torch(net)


def test_from_torch_rejects_a_module_that_is_not_sequential():
    torch = _torch()
    with pytest.raises(fh.UnsupportedModelError, match="torch.nn.Sequential"):
        fh.from_torch(torch.nn.Linear(3, 1))


# ---------------------------------------------------------------------------
# Flux source
# ---------------------------------------------------------------------------


def test_flux_source_to_spec_runs_the_same_on_jax():
    reason = fh.backends()["julia"]
    if reason is not None:
        pytest.skip(f"julia backend unavailable: {reason}")
    from fluxhess.flux import flux_model

    flux = flux_model("Chain(Dense(3 => 4, tanh), Dense(4 => 2))")
    model, theta = flux.to_spec()
    X = np.random.default_rng(0).normal(size=(5, 3))
    assert_close(fh.forward(model, theta, X, backend="jax"), fh.forward(flux, theta, X, backend="julia"),
                 rtol=1e-12, atol=1e-12, what="forward")
    assert_close(fh.input_hessian(model, theta, X, backend="jax"), fh.input_hessian(flux, theta, X, backend="julia"),
                 rtol=1e-10, atol=1e-12, what="input_hessian")
