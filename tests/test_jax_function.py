"""JaxFunction models (fluxhess.from_jax, from_flax of modules that are no Chain): every quantity equal
to JAX's own transforms of the user's function (jax.hessian, jacrev, vmap of grad), in float64.

The reference never goes through fluxhess: it maps θ to the pytree with
``jax.flatten_util.ravel_pytree`` (the same documented order: leaves in jax.tree order, C order)
and differentiates the user's ``apply`` with the losses written out here.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import fluxhess as fh
import fluxhess.jax as fhj

flax_nn = pytest.importorskip("flax.linen", reason="the Flax architectures need flax (pip install 'fluxhess[flax]')")
nnx = pytest.importorskip("flax.nnx", reason="the nnx architecture needs flax.nnx")

RTOL = 1e-10


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-300))


# --- architectures a Chain cannot express --------------------------------------------


class Fourier(flax_nn.Module):
    """Fourier features sin(xB), cos(xB) with B fixed in a 'consts' collection."""

    @flax_nn.compact
    def __call__(self, x):
        B = self.variable("consts", "B", lambda: 2.0 * jax.random.normal(jax.random.PRNGKey(7), (x.shape[-1], 3))).value
        h = jnp.concatenate([jnp.sin(x @ B), jnp.cos(x @ B)], axis=-1)
        return flax_nn.Dense(2)(flax_nn.tanh(flax_nn.Dense(4)(h)))


class Residual(flax_nn.Module):
    @flax_nn.compact
    def __call__(self, x):
        h = flax_nn.tanh(flax_nn.Dense(4)(x))
        h = h + flax_nn.tanh(flax_nn.Dense(4)(h))
        return flax_nn.Dense(2)(h)


class WithLayerNorm(flax_nn.Module):
    @flax_nn.compact
    def __call__(self, x):
        return flax_nn.Dense(2)(flax_nn.LayerNorm()(flax_nn.tanh(flax_nn.Dense(4)(x))))


class SmallCNN(flax_nn.Module):
    @flax_nn.compact
    def __call__(self, x):
        h = flax_nn.tanh(flax_nn.Conv(2, (3, 3))(x))
        h = flax_nn.avg_pool(h, (2, 2), (2, 2))
        return flax_nn.Dense(2)(h.reshape(h.shape[0], -1))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(3, 4, rngs=rngs)
        self.b = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        h = self.a(x)
        return self.b(jnp.tanh(h) + 0.5 * jnp.sin(h))


def _plain_apply(p, X):
    """A plain JAX function, params a list of tuples; C == d so that divergence applies."""
    (W1, b1), (W2,) = p
    return jnp.tanh(X @ W1 + b1) @ W2 + jnp.sin(X)


def _linen(module, sample_shape, **kw):
    variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, *sample_shape)))
    with jax.enable_x64(True):
        variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
    model, theta = fh.from_flax(module, variables, **kw)
    fixed = {k: v for k, v in variables.items() if k != "params"}
    return model, theta, lambda p, X: module.apply({"params": p, **fixed}, X), variables["params"], sample_shape


def _nnx():
    module = NnxNet(nnx.Rngs(0))
    model, theta = fh.from_flax(module)
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return model, theta, lambda p, X: nnx.merge(graphdef, p, rest)(X), params, (3,)


def _plain():
    rng = np.random.default_rng(3)
    params = [(rng.normal(size=(3, 4)), rng.normal(size=4)), (rng.normal(size=(4, 3)),)]
    model, theta = fh.from_jax(_plain_apply, params, 3)
    return model, theta, _plain_apply, params, (3,)


ARCHITECTURES = {
    "fourier": lambda: _linen(Fourier(), (2,)),
    "residual": lambda: _linen(Residual(), (3,)),
    "layernorm": lambda: _linen(WithLayerNorm(), (3,)),
    "cnn": lambda: _linen(SmallCNN(), (6, 6, 1), input_shape=(6, 6, 1)),
    "nnx": _nnx,
    "from_jax": _plain,
}


@functools.lru_cache(maxsize=None)
def _built(name: str) -> dict:
    """One architecture's model, θ, the user's apply and pytree map, and data (built once)."""
    with jax.enable_x64(True):
        model, theta, apply, params, shape = ARCHITECTURES[name]()
        flat, unravel = ravel_pytree(jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params))
    rng = np.random.default_rng(1)
    N = 5
    X = rng.normal(size=(N, *shape))
    y = rng.normal(size=(N, model.out_features))
    return dict(name=name, model=model, theta=theta, apply=apply, unravel=unravel, flat=np.asarray(flat), X=X, y=y)


@pytest.fixture(scope="module", params=list(ARCHITECTURES), ids=list(ARCHITECTURES))
def arch(request):
    return _built(request.param)


#: Two of the architectures (one linen, one nnx) for the checks of how results are made and
#: kept, which do not depend on the network.
SOME = ("residual", "nnx")


def _reference(arch):
    """JAX's own transforms of the user's apply: dict of quantity -> array (mse, agg='sum')."""
    apply, unravel, X, y = arch["apply"], arch["unravel"], jnp.asarray(arch["X"]), jnp.asarray(arch["y"])
    theta = jnp.asarray(arch["theta"])
    N, d = X.shape[0], int(np.prod(X.shape[1:]))

    def f(t, Xb):  # (n, C)
        return apply(unravel(t), Xb)

    def sample_loss(t, x, yn):
        return jnp.sum((f(t, x[None])[0] - yn) ** 2)

    def loss(t):
        return jnp.sum((f(t, X) - y) ** 2)

    def one(t, x_flat):  # one sample, flattened input -> (C,)
        return f(t, x_flat.reshape((1,) + X.shape[1:]))[0]

    J = jax.jacrev(lambda t: f(t, X))(theta)  # (N, C, P)
    G = jax.vmap(jax.grad(sample_loss), (None, 0, 0))(theta, X, y)
    Xf = X.reshape(N, d)
    out = {
        "forward": f(theta, X),
        "loss": loss(theta),
        "gradient": jax.grad(loss)(theta),
        "hessian": jax.jit(jax.hessian(loss))(theta),
        "ggn": 2.0 * jnp.einsum("ncp,ncq->pq", J, J),  # Λ_n = 2 I for the summed squared error
        "ef": G.T @ G,
        "param_jacobian": J,
        "input_jacobian": jax.vmap(jax.jacrev(one, 1), (None, 0))(theta, Xf),
        "input_hessian": jax.vmap(jax.hessian(one, 1), (None, 0))(theta, Xf),
    }
    out["laplacian"] = jnp.trace(out["input_hessian"], axis1=2, axis2=3)
    return {k: np.asarray(v) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def _reference_of(name: str) -> dict:
    with jax.enable_x64(True):
        return _reference(_built(name))


@pytest.fixture(scope="module")
def reference(arch):
    return _reference_of(arch["name"])


def test_theta_is_the_pytree_in_tree_order(arch):
    """θ is ravel_pytree's vector; unflatten(θ) is the pytree, flatten its inverse."""
    model, theta = arch["model"], arch["theta"]
    assert model.model_kind == "jax_function" and repr(model).startswith("JaxFunction(")
    np.testing.assert_array_equal(theta, arch["flat"])
    back = model.unflatten(theta)
    np.testing.assert_array_equal(model.flatten(back), theta)
    assert [b.name for b in model.layout][0] == model.layout.names[0] and model.num_params == theta.size


