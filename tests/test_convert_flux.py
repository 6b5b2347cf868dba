"""Flux source: to_spec gives a Chain that runs the same on jax as the Flux model on julia."""

import numpy as np
import pytest

import fluxhess as fh
from conftest import assert_close


def test_flux_source_to_spec_runs_the_same_on_jax():
    reason = fh.backends()["julia"]
    if reason is not None:
        pytest.skip(f"julia backend unavailable: {reason}")
    from fluxhess.flux import flux_model

    flux = flux_model("Chain(Dense(3 => 4, tanh), Dense(4 => 2))")
    model, theta = flux.to_spec()
    X = np.random.default_rng(0).normal(size=(5, 3))
    assert_close(fh.forward(model, theta, X, backend="jax"), fh.forward(flux, theta, X, backend="julia"),
                 rtol=1e-12, atol=1e-12, what="forward")
    assert_close(fh.input_hessian(model, theta, X, backend="jax"), fh.input_hessian(flux, theta, X, backend="julia"),
                 rtol=1e-10, atol=1e-12, what="input_hessian")
