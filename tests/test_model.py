"""The layer spec, the parameter layout and Flux's destructure order."""

import numpy as np
import pytest

import fluxhess as fh
import reference as ref


def test_flat_order_is_flux_destructure_order():
    """Chain(Dense(2=>1, tanh), Dense(1=>1)): [W1[1,1], W1[1,2], b1, W2[1,1], b2] (Flux docs)."""
    model = fh.Chain(fh.Dense(2, 1, "tanh"), fh.Dense(1, 1))
    theta = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    blocks = model.unflatten(theta)
    np.testing.assert_array_equal(blocks["layers.0.weight"], [[10.0, 20.0]])
    np.testing.assert_array_equal(blocks["layers.0.bias"], [30.0])
    np.testing.assert_array_equal(blocks["layers.1.weight"], [[40.0]])
    np.testing.assert_array_equal(blocks["layers.1.bias"], [50.0])
    # and the network computes tanh(W1 x + b1) * W2 + b2 with exactly those numbers
    x = np.array([[0.01, -0.02]])
    expected = np.tanh(10 * 0.01 + 20 * -0.02 + 30) * 40 + 50
    np.testing.assert_allclose(fh.forward(model, theta, x, backend="jax"), [[expected]], rtol=1e-15)


def test_weights_are_column_major():
    model = fh.Chain(fh.Dense(3, 2, bias=False))
    W = np.arange(6.0).reshape(2, 3)  # (out, in)
    theta = model.flatten({"layers.0.weight": W})
    np.testing.assert_array_equal(theta, W.ravel(order="F"))
    np.testing.assert_array_equal(ref.unflatten_fortran(model, theta)["layers.0.weight"], W)
    X = np.random.default_rng(0).normal(size=(4, 3))
    np.testing.assert_allclose(fh.forward(model, theta, X, backend="jax"), X @ W.T, rtol=1e-14)


def test_unflatten_round_trips_and_layout_covers_theta():
    model = fh.Chain(fh.Flatten(), fh.Dense(4, 3, "relu"), fh.Dense(3, 2, bias=False), fh.Activation("softmax"))
    theta = model.init(seed=3)
    assert theta.shape == (model.num_params,) == (4 * 3 + 3 + 3 * 2,)
    np.testing.assert_array_equal(model.flatten(model.unflatten(theta)), theta)
    assert model.layout.names == ["layers.1.weight", "layers.1.bias", "layers.2.weight"]
    offsets = [(b.offset, b.size) for b in model.layout]
    assert offsets == [(0, 12), (12, 3), (15, 6)]


def test_init_is_glorot_uniform_with_zero_biases():
    model = fh.Chain.mlp([30, 50, 20], "tanh")
    theta = model.init(seed=0)
    for block in model.layout:
        values = theta[block.slice]
        if block.name.endswith("bias"):
            assert np.all(values == 0)
        else:
            out, inp = block.shape
            limit = np.sqrt(6 / (inp + out))
            assert np.abs(values).max() <= limit and np.abs(values).max() > 0.9 * limit
            assert abs(values.std() - limit / np.sqrt(3)) < 0.1 * limit
    assert model.init(seed=0, dtype="float32").dtype == np.float32
    np.testing.assert_array_equal(model.init(seed=1), model.init(seed=1))


def test_to_flux_source():
    model = fh.Chain(fh.Flatten(), fh.Dense(2, 5, "tanh"), fh.Dense(5, 1, bias=False), fh.Activation("sigmoid"), fh.Activation("softmax"))
    assert model.to_flux() == (
        "Chain(Flux.flatten, Dense(2 => 5, tanh), Dense(5 => 1; bias=false), Base.Fix1(broadcast, sigmoid), softmax)"
    )


def test_mlp_shortcut():
    model = fh.Chain.mlp([3, 8, 8, 2], activation="relu", output="softmax")
    assert [type(l).__name__ for l in model.layers] == ["Dense", "Dense", "Dense", "Activation"]
    assert model.layers[0].activation == "relu" and model.layers[2].activation == "identity"
    assert (model.in_features, model.out_features) == (3, 2)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: fh.Chain(fh.Dense(2, 3), fh.Dense(4, 1)), "layer 1 expects 4 inputs but layer 0 gives 3"),
        (lambda: fh.Dense(2, 3, "softmax"), "own layer"),
        (lambda: fh.Dense(2, 3, "relu6"), "activation must be one of"),
        (lambda: fh.Dense(0, 3), "positive integer"),
        (lambda: fh.Chain(), "at least one layer"),
        (lambda: fh.Chain(fh.Flatten, fh.Dense(2, 1)), "Flatten()"),
        (lambda: fh.Chain(fh.Dense(2, 2), input_shape=(3, 2)), "end it with Flatten()"),
        (lambda: fh.Chain.mlp([3]), "at least [in, out]"),
    ],
)
def test_bad_specs_raise_clear_errors(build, message):
    with pytest.raises(fh.InputError, match=None) as info:
        build()
    assert message in str(info.value)


def test_layout_lookup_by_name_names_the_alternatives():
    model = fh.Chain(fh.Dense(2, 1))
    with pytest.raises(fh.UnknownNameError, match="layers.0.weight"):
        model.layout["layers.3.weight"]


def test_init_of_a_model_too_large_for_memory_is_refused_before_allocating(monkeypatch):
    """Chain.mlp([40000, 40000, 1]).init() (P ≈ 1.6e9, 13 GB of float64) asked for the memory
    and died of MemoryError or swapped; now the guard refuses it first (1 GiB of room faked)."""
    from fluxhess import _memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**30)
    with pytest.raises(fh.MemoryBudgetError, match=r"init of shape \(1600080001,\) needs about .*a smaller model"):
        fh.Chain.mlp([40000, 40000, 1]).init()
    assert fh.Chain.mlp([40, 40, 1]).init().shape == (40 * 40 + 40 + 40 + 1,)
