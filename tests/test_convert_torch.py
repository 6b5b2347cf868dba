"""from_torch: the same outputs and input Hessians as the torch module, and clear refusals."""

import copy

import numpy as np
import pytest

import fluxhess as fh
from conftest import assert_close

torch = pytest.importorskip("torch", reason="torch is not installed (make peers installs the CPU wheel)")
nn = torch.nn


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
    from torch.func import hessian, vmap

    x = torch.as_tensor(X, dtype=torch.float64)
    with torch.no_grad():
        out = net(x).numpy()
    return out, vmap(hessian(net))(x).detach().numpy()


def test_from_torch_maps_each_activation_forward_and_input_hessian(backend):
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
    nn = torch.nn
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    model, theta = fh.from_torch(net)
    arrays = model.unflatten(theta)
    state = {k: v.double().numpy() for k, v in net.state_dict().items()}
    assert sorted(arrays) == sorted(f"layers.{k}" for k in state)
    for key, value in state.items():
        np.testing.assert_array_equal(arrays[f"layers.{key}"], value)


def test_from_torch_flatten_first():
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
        (lambda nn: nn.BatchNorm1d(4), "BatchNorm1d.*training mode.*eval"),
        (lambda nn: nn.Sequential(nn.PReLU()), "PReLU"),
    ],
    ids=["gelu-exact", "leaky-0.2", "elu-0.5", "softplus-threshold", "softmax-dim0", "batchnorm-training", "nested"],
)
def test_from_torch_names_the_layer_it_cannot_map(make, match):
    nn = torch.nn
    net = nn.Sequential(nn.Linear(3, 4), make(nn), nn.Linear(4, 1))
    with pytest.raises(fh.UnsupportedModelError, match=f"layer 1[ .].*{match}"):
        fh.from_torch(net)


def test_from_torch_rejects_a_module_that_is_not_sequential():
    with pytest.raises(fh.UnsupportedModelError, match="torch.nn.Sequential"):
        fh.from_torch(torch.nn.Linear(3, 1))


def test_from_torch_names_parameters_without_values():
    nn = torch.nn
    on_meta = nn.Sequential(nn.Linear(3, 4, device="meta"), nn.Tanh(), nn.Linear(4, 1, device="meta"))
    with pytest.raises(fh.InputError, match=r"sequential has parameters on the meta device.*'0.weight', shape \(4, 3\).*to_empty"):
        fh.from_torch(on_meta)
    complex_weights = nn.Sequential(nn.Linear(3, 1, dtype=torch.complex64))
    with pytest.raises(fh.InputError, match="sequential parameter '0.weight' must be real floating point; got torch.complex64"):
        fh.from_torch(complex_weights)


def test_from_torch_refuses_a_module_used_twice_in_a_sequential():
    """nn.Sequential(lin, Tanh(), lin): one Linear's 12 parameters gave a Chain of P = 24."""
    lin = nn.Linear(3, 3)
    assert sum(p.numel() for p in nn.Sequential(lin, nn.Tanh(), lin).parameters()) == 12
    with pytest.raises(fh.UnsupportedModelError, match=r"parameter 2.weight is the same tensor as 0.weight"):
        fh.from_torch(nn.Sequential(lin, nn.Tanh(), lin))
    other = nn.Linear(3, 3)
    other.weight = lin.weight  # a tied weight in two different modules
    with pytest.raises(fh.UnsupportedModelError, match="shared weights"):
        fh.from_torch(nn.Sequential(lin, nn.Tanh(), other))
    model, theta = fh.from_torch(nn.Sequential(lin, nn.Tanh(), copy.deepcopy(lin)))  # separate copies are fine
    assert theta.shape == (24,) == (model.num_params,)


def test_from_torch_refuses_a_forward_that_calls_one_linear_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x, t):
            return self.lin(torch.tanh(self.lin(torch.cat([x, t], dim=1))))

    with pytest.raises(fh.UnsupportedModelError, match="shared weights"):
        fh.from_torch(Twice(), inputs=(torch.randn(4, 2), torch.randn(4, 1)))


def test_from_torch_refuses_keyword_only_inputs_by_name():
    class KeywordT(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x, *, t):
            return self.lin(torch.cat([x, t], dim=1))

    with pytest.raises(fh.UnsupportedModelError, match=r"keyword-only or variadic parameters \(t\)"):
        fh.from_torch(KeywordT(), inputs=(torch.randn(4, 2), torch.randn(4, 1)))
