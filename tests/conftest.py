"""Shared fixtures: the backend list, the case table, one comparison helper."""

from __future__ import annotations

import os
from dataclasses import dataclass

# The test-suite never downloads Julia or Julia packages.
os.environ.setdefault("PYTHON_JULIAPKG_OFFLINE", "yes")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import fluxhess as fh  # noqa: E402
from fluxhess.model import Activation, Chain, Dense, Flatten  # noqa: E402

BACKENDS = ["jax", "julia"]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False, help="also run tests marked slow")


# Property suites: 200 examples per property in CI, 1000 with --slow. No deadline: the
# first example of each model structure includes its jit compilation.
settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", settings.get_profile("ci"), max_examples=1000)


def pytest_configure(config):
    settings.load_profile("slow" if config.getoption("--slow") else "ci")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request):
    """Each backend by name; skipped, with the reason, where it cannot run."""
    reason = fh.backends()[request.param]
    if reason is not None:
        pytest.skip(f"{request.param} backend unavailable: {reason}")
    return request.param


@dataclass(frozen=True)
class Case:
    id: str
    model: Chain
    loss: str
    agg: str
    n: int = 6


CASES = [
    Case("tanh-mse-sum", Chain.mlp([3, 4, 2], "tanh"), "mse", "sum"),
    Case("demo-sigmoid-crossentropy", Chain(Flatten(), Dense(2, 5), Dense(5, 1), Activation("sigmoid")), "crossentropy", "sum", 5),
    Case("softplus-logitce-mean", Chain.mlp([3, 4, 3], "softplus"), "logitcrossentropy", "mean", 7),
    Case("gelu-softmax-ce-mean", Chain(Dense(3, 4, "gelu"), Dense(4, 3), Activation("softmax")), "crossentropy", "mean"),
    Case("swish-elu-nobias-logitbce", Chain(Dense(2, 3, "swish", bias=False), Dense(3, 2, "elu"), Dense(2, 2)), "logitbinarycrossentropy", "sum", 5),
    Case("sigmoid-bce-mean", Chain(Dense(3, 4, "sigmoid"), Dense(4, 2, "sigmoid")), "binarycrossentropy", "mean", 5),
    Case("leakyrelu-mse-mean", Chain(Dense(2, 3, "leakyrelu"), Dense(3, 1, bias=False)), "mse", "mean", 4),
    Case("logsoftmax-tanh-mse", Chain(Dense(2, 3, "tanh"), Dense(3, 3), Activation("logsoftmax")), "mse", "sum", 4),
]


def make_data(case: Case, seed: int = 0):
    """θ (P,), X (N, d), Y (N, C) for a case: random but fixed, targets valid for the loss."""
    rng = np.random.default_rng(seed)
    model, N = case.model, case.n
    theta = model.init(seed) + 0.1 * rng.normal(size=model.num_params)
    X = rng.normal(size=(N, model.in_features))
    C = model.out_features
    if case.loss == "mse":
        Y = rng.normal(size=(N, C))
    elif case.loss in ("crossentropy", "logitcrossentropy"):
        if C == 1:
            Y = rng.integers(0, 2, size=(N, 1)).astype(float)
        else:
            Y = rng.dirichlet(np.ones(C), size=N)
    else:
        Y = rng.uniform(size=(N, C))
    return theta, X, Y


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request):
    return request.param


def assert_close(actual, expected, *, rtol=1e-8, atol=1e-10, what=""):
    """Entrywise |a - e| <= atol + rtol·max|e|, with the worst entry in the message."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    tol = atol + rtol * np.max(np.abs(expected), initial=0.0)
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
    assert np.all(err <= tol), f"{what}: max error {err.max():.3e} at {worst} exceeds {tol:.3e}"
