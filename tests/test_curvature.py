"""Every curvature quantity against an independent route, on every backend."""

import numpy as np
import pytest

import fluxhess as fh
import reference as ref
from conftest import CASES, Case, assert_close, make_data


def _args(case):
    theta, X, Y = make_data(case)
    return case.model, theta, X, Y, dict(loss=case.loss, agg=case.agg)


def test_loss_and_gradient_match_numpy_reference(case, backend):
    model, theta, X, Y, kw = _args(case)
    expected = ref.total_loss(model, theta, X, Y, case.loss, case.agg)
    assert fh.loss(model, theta, X, Y, backend=backend, **kw) == pytest.approx(expected, rel=1e-12)
    g_fd = ref.fd_gradient(lambda t: ref.total_loss(model, t, X, Y, case.loss, case.agg), theta)
    assert_close(fh.gradient(model, theta, X, Y, backend=backend, **kw), g_fd, rtol=1e-7, atol=1e-8, what="gradient")


def test_hessian_matches_finite_differences_and_jax(case, backend):
    model, theta, X, Y, kw = _args(case)
    H = fh.hessian(model, theta, X, Y, backend=backend, **kw)
    assert H.shape == (model.num_params,) * 2 and H.dtype == np.float64
    np.testing.assert_array_equal(H, H.T)
    H_fd = ref.fd_hessian(lambda t: ref.total_loss(model, t, X, Y, case.loss, case.agg), theta)
    assert_close(H, H_fd, rtol=1e-5, atol=1e-6, what="hessian vs finite differences")
    assert_close(H, ref.jax_hessian(model, theta, X, Y, case.loss, case.agg), rtol=1e-9, atol=1e-12, what="hessian vs jax.hessian of the reference")


def test_ggn_is_hessian_of_linearized_loss(case, backend):
    model, theta, X, Y, kw = _args(case)
    G = fh.ggn(model, theta, X, Y, backend=backend, **kw)
    assert_close(G, ref.linearized_ggn(model, theta, X, Y, case.loss, case.agg), rtol=1e-9, atol=1e-12, what="ggn")
    np.testing.assert_array_equal(G, G.T)
    assert np.linalg.eigvalsh(G).min() > -1e-10 * max(1.0, np.abs(G).max())


def test_empirical_fisher_is_sum_of_per_sample_outer_products(case, backend):
    model, theta, X, Y, kw = _args(case)
    F = fh.empirical_fisher(model, theta, X, Y, backend=backend, **kw)
    g = ref.per_sample_gradients(model, theta, X, Y, case.loss)
    s = ref.scale(case.loss, case.agg, *Y.shape)
    assert_close(F, s * sum(np.outer(r, r) for r in g), rtol=1e-10, atol=1e-12, what="empirical_fisher")
    np.testing.assert_array_equal(F, F.T)
    assert np.linalg.eigvalsh(F).min() > -1e-10 * max(1.0, np.abs(F).max())


@pytest.mark.parametrize("kind", ["hessian", "ggn", "ef"])
def test_hvp_and_diagonal_agree_with_dense_matrix(case, backend, kind):
    model, theta, X, Y, kw = _args(case)
    dense = {"hessian": fh.hessian, "ggn": fh.ggn, "ef": fh.empirical_fisher}[kind](model, theta, X, Y, backend=backend, **kw)
    V = np.random.default_rng(3).normal(size=(model.num_params, 3))
    assert_close(fh.hvp(model, theta, X, Y, V, kind=kind, backend=backend, **kw), dense @ V, rtol=1e-10, atol=1e-12, what=f"hvp {kind}")
    single = fh.hvp(model, theta, X, Y, V[:, 0], kind=kind, backend=backend, **kw)
    assert single.shape == (model.num_params,)
    assert_close(single, dense @ V[:, 0], rtol=1e-10, atol=1e-12, what=f"hvp {kind} (vector)")
    assert_close(fh.diagonal(model, theta, X, Y, kind=kind, backend=backend, **kw), np.diag(dense), rtol=1e-10, atol=1e-12, what=f"diagonal {kind}")


def test_linear_mse_hessian_equals_ggn_equals_closed_form(backend):
    """For f = W x + b and mse: H = GGN = 2·s·(X̄ᵀX̄ ⊗ I_C), X̄ = [X 1], in [vec(W); b] order."""
    rng = np.random.default_rng(1)
    N, d, C = 7, 3, 2
    model = fh.Chain(fh.Dense(d, C))
    theta, X, Y = rng.normal(size=model.num_params), rng.normal(size=(N, d)), rng.normal(size=(N, C))
    Xbar = np.hstack([X, np.ones((N, 1))])
    for agg, s in (("sum", 1.0), ("mean", 1.0 / (N * C))):
        closed = 2 * s * np.kron(Xbar.T @ Xbar, np.eye(C))
        H = fh.hessian(model, theta, X, Y, loss="mse", agg=agg, backend=backend)
        G = fh.ggn(model, theta, X, Y, loss="mse", agg=agg, backend=backend)
        assert_close(H, closed, rtol=1e-12, atol=1e-13, what=f"hessian ({agg})")
        assert_close(G, closed, rtol=1e-12, atol=1e-13, what=f"ggn ({agg})")


