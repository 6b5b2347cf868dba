"""Seed question 4 and the `fluxhess demo` command."""

import subprocess
import sys

import numpy as np

import fluxhess as fh
import reference as ref
from conftest import assert_close


def test_seed_4_flux_model_loss_hessian(backend):
    """Chain(Flatten, Dense(2=>5), Dense(5=>1), sigmoid), crossentropy, 5 samples: (21, 21) == FD."""
    model = fh.Chain(fh.Flatten(), fh.Dense(2, 5), fh.Dense(5, 1), fh.Activation("sigmoid"))
    theta = model.init(seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 1, 2))  # (N, ...) inputs are flattened by the Flatten layer
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    H = fh.hessian(model, theta, X, y, loss="crossentropy", backend=backend)
    assert H.shape == (21, 21)
    Y = y[:, None]
    H_fd = ref.fd_hessian(lambda t: ref.total_loss(model, t, X.reshape(5, 2), Y, "crossentropy", "sum"), theta)
    assert_close(H, H_fd, rtol=1e-5, atol=1e-6, what="seed 4 hessian")


def test_demo_command_runs_and_prints_the_hessian():
    out = subprocess.run(
        [sys.executable, "-m", "fluxhess.cli", "demo", "--backend", "jax"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert "Hessian: shape (21, 21)" in out.stdout and "Empirical Fisher: shape (21, 21)" in out.stdout
    assert "backend = jax" in out.stdout
