"""Every quantity of a small CNN on the JAX engine equals PyTorch's autodiff (torch.func) of
the same network written with torch.nn.functional, θ mapped block by block; float64, 1e-10."""

from __future__ import annotations

import numpy as np
import pytest

import fluxhess as fh

torch = pytest.importorskip("torch")
F = torch.nn.functional
tf = torch.func

SHAPE, N, C = (2, 6, 5), 5, 3
TOL = dict(rtol=1e-10, atol=1e-12)

MODEL = fh.Chain(
    fh.CrossCor((3, 3), 2, 3, "tanh", padding=1),
    fh.BatchNorm(3, mean=(0.1, -0.2, 0.3), var=(1.5, 0.7, 1.1)),
    fh.SkipConnection(fh.Conv((3, 2), 3, 3, "softplus", padding="same")),
    fh.MaxPool((2, 2), padding=((0, 0), (1, 0))),
    fh.Conv((2, 2), 3, 2, "tanh", stride=1, dilation=(1, 2)),
    fh.MeanPool((1, 1)),
    fh.Flatten(),
    fh.LayerNorm(4),
    fh.Dense(4, C),
    input_shape=SHAPE,
)


def _blocks(theta):
    """θ (a torch vector) as Flux's arrays, each read column-major: the C-order reshape reversed."""
    out = {}
    for b in MODEL.layout:
        a = theta[b.offset : b.offset + b.size].reshape(tuple(reversed(b.shape)))
        out[b.name] = a.permute(*reversed(range(a.ndim)))
    return out


def _kernel(w_flux, flip):
    w = w_flux.permute(*reversed(range(w_flux.ndim)))  # (cout, cin, k_h, k_w)
    return torch.flip(w, dims=(2, 3)) if flip else w


def torch_forward(theta, x):
    """One sample ``x`` ``(2, 6, 5)`` through the network, in torch."""
    p = _blocks(theta)
    a = x[None]
    a = torch.tanh(F.conv2d(a, _kernel(p["layers.0.weight"], False), p["layers.0.bias"], padding=1))
    bn = MODEL.layers[1]
    mean, var = torch.tensor(bn.mean, dtype=a.dtype), torch.tensor(bn.var, dtype=a.dtype)
    a = F.batch_norm(a, mean, var, p["layers.1.scale"], p["layers.1.bias"], training=False, eps=bn.eps)
    # Flux's SamePad for (3, 2): (1, 1) rows, (1, 0) columns.
    s = F.conv2d(F.pad(a, (1, 0, 1, 1)), _kernel(p["layers.2.0.weight"], True), p["layers.2.0.bias"])
    a = a + F.softplus(s)
    a = F.max_pool2d(F.pad(a, (1, 0, 0, 0), value=-np.inf), 2)
    a = torch.tanh(F.conv2d(a, _kernel(p["layers.4.weight"], True), p["layers.4.bias"], dilation=(1, 2)))
    a = a.reshape(-1)
    # Written out: torch.func's forward-over-reverse of F.layer_norm in its weight is wrong
    # (an asymmetric Hessian; checked against finite differences of the gradient).
    a = (a - a.mean()) / torch.sqrt(a.var(unbiased=False) + 1e-5) * p["layers.7.scale"] + p["layers.7.bias"]
    return p["layers.8.weight"] @ a + p["layers.8.bias"]


def _loss(loss, yhat, y):
    if loss == "mse":
        return ((yhat - y) ** 2).sum()
    return -(y * torch.log_softmax(yhat, -1)).sum()


def _data(loss, seed=0):
    rng = np.random.default_rng(seed)
    theta = MODEL.init(seed) + 0.3 * rng.normal(size=MODEL.num_params)
    X = rng.normal(size=(N, *SHAPE))
    y = rng.normal(size=(N, C)) if loss == "mse" else np.eye(C)[rng.integers(0, C, N)]
    return theta, X, y


def _torch(theta, X, y):
    return torch.tensor(theta), torch.tensor(X), torch.tensor(y)


