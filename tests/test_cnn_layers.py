"""The convolutional vocabulary against its frameworks: each layer's JAX function equals
PyTorch's functional op (float64) and Flax's module on the same numbers, with θ read in
Flux's destructure order (a kernel block is Flux's ``(k_w, k_h, cin, cout)`` column-major,
i.e. PyTorch's ``(cout, cin, k_h, k_w)`` in C order)."""

from __future__ import annotations

import numpy as np
import pytest

import fluxhess as fh

torch = pytest.importorskip("torch")
F = torch.nn.functional

RNG = np.random.default_rng(7)


def _theta(model, seed=0):
    """Random θ with every block non-trivial (BatchNorm/LayerNorm scales away from 1)."""
    return np.random.default_rng(seed).normal(size=model.num_params)


def _forward(model, theta, X):
    return fh.forward(model, theta, X, backend="jax")


def _t(a):
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)


def _torch_kernel(model, theta, i, flip):
    """Layer ``i``'s kernel in PyTorch's layout from θ, two ways that must agree."""
    w_flux = model.unflatten(theta)[f"layers.{i}.weight"]  # Flux's (k…, cin, cout), column-major
    layer = model.layers[i]
    block = model.layout[f"layers.{i}.weight"]
    w_c = theta[block.slice].reshape(layer.weight_shape)  # the C-order reading, (cout, cin, k…)
    np.testing.assert_array_equal(w_flux.transpose(), w_c)
    w = np.flip(w_c, axis=tuple(range(2, w_c.ndim))) if flip else w_c
    return _t(w)


def _bias(model, theta, i):
    return _t(model.unflatten(theta)[f"layers.{i}.bias"])


def _pad(x, pads):
    """PyTorch's F.pad takes (lo, hi) from the last axis backwards."""
    return F.pad(x, tuple(v for pair in reversed(pads) for v in pair))


CONVS = [
    # (layer, sample shape)
    (fh.CrossCor((3, 3), 2, 4, "tanh", stride=2, padding=((1, 0), (2, 1)), dilation=(2, 1)), (2, 9, 8)),
    (fh.Conv((3, 3), 2, 4, "relu", padding="same"), (2, 6, 7)),
    (fh.Conv((4, 2), 4, 6, padding="same", groups=2, stride=(1, 2), bias=False), (4, 7, 6)),
    (fh.Conv((3,), 3, 2, "softplus", padding=1, dilation=2), (3, 11)),
    (fh.CrossCor((2, 3, 2), 2, 3, stride=(1, 2, 1)), (2, 4, 5, 3)),
]


@pytest.mark.parametrize("layer, shape", CONVS, ids=repr)
def test_conv_matches_torch(layer, shape):
    model = fh.Chain(layer, fh.Flatten(), input_shape=shape)
    theta = _theta(model)
    X = RNG.normal(size=(3, *shape))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[layer.rank]
    w = _torch_kernel(model, theta, 0, flip=isinstance(layer, fh.Conv) and layer.flips_kernel)
    b = _bias(model, theta, 0) if layer.bias else None
    z = conv(_pad(_t(X), layer.pads), w, b, stride=layer.stride, dilation=layer.dilation, groups=layer.groups)
    act = {"identity": lambda v: v, "tanh": torch.tanh, "relu": torch.relu, "softplus": F.softplus}[layer.activation]
    expected = act(z).reshape(3, -1).numpy()
    np.testing.assert_allclose(_forward(model, theta, X), expected, rtol=1e-12, atol=1e-12)


def test_flux_conv_flips_the_kernel_and_crosscor_does_not():
    shape, X = (1, 5, 5), RNG.normal(size=(2, 1, 5, 5))
    conv = fh.Chain(fh.Conv((3, 2), 1, 1), fh.Flatten(), input_shape=shape)
    cross = fh.Chain(fh.CrossCor((3, 2), 1, 1), fh.Flatten(), input_shape=shape)
    theta = _theta(conv)
    k = theta[:6].reshape(3, 2)  # C-order (k_h, k_w) reading of one channel's kernel
    flipped = np.concatenate([k[::-1, ::-1].ravel(), theta[6:]])
    np.testing.assert_allclose(_forward(conv, theta, X), _forward(cross, flipped, X), rtol=1e-13)
    assert not np.allclose(_forward(conv, theta, X), _forward(cross, theta, X))


