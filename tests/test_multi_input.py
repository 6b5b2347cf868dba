"""Networks of several inputs (``net(x, t)``): input signatures, ``X`` as a tuple, ``wrt=``.

References: the Flax module itself differentiated by ``jax.jacfwd``/``jax.hessian`` in
each argument, and blocks of the full input derivatives of the stacked input.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fluxhess as fh
import reference as ref
from conftest import assert_close



def _field_module():
    import flax.linen as nn

    class Field(nn.Module):
        """``f(x, t)``: ``x (b, 2)``, ``t (b, 1)`` hstacked, two outputs (a 2-D velocity)."""

        @nn.compact
        def __call__(self, x, t):
            z = jnp.hstack([x, t])
            z = nn.tanh(nn.Dense(12, param_dtype=jnp.float64)(z))
            z = nn.softplus(nn.Dense(9, param_dtype=jnp.float64)(z))
            return nn.Dense(2, param_dtype=jnp.float64)(z)

    return Field()


@pytest.fixture(scope="module")
def field():
    pytest.importorskip("flax", reason="from_flax needs flax (pip install 'fluxhess[flax]')")
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(6, 2)), rng.uniform(size=(6, 1))
    module = _field_module()
    with jax.enable_x64(True):
        variables = module.init(jax.random.PRNGKey(3), x, t)
    model, theta = fh.from_flax(module, variables, inputs=(x, t))
    return module, variables, model, theta, x, t


def _autodiff(module, variables, x, t):
    """∂f/∂x, ∂f/∂t, ∂²f/∂x², ∂²f/∂t² of the module itself, per sample."""
    with jax.enable_x64(True):
        f = lambda x, t: module.apply(variables, x[None], t[None])[0]  # noqa: E731  (2,), (1,) -> (2,)
        x, t = jnp.asarray(x), jnp.asarray(t)
        jx, jt = jax.vmap(jax.jacfwd(f, argnums=(0, 1)))(x, t)
        hx = jax.vmap(jax.hessian(f, argnums=0))(x, t)
        ht = jax.vmap(jax.hessian(f, argnums=1))(x, t)
    return {k: np.asarray(v) for k, v in dict(x=jx, t=jt, xx=hx, tt=ht).items()}


def test_from_flax_names_the_inputs_after_call_parameters(field):
    _, _, model, _, _, _ = field
    assert model.inputs == (("x", 2), ("t", 1))
    assert model.in_features == 3


def test_the_third_seed_question_in_three_calls(field):
    module, variables, model, theta, x, t = field
    want = _autodiff(module, variables, x, t)
    df_dx = fh.input_jacobian(model, theta, (x, t), wrt="x")
    df_dt = fh.input_jacobian(model, theta, (x, t), wrt="t")
    div = fh.divergence(model, theta, (x, t), wrt="x")
    assert df_dx.shape == (6, 2, 2) and df_dt.shape == (6, 2, 1) and div.shape == (6,)
    assert_close(df_dx, want["x"], rtol=1e-12, atol=1e-14, what="df/dx")
    assert_close(df_dt, want["t"], rtol=1e-12, atol=1e-14, what="df/dt")
    assert_close(div, np.trace(want["x"], axis1=1, axis2=2), rtol=1e-12, atol=1e-14, what="div_x f")


def test_hessian_and_laplacian_in_one_input(field):
    module, variables, model, theta, x, t = field
    want = _autodiff(module, variables, x, t)
    assert_close(fh.input_hessian(model, theta, (x, t), wrt="x"), want["xx"], rtol=1e-11, atol=1e-13, what="f_xx")
    assert_close(fh.input_hessian(model, theta, (x, t), wrt="t"), want["tt"], rtol=1e-11, atol=1e-13, what="f_tt")
    lap = fh.laplacian(model, theta, (x, t), wrt="x")  # the forward Laplacian over x only
    assert lap.shape == (6, 2)
    assert_close(lap, np.trace(want["xx"], axis1=2, axis2=3), rtol=1e-11, atol=1e-13, what="Δ_x f")


def test_tuple_and_stacked_matrix_and_list_of_names_agree(field):
    _, _, model, theta, x, t = field
    X = np.hstack([x, t])
    for fn in (fh.input_jacobian, fh.input_hessian, fh.laplacian):
        assert np.array_equal(fn(model, theta, (x, t)), fn(model, theta, X))
        assert np.array_equal(fn(model, theta, (x, t), wrt=["x", "t"]), fn(model, theta, X))
    assert np.array_equal(fh.input_jacobian(model, theta, (x, t[:, 0]), wrt="t"), fh.input_jacobian(model, theta, X, wrt="t"))
    # names in another order reorder the columns
    J = fh.input_jacobian(model, theta, X)
    assert_close(fh.input_jacobian(model, theta, X, wrt=["t", "x"]), J[:, :, [2, 0, 1]], rtol=0, atol=1e-15, what="wrt order")


def test_a_backend_that_cannot_select_inputs_gets_the_same_numbers(field, monkeypatch):
    """The julia backend computes every column; the API then takes the named ones."""
    from fluxhess._backends.jax import JaxBackend

    _, _, model, theta, x, t = field
    native = {fn: fn(model, theta, (x, t), wrt="x") for fn in (fh.input_jacobian, fh.input_hessian, fh.laplacian, fh.divergence)}
    monkeypatch.setattr(JaxBackend, "selects_inputs", False)
    for fn, value in native.items():
        assert_close(fn(model, theta, (x, t), wrt="x"), value, rtol=1e-12, atol=1e-14, what=fn.__name__)


@pytest.fixture(scope="module")
def activation_first():
    """A Chain that starts with an activation layer, θ, X and its full input Hessian (reference)."""
    model = fh.Chain(fh.Activation("tanh"), fh.Dense(3, 7, "gelu"), fh.Dense(7, 2, "sigmoid"))
    rng = np.random.default_rng(1)
    theta, X = model.init(1) + 0.1 * rng.normal(size=model.num_params), rng.normal(size=(4, 3))
    return model, theta, X, ref.input_hessian(model, theta, X)


@pytest.mark.parametrize("columns", [(1,), (0, 2), (2, 0)])
def test_forward_laplacian_in_some_columns_is_the_trace_of_that_block(columns, activation_first):
    from fluxhess._backends.jax import inputs as jax_inputs

    model, theta, X, H = activation_first
    block = H[:, :, list(columns)][:, :, :, list(columns)]
    with jax.enable_x64(True):
        fn = jax.jit(jax_inputs.forward_laplacian, static_argnums=(0, 3))
        lap = np.asarray(fn(model, jnp.asarray(theta), jnp.asarray(X), columns))
    assert_close(lap, np.trace(block, axis1=2, axis2=3), rtol=1e-11, atol=1e-13, what="forward Laplacian in columns")


def test_wrong_inputs_say_what_was_expected(field):
    _, _, model, theta, x, t = field
    with pytest.raises(fh.UnknownNameError, match="input names of x, t; got 'y'"):
        fh.input_jacobian(model, theta, (x, t), wrt="y")
    with pytest.raises(fh.InputError, match=r"input 't' must have shape \(6, 1\); got \(5, 1\)"):
        fh.input_jacobian(model, theta, (x, t[:5]))
    with pytest.raises(fh.InputError, match=r"tuple of 2 arrays \(x, t\); got 1"):
        fh.laplacian(model, theta, (x,))
    with pytest.raises(fh.InputError, match="C == d"):
        fh.divergence(model, theta, (x, t))
    plain = fh.Chain.mlp([3, 4, 1])
    with pytest.raises(fh.InputError, match="no input signature"):
        fh.input_jacobian(plain, plain.init(), np.hstack([x, t]), wrt="x")
    with pytest.raises(fh.InputError, match="no input signature"):
        fh.forward(plain, plain.init(), (x, t))


def test_from_flax_without_inputs_says_to_pass_them(field):
    module, variables, _, _, x, t = field
    with pytest.raises(fh.UnsupportedModelError, match=r"inputs=\(x, t\)"):
        fh.from_flax(module, variables)


def test_signature_must_add_up_to_the_input_width():
    with pytest.raises(fh.InputError, match="add up to the model's input width 3"):
        fh.Chain(fh.Dense(3, 1), inputs={"x": 1, "t": 1})
    assert fh.Chain(fh.Dense(3, 1), inputs={"x": 2, "t": 1}) != fh.Chain(fh.Dense(3, 1))


def _torch_field():
    import torch
    import torch.nn as nn

    class Field(nn.Module):
        """``forward(x, t)``: ``torch.cat([x, t], dim=1)`` through a Sequential, torch.tanh and a head."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8))
            self.head = nn.Linear(8, 2)

        def forward(self, x, t):
            return self.head(torch.tanh(self.body(torch.cat([x, t], dim=1))))

    torch.manual_seed(0)
    return Field().double()


