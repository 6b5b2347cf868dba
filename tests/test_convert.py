"""from_flax: same outputs and input Hessians as the Flax module (from_torch and Flux source: test_convert_torch.py, test_convert_flux.py)."""

import re
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


class _WithGroupNorm(flax_nn.Module):
    @flax_nn.compact
    def __call__(self, x):
        return flax_nn.Dense(2)(flax_nn.GroupNorm(num_groups=2)(flax_nn.Dense(4)(x)))


class _ClippedInput(flax_nn.Module):
    """Equal to an MLP on inputs below 50 in magnitude; not beyond."""

    @flax_nn.compact
    def __call__(self, x):
        return flax_nn.Dense(2)(flax_nn.tanh(flax_nn.Dense(4)(jnp.clip(x, -50.0, 50.0))))


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
        (_WithGroupNorm(), "GroupNorm_0"),
        (_Residual(), "Dense_1"),
        # equal to an NNlib activation on [-6, 6] but not everywhere: refused, not mapped to relu/identity
        (MLP([4, 1], act=flax_nn.relu6), "output of layer Dense_0 .* from 0 to magnitudes of 1e6"),
        (MLP([4, 1], act=lambda x: jnp.clip(x, -10.0, 10.0)), "output of layer Dense_0 .*relu6, hard_tanh, clips"),
        (MLP([4, 1], act=flax_nn.hard_tanh), "output of layer Dense_0"),
        (_ClippedInput(), "input reaches the first Dense layer .* changed"),
    ],
    ids=["exact-gelu", "selu", "leaky-0.2", "groupnorm", "residual", "relu6", "clip-10", "hard-tanh", "clipped-input"],
)
def test_from_flax_names_what_it_cannot_map(module, match):
    """A module that is no Chain comes back as a JaxFunction that says why (never a silent change of θ's order)."""
    variables, _ = _flax(module, 3)
    model, _ = fh.from_flax(module, variables)
    assert model.model_kind == "jax_function" and "JaxFunction" in repr(model)
    assert re.search(match, model.why_not_chain), model.why_not_chain


def test_from_flax_rejects_bad_arguments():
    module = MLP([4, 1])
    variables, _ = _flax(module, 3)
    with pytest.raises(fh.InputError, match="'params' entry"):
        fh.from_flax(module, variables["params"])
    with pytest.raises(fh.UnsupportedModelError, match="flax.linen Module"):
        fh.from_flax(object(), variables)


def test_from_flax_names_variables_of_another_module():
    module, other = MLP([4, 2]), MLP([5, 5, 2])
    variables, _ = _flax(other, 3)
    with pytest.raises(fh.InputError, match=r"do not belong to this module\? On width 3 .*params/Dense_0/kernel: \(3, 4\) expected, \(3, 5\) given"):
        fh.from_flax(module, variables)
    wrong_width, _ = _flax(module, 5)
    with pytest.raises(fh.InputError, match="do not belong to this MLP"):
        fh.from_flax(module, wrong_width, input_shape=(3,))