def test_same_padding_is_fluxs_larger_half_first():
    assert fh.Conv((4, 3), 1, 1, padding="same").pads == ((2, 1), (1, 1))
    assert fh.Conv((3,), 1, 1, padding="same", dilation=2).pads == ((2, 2),)
    model = fh.Chain(fh.Conv((4, 4), 1, 1, padding="same"), fh.Flatten(), input_shape=(1, 5, 5))
    assert model.shapes[1] == (1, 5, 5)


POOLS = [
    (fh.MeanPool((2, 2)), (3, 6, 4), lambda x: F.avg_pool2d(x, 2)),
    (fh.MeanPool((3, 2), stride=(2, 1), padding=1), (2, 7, 5),
     lambda x: F.avg_pool2d(x, (3, 2), stride=(2, 1), padding=1, count_include_pad=True)),
    (fh.MaxPool((2, 3), stride=1, padding=1), (2, 5, 6), lambda x: F.max_pool2d(x, (2, 3), stride=1, padding=1)),
    (fh.MaxPool((2,)), (3, 8), lambda x: F.max_pool1d(x, 2)),
    (fh.MeanPool((2, 2, 2)), (2, 4, 4, 2), lambda x: F.avg_pool3d(x, 2)),
    (fh.AdaptiveMeanPool((2, 3)), (2, 6, 6), lambda x: F.adaptive_avg_pool2d(x, (2, 3))),
    (fh.GlobalMeanPool(), (3, 5, 4), lambda x: F.adaptive_avg_pool2d(x, 1)),
]