def test_values_and_curvatures_equal_jax(arch, reference):
    model, theta, X, y = arch["model"], arch["theta"], arch["X"], arch["y"]
    kw = dict(loss="mse", backend="jax")
    got = {
        "forward": fh.forward(model, theta, X, backend="jax"),
        "loss": fh.loss(model, theta, X, y, **kw),
        "gradient": fh.gradient(model, theta, X, y, **kw),
        "hessian": fh.hessian(model, theta, X, y, **kw),
        "ggn": fh.ggn(model, theta, X, y, **kw),
        "ef": fh.empirical_fisher(model, theta, X, y, **kw),
        "param_jacobian": fh.param_jacobian(model, theta, X, backend="jax"),
    }
    for name, value in got.items():
        assert _rel(value, reference[name]) < RTOL, name
    V = np.random.default_rng(2).normal(size=(theta.size, 2))
    for kind, M in (("hessian", "hessian"), ("ggn", "ggn"), ("ef", "ef")):
        assert _rel(fh.hvp(model, theta, X, y, V, kind=kind, **kw), reference[M] @ V) < RTOL, kind
        assert _rel(fh.diagonal(model, theta, X, y, kind=kind, **kw), np.diag(reference[M])) < RTOL, kind


def test_input_derivatives_equal_jax(arch, reference):
    model, theta, X = arch["model"], arch["theta"], arch["X"]
    for name, fn in (("input_jacobian", fh.input_jacobian), ("input_hessian", fh.input_hessian), ("laplacian", fh.laplacian)):
        assert _rel(fn(model, theta, X, backend="jax"), reference[name]) < RTOL, name
    if model.out_features == model.in_features:
        div = np.trace(reference["input_jacobian"], axis1=1, axis2=2)
        assert _rel(fh.divergence(model, theta, X, backend="jax"), div) < RTOL


