"""Bad calls across the public API: each raises a FluxHessError that says what was wrong.

One table, :data:`BAD`: a call, the error class it must raise, and the words its
message must contain: the argument's name and what was expected. Every row runs on
every backend (validation happens before a backend is chosen, except where the row
pins one), must fail at once (a hang guard of one second, timed after the backend has
started and compiled the forward passes that some rows reach; validation itself takes
microseconds) and returns nothing: no crash, no NaN, no partial result.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import fluxhess as fh
from fluxhess.errors import BackendError, InputError, JuliaUnavailableError, MemoryBudgetError, UnknownNameError, UnsupportedModelError
from fluxhess.flux import FluxModel

M = fh.Chain.mlp([3, 4, 2], "tanh")  # P = 26, C = 2
THETA = M.init(0)
X = np.random.default_rng(0).normal(size=(5, 3))
JULIA_RUNS = fh.backends()["julia"] is None
Y = np.random.default_rng(1).normal(size=(5, 2))
LABELS = np.array([0, 1, 1, 0, 1])
SOFTMAX = fh.Chain(fh.Dense(3, 2), fh.Activation("softmax"))
SIGMOID = fh.Chain(fh.Dense(3, 2, "sigmoid"))
FLAT = fh.Chain(fh.Flatten(), fh.Dense(4, 2))
LINEAR = fh.Chain(fh.Dense(3, 2))
V = np.ones(M.num_params)
#: Too large for any machine: a P×P Hessian of 16 TB, Jacobians of 800 GB, KFAC A of 720 GB.
BIG = fh.Chain(fh.Dense(1000, 1000))
WIDE = fh.Chain(fh.Dense(300_000, 1))


def _with(a, index, value):
    a = np.array(a, dtype=float)
    a[index] = value
    return a


@dataclass(frozen=True)
class Bad:
    id: str
    call: Callable[[str], object]  # backend name -> the call
    error: type
    words: tuple[str, ...]  # the message contains each (case-insensitive)


BAD = [
    # --- X -------------------------------------------------------------------
    Bad("X-1d", lambda b: fh.forward(M, THETA, X[0], backend=b), InputError, ("X", "2-D")),
    Bad("X-3d-without-flatten", lambda b: fh.forward(M, THETA, X[:, :, None], backend=b), InputError, ("X", "Flatten")),
    Bad("X-wrong-width", lambda b: fh.gradient(M, THETA, X[:, :2], Y, backend=b), InputError, ("X", "3 features")),
    Bad("X-flattened-wrong-size", lambda b: fh.forward(FLAT, FLAT.init(), np.ones((2, 3, 3)), backend=b), InputError, ("X", "4 features")),
    Bad("X-empty", lambda b: fh.hessian(M, THETA, X[:0], Y[:0], backend=b), InputError, ("X", "at least one sample")),
    Bad("X-scalar", lambda b: fh.forward(M, THETA, 1.0, backend=b), InputError, ("X", "at least one sample")),
    Bad("X-nan", lambda b: fh.hessian(M, THETA, _with(X, (2, 1), np.nan), Y, backend=b), InputError, ("X", "finite", "(2, 1)")),
    Bad("X-inf", lambda b: fh.input_hessian(M, THETA, _with(X, (0, 0), -np.inf), backend=b), InputError, ("X", "finite")),
    Bad("X-object", lambda b: fh.forward(M, THETA, X.astype(object), backend=b), InputError, ("X", "numeric")),
    Bad("X-complex", lambda b: fh.ggn(M, THETA, X + 1j, Y, backend=b), InputError, ("X", "real")),
    Bad("X-bool", lambda b: fh.forward(M, THETA, X > 0, backend=b), InputError, ("X", "numbers")),
    Bad("X-strings", lambda b: fh.forward(M, THETA, np.full((5, 3), "a"), backend=b), InputError, ("X", "numeric")),
    Bad("X-ragged", lambda b: fh.forward(M, THETA, [[1.0, 2.0, 3.0], [1.0]], backend=b), InputError, ("X", "numeric")),
    # --- params ----------------------------------------------------------------
    Bad("params-too-short", lambda b: fh.hessian(M, THETA[:-1], X, Y, backend=b), InputError, ("params", "(26,)")),
    Bad("params-too-long", lambda b: fh.forward(M, np.append(THETA, 0.0), X, backend=b), InputError, ("params", "(26,)")),
    Bad("params-2d", lambda b: fh.gradient(M, THETA[None, :], X, Y, backend=b), InputError, ("params", "(26,)")),
    Bad("params-empty", lambda b: fh.forward(M, [], X, backend=b), InputError, ("params", "(26,)")),
    Bad("params-nan", lambda b: fh.ggn(M, _with(THETA, 7, np.nan), X, Y, backend=b), InputError, ("params", "finite", "(7,)")),
    Bad("params-inf", lambda b: fh.hvp(M, _with(THETA, 0, np.inf), X, Y, V, backend=b), InputError, ("params", "finite")),
    Bad("params-complex", lambda b: fh.forward(M, THETA.astype(complex), X, backend=b), InputError, ("params", "real")),
    Bad("params-object", lambda b: fh.forward(M, [None] * 26, X, backend=b), InputError, ("params", "numeric")),
    Bad("params-bool", lambda b: fh.forward(M, THETA > 0, X, backend=b), InputError, ("params", "numbers")),
    Bad("X-overflows-float32", lambda b: fh.forward(M, THETA, _with(X, (1, 2), 1e39), dtype="float32", backend=b), InputError, ("X", "(1, 2)", "1e+39", "float32")),
    Bad("params-overflow-float32", lambda b: fh.gradient(M, _with(THETA, 4, -1e39), X, Y, dtype="float32", backend=b), InputError, ("params", "(4,)", "float32")),
    Bad("y-overflows-float32", lambda b: fh.loss(M, THETA, X, _with(Y, (0, 1), 1e39), dtype="float32", backend=b), InputError, ("y", "(0, 1)", "float32")),
    Bad("V-overflows-float32", lambda b: fh.hvp(M, THETA, X, Y, _with(V, 2, 1e39), dtype="float32", backend=b), InputError, ("V", "(2, 0)", "float32")),
    Bad("params-overflow", lambda b: fh.forward(LINEAR, np.full(8, 1e200), 1e200 * X, backend=b), BackendError, ("forward", "non-finite", "parameters")),
    # --- y -------------------------------------------------------------------------
    Bad("y-missing", lambda b: fh.gradient(M, THETA, X, None, backend=b), InputError, ("y", "required", "(5, 2)")),
    Bad("y-wrong-rows", lambda b: fh.hessian(M, THETA, X, Y[:4], backend=b), InputError, ("y", "one row per sample")),
    Bad("y-wrong-columns", lambda b: fh.ggn(M, THETA, X, Y[:, :1], backend=b), InputError, ("y", "(5, 2)")),
    Bad("y-1d-for-two-outputs", lambda b: fh.loss(M, THETA, X, Y[:, 0], backend=b), InputError, ("y", "(5, 2)")),
    Bad("y-nan", lambda b: fh.empirical_fisher(M, THETA, X, _with(Y, (4, 0), np.nan), backend=b), InputError, ("y", "finite")),
    Bad("y-complex", lambda b: fh.loss(M, THETA, X, Y * 1j, backend=b), InputError, ("y", "real")),
    Bad("y-bool", lambda b: fh.loss(M, THETA, X, Y > 0, backend=b), InputError, ("y", "numbers")),
    Bad("labels-too-large", lambda b: fh.hessian(M, THETA, X, np.array([0, 1, 2, 0, 1]), loss="logitcrossentropy", backend=b), InputError, ("labels", "y", "[0, 2)")),
    Bad("labels-negative", lambda b: fh.gradient(SOFTMAX, SOFTMAX.init(), X, -LABELS, loss="crossentropy", backend=b), InputError, ("labels", "y", "[0, 2)")),
    Bad("labels-huge-float", lambda b: fh.loss(M, THETA, X, _with(LABELS, 2, 2.0**70), loss="logitcrossentropy", backend=b), InputError, ("labels", "[0, 2)", "1.1805916207174113e+21")),
    Bad("labels-huge-negative", lambda b: fh.loss(M, THETA, X, _with(LABELS, 2, -(2.0**70)), loss="logitcrossentropy", backend=b), InputError, ("labels", "-1.1805916207174113e+21")),
    Bad("labels-not-integer", lambda b: fh.loss(M, THETA, X, LABELS + 0.5, loss="logitcrossentropy", backend=b), InputError, ("y", "integers")),
    Bad("labels-nan", lambda b: fh.loss(M, THETA, X, _with(LABELS, 1, np.nan), loss="logitcrossentropy", backend=b), InputError, ("y", "finite")),
    Bad("soft-targets-negative", lambda b: fh.ggn(SOFTMAX, SOFTMAX.init(), X, np.full((5, 2), -0.1), loss="crossentropy", backend=b), InputError, ("y", "[0, 1]")),
    Bad("soft-targets-inf", lambda b: fh.hvp(M, THETA, X, _with(np.full((5, 2), 0.5), (1, 1), np.inf), V, loss="logitcrossentropy", backend=b), InputError, ("y", "finite")),
    Bad("probabilities-above-1", lambda b: fh.hessian(SIGMOID, SIGMOID.init(), X, np.full((5, 2), 1.5), loss="binarycrossentropy", backend=b), InputError, ("y", "[0, 1]")),
    Bad("probabilities-negative", lambda b: fh.diagonal(M, THETA, X, np.full((5, 2), -0.1), loss="logitbinarycrossentropy", backend=b), InputError, ("y", "[0, 1]")),
    Bad("crossentropy-on-raw-outputs", lambda b: fh.loss(M, 5 * THETA, X, LABELS, loss="crossentropy", backend=b), InputError, ("loss='crossentropy'", "probabilities", "logitcrossentropy")),
    # --- V ---------------------------------------------------------------------------
    Bad("V-wrong-length", lambda b: fh.hvp(M, THETA, X, Y, np.ones(25), backend=b), InputError, ("V", "(26,)")),
    Bad("V-transposed", lambda b: fh.hvp(M, THETA, X, Y, np.ones((3, 26)), backend=b), InputError, ("V", "(26, k)")),
    Bad("V-3d", lambda b: fh.hvp(M, THETA, X, Y, np.ones((26, 2, 2)), backend=b), InputError, ("V", "(26, k)")),
    Bad("V-no-columns", lambda b: fh.hvp(M, THETA, X, Y, np.ones((26, 0)), backend=b), InputError, ("V", "k >= 1")),
    Bad("V-nan", lambda b: fh.hvp(M, THETA, X, Y, _with(V, 3, np.nan), kind="ggn", backend=b), InputError, ("V", "finite")),
    Bad("V-object", lambda b: fh.hvp(M, THETA, X, Y, V.astype(object), backend=b), InputError, ("V", "numeric")),
    # --- names -------------------------------------------------------------------------
    Bad("loss-none", lambda b: fh.hessian(M, THETA, X, Y, loss=None, backend=b), UnknownNameError, ("loss", "mse", "None")),
    Bad("loss-array", lambda b: fh.gradient(M, THETA, X, Y, loss=np.array([1.0]), backend=b), UnknownNameError, ("loss", "mse")),
    Bad("dtype-array", lambda b: fh.forward(M, THETA, X, dtype=np.array([1.0]), backend=b), UnknownNameError, ("dtype", "'float32'", "array")),
    Bad("diagnostics-loss-none", lambda b: fh.curvature_diagnostics(M, THETA, X, Y, loss=None, backend=b), UnknownNameError, ("loss", "None")),
    Bad("unknown-loss", lambda b: fh.hessian(M, THETA, X, Y, loss="nll", backend=b), UnknownNameError, ("loss", "mse", "'nll'")),
    Bad("unknown-agg", lambda b: fh.ggn(M, THETA, X, Y, agg="max", backend=b), UnknownNameError, ("agg", "'sum' or 'mean'", "'max'")),
    Bad("unknown-kind", lambda b: fh.hvp(M, THETA, X, Y, V, kind="fisher", backend=b), UnknownNameError, ("kind", "'ef'", "'fisher'")),
    Bad("diagonal-unknown-kind", lambda b: fh.diagonal(M, THETA, X, Y, kind="H", backend=b), UnknownNameError, ("kind", "'hessian'", "'H'")),
    Bad("kron-of-hessian", lambda b: fh.kron(M, THETA, X, Y, kind="hessian", backend=b), UnknownNameError, ("kind", "'ggn'", "'hessian'")),
    Bad("unknown-backend", lambda b: fh.forward(M, THETA, X, backend="torch"), UnknownNameError, ("backend", "jax", "'torch'")),
    Bad("backend-not-a-name", lambda b: fh.forward(M, THETA, X, backend=3), InputError, ("backend", "'jax'", "3")),
    Bad("unknown-dtype", lambda b: fh.hessian(M, THETA, X, Y, dtype="float16", backend=b), UnknownNameError, ("dtype", "'float32'", "'float16'")),
    Bad("unknown-activation", lambda b: fh.Chain(fh.Dense(2, 3, "mish")), UnknownNameError, ("activation", "tanh", "'mish'")),
    Bad("layout-index-float", lambda b: M.layout[3.5], InputError, ("layout", "block name", "3.5")),
    Bad("flatten-not-a-dict", lambda b: M.flatten(None), InputError, ("arrays", "dict", "NoneType")),
    Bad("unknown-block", lambda b: M.layout["layers.5.weight"], UnknownNameError, ("block", "layers.0.weight")),
    # --- models ------------------------------------------------------------------------
    Bad("dense-width-zero", lambda b: fh.Dense(3, 0), InputError, ("Dense out", "positive integer")),
    Bad("dense-width-float", lambda b: fh.Dense(2.5, 3), InputError, ("Dense in", "positive integer")),
    Bad("mlp-of-an-int", lambda b: fh.Chain.mlp(3), InputError, ("widths", "[in, h1, ..., out]", "3")),
    Bad("init-seed-negative", lambda b: M.init(-1), InputError, ("seed", "non-negative integer", "-1")),
    Bad("init-seed-float", lambda b: M.init(1.5), InputError, ("seed", "1.5")),
    Bad("chain-mismatch", lambda b: fh.Chain(fh.Dense(2, 3), fh.Dense(4, 1)), InputError, ("layer 1", "4 inputs", "gives 3")),
    Bad("chain-without-dense", lambda b: fh.Chain(fh.Activation("tanh")), InputError, ("Chain", "Dense")),
    Bad("not-a-model", lambda b: fh.forward(object(), THETA, X, backend=b), InputError, ("model", "fluxhess.Chain", "object")),
    # A Flux model on jax: where Julia runs, convert it (to_spec); where it does not, Julia is missing first.
    Bad("flux-model-on-jax", lambda b: fh.forward(FluxModel("Chain(Dense(3 => 2))"), THETA, X, backend="jax"),
        *((UnsupportedModelError, ("jax backend", "fluxhess.Chain", "FluxModel")) if JULIA_RUNS else
          (JuliaUnavailableError, ("FluxModel", "runs only in Julia", "setup-julia")))),
    Bad("divergence-not-square", lambda b: fh.divergence(M, THETA, X, backend=b), InputError, ("divergence", "C == d", "C=2, d=3")),
    # --- compare: input bad for every backend raises, it is not a report of failures -----
    Bad("compare-backends-none", lambda b: fh.compare(M, THETA, X, Y, backends=None), InputError, ("backends", "jax", "None")),
    Bad("compare-wrong-width", lambda b: fh.compare(M, THETA, X[:, :2], Y, backends=(b,)), InputError, ("X", "3 features")),
    Bad("compare-unknown-dtype", lambda b: fh.compare(M, THETA, X, Y, dtype="float16", backends=(b,)), UnknownNameError, ("dtype", "'float16'")),
    Bad("compare-not-a-model", lambda b: fh.compare(object(), THETA, X, Y, backends=(b,)), InputError, ("model", "fluxhess.Chain", "object")),
    # --- Laplace -----------------------------------------------------------------------
    Bad("prior-precision-negative", lambda b: fh.Laplace(M, THETA, "regression", prior_precision=-1.0, backend=b), InputError, ("prior_precision", "positive", "-1.0")),
    Bad("prior-precision-one-negative", lambda b: fh.Laplace(M, THETA, "regression", prior_precision=np.array([1.0, -2.0, 1.0, 1.0]), backend=b), InputError, ("prior_precision", "positive", "-2.0")),
    Bad("prior-precision-string", lambda b: fh.Laplace(M, THETA, "regression", prior_precision="a", backend=b), InputError, ("prior_precision", "numeric", "'a'")),
    Bad("prior-mean-string", lambda b: fh.Laplace(M, THETA, "regression", prior_mean="a", backend=b), InputError, ("prior_mean", "numeric", "'a'")),
    Bad("fit-map-prior-string", lambda b: fh.fit_map(M, THETA, X, Y, prior_precision="a", backend=b), InputError, ("prior_precision", "numeric")),
    Bad("fit-map-max-iter-string", lambda b: fh.fit_map(M, THETA, X, Y, max_iter="10", backend=b), InputError, ("max_iter", "positive integer", "'10'")),
    Bad("fit-map-gtol-string", lambda b: fh.fit_map(M, THETA, X, Y, gtol="a", backend=b), InputError, ("gtol", "positive number")),
    Bad("prior-precision-nan", lambda b: fh.Laplace(M, THETA, "regression", prior_precision=np.nan, backend=b), InputError, ("prior_precision", "finite")),
    Bad("sigma-noise-zero", lambda b: fh.Laplace(M, THETA, "regression", sigma_noise=0.0, backend=b), InputError, ("sigma_noise", "positive")),
    Bad("laplace-unknown-subset", lambda b: fh.Laplace(M, THETA, "regression", subset=["layers.9.weight"], backend=b), UnknownNameError, ("block", "'layers.9.weight'", "layers.0.weight")),
    Bad("laplace-kron-hessian", lambda b: fh.Laplace(M, THETA, "regression", structure="kron", curvature="hessian", backend=b), InputError, ("curvature", "'ggn'", "kron")),
    Bad("laplace-predictive-before-fit", lambda b: fh.Laplace(M, THETA, "regression", backend=b).predictive(X), fh.FluxHessError, ("predictive", "fit")),
    Bad("laplace-labels-out-of-range", lambda b: fh.Laplace(M, THETA, "classification", backend=b).fit(X, np.array([0, 1, 2, 0, 1])), InputError, ("labels", "y", "[0, 2)")),
    # --- memory ------------------------------------------------------------------------
    Bad("hessian-too-large", lambda b: fh.hessian(BIG, np.zeros(BIG.num_params), np.ones((2, 1000)), np.ones((2, 1000)), backend=b), MemoryBudgetError, ("hessian", "(1001000, 1001000)", "hvp")),
    Bad("ggn-too-large", lambda b: fh.ggn(BIG, np.zeros(BIG.num_params), np.ones((2, 1000)), np.ones((2, 1000)), backend=b), MemoryBudgetError, ("ggn", "TiB", "kron")),
    Bad("ef-too-large", lambda b: fh.empirical_fisher(BIG, np.zeros(BIG.num_params), np.ones((2, 1000)), np.ones((2, 1000)), backend=b), MemoryBudgetError, ("empirical_fisher", "diagonal")),
    Bad("param-jacobian-too-large", lambda b: fh.param_jacobian(BIG, np.zeros(BIG.num_params), np.ones((100, 1000)), backend=b), MemoryBudgetError, ("param_jacobian", "(100, 1000, 1001000)")),
    Bad("input-hessian-too-large", lambda b: fh.input_hessian(BIG, np.zeros(BIG.num_params), np.ones((100, 1000)), backend=b), MemoryBudgetError, ("input_hessian", "laplacian")),
    Bad("kron-too-large", lambda b: fh.kron(WIDE, np.zeros(WIDE.num_params), np.ones((1, 300_000)), np.ones((1, 1)), backend=b), MemoryBudgetError, ("kron", "(300001, 300001)")),
]


def test_the_table_is_large():
    assert len(BAD) >= 40
    assert len({b.id for b in BAD}) == len(BAD)


@functools.cache
def _warm(backend: str) -> None:
    """Start the backend and compile the forward passes some rows reach, so rows time the refusal only."""
    for model in (M, SOFTMAX, SIGMOID, LINEAR):
        fh.forward(model, model.init(), X, backend=backend)


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_call_raises_a_clear_error_at_once(bad, backend):
    _warm(backend)
    start = time.perf_counter()
    with pytest.raises(fh.FluxHessError) as info:
        result = bad.call(backend)
        pytest.fail(f"returned {type(result).__name__} instead of raising: {result!r:.200}")
    elapsed = time.perf_counter() - start
    assert isinstance(info.value, bad.error), f"{type(info.value).__name__}: {info.value}"
    message = str(info.value).lower()
    missing = [w for w in bad.words if w.lower() not in message]
    assert not missing, f"message lacks {missing}: {info.value}"
    assert elapsed < 1.0, f"took {elapsed:.2f} s (hang guard)"