@pytest.mark.parametrize("pool, shape, reference", POOLS, ids=lambda v: repr(v) if not callable(v) else "")
def test_pools_match_torch(pool, shape, reference):
    # A CrossCor 1x1 in front gives the chain parameters; its identity kernel keeps x as it is.
    C = shape[0]
    eye = fh.CrossCor((1,) * (len(shape) - 1), C, C, bias=False)
    model = fh.Chain(eye, pool, fh.Flatten(), input_shape=shape)
    theta = np.eye(C).ravel()
    X = RNG.normal(size=(3, *shape))
    expected = reference(_t(X)).reshape(3, -1).numpy()
    np.testing.assert_allclose(_forward(model, theta, X), expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("window, shape", [((2, 2), (2, 5, 7)), ((3,), (3, 9)), ((2, 2), (1, 4, 4))])
def test_tiled_max_pool_pullback_matches_torch(window, shape):
    """A max pool whose windows tile the input takes a masked sum (not ``reduce_window``): its pullback
    equals PyTorch's, ties (a window of zeros, as after a relu) sent to the first largest entry."""
    import jax

    from fluxhess._backends.jax.layers import APPLY

    pool = fh.MaxPool(window)
    X = RNG.normal(size=(3, *shape)).astype(np.float32)  # JAX's default precision; both pick entries exactly
    X[0, 0, : window[0]] = 0.0  # a window of ties
    G = RNG.normal(size=(3, *pool.output_shape(shape))).astype(np.float32)
    ours, pullback = jax.vjp(lambda a: APPLY[fh.MaxPool](pool, None, 0, a), X)
    x = torch.from_numpy(X).requires_grad_()
    pooled = (F.max_pool1d if len(window) == 1 else F.max_pool2d)(x, window)
    pooled.backward(torch.from_numpy(G))
    np.testing.assert_array_equal(np.asarray(ours), pooled.detach().numpy())
    np.testing.assert_array_equal(np.asarray(pullback(G)[0]), x.grad.numpy())


def test_batchnorm_inference_matches_torch_and_theta_is_beta_then_gamma():
    C = 3
    mean, var = RNG.normal(size=C), RNG.uniform(0.5, 2, size=C)
    bn = fh.BatchNorm(C, "relu", mean=mean, var=var, eps=1e-3)
    model = fh.Chain(bn, fh.Flatten(), input_shape=(C, 4, 5))
    assert model.layout.names == ["layers.0.bias", "layers.0.scale"]
    theta = _theta(model)
    X = RNG.normal(size=(2, C, 4, 5))
    beta, gamma = _t(theta[:C]), _t(theta[C:])
    expected = torch.relu(F.batch_norm(_t(X), _t(mean), _t(var), gamma, beta, training=False, eps=1e-3))
    np.testing.assert_allclose(_forward(model, theta, X), expected.reshape(2, -1).numpy(), rtol=1e-12)
    # BatchNorm1d on vectors: channels are the features.
    model1 = fh.Chain(fh.Dense(4, C), fh.BatchNorm(C, mean=mean, var=var), input_shape=(4,))
    theta1, X1 = _theta(model1), RNG.normal(size=(5, 4))
    W, b = model1.unflatten(theta1)["layers.0.weight"], model1.unflatten(theta1)["layers.0.bias"]
    z = _t(X1 @ W.T + b)
    expected1 = F.batch_norm(z, _t(mean), _t(var), _t(theta1[-C:]), _t(theta1[-2 * C : -C]), training=False, eps=1e-5)
    np.testing.assert_allclose(_forward(model1, theta1, X1), expected1.numpy(), rtol=1e-12)


@pytest.mark.parametrize("shape, normalized", [((3, 4, 5), (3, 4, 5)), ((3, 4, 5), (4, 5)), ((3, 4, 5), (5,))])
def test_layernorm_matches_torch_and_theta_is_gamma_then_beta(shape, normalized):
    ln = fh.LayerNorm(normalized, eps=1e-4)
    model = fh.Chain(ln, fh.Flatten(), input_shape=shape)
    assert model.layout.names == ["layers.0.scale", "layers.0.bias"]
    assert model.layout["layers.0.scale"].shape == tuple(reversed(normalized))  # Flux's size
    theta = _theta(model)
    n = int(np.prod(normalized))
    X = RNG.normal(size=(2, *shape))
    gamma, beta = _t(theta[:n].reshape(normalized)), _t(theta[n:].reshape(normalized))
    expected = F.layer_norm(_t(X), normalized, gamma, beta, eps=1e-4)
    np.testing.assert_allclose(_forward(model, theta, X), expected.reshape(2, -1).numpy(), rtol=1e-12)


def test_residual_blocks_and_dropout_match_torch():
    C, shape = 2, (2, 5, 5)
    model = fh.Chain(
        fh.SkipConnection(fh.CrossCor((3, 3), C, C, "tanh", padding=1), fh.Dropout(0.3)),
        fh.Parallel([fh.CrossCor((1, 1), C, C), fh.BatchNorm(C)], fh.CrossCor((3, 3), C, C, padding="same"), ()),
        fh.Flatten(),
        input_shape=shape,
    )
    assert model.layout.names == [
        "layers.0.0.weight", "layers.0.0.bias", "layers.1.0.0.weight", "layers.1.0.0.bias",
        "layers.1.0.1.bias", "layers.1.0.1.scale", "layers.1.1.0.weight", "layers.1.1.0.bias",
    ]
    theta = _theta(model)
    X = RNG.normal(size=(3, *shape))
    parts = {b.name: _t(theta[b.slice].reshape(tuple(reversed(b.shape)))) for b in model.layout}
    x = _t(X)
    h = x + torch.tanh(F.conv2d(x, parts["layers.0.0.weight"], parts["layers.0.0.bias"], padding=1))
    a = F.conv2d(h, parts["layers.1.0.0.weight"], parts["layers.1.0.0.bias"])
    a = F.batch_norm(a, torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64),
                     parts["layers.1.0.1.scale"], parts["layers.1.0.1.bias"], training=False, eps=1e-5)
    c = F.conv2d(h, parts["layers.1.1.0.weight"], parts["layers.1.1.0.bias"], padding=1)
    expected = (a + c + h).reshape(3, -1).numpy()
    np.testing.assert_allclose(_forward(model, theta, X), expected, rtol=1e-12)