@pytest.mark.parametrize("name", SOME)
def test_hessian_chunked_by_columns_equals_jax(name, monkeypatch):
    """Past SMALL parameters the Hessian is built by chunks of Hessian-vector products."""
    from fluxhess._backends.jax import curvature

    arch, reference = _built(name), _reference_of(name)
    monkeypatch.setattr(curvature, "SMALL", 0)
    model, theta, X, y = arch["model"], arch["theta"], arch["X"], arch["y"]
    assert _rel(fh.hessian(model, theta, X, y, loss="mse", backend="jax"), reference["hessian"]) < RTOL


@pytest.mark.parametrize("name", SOME)
def test_out_and_devices(name):
    arch, reference = _built(name), _reference_of(name)
    model, theta, X, y = arch["model"], arch["theta"], arch["X"], arch["y"]
    out = np.zeros((theta.size, theta.size))
    assert fh.ggn(model, theta, X, y, loss="mse", backend="jax", out=out) is out
    assert _rel(out, reference["ggn"]) < RTOL
    M = fh.empirical_fisher(model, theta, X, y, loss="mse", backend="jax", devices=jax.devices()[:1])
    assert isinstance(M, jax.Array) and _rel(np.asarray(M), reference["ef"]) < RTOL


def test_jax_transforms_differentiable_under_jit(arch):
    """fluxhess.jax.laplacian(model) is a function of θ that jax.grad and jax.jit go through."""
    model, theta, X, apply, unravel = arch["model"], arch["theta"], arch["X"], arch["apply"], arch["unravel"]
    if model.flattens_input:
        with pytest.raises(fh.UnsupportedModelError, match="flattens samples"):
            fhj.laplacian(model)
        return
    with jax.enable_x64(True):
        Xj = jnp.asarray(X)

        def ref_lap(t):
            one = lambda x: apply(unravel(t), x[None])[0]  # noqa: E731
            return jnp.sum(jax.vmap(lambda x: jnp.trace(jax.hessian(one)(x), axis1=1, axis2=2))(Xj) ** 2)

        lap = fhj.laplacian(model)
        ours = jax.jit(jax.grad(lambda t: jnp.sum(lap(t, Xj) ** 2)))(jnp.asarray(theta))
        theirs = jax.grad(ref_lap)(jnp.asarray(theta))
        assert _rel(ours, theirs) < RTOL
        params = model.unflatten(jnp.asarray(theta))  # differentiable map back to the pytree
        assert _rel(ravel_pytree(params)[0], theta) == 0.0


def test_kron_and_julia_refuse_clearly(arch):
    model, theta, X, y = arch["model"], arch["theta"], arch["X"], arch["y"]
    with pytest.raises(fh.UnsupportedModelError, match=r"kron \(KFAC\) needs the Dense layers.*diagonal"):
        fh.kron(model, theta, X, y, loss="mse", backend="jax")
    with pytest.raises(fh.UnsupportedModelError, match="no Julia twin"):
        fh.forward(model, theta, X, backend="julia")