def test_from_torch_forward_of_x_and_t_matches_torch_func():
    torch = pytest.importorskip("torch", reason="from_torch needs torch (make peers installs the CPU wheel)")
    from torch.func import hessian, jacrev, vmap

    net = _torch_field()
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64)
    model, theta = fh.from_torch(net, inputs=(x, t))
    assert model.inputs == (("x", 2), ("t", 1))
    f = lambda x, t: net(x[None], t[None])[0]  # noqa: E731
    with torch.no_grad():
        jx, jt = (a.numpy() for a in vmap(jacrev(f, argnums=(0, 1)))(x, t))
        htt = vmap(hessian(f, argnums=1))(x, t).numpy()
    xt = (x.numpy(), t.numpy())
    assert_close(fh.input_jacobian(model, theta, xt, wrt="x"), jx, rtol=1e-12, atol=1e-14, what="df/dx")
    assert_close(fh.input_jacobian(model, theta, xt, wrt="t"), jt, rtol=1e-12, atol=1e-14, what="df/dt")
    assert_close(fh.input_hessian(model, theta, xt, wrt="t"), htt, rtol=1e-11, atol=1e-13, what="f_tt")


def test_from_torch_refuses_inputs_concatenated_out_of_order():
    torch = pytest.importorskip("torch", reason="from_torch needs torch (make peers installs the CPU wheel)")
    import torch.nn as nn

    class Swapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 1)

        def forward(self, x, t):
            return self.layer(torch.cat([t, x], dim=1))

    with pytest.raises(fh.UnsupportedModelError, match=r"must begin with torch.cat\(\[x, t\], dim=1\)"):
        fh.from_torch(Swapped(), inputs=(torch.randn(4, 2), torch.randn(4, 1)))


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_laplace_takes_the_tuple_and_keeps_the_signature_when_saved(subset, tmp_path):
    model = fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 1), inputs={"x": 2, "t": 1})
    rng = np.random.default_rng(0)
    x, t, y = rng.normal(size=(20, 2)), rng.normal(size=20), rng.normal(size=20)
    stacked = fh.Laplace(model, model.init(0), "regression", subset=subset, backend="jax").fit(np.column_stack([x, t]), y)
    la = fh.Laplace(model, model.init(0), "regression", subset=subset, backend="jax").fit((x, t), y)
    la.save(tmp_path / "la.npz")
    loaded = fh.Laplace.load(tmp_path / "la.npz")
    assert loaded.model == model and loaded.model.inputs == (("x", 2), ("t", 1))
    want = stacked.predictive(np.column_stack([x, t]))
    for got in (la.predictive((x, t)), loaded.predictive((x, t))):
        assert_close(got.mean, want.mean, rtol=1e-12, atol=1e-14, what="predictive mean")
        assert_close(got.variance, want.variance, rtol=1e-12, atol=1e-14, what="predictive variance")
