"""torch_params: θ (Flux order) ↔ torch.nn.utils.parameters_to_vector, both ways."""

import numpy as np
import pytest

import fluxhess as fh
from conftest import assert_close

torch = pytest.importorskip("torch", reason="torch_params needs torch (make peers installs it)")
nn = torch.nn


def _vector(net):
    return torch.nn.utils.parameters_to_vector(net.parameters())


def test_sequential_theta_and_vector_against_parameters_to_vector():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 2)).double()
    tp = fh.torch_params(net)
    v = _vector(net)
    theta = tp.theta(v)
    # Independently: each Linear's weight (out, in) column-major (Fortran), then its bias.
    expected = np.concatenate(
        [np.ravel(p.detach().numpy(), order="F") for p in net.parameters()]
    )
    assert np.array_equal(theta, expected)
    assert np.array_equal(theta, fh.from_torch(net)[1])
    back = tp.vector(theta, like=v)
    assert back.dtype == v.dtype and torch.equal(back, v)
    # vector_to_parameters of the mapped vector reproduces the module's weights
    twin = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 2)).double()
    torch.nn.utils.vector_to_parameters(tp.vector(theta), twin.parameters())
    X = torch.randn(6, 3, dtype=torch.float64)
    assert torch.equal(twin(X), net(X))


def test_the_gradient_maps_like_the_parameters():
    """fluxhess's gradient in θ, mapped to torch's order, equals torch's autograd gradient."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 2)).double()
    tp = fh.torch_params(net)
    X, y = np.random.default_rng(0).normal(size=(7, 2)), np.random.default_rng(1).normal(size=(7, 2))
    g = fh.gradient(tp.model, tp.theta(_vector(net)), X, y, loss="mse", backend="jax")
    loss = ((net(torch.from_numpy(X)) - torch.from_numpy(y)) ** 2).sum()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    assert_close(tp.vector(g).numpy(), torch.cat([t.reshape(-1) for t in grads]).numpy(), rtol=1e-12, what="gradient")


def test_module_of_two_inputs_whose_parameters_are_registered_out_of_call_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(5, 1)  # registered first, called last
            self.body = nn.Linear(3, 5)

        def forward(self, x, t):
            return self.head(torch.tanh(self.body(torch.cat([x, t], dim=1))))

    torch.manual_seed(2)
    net = Net().double()
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    tp = fh.torch_params(net, inputs=(x, t))
    v = _vector(net)
    theta = tp.theta(v)
    assert np.array_equal(theta, fh.from_torch(net, inputs=(x, t))[1])
    assert torch.equal(tp.vector(theta), v)


def test_wrong_shapes_and_unused_parameters_are_refused():
    net = nn.Sequential(nn.Linear(2, 2))
    tp = fh.torch_params(net)
    with pytest.raises(fh.InputError, match=r"vector must have shape \(6,\); got \(5,\)"):
        tp.theta(np.zeros(5))
    with pytest.raises(fh.InputError, match=r"theta must have shape \(6,\)"):
        tp.vector(np.zeros((6, 1)))



def test_the_hessian_in_torch_order_is_torch_funcs_hessian_of_the_vector():
    """The recipe of docs/from-torch.md: H[np.ix_(q, q)], q = argsort(order), is torch's Hessian."""
    from torch.func import functional_call, hessian

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    tp = fh.torch_params(net)
    v = _vector(net).detach()
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    H = fh.hessian(tp.model, tp.theta(v), X, y, loss="mse", backend="jax")
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]

    def loss(vec):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            size = int(np.prod(shape))
            params[name] = vec[start : start + size].reshape(shape)
            start += size
        return ((functional_call(net, params, (torch.from_numpy(X),)) - torch.from_numpy(y)) ** 2).sum()

    q = np.argsort(tp.order)
    assert_close(H[np.ix_(q, q)], hessian(loss)(v).numpy(), rtol=1e-12, atol=1e-13, what="Hessian in torch order")