def test_compare_runs_jax_and_says_why_not_julia():
    model, theta, apply, _, _ = _plain()
    X = np.random.default_rng(0).normal(size=(4, 3))
    report = fh.compare(model, theta, X, quantities=("forward",), backends=("jax", "julia"))
    assert "no Julia twin" in report.unavailable["julia"]
    assert [r.backend for r in report.quantities[0].runs] == ["jax"]


def test_memory_guard_refuses_before_allocating(monkeypatch):
    from fluxhess import _memory

    model, theta, _, _, _ = _plain()
    X = np.ones((3, 3))
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1000)
    with pytest.raises(fh.MemoryBudgetError):
        fh.hessian(model, theta, X, np.ones((3, 3)), backend="jax")


# --- independence of samples ------------------------------------------------------------


def test_functions_that_mix_samples_are_refused():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(3, 2))
    with pytest.raises(fh.UnsupportedModelError, match="mixes its samples"):
        fh.from_jax(lambda p, X: jax.nn.softmax(X @ p, axis=0), W, 3)  # softmax over the batch
    with pytest.raises(fh.UnsupportedModelError, match="mixes its samples"):
        fh.from_jax(lambda p, X: (X - X.mean(0)) @ p, W, 3)  # batch centring
    fh.from_jax(lambda p, x: jax.nn.softmax(x @ p), W, 3, batched=False)  # per sample: fine


def test_batchnorm_in_training_mode_is_refused():
    class BN(flax_nn.Module):
        train: bool

        @flax_nn.compact
        def __call__(self, x):
            return flax_nn.Dense(1)(flax_nn.BatchNorm(use_running_average=not self.train)(flax_nn.Dense(4)(x)))

    variables = BN(True).init(jax.random.PRNGKey(0), jnp.ones((2, 3)))
    with pytest.raises(fh.UnsupportedModelError, match="statistic of the batch.*use_running_average=True"):
        fh.from_flax(BN(True), variables)
    model, _ = fh.from_flax(BN(False), variables)  # inference mode: batch_stats held fixed
    assert model.model_kind == "jax_function"


# --- from_flax: which kind came back, inputs=, wrt= --------------------------------------


class DenseOnly(flax_nn.Module):
    """Submodule names whose sorted order (a_out < z_in) is not the call order."""

    @flax_nn.compact
    def __call__(self, x):
        return flax_nn.Dense(1, name="a_out")(flax_nn.tanh(flax_nn.Dense(8, name="z_in")(x)))


def test_from_flax_reads_the_width_from_the_module_not_dict_order():
    """Variables cast with jax.tree.map (keys sorted: bias before kernel, a_out before z_in) convert."""
    module = DenseOnly()
    variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
    with jax.enable_x64(True):
        cast = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
        model, theta = fh.from_flax(module, cast)
        X = np.random.default_rng(0).normal(size=(4, 3))
        expected = np.asarray(module.apply(cast, X))
    assert model.model_kind == "chain" and model.in_features == 3
    np.testing.assert_allclose(fh.forward(model, theta, X, backend="jax"), expected, rtol=1e-12)


class FourierXT(flax_nn.Module):
    @flax_nn.compact
    def __call__(self, x, t):
        z = jnp.concatenate([x, t], axis=-1)
        h = jnp.sin(z @ self.variable("consts", "B", lambda: jnp.ones((3, 4))).value)
        return flax_nn.Dense(1)(h + flax_nn.tanh(flax_nn.Dense(4)(h)))


def test_inputs_and_wrt_on_a_jax_function():
    module = FourierXT()
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(5, 2)), rng.normal(size=(5, 1))
    variables = module.init(jax.random.PRNGKey(0), x, t)
    model, theta = fh.from_flax(module, variables, inputs=(x, t))
    assert model.model_kind == "jax_function" and dict(model.inputs) == {"x": 2, "t": 1}
    full = fh.input_hessian(model, theta, (x, t), backend="jax")
    only_x = fh.laplacian(model, theta, (x, t), wrt="x", backend="jax")
    assert _rel(only_x, np.trace(full[:, :, :2, :2], axis1=2, axis2=3)) < RTOL
    with jax.enable_x64(True):
        fixed = {"consts": variables["consts"]}
        one = lambda xx, tt: module.apply({"params": model.unflatten(jnp.asarray(theta)), **fixed}, xx[None], tt[None])[0, 0]  # noqa: E731
        u_t = jax.jit(jax.vmap(jax.grad(one, 1)))(jnp.asarray(x), jnp.asarray(t))
    assert _rel(fh.input_jacobian(model, theta, (x, t), wrt="t", backend="jax")[:, 0, :], u_t) < RTOL


