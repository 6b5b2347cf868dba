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
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="no peer installed (torch missing): nothing to compare")
def test_quick_benchmark_runs_and_peers_agree_with_fluxhess(tmp_path):
    out = tmp_path / "quick.md"
    args = [sys.executable, str(RUN), "--quick", "--only", "ggn,diag-hessian", "--repeats", "1", "--no-laplacian", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert "## Targets (issues 6 and 13)" in out.read_text()
    flux = [r for r in rows if r["library"] == "fluxhess"]
    assert {r["quantity"] for r in flux} == {"ggn", "diag-hessian"} and all(r["seconds"] for r in flux)
    compared = [r for r in rows if r["peer"] and r["residual"] is not None]
    assert compared, "no peer result was compared with fluxhess"
    # The same quantity up to the library's constant factor (laplace-torch: ½ for regression);
    # 1e-6 because laplace-torch's curvlinops backend agrees only to ~3e-8 (a wrong quantity: ~1).
    for r in compared:
        assert r["residual"] < 1e-6, f"{r['library']} {r['quantity']}: α={r['alpha']}, residual {r['residual']}"
        assert min(abs(r["alpha"] - a) for a in (0.5, 1.0)) < 1e-8, f"{r['library']} {r['quantity']}: α={r['alpha']}"