def test_lenet_matches_torch_sequential_with_theta_in_destructure_order():
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16, 10), nn.Tanh(), nn.Linear(10, 4),
    ).double()
    model = fh.Chain(
        fh.CrossCor((5, 5), 1, 3, "relu", padding=2), fh.MeanPool((2, 2)),
        fh.CrossCor((3, 3), 3, 4, "relu"), fh.MaxPool((2, 2)),
        fh.Flatten(), fh.Dense(16, 10, "tanh"), fh.Dense(10, 4),
        input_shape=(1, 12, 12),
    )
    # θ: per layer the PyTorch array in C order is Flux's array column-major; Linear's W (out, in) column-major.
    theta = np.concatenate([
        p.detach().numpy().ravel(order="F" if p.ndim == 2 else "C") for p in net.parameters()
    ])
    X = RNG.normal(size=(4, 1, 12, 12))
    np.testing.assert_allclose(_forward(model, theta, X), net(_t(X)).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(_forward(model, theta, X.reshape(4, -1)), net(_t(X)).detach().numpy(), rtol=1e-12)


# --- Flax ----------------------------------------------------------------------


def test_layers_match_flax():
    nn = pytest.importorskip("flax.linen")
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        X = RNG.normal(size=(2, 3, 7, 6))  # NCHW for the spec
        x_nhwc = jnp.asarray(X.transpose(0, 2, 3, 1))
        conv = nn.Conv(4, (3, 2), strides=(2, 1), padding=((1, 1), (0, 1)), kernel_dilation=(1, 2), param_dtype=jnp.float64)
        v = conv.init(jax.random.PRNGKey(0), x_nhwc)
        kernel = np.asarray(v["params"]["kernel"])  # (k_h, k_w, cin, cout)
        bias = np.asarray(v["params"]["bias"])
        layer = fh.CrossCor((3, 2), 3, 4, stride=(2, 1), padding=((1, 1), (0, 1)), dilation=(1, 2))
        model = fh.Chain(layer, fh.Flatten(), input_shape=(3, 7, 6))
        theta = np.concatenate([kernel.transpose(3, 2, 0, 1).ravel(), bias])  # PyTorch's layout, C order
        expected = np.asarray(conv.apply(v, x_nhwc)).transpose(0, 3, 1, 2).reshape(2, -1)
        np.testing.assert_allclose(_forward(model, theta, X), expected, rtol=1e-12)

        eye = fh.CrossCor((1, 1), 3, 3, bias=False)
        for pool, fn in [
            (fh.MeanPool((2, 2), stride=1, padding=((1, 0), (0, 1))),
             lambda x: nn.avg_pool(x, (2, 2), strides=(1, 1), padding=((1, 0), (0, 1)), count_include_pad=True)),
            (fh.MaxPool((3, 2), stride=(2, 2)), lambda x: nn.max_pool(x, (3, 2), strides=(2, 2))),
        ]:
            model = fh.Chain(eye, pool, fh.Flatten(), input_shape=(3, 7, 6))
            expected = np.asarray(fn(x_nhwc)).transpose(0, 3, 1, 2).reshape(2, -1)
            np.testing.assert_allclose(_forward(model, np.eye(3).ravel(), X), expected, rtol=1e-13)

        bn = nn.BatchNorm(use_running_average=True, epsilon=1e-3, param_dtype=jnp.float64)
        vb = bn.init(jax.random.PRNGKey(1), x_nhwc)
        mean, var = RNG.normal(size=3), RNG.uniform(0.5, 2, size=3)
        scale, offs = RNG.normal(size=3), RNG.normal(size=3)
        vb = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(offs)},
              "batch_stats": {"mean": jnp.asarray(mean), "var": jnp.asarray(var)}}
        model = fh.Chain(fh.BatchNorm(3, mean=mean, var=var, eps=1e-3), fh.Flatten(), input_shape=(3, 7, 6))
        expected = np.asarray(bn.apply(vb, x_nhwc)).transpose(0, 3, 1, 2).reshape(2, -1)
        np.testing.assert_allclose(_forward(model, np.concatenate([offs, scale]), X), expected, rtol=1e-12)

        ln = nn.LayerNorm(epsilon=1e-6, param_dtype=jnp.float64)
        x2 = jnp.asarray(RNG.normal(size=(4, 5)))
        g, b = RNG.normal(size=5), RNG.normal(size=5)
        expected = np.asarray(ln.apply({"params": {"scale": jnp.asarray(g), "bias": jnp.asarray(b)}}, x2))
        model = fh.Chain(fh.Dense(5, 5), fh.LayerNorm(5, eps=1e-6))
        theta = np.concatenate([np.eye(5).ravel(), np.zeros(5), g, b])
        np.testing.assert_allclose(_forward(model, theta, np.asarray(x2)), expected, rtol=1e-12)