def test_from_jax_refuses_bad_arguments():
    with pytest.raises(fh.InputError, match="input_shape must be the shape of one sample"):
        fh.from_jax(_plain_apply, [(np.ones((3, 4)), np.ones(4)), (np.ones((4, 3)),)], (0,))
    with pytest.raises(fh.InputError, match="real floating-point.*close over them"):
        fh.from_jax(lambda p, X: X * p["w"], {"w": np.ones(3), "n": np.array(2)}, 3)
    with pytest.raises(fh.UnsupportedModelError, match=re.escape("apply(params, X) failed on X of shape (2, 5)")):
        fh.from_jax(_plain_apply, [(np.ones((3, 4)), np.ones(4)), (np.ones((4, 3)),)], 5)


def test_the_numpy_probe_activations_are_nnlibs():
    """The converter's NumPy formulas (the activation probe) equal fluxhess's JAX activations."""
    from fluxhess import _activations as A
    from fluxhess.convert import NUMPY_ACTIVATIONS, _pool

    assert set(NUMPY_ACTIVATIONS) == set(A.NAMES)
    values, _ = _pool()
    grid = values[: values.size // 8 * 8].reshape(8, -1)
    with jax.enable_x64(True):
        for name in A.NAMES:
            ours, nnlib = NUMPY_ACTIVATIONS[name](grid), np.asarray(A.function(name)(jnp.asarray(grid)))
            assert np.max(np.abs(ours - nnlib) / np.maximum(1.0, np.abs(nnlib))) < 1e-14, name  # the probe's measure


# --- Laplace on a JaxFunction: laplax and the dense-GGN closed form ----------------------


def _residual_classifier():
    rng = np.random.default_rng(0)

    def apply(p, X):
        h = jnp.tanh(X @ p["a"]["w"] + p["a"]["b"])
        h = h + jnp.tanh(h @ p["r"]["w"])
        return h @ p["o"]["w"] + p["o"]["b"]

    params = {"a": {"w": rng.normal(size=(2, 4)), "b": rng.normal(size=4)}, "r": {"w": 0.5 * rng.normal(size=(4, 4))},
              "o": {"w": rng.normal(size=(4, 3)), "b": np.zeros(3)}}
    X, y = rng.normal(size=(12, 2)), rng.integers(0, 3, 12)
    return apply, params, X, y


def test_laplace_equals_laplax_and_the_dense_ggn_closed_form():
    """Evidence and GLM predictive of a JaxFunction equal laplax 0.0.2's and the closed forms.

    Conventions mapped: laplax's log-likelihood is ``-loss/(2σ)`` with σ = 1 (made for the
    squared error), so its loss is given as twice the summed cross-entropy; its prior is
    ``N(0, 1/λ)`` on every parameter and its posterior precision ``GGN + λ I``, as fluxhess's.
    """
    laplax_curv = pytest.importorskip("laplax.curv", reason="laplax is the peer of this test (pip install laplax)")
    from laplax.eval.likelihood import marginal_log_likelihood
    from laplax.eval.pushforward import lin_pred_cov, lin_pred_mean, lin_setup, set_lin_pushforward

    apply, params, X, y = _residual_classifier()
    model, theta = fh.from_jax(apply, params, 2)
    lam = 0.7
    la = fh.Laplace(model, theta, "classification", prior_precision=lam, backend="jax").fit(X, y)
    G = fh.ggn(model, theta, X, y, loss="logitcrossentropy", backend="jax")
    nll = fh.loss(model, theta, X, y, loss="logitcrossentropy", backend="jax")
    P = theta.size
    closed = -nll - 0.5 * lam * theta @ theta + 0.5 * P * np.log(lam) - 0.5 * np.linalg.slogdet(G + lam * np.eye(P))[1]
    lml = float(la.log_marginal_likelihood())
    assert abs(lml - closed) <= 1e-10 * abs(closed)
    x_new = np.array([[0.3, -0.2]])
    J = fh.param_jacobian(model, theta, x_new, backend="jax")[0]  # (C, P)
    cov = J @ np.linalg.solve(G + lam * np.eye(P), J.T)
    assert _rel(la.predictive(x_new).function_covariance[0], cov) < 1e-10

    with jax.enable_x64(True):
        tree = jax.tree.map(jnp.asarray, params)
        data = {"input": jnp.asarray(X), "target": jnp.asarray(y)}
        single = lambda input, params: apply(params, input[None])[0]  # noqa: E731
        ggn_mv = laplax_curv.create_ggn_mv(single, tree, data, loss_fn="cross_entropy")
        curv = laplax_curv.estimate_curvature("full", ggn_mv, layout=tree)
        twice_ce = lambda f, t: -2 * jnp.sum(jax.nn.log_softmax(f) * jax.nn.one_hot(t, 3))  # noqa: E731
        theirs = marginal_log_likelihood(curv, {"prior_prec": lam}, data, lambda input, params: apply(params, input),
                                         tree, twice_ce, "full")
        posterior_fn = laplax_curv.set_posterior_fn("full", curv, layout=tree)
        push = set_lin_pushforward(single, tree, posterior_fn, {"prior_prec": lam},
                                   pushforward_fns=[lin_setup, lin_pred_mean, lin_pred_cov])
        their_cov = np.asarray(push(jnp.asarray(x_new[0]))["pred_cov"])
    assert _rel(G, np.asarray(curv)) < 1e-10
    assert abs(lml - float(theirs)) <= 1e-10 * abs(lml)
    assert _rel(la.predictive(x_new).function_covariance[0], their_cov) < 1e-10


def test_laplace_diag_lowrank_and_subsets_by_layout_names():
    apply, params, X, y = _residual_classifier()
    model, theta = fh.from_jax(apply, params, 2)
    lam = 0.7
    G = fh.ggn(model, theta, X, y, loss="logitcrossentropy", backend="jax")
    nll = fh.loss(model, theta, X, y, loss="logitcrossentropy", backend="jax")

    def closed(index, H):
        t = theta[index]
        return -nll - 0.5 * lam * t @ t + 0.5 * t.size * np.log(lam) - 0.5 * np.linalg.slogdet(H + lam * np.eye(t.size))[1]

    last = fh.Laplace(model, theta, "classification", subset="last_layer", prior_precision=lam, backend="jax").fit(X, y)
    # the last tree node holding parameters in θ's order (sorted keys: a, o, r), not the output layer
    assert last.subset == ["r/w"]
    idx = np.concatenate([np.arange(model.layout[n].offset, model.layout[n].offset + model.layout[n].size) for n in last.subset])
    assert abs(float(last.log_marginal_likelihood()) - closed(idx, G[np.ix_(idx, idx)])) < 1e-10 * abs(closed(idx, G[np.ix_(idx, idx)]))
    named = fh.Laplace(model, theta, "classification", subset=["r/w"], structure="lowrank", prior_precision=lam, backend="jax").fit(X, y)
    idx = np.arange(model.layout["r/w"].offset, model.layout["r/w"].offset + 16)
    assert abs(float(named.log_marginal_likelihood()) - closed(idx, G[np.ix_(idx, idx)])) < 1e-9 * abs(closed(idx, G[np.ix_(idx, idx)]))
    diag = fh.Laplace(model, theta, "classification", structure="diag", prior_precision=lam, backend="jax").fit(X, y)
    all_ = np.arange(theta.size)
    assert abs(float(diag.log_marginal_likelihood()) - closed(all_, np.diag(np.diag(G)))) < 1e-10 * abs(closed(all_, np.diag(np.diag(G))))
    with pytest.raises(fh.UnsupportedModelError, match="structure='kron'.*'diag', 'lowrank' or 'full'"):
        fh.Laplace(model, theta, "classification", structure="kron", backend="jax")
