"""Each model prints in the words of the framework it came from; the demo says why it picked its backend."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fluxhess as fh
from fluxhess._origin import Origin


def test_a_spec_prints_as_the_expression_that_builds_it():
    model = fh.Chain(fh.Dense(2, 5, "tanh"), fh.Dense(5, 1), fh.Activation("sigmoid"))
    assert str(model) == repr(model) == "Chain(Dense(2, 5, 'tanh'), Dense(5, 1), Activation('sigmoid'))"


def test_a_flux_models_spec_prints_in_flux_syntax():
    model = fh.Chain(fh.Dense(2, 5, "tanh"), fh.Dense(5, 1)).with_origin(Origin("flux"))
    assert str(model) == "Chain(Dense(2 => 5, tanh), Dense(5 => 1))"
    assert model == fh.Chain(fh.Dense(2, 5, "tanh"), fh.Dense(5, 1))  # the origin is not part of equality


def test_a_torch_model_prints_as_torch_modules_and_compare_reports_it_so():
    torch = pytest.importorskip("torch", reason="from_torch needs torch (make peers installs it)")
    nn = torch.nn
    model, theta = fh.from_torch(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Softmax(dim=-1)))
    assert str(model) == "Sequential(Linear(3, 4), Tanh(), Linear(4, 2), Softmax(dim=-1))"
    assert repr(model) == "Chain(Dense(3, 4), Activation('tanh'), Dense(4, 2), Activation('softmax'))"
    report = str(fh.compare(model, theta, np.zeros((3, 3)), quantities=["input_jacobian"], backends=["jax"]))
    assert report.startswith("fluxhess compare: Sequential(Linear(3, 4), Tanh(), Linear(4, 2), Softmax(dim=-1));")
    assert "Base.Fix1" not in report and "=>" not in report


def test_a_flax_model_prints_as_flax_layers():
    nn = pytest.importorskip("flax.linen", reason="from_flax needs flax (make peers installs it)")
    import jax

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.tanh(nn.Dense(4)(x)))

    module = MLP()
    variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 3)))
    model, _ = fh.from_flax(module, variables)
    assert str(model) == "MLP.__call__(x): x → nn.Dense(4) → nn.tanh → nn.Dense(2)"


def test_the_demo_says_why_it_picked_its_backend():
    out = subprocess.run(
        [sys.executable, "-m", "fluxhess.cli", "demo", "--backend", "jax"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert "model: Chain(Flatten(), Dense(2, 5), Dense(5, 1), Activation('sigmoid'))" in out.stdout
    assert "backend = jax, as asked with --backend jax" in out.stdout
    assert "Base.Fix1" not in out.stdout
    # The README describes the model as the demo prints it.
    model = re.search(r"^model: (.*?)  \(P = 21", out.stdout, re.M).group(1)
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert f"`{model}` (P = 21)" in readme


def test_auto_names_the_reason_julia_is_not_used():
    from fluxhess import cli

    reason = fh.backends()["julia"]
    if reason is None:
        assert "a Julia runtime" in cli._why("auto", "julia")
    else:
        assert cli._why("auto", "jax").startswith(f"because the julia backend is unavailable: {reason.split(' (')[0]}")
