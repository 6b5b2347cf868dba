"""fluxhess.jax: input derivatives as JAX functions of (θ, X), inside losses that are differentiated.

References: the same loss built by hand on ``jax.hessian``/``jax.jacfwd`` of the network
written out independently (tests/reference.py), central finite differences in θ, and the
NumPy API.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fluxhess as fh
import fluxhess.jax as fhj
import reference as ref
from conftest import assert_close

MODEL = fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 4, "gelu"), fh.Dense(4, 3))


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _data(model=MODEL, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(model.init(seed) + 0.1 * rng.normal(size=model.num_params)), jnp.asarray(rng.normal(size=(n, model.in_features)))


def _by_hand(model):
    """The per-sample network of tests/reference.py and its input derivatives by jax.jacfwd/jax.hessian."""
    f = lambda theta, x: ref.forward(model, theta, x[None], xp=jnp)[0]  # noqa: E731  (d,) -> (C,)
    jac = lambda theta, X: jax.vmap(jax.jacfwd(f, argnums=1), (None, 0))(theta, X)  # noqa: E731
    hess = lambda theta, X: jax.vmap(jax.hessian(f, argnums=1), (None, 0))(theta, X)  # noqa: E731
    return {
        "forward": lambda theta, X: jax.vmap(f, (None, 0))(theta, X),
        "input_jacobian": jac,
        "input_hessian": hess,
        "laplacian": lambda theta, X: jnp.trace(hess(theta, X), axis1=2, axis2=3),
        "divergence": lambda theta, X: jnp.trace(jac(theta, X), axis1=1, axis2=2),
    }


TRANSFORMS = ["forward", "input_jacobian", "input_hessian", "laplacian", "divergence"]


def _loss(quantity):
    """A PINN-like loss on a quantity: the mean square of its entries against a target 0.3."""
    return lambda theta, X: jnp.mean((quantity(theta, X) - 0.3) ** 2)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_grad_of_a_loss_equals_the_loss_built_by_hand_and_finite_differences(name):
    theta, X = _data()
    ours, hand = jax.jit(_loss(getattr(fhj, name)(MODEL))), jax.jit(_loss(_by_hand(MODEL)[name]))
    assert_close(ours(theta, X), hand(theta, X), rtol=1e-12, atol=1e-14, what=f"{name} loss")
    g = jax.jit(jax.grad(ours))(theta, X)
    assert_close(g, jax.jit(jax.grad(hand))(theta, X), rtol=1e-10, atol=1e-13, what=f"grad of the {name} loss vs by hand")
    fd = ref.fd_gradient(lambda t: float(ours(jnp.asarray(t), X)), np.asarray(theta))
    assert_close(g, fd, rtol=1e-6, atol=1e-8, what=f"grad of the {name} loss vs finite differences")


@pytest.mark.parametrize("name", TRANSFORMS)
def test_values_match_the_numpy_api_and_jit_vmap_agree(name):
    theta, X = _data()
    fn = getattr(fhj, name)(MODEL)
    value = fn(theta, X)
    assert isinstance(value, jax.Array)
    assert_close(value, getattr(fh, name)(MODEL, np.asarray(theta), np.asarray(X), backend="jax"), rtol=1e-12, atol=1e-14, what=name)
    assert_close(jax.jit(fn)(theta, X), value, rtol=1e-12, atol=1e-14, what=f"jit {name}")
    assert_close(jax.jit(jax.vmap(fn, (None, 0)))(theta, X), value, rtol=1e-12, atol=1e-14, what=f"vmap over samples {name}")
    thetas = jnp.stack([theta, 2 * theta])  # an ensemble: vmap over θ
    assert_close(jax.jit(jax.vmap(fn, (0, None)))(thetas, X)[1], jax.jit(fn)(2 * theta, X), rtol=1e-12, atol=1e-14, what=f"vmap over θ {name}")


def test_laplacian_of_a_model_with_softmax_falls_back_to_the_hessian_trace():
    model = fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 3), fh.Activation("softmax"))
    theta, X = _data(model)
    assert_close(jax.jit(fhj.laplacian(model))(theta, X), jax.jit(_by_hand(model)["laplacian"])(theta, X), rtol=1e-11, atol=1e-13, what="laplacian")


def test_wrt_and_tuple_inputs_match_the_numpy_api():
    model = fh.Chain(fh.Dense(3, 7, "tanh"), fh.Dense(7, 2), inputs={"x": 2, "t": 1})
    theta, X = _data(model)
    x, t = X[:, :2], X[:, 2]
    for name in ("input_jacobian", "input_hessian", "laplacian", "divergence"):
        fn = jax.jit(getattr(fhj, name)(model, wrt="x"))
        want = getattr(fh, name)(model, np.asarray(theta), (np.asarray(x), np.asarray(t)), wrt="x", backend="jax")
        assert_close(fn(theta, (x, t)), want, rtol=1e-12, atol=1e-14, what=name)
        assert_close(fn(theta, (x[0], t[0])), want[0], rtol=1e-12, atol=1e-14, what=f"{name} of one sample")


def test_bad_arguments_name_what_was_expected():
    theta, X = _data()
    with pytest.raises(fh.InputError, match=rf"theta must have shape \({MODEL.num_params},\)"):
        fhj.laplacian(MODEL)(theta[:-1], X)
    with pytest.raises(fh.InputError, match=r"X must have shape \(N, 3\) or \(3,\)"):
        fhj.laplacian(MODEL)(theta, X[:, :2])
    with pytest.raises(fh.InputError, match="C == d"):
        fhj.divergence(fh.Chain.mlp([3, 4, 2]))
    with pytest.raises(fh.InputError, match="no input signature"):
        fhj.laplacian(MODEL, wrt="x")
    with pytest.raises(fh.UnsupportedModelError, match="take a fluxhess.Chain"):
        fhj.laplacian(lambda x: x)


def test_flax_params_map_variables_to_theta_and_back():
    pytest.importorskip("flax", reason="flax_params needs flax (pip install 'fluxhess[flax]')")
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, t):
            z = jnp.concatenate([x, t], axis=-1)
            z = nn.tanh(nn.Dense(5, param_dtype=jnp.float64, name="hidden")(z))
            return nn.Dense(1, param_dtype=jnp.float64, name="out")(z)

    rng = np.random.default_rng(2)
    x, t = jnp.asarray(rng.normal(size=(4, 2))), jnp.asarray(rng.normal(size=(4, 1)))
    module = Net()
    variables = module.init(jax.random.PRNGKey(0), x, t)
    fp = fhj.flax_params(module, variables, inputs=(x, t))
    model, theta_np = fh.from_flax(module, variables, inputs=(x, t))
    theta = fp.theta(variables)
    assert fp.model == model
    assert_close(theta, theta_np, rtol=0, atol=0, what="θ from the variables")
    back = fp.variables(theta)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), back, jax.tree_util.tree_map(jnp.asarray, dict(variables))))
    # a loss on module.apply(fp.variables(θ)) has the gradient of the same loss on fluxhess.jax.forward
    loss_flax = lambda th: jnp.sum(module.apply(fp.variables(th), x, t) ** 2)  # noqa: E731
    loss_fh = lambda th: jnp.sum(fhj.forward(model)(th, (x, t)) ** 2)  # noqa: E731
    assert_close(jax.grad(loss_flax)(theta), jax.grad(loss_fh)(theta), rtol=1e-12, atol=1e-14, what="grad through the variables")


@pytest.mark.parametrize("name", TRANSFORMS[:-1])
def test_integer_inputs_are_taken_as_the_numpy_api_takes_them(name):
    """Integer X: computed in θ's dtype, equal to the same X given as floats (before: a raw TypeError)."""
    theta, _ = _data()
    X_int = np.array([[1, -2, 0], [3, 1, 2]], dtype=np.int32)
    fn = getattr(fhj, name)(MODEL)
    expected = fn(theta, jnp.asarray(X_int, dtype=jnp.float64))
    got = fn(theta, jnp.asarray(X_int))
    assert got.dtype == jnp.float64
    assert_close(got, expected, rtol=0, atol=0, what=f"{name} of integer X")
    assert_close(got, getattr(fh, name)(MODEL, np.asarray(theta), X_int, backend="jax"), rtol=1e-12, atol=1e-12, what="the NumPy API")