# --- Flux source and spec errors -------------------------------------------------


def test_flux_source_of_every_layer():
    mean, var = (0.5, -1.0), (2.0, 0.25)
    model = fh.Chain(
        fh.Conv((5, 3), 1, 2, "relu", stride=(2, 1), padding=((1, 2), (0, 1)), dilation=(1, 2)),
        fh.BatchNorm(2, mean=mean, var=var),
        fh.SkipConnection(fh.CrossCor((3, 3), 2, 2, padding="same"), fh.Dropout(0.25)),
        fh.Parallel(fh.Conv((1, 1), 2, 2, groups=2), ()),
        fh.MaxPool((2, 2), stride=1), fh.MeanPool((2, 1), padding="same"),
        fh.AdaptiveMeanPool((2, 2)), fh.LayerNorm((2, 2), "tanh", eps=1e-6), fh.GlobalMeanPool(), fh.Flatten(),
        fh.Dense(2, 1),
        input_shape=(1, 12, 11),
    )
    assert model.to_flux() == (
        "Chain(Conv((3, 5), 1 => 2, relu; stride=(1, 2), pad=(0, 1, 1, 2), dilation=(2, 1)), "
        "let l = Flux.f64(BatchNorm(2; eps=1e-05, momentum=0.1)); copyto!(l.μ, [0.5, -1.0]); copyto!(l.σ², [2.0, 0.25]); l end, "
        "SkipConnection(Chain(CrossCor((3, 3), 2 => 2; pad=SamePad()), Dropout(0.25)), +), "
        "Parallel(+, Conv((1, 1), 2 => 2; groups=2), identity), "
        "MaxPool((2, 2); stride=(1, 1)), MeanPool((1, 2); pad=SamePad()), AdaptiveMeanPool((2, 2)), "
        "LayerNorm(2, 2, tanh; eps=1e-06), GlobalMeanPool(), Flux.flatten, Dense(2 => 1))"
    )
    assert model.layout["layers.0.weight"].shape == (3, 5, 1, 2)
    assert eval(repr(model), vars(fh)) == model  # the repr rebuilds the spec  # noqa: S307


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: fh.Chain(fh.Conv((3, 3), 1, 2), fh.Flatten()), "needs input_shape"),
        (lambda: fh.Chain(fh.Conv((3, 3), 2, 2), fh.Flatten(), input_shape=(1, 5, 5)), "expects 2 input channels"),
        (lambda: fh.Chain(fh.Conv((3, 3), 1, 2), input_shape=(1, 5, 5)), "end it with Flatten()"),
        (lambda: fh.Chain(fh.Conv((7, 7), 1, 2), fh.Flatten(), input_shape=(1, 5, 5)), "larger than the padded input"),
        (lambda: fh.Conv(3, 1, 2), "tuple of 1 to 3 ints"),
        (lambda: fh.Conv((3, 3), 3, 2, groups=2), "must divide"),
        (lambda: fh.Conv((3, 3), 1, 2, padding=((1,), (1, 1))), "(lo, hi)"),
        (lambda: fh.CrossCor((3, 3), 2, 2, groups=2), "no groups"),
        (lambda: fh.BatchNorm(2, var=(1.0, -1.0)), ">= 0"),
        (lambda: fh.Chain(fh.SkipConnection(fh.Conv((3, 3), 1, 1)), fh.Flatten(), input_shape=(1, 5, 5)), "keep the sample shape"),
        (lambda: fh.Chain(fh.Parallel(fh.Dense(2, 3), fh.Dense(2, 2)), input_shape=(2,)), "one sample shape"),
        (lambda: fh.Chain(fh.SkipConnection("relu"), input_shape=(2,)), "must be one of"),
        (lambda: fh.Chain(fh.MaxPool((2, 2)), fh.Flatten(), input_shape=(1, 4, 4)), "at least one layer with parameters"),
        (lambda: fh.Chain(fh.LayerNorm((4, 4)), fh.Flatten(), input_shape=(1, 4, 5)), "trailing axes"),
    ],
)
def test_bad_cnn_specs_raise_clear_errors(build, message):
    with pytest.raises(fh.InputError) as info:
        build()
    assert message in str(info.value)