@pytest.fixture(scope="module", params=["logitcrossentropy", pytest.param("mse", marks=pytest.mark.slow)])
def case(request):
    loss = request.param
    theta, X, y = _data(loss)
    t, x, yy = _torch(theta, X, y)
    total = lambda th: sum(_loss(loss, torch_forward(th, x[n]), yy[n]) for n in range(N))  # noqa: E731
    J = torch.stack([tf.jacrev(torch_forward)(t, x[n]) for n in range(N)])  # (N, C, P)
    lam = torch.stack([tf.hessian(lambda f, n=n: _loss(loss, f, yy[n]))(torch_forward(t, x[n])) for n in range(N)])
    g = torch.stack([tf.grad(lambda th, n=n: _loss(loss, torch_forward(th, x[n]), yy[n]))(t) for n in range(N)])
    ref = {
        "forward": torch.stack([torch_forward(t, x[n]) for n in range(N)]).detach().numpy(),
        "gradient": tf.grad(total)(t).numpy(),
        "hessian": tf.hessian(total)(t).numpy(),
        "ggn": torch.einsum("ncp,ncd,ndq->pq", J, lam, J).numpy(),
        "empirical_fisher": (g.T @ g).numpy(),
        "param_jacobian": J.numpy(),
    }
    return loss, theta, X, y, ref


def test_forward_gradient_and_curvatures_match_torch_func(case):
    loss, theta, X, y, ref = case
    kw = dict(loss=loss, backend="jax")
    np.testing.assert_allclose(fh.forward(MODEL, theta, X, backend="jax"), ref["forward"], **TOL)
    np.testing.assert_allclose(fh.gradient(MODEL, theta, X, y, **kw), ref["gradient"], **TOL)
    for name in ("hessian", "ggn", "empirical_fisher"):
        M = getattr(fh, name)(MODEL, theta, X, y, **kw)
        np.testing.assert_allclose(M, ref[name], **TOL, err_msg=name)
        kind = {"hessian": "hessian", "ggn": "ggn", "empirical_fisher": "ef"}[name]
        np.testing.assert_allclose(fh.diagonal(MODEL, theta, X, y, kind=kind, **kw), np.diag(ref[name]), **TOL, err_msg=f"{name} diagonal")
        V = np.random.default_rng(1).normal(size=(MODEL.num_params, 2))
        np.testing.assert_allclose(fh.hvp(MODEL, theta, X, y, V, kind=kind, **kw), ref[name] @ V, **TOL, err_msg=f"{name} hvp")
    np.testing.assert_allclose(fh.param_jacobian(MODEL, theta, X, backend="jax"), ref["param_jacobian"], **TOL)


def test_input_derivatives_match_torch_func():
    theta, X, _ = _data("mse")
    t, x, _ = _torch(theta, X, X[:, :1, :1, :1])
    flat = lambda v: torch_forward(t, v.reshape(SHAPE))  # noqa: E731
    d = int(np.prod(SHAPE))
    J = torch.stack([tf.jacrev(flat)(x[n].reshape(d)) for n in range(N)]).numpy()
    H = torch.stack([tf.hessian(flat)(x[n].reshape(d)) for n in range(N)]).numpy()
    np.testing.assert_allclose(fh.input_jacobian(MODEL, theta, X, backend="jax"), J, **TOL)
    np.testing.assert_allclose(fh.input_hessian(MODEL, theta, X, backend="jax"), H, **TOL)
    np.testing.assert_allclose(fh.laplacian(MODEL, theta, X, backend="jax"), np.trace(H, axis1=2, axis2=3), **TOL)
    # The JAX-native transform takes the samples flattened, (N, d); float64 where JAX has it on.
    import jax

    with jax.enable_x64(True):
        lap = fh.jax.laplacian(MODEL)(theta, X.reshape(N, d))
    np.testing.assert_allclose(np.asarray(lap), np.trace(H, axis1=2, axis2=3), **TOL)


def test_kron_is_refused_with_the_reason():
    """KFAC factors Conv and Dense weights; this model's BatchNorm has γ, β: refused, naming it."""
    theta, X, y = _data("mse")
    with pytest.raises(fh.UnsupportedModelError, match=r"layer 1 \(BatchNorm.*not a Dense or Conv weight"):
        fh.kron(MODEL, theta, X, y, backend="jax")