@pytest.mark.parametrize("name", TRANSFORMS)
def test_complex_and_bool_arrays_are_refused_as_the_numpy_api_refuses_them(name):
    """Complex X gave silently complex results where fh.laplacian refuses it."""
    model = fh.Chain(fh.Dense(3, 3, "tanh"))
    theta, X = _data(model)
    fn = getattr(fhj, name)(model)
    with pytest.raises(fh.InputError, match="X must be a real"):
        fn(theta, X + 1j)
    with pytest.raises(fh.InputError, match="X must be a real"):
        fn(theta, X > 0)
    with pytest.raises(fh.InputError, match="theta must be a real"):
        fn(theta + 0j, X)
    with pytest.raises(fh.InputError, match="theta must be a floating"):
        fn(jnp.zeros(model.num_params, jnp.int32), X)
    with pytest.raises(fh.InputError, match="X must be a numeric array"):
        fn(theta, np.array([["a", "b", "c"]]))
    with pytest.raises(fh.InputError, match="X must be real"):
        getattr(fh, name)(model, np.asarray(theta), np.asarray(X) + 1j, backend="jax")


def test_flax_params_theta_of_bad_variables_names_the_entry():
    """Before: KeyError / TypeError from inside the tree walk."""
    pytest.importorskip("flax", reason="flax_params needs flax (pip install 'fluxhess[flax]')")
    import flax.linen as nn

    module = nn.Sequential([nn.Dense(4), nn.tanh, nn.Dense(1)])
    x = jnp.ones((2, 3))
    variables = module.init(jax.random.PRNGKey(0), x)
    fp = fhj.flax_params(module, variables)
    assert fp.theta(variables).shape == (fp.model.num_params,)
    layer = next(iter(variables["params"]))
    kernel = variables["params"][layer]["kernel"]
    bad = {
        "no params": ({"weights": variables["params"]}, r"variables\['params'\]\['layers_0'\]\['kernel'\] is missing"),
        "not a mapping": ([1, 2], "is missing"),
        "None": (None, "is missing"),
        "kernel missing": ({"params": {**variables["params"], layer: {"bias": jnp.zeros(4)}}}, "kernel'] is missing"),
        "kernel shape": ({"params": {**variables["params"], layer: {"kernel": kernel.T, "bias": jnp.zeros(4)}}}, r"must have shape \(3, 4\)"),
        "kernel a string": ({"params": {**variables["params"], layer: {"kernel": "w", "bias": jnp.zeros(4)}}}, "must be"),
        "bias complex": ({"params": {**variables["params"], layer: {"kernel": kernel, "bias": jnp.zeros(4) + 1j}}}, "must be a real"),
    }
    for case, (variables_bad, words) in bad.items():
        with pytest.raises(fh.InputError, match=words):
            fp.theta(variables_bad)
