"""The memory guard's refusal names the alternatives of the context it happens in."""

import numpy as np
import pytest

import fluxhess as fh
from fluxhess import _memory as memory


@pytest.fixture
def little_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 20_000)  # a 50×50 float64 matrix needs 40 kB


def _problem():
    model = fh.Chain.mlp([3, 8, 2], "tanh")  # P = 50
    rng = np.random.default_rng(0)
    return model, model.init(0), rng.normal(size=(10, 3)), rng.integers(0, 2, 10)


def test_laplace_fit_suggests_its_own_structures_and_subsets(little_memory):
    model, theta, X, y = _problem()
    la = fh.Laplace(model, theta, "classification", curvature="ggn", structure="full", backend="jax")
    with pytest.raises(fh.MemoryBudgetError) as refused:
        la.fit(X, y)
    message = str(refused.value)
    assert "ggn of shape (50, 50)" in message
    assert "structure='kron' or 'diag'" in message and "subset='last_layer'" in message
    assert "hvp(" not in message and "diagonal(" not in message


def test_a_standalone_call_still_suggests_the_standalone_functions(little_memory):
    model, theta, X, y = _problem()
    with pytest.raises(fh.MemoryBudgetError, match=r"use diagonal\(\.\.\., kind='ggn'\), hvp"):
        fh.ggn(model, theta, X, np.eye(2)[y], loss="logitcrossentropy", backend="jax")


def test_hints_apply_only_inside_their_block():
    with memory.hints({"hessian": "something else"}):
        assert memory.alternative("hessian") == "something else"
        assert memory.alternative("ggn") == memory.ALTERNATIVES["ggn"]
    assert memory.alternative("hessian") == memory.ALTERNATIVES["hessian"]
