"""Seed question 2: first and second derivatives of a PyTorch PINN with respect to x.

The question. A PINN ``nn.Sequential`` with widths ``[1, 50, 50, 50, 501]`` maps a
scalar ``x`` to 501 outputs. The physics loss needs, at every collocation point, the
first and second derivative of every output with respect to ``x``: Jacobians of shape
``(N, 501, 1)`` and ``(N, 501, 1, 1)``. ``torch.autograd.grad(u, x,
grad_outputs=torch.ones_like(u))`` gives only the *sum* over the 501 outputs, and with
ReLU the second derivative came out as all zeros.

Answers. Per-output derivatives need a Jacobian, not a vector-Jacobian product:
``torch.func.vmap(torch.func.jacrev(net))(x)`` and
``torch.func.vmap(torch.func.hessian(net))(x)``; fluxhess gives the same with
``input_jacobian`` and ``input_hessian`` after ``from_torch(net)``.

Why ReLU gives zeros. A ReLU network is piecewise linear in ``x``: on each piece it
is an affine function, so its second derivative is exactly 0 wherever it exists (at
the kinks it does not exist, and autodiff reports 0 there too). The zeros are the
right answer for that network, and the reason a PINN whose equation has a second
derivative needs a smooth activation: with tanh, ``u_xx`` is not zero.

Run: ``python examples/seed_2_torch_pinn.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import hessian, jacrev, vmap

import fluxhess as fh


def pinn(activation: type[nn.Module]) -> nn.Sequential:
    """``[1, 50, 50, 50, 501]`` with ``activation`` between the Linear layers, in float64."""
    torch.manual_seed(0)
    widths = [1, 50, 50, 50, 501]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).double()


def main() -> dict:
    """Both derivatives from torch.func and from fluxhess, for tanh and ReLU; return them."""
    x = torch.linspace(-1, 1, 16, dtype=torch.float64)[:, None]  # (N, 1) collocation points
    results = {}
    for activation in (nn.Tanh, nn.ReLU):
        net = pinn(activation)
        name = activation.__name__
        du_torch = vmap(jacrev(net))(x).detach().numpy()  # (16, 501, 1)
        d2u_torch = vmap(hessian(net))(x).detach().numpy()  # (16, 501, 1, 1)

        model, theta = fh.from_torch(net)
        du = fh.input_jacobian(model, theta, x.numpy())  # (16, 501, 1)
        d2u = fh.input_hessian(model, theta, x.numpy())  # (16, 501, 1, 1)

        print(f"{name}: du/dx {du.shape}, d2u/dx2 {d2u.shape}")
        print(f"  max |du/dx|     torch {np.abs(du_torch).max():.4e}  fluxhess {np.abs(du).max():.4e}  "
              f"max |difference| {np.abs(du - du_torch).max():.2e}")
        print(f"  max |d2u/dx2|   torch {np.abs(d2u_torch).max():.4e}  fluxhess {np.abs(d2u).max():.4e}  "
              f"max |difference| {np.abs(d2u - d2u_torch).max():.2e}")
        results[f"{name} du/dx"] = (du, du_torch)
        results[f"{name} d2u/dx2"] = (d2u, d2u_torch)

    x_summed = x.clone().requires_grad_(True)
    net = pinn(nn.Tanh)
    summed = torch.autograd.grad(net(x_summed), x_summed, torch.ones(16, 501, dtype=torch.float64))[0]
    print("autograd.grad with grad_outputs=ones sums over the 501 outputs: "
          f"its shape is {tuple(summed.shape)}, and it equals du/dx summed over outputs "
          f"(max |difference| {np.abs(summed.numpy()[:, 0] - results['Tanh du/dx'][0].sum(axis=1)[:, 0]).max():.2e})")
    print("ReLU: every second derivative is exactly 0, a piecewise-linear network has no curvature in x")
    return results


if __name__ == "__main__":
    main()
