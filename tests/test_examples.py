"""The worked examples under examples/ run, and fluxhess agrees with each framework's own autodiff."""

import importlib.util
import runpy
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_close

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, needs: tuple[str, ...], **settings) -> dict:
    """The example's ``main(**settings)`` (fast settings, e.g. fewer training steps)."""
    for module in needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{name} needs {module}, which is not installed (pip install 'fluxhess[{module}]')")
    return runpy.run_path(str(EXAMPLES / f"{name}.py"))["main"](**settings)


def _agree(pairs: dict, rtol=1e-10, atol=1e-12):
    for what, (ours, theirs) in pairs.items():
        assert_close(ours, theirs, rtol=rtol, atol=atol, what=what)


def test_seed_1_flax_u_xx(capsys):
    pairs = _run("seed_1_flax_uxx", ("flax",))
    ours, theirs = pairs["u_xx"]
    assert ours.shape == (32, 3, 3)
    _agree(pairs)
    out = capsys.readouterr().out
    assert "Output had shape: (1,)" in out and "Output had shape: (3,)" in out


def test_seed_2_torch_pinn_relu_has_zero_second_derivative():
    pairs = _run("seed_2_torch_pinn", ("torch",))
    assert pairs["Tanh du/dx"][0].shape == (16, 501, 1)
    assert pairs["Tanh d2u/dx2"][0].shape == (16, 501, 1, 1)
    _agree(pairs)
    assert np.all(pairs["ReLU d2u/dx2"][1] == 0) and np.all(pairs["ReLU d2u/dx2"][0] == 0)
    assert np.abs(pairs["Tanh d2u/dx2"][1]).max() > 1e-3


def test_seed_3_x_t_jacobians_and_gradient_of_divergence():
    pairs = _run("seed_3_x_t_divergence", ("flax",))
    assert pairs["df/dx"][0].shape == (10, 3, 3)
    assert pairs["df/dt"][0].shape == (10, 3)
    assert pairs["grad_x div_x f"][0].shape == (10, 3)
    _agree(pairs)


def test_seed_4_flux_hessian_fisher_and_laplace():
    pairs = _run("seed_4_flux_hessian_fisher", ())
    for what, (ours, theirs) in pairs.items():
        if what.startswith(("hessian", "ggn", "empirical")):
            assert ours.shape == (21, 21)
        if " julia " in what and not what.startswith("Laplace"):  # the Flux model as written, checked by JAX
            assert np.max(np.abs(ours - theirs)) <= 1e-10, what
    _agree(pairs, rtol=1e-9)


def test_pinn_trained_with_the_jax_laplacian_reaches_the_exact_solution(capsys):
    """The Poisson PINN of examples/pinn_poisson.py, trained with fluxhess.jax.laplacian in its loss,
    ends within 1% (relative L2) of sin(πx)·sin(πy); untrained it is off by more than 50%."""
    result = _run("pinn_poisson", ("optax",))
    assert result["before"][0] > 0.5
    assert result["after"][0] < 0.01 and result["after"][1] < 0.03
    assert "relative L2 error" in capsys.readouterr().out


def test_pinns_on_networks_that_are_no_chain(capsys):
    """examples/pinn_any_network.py: a Fourier-feature Flax PINN and a modified-MLP PINN in plain JAX,
    both JaxFunctions, trained on fluxhess.jax.laplacian; their Laplacian equals the trace of JAX's
    own input Hessian of the user's function, and training lowers the error (few steps here)."""
    results = _run("pinn_any_network", ("flax", "optax"), steps=200)
    for name, result in results.items():
        assert result["model"].model_kind == "jax_function"
        _agree({f"{name} laplacian": result["laplacian"]}, rtol=1e-10, atol=1e-10)
        assert result["after"] < 0.5 * result["before"], name
    assert "relative L2 error" in capsys.readouterr().out


def test_flax_classifier_with_layernorm_and_residual_through_laplace():
    """examples/flax_classifier_laplace.py: its Laplace evidence equals the dense-GGN closed form."""
    result = _run("flax_classifier_laplace", ("flax", "optax"), steps=200)
    assert result["model"].model_kind == "jax_function"
    ours, closed = result["lml"]
    assert abs(float(ours) - closed) <= 1e-10 * abs(closed)
    assert result["accuracy"] > 0.9
