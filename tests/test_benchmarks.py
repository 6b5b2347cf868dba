"""Smoke test of benchmarks/run.py --quick: it runs, and every installed peer agrees with fluxhess."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.mark.slow  # imports torch and every peer in a subprocess: ~1-2 min
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="no peer installed (torch missing: make peers installs them): nothing to compare")
def test_quick_benchmark_runs_and_peers_agree_with_fluxhess(tmp_path):
    out = tmp_path / "quick.md"
    args = [sys.executable, str(RUN), "--quick", "--only", "ggn,diag-hessian", "--repeats", "1", "--no-laplacian", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert "## Targets (issues 6, 13 and 24)" in out.read_text()
    flux = [r for r in rows if r["library"] == "fluxhess"]
    assert {r["quantity"] for r in flux} == {"ggn", "diag-hessian"} and all(r["seconds"] for r in flux)
    compared = [r for r in rows if r["peer"] and r["residual"] is not None]
    assert compared, "no peer result was compared with fluxhess"
    # The same quantity up to the library's constant factor (laplace-torch: ½ for regression);
    # 1e-6 because laplace-torch's curvlinops backend agrees only to ~3e-8 (a wrong quantity: ~1).
    for r in compared:
        assert r["residual"] < 1e-6, f"{r['library']} {r['quantity']}: α={r['alpha']}, residual {r['residual']}"
        assert min(abs(r["alpha"] - a) for a in (0.5, 1.0)) < 1e-8, f"{r['library']} {r['quantity']}: α={r['alpha']}"


def test_pinn_loss_benchmark_routes_compute_the_same_gradient():
    """benchmarks/pinn_loss.py times three Laplacians inside jit(grad(loss)); they must be one quantity."""
    import runpy

    import jax
    import jax.numpy as jnp
    import numpy as np

    import fluxhess as fh

    bench = runpy.run_path(str(RUN.parent / "pinn_loss.py"))
    model = fh.Chain.mlp([2, 5, 4, 1], "tanh")
    with jax.enable_x64(True):
        theta = jnp.asarray(model.init(1))
        X = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(6, 2)))
        lap = {route: np.asarray(fn(theta, X)) for route, fn in bench["routes"](model).items()}
    assert {"fluxhess.jax", "vmap(hessian)+trace"} <= set(lap)
    for route, value in lap.items():
        assert value.shape == (6,)
        np.testing.assert_allclose(value, lap["vmap(hessian)+trace"], rtol=1e-11, atol=1e-13, err_msg=route)
