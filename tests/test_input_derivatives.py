"""Input Jacobians, Hessians, Laplacians and divergences, and the PINN seed questions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fluxhess as fh
import reference as ref
from conftest import assert_close

MODELS = {
    "tanh-mlp": fh.Chain.mlp([3, 6, 5, 2], "tanh"),
    "mixed-activations": fh.Chain(fh.Dense(3, 4, "gelu"), fh.Dense(4, 4, "softplus", bias=False), fh.Dense(4, 3, "swish"), fh.Dense(3, 2, "elu")),
    "sigmoid-output": fh.Chain(fh.Dense(3, 5, "sigmoid"), fh.Dense(5, 2), fh.Activation("sigmoid")),
    "softmax-output": fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 3), fh.Activation("softmax")),
}


@pytest.fixture(params=list(MODELS), ids=list(MODELS))
def model(request):
    return MODELS[request.param]


def _data(model, n=5, seed=0):
    rng = np.random.default_rng(seed)
    return model.init(seed) + 0.1 * rng.normal(size=model.num_params), rng.normal(size=(n, model.in_features))


def test_input_jacobian_matches_reference(model, backend):
    theta, X = _data(model)
    J = fh.input_jacobian(model, theta, X, backend=backend)
    assert J.shape == (5, model.out_features, 3)
    assert_close(J, ref.input_jacobian(model, theta, X), rtol=1e-11, atol=1e-13, what="input_jacobian")
    h = 1e-6
    fd = np.stack([(ref.forward(model, theta, X + h * e) - ref.forward(model, theta, X - h * e)) / (2 * h) for e in np.eye(3)], axis=-1)
    assert_close(J, fd, rtol=1e-6, atol=1e-8, what="input_jacobian vs finite differences")


def test_input_hessian_matches_reference_and_finite_differences(model, backend):
    theta, X = _data(model)
    H = fh.input_hessian(model, theta, X, backend=backend)
    assert H.shape == (5, model.out_features, 3, 3)
    assert_close(H, ref.input_hessian(model, theta, X), rtol=1e-10, atol=1e-13, what="input_hessian")
    J = lambda Z: ref.input_jacobian(model, theta, Z)  # noqa: E731
    h = 1e-5
    fd = np.stack([(J(X + h * e) - J(X - h * e)) / (2 * h) for e in np.eye(3)], axis=-1)
    assert_close(H, fd, rtol=1e-6, atol=1e-8, what="input_hessian vs finite differences")


def test_laplacian_is_trace_of_input_hessian(model, backend):
    theta, X = _data(model)
    lap = fh.laplacian(model, theta, X, backend=backend)
    assert lap.shape == (5, model.out_features)
    assert_close(lap, np.trace(ref.input_hessian(model, theta, X), axis1=2, axis2=3), rtol=1e-10, atol=1e-13, what="laplacian")


def test_laplacian_in_chunks_of_one_sample_matches_the_reference(monkeypatch):
    from fluxhess._backends.jax import backend as jax_backend

    monkeypatch.setattr(jax_backend, "LAPLACIAN_CHUNK_BYTES", 1)  # one sample per chunk on a CPU
    model = MODELS["tanh-mlp"]
    theta, X = _data(model, n=7)
    lap = fh.laplacian(model, theta, X, backend="jax")
    assert_close(lap, np.trace(ref.input_hessian(model, theta, X), axis1=2, axis2=3), rtol=1e-10, atol=1e-13, what="laplacian")


def test_divergence_is_trace_of_input_jacobian(backend):
    model = fh.Chain.mlp([3, 7, 3], "tanh")
    theta, X = _data(model)
    div = fh.divergence(model, theta, X, backend=backend)
    assert div.shape == (5,)
    assert_close(div, np.trace(ref.input_jacobian(model, theta, X), axis1=1, axis2=2), rtol=1e-11, atol=1e-13, what="divergence")
    with pytest.raises(fh.InputError, match="C == d"):
        fh.divergence(fh.Chain.mlp([3, 4, 2]), fh.Chain.mlp([3, 4, 2]).init(), X, backend=backend)


def test_seed_1_flax_style_mlp_u_xx(backend):
    """MLP [3, 20, 20, 20, 20, 20, 1], tanh, X (32, 3): u_xx (32, 1, 3, 3) == vmap(hessian) in JAX."""
    model = fh.Chain.mlp([3, 20, 20, 20, 20, 20, 1], "tanh")
    theta = model.init(seed=0)
    X = np.random.default_rng(0).uniform(-1, 1, size=(32, 3))
    u_xx = fh.input_hessian(model, theta, X, backend=backend)
    assert u_xx.shape == (32, 1, 3, 3)
    with jax.enable_x64(True):
        u = lambda x: ref.forward(model, jnp.asarray(theta), x[None], jnp)[0, 0]  # noqa: E731
        expected = np.asarray(jax.vmap(jax.hessian(u))(jnp.asarray(X)))
    assert_close(u_xx[:, 0], expected, rtol=1e-10, atol=1e-12, what="u_xx")


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_seed_2_pinn_second_derivative_relu_vs_tanh(backend, activation):
    """[1, 50, 50, 50, 501]: relu's second input derivative is exactly 0, tanh's is not."""
    model = fh.Chain.mlp([1, 50, 50, 50, 501], activation)
    theta = model.init(seed=0)
    x = np.linspace(-1, 1, 8)[:, None]
    first = fh.input_jacobian(model, theta, x, backend=backend)
    assert first.shape == (8, 501, 1)
    second = fh.input_hessian(model, theta, x, backend=backend)
    assert second.shape == (8, 501, 1, 1)
    if activation == "relu":
        assert np.all(second == 0)
        assert np.abs(first).max() > 0
    else:
        assert np.abs(second).max() > 1e-3
        h = 1e-5
        fd = (fh.input_jacobian(model, theta, x + h, backend=backend) - fh.input_jacobian(model, theta, x - h, backend=backend)) / (2 * h)
        assert_close(second[..., 0], fd, rtol=1e-6, atol=1e-8, what="d2f/dx2")


def test_seed_3_network_of_x_and_t(backend):
    """f(x, t) with x (10, 3), t (10, 1) as one input of width 4: ∂f/∂x (10, 3, 3), ∂f/∂t (10, 3)."""
    model = fh.Chain.mlp([4, 16, 16, 3], "tanh")
    theta = model.init(seed=1)
    rng = np.random.default_rng(2)
    x, t = rng.normal(size=(10, 3)), rng.uniform(size=(10, 1))
    J = fh.input_jacobian(model, theta, np.hstack([x, t]), backend=backend)
    df_dx, df_dt = J[:, :, :3], J[:, :, 3]
    assert df_dx.shape == (10, 3, 3) and df_dt.shape == (10, 3)
    h = 1e-6
    fd_t = (ref.forward(model, theta, np.hstack([x, t + h])) - ref.forward(model, theta, np.hstack([x, t - h]))) / (2 * h)
    assert_close(df_dt, fd_t, rtol=1e-6, atol=1e-9, what="df/dt")
    fd_x = np.stack([(ref.forward(model, theta, np.hstack([x + h * e, t])) - ref.forward(model, theta, np.hstack([x - h * e, t]))) / (2 * h) for e in np.eye(3)], axis=-1)
    assert_close(df_dx, fd_x, rtol=1e-6, atol=1e-9, what="df/dx")