@pytest.mark.parametrize("loss", ["mse", "crossentropy", "logitcrossentropy", "binarycrossentropy", "logitbinarycrossentropy"])
def test_mean_is_sum_times_s(backend, loss):
    output = {"crossentropy": "softmax", "binarycrossentropy": "sigmoid"}.get(loss)
    case = Case("agg", fh.Chain.mlp([2, 3, 3], "tanh", output=output), loss, "sum", 5)
    model, theta, X, Y, _ = _args(case)
    s = {"mse": 1 / 15, "crossentropy": 1 / 5, "logitcrossentropy": 1 / 5}.get(loss, 1 / 15)
    for fn in (fh.loss, fh.gradient, fh.hessian, fh.ggn, fh.empirical_fisher):
        total = fn(model, theta, X, Y, loss=loss, agg="sum", backend=backend)
        mean = fn(model, theta, X, Y, loss=loss, agg="mean", backend=backend)
        assert_close(mean, s * np.asarray(total), rtol=1e-12, atol=1e-15, what=fn.__name__)


@pytest.mark.parametrize("kind", ["ggn", "ef"])
def test_kron_factors_match_their_definition(case, backend, kind):
    """A from the layer inputs; G from per-sample bias gradients (δ_n) or bias Jacobians (B_n)."""
    model, theta, X, Y, kw = _args(case)
    factors = fh.kron(model, theta, X, Y, kind=kind, backend=backend, **kw)
    dense = model.dense_layers
    assert [f.layer for f in factors] == [f"layers.{i}" for i, _ in dense]
    s = ref.scale(case.loss, case.agg, *Y.shape)
    N = X.shape[0]
    # layer inputs from the reference forward pass of the truncated chains
    for (i, layer), f in zip(dense, factors):
        head = fh.Chain(*model.layers[:i]) if any(isinstance(l, fh.Dense) for l in model.layers[:i]) else None
        a = X if head is None else ref.forward(head, theta[: head.num_params], X)
        abar = np.hstack([a, np.ones((N, 1))]) if layer.bias else a
        assert_close(f.A, abar.T @ abar / N, rtol=1e-12, atol=1e-14, what=f"A of layers.{i}")
        assert f.G.shape == (layer.out_features, layer.out_features)
        # δ_n and B_n are the derivatives by the layer's bias; a layer without one gets a zero
        # bias added, which changes no output but has those derivatives.
        biased, theta_b = _with_zero_bias(model, theta, i)
        bias = biased.layout[f"layers.{i}.bias"].slice
        if kind == "ef":
            d = ref.per_sample_gradients(biased, theta_b, X, Y, case.loss)[:, bias]
            G = s * d.T @ d
        else:
            B = ref.param_jacobian(biased, theta_b, X)[:, :, bias]
            lam = ref.output_hessians(case.loss, ref.forward(biased, theta_b, X), Y)
            G = s * np.einsum("nco,ncd,ndp->op", B, lam, B)
        assert_close(f.G, G, rtol=1e-10, atol=1e-13, what=f"G of layers.{i}")


def _with_zero_bias(model, theta, i):
    """``model`` with layer ``i`` given a bias, and θ with that bias set to 0 (same outputs)."""
    layers = list(model.layers)
    layer = layers[i]
    if layer.bias:
        return model, theta
    layers[i] = fh.Dense(layer.in_features, layer.out_features, layer.activation, bias=True)
    biased = fh.Chain(*layers)
    arrays = model.unflatten(theta)
    arrays[f"layers.{i}.bias"] = np.zeros(layer.out_features)
    theta_b = biased.flatten(arrays)
    np.testing.assert_array_equal(ref.forward(biased, theta_b, np.ones((1, model.in_features))),
                                  ref.forward(model, theta, np.ones((1, model.in_features))))
    return biased, theta_b


@pytest.mark.parametrize("kind", ["ggn", "ef"])
def test_kron_is_exact_for_one_sample(backend, kind):
    case = Case("one", fh.Chain.mlp([3, 4, 2], "tanh"), "logitcrossentropy", "sum", 1)
    model, theta, X, Y, kw = _args(case)
    full = (fh.ggn if kind == "ggn" else fh.empirical_fisher)(model, theta, X, Y, backend=backend, **kw)
    for f, (i, _) in zip(fh.kron(model, theta, X, Y, kind=kind, backend=backend, **kw), model.dense_layers):
        w, b = model.layout[f"layers.{i}.weight"], model.layout[f"layers.{i}.bias"]
        block = full[w.offset : b.offset + b.size, w.offset : b.offset + b.size]
        assert_close(np.kron(f.A, f.G), block, rtol=1e-12, atol=1e-14, what=f"layers.{i}")


def test_float32_is_close_to_float64(backend):
    case = CASES[2]
    model, theta, X, Y, kw = _args(case)
    H64 = fh.hessian(model, theta, X, Y, backend=backend, **kw)
    H32 = fh.hessian(model, theta, X, Y, backend=backend, dtype="float32", **kw)
    assert H32.dtype == np.float32
    assert_close(H32, H64, rtol=1e-4, atol=1e-5, what="float32 hessian")


def test_results_own_their_memory_and_are_c_ordered(backend):
    case = CASES[0]
    model, theta, X, Y, kw = _args(case)
    for out in (fh.hessian(model, theta, X, Y, backend=backend, **kw), fh.param_jacobian(model, theta, X, backend=backend)):
        assert out.flags.c_contiguous and out.flags.owndata


def test_param_jacobian_matches_reference(case, backend):
    model, theta, X, _, _ = _args(case)
    J = fh.param_jacobian(model, theta, X, backend=backend)
    assert J.shape == (X.shape[0], model.out_features, model.num_params)
    assert_close(J, ref.param_jacobian(model, theta, X), rtol=1e-10, atol=1e-13, what="param_jacobian")
