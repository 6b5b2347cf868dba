"""The Dense-chain fast paths (_backends/jax/dense_matrix.py) against the generic JAX route and
the independent references, on every spec activation and loss, with and without biases.

The public API takes the structured route wherever ``dense.split`` covers the
model; ``JaxBackend(structured=False)`` is the generic chunked forward-over-reverse route.
"""

from __future__ import annotations

import numpy as np
import pytest

import fluxhess as fh
import reference as ref
from conftest import Case, assert_close, make_data
from fluxhess._backends.jax import chunked, dense, dense_matrix
from fluxhess._backends.jax import JaxBackend
from fluxhess.losses import LOSSES
from fluxhess._problem import Problem
from fluxhess.model import ELEMENTWISE, Activation, Chain, Dense

GENERIC = JaxBackend(structured=False)
#: Output activation each loss needs (probabilities for the non-logit cross-entropies).
HEAD = {"crossentropy": "softmax", "binarycrossentropy": "sigmoid"}
TOL = dict(rtol=1e-10, atol=1e-12)


def _mlp_case(first: str, second: str, loss: str, bias: bool, agg: str) -> Case:
    """Three Dense layers (so that one pair of layers is not adjacent), C = 2."""
    layers = [Dense(3, 4, first, bias), Dense(4, 3, second, bias), Dense(3, 2, None, bias)]
    if loss in HEAD:
        layers.append(Activation(HEAD[loss]))
    tag = "bias" if bias else "nobias"
    return Case(f"{first}-{second}-{loss}-{agg}-{tag}", Chain(*layers), loss, agg, 5)


def _cyclic_cases() -> list[Case]:
    """Every activation in both hidden positions, once with biases and once without; every loss; both aggs.

    Case i has activations (a_i, a_{i+1}) (indices mod 9) and biases when i is even, so each
    a_i meets both bias settings (first in case i, second in case i-1; case 9 closes the
    cycle for a_0), and the cases cycle through all 5 losses. The full product is
    ``test_every_activation_with_every_loss`` (slow).
    """
    acts, n = list(ELEMENTWISE), len(ELEMENTWISE)
    return [
        _mlp_case(acts[i % n], acts[(i + 1) % n], LOSSES[i % len(LOSSES)], i % 2 == 0, ("sum", "mean")[i % 2])
        for i in range(n + 1)
    ]


CYCLIC = _cyclic_cases()
LAYERS = [  # activation layers before, between and after the Dense layers; four Dense layers
    Case("activation-before-first-dense", Chain(Activation("tanh"), Dense(3, 4, "sigmoid"), Dense(4, 2)), "mse", "sum", 5),
    Case("activation-layers-between", Chain(Dense(3, 4, "tanh"), Activation("swish"), Activation("elu"), Dense(4, 3, bias=False), Activation("gelu"), Dense(3, 2)), "logitcrossentropy", "mean", 5),
    Case("four-dense-layers", Chain(Dense(2, 4, "softplus"), Dense(4, 3, "tanh", bias=False), Dense(3, 4, "sigmoid"), Dense(4, 3), Activation("softmax")), "crossentropy", "sum", 6),
    Case("logsoftmax-head-mse", Chain(Dense(3, 4, "tanh"), Dense(4, 3), Activation("logsoftmax")), "mse", "mean", 5),
    Case("single-dense-sigmoid-head", Chain(Dense(3, 2, "sigmoid")), "binarycrossentropy", "sum", 5),
]


def _references(case, theta, X, Y):
    """Hessian, GGN and EF from tests/reference.py (different code, different roads)."""
    model, loss, agg = case.model, case.loss, case.agg
    g = ref.per_sample_gradients(model, theta, X, Y, loss)
    return {
        "hessian": ref.jax_hessian(model, theta, X, Y, loss, agg),
        "ggn": ref.linearized_ggn(model, theta, X, Y, loss, agg),
        "ef": ref.scale(loss, agg, *Y.shape) * g.T @ g,
    }


def _structured(case, theta, X, Y, dtype="float64"):
    kw = dict(loss=case.loss, agg=case.agg, backend="jax", dtype=dtype)
    m = case.model
    return {
        "hessian": fh.hessian(m, theta, X, Y, **kw),
        "ggn": fh.ggn(m, theta, X, Y, **kw),
        "ef": fh.empirical_fisher(m, theta, X, Y, **kw),
    }


def _generic(case, theta, X, Y):
    problem = Problem(case.model, theta, X, Y, case.loss, case.agg)
    return {"hessian": GENERIC.hessian(problem), "ggn": GENERIC.ggn(problem), "ef": GENERIC.empirical_fisher(problem)}


@pytest.mark.parametrize("case", CYCLIC + LAYERS, ids=lambda c: c.id)
def test_structured_matrices_match_generic_route(case):
    assert dense.split(case.model) is not None, "the structured route must cover this model"
    theta, X, Y = make_data(case)
    fast, generic = _structured(case, theta, X, Y), _generic(case, theta, X, Y)
    for kind in ("hessian", "ggn", "ef"):
        np.testing.assert_array_equal(fast[kind], fast[kind].T, err_msg=kind)
        assert_close(fast[kind], generic[kind], **TOL, what=f"{kind}: structured vs generic route")


#: The generic route meets the references on the CASES of test_curvature.py; these cases take
#: the structured route straight to them (each reference compiles op by op: a few only).
REFERENCE_CASES = [CYCLIC[1], LAYERS[2]]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: c.id)
def test_structured_matrices_match_references(case):
    theta, X, Y = make_data(case)
    fast, expected = _structured(case, theta, X, Y), _references(case, theta, X, Y)
    for kind in ("hessian", "ggn", "ef"):
        assert_close(fast[kind], expected[kind], **TOL, what=f"{kind}: structured vs reference")


@pytest.mark.parametrize("case", CYCLIC[::2] + [LAYERS[2]], ids=lambda c: c.id)
def test_structured_diagonal_and_kron_match_generic_route(case):
    """Every activation and loss (the even cyclic cases cover them all) and a four-layer chain."""
    theta, X, Y = make_data(case)
    problem = Problem(case.model, theta, X, Y, case.loss, case.agg)
    kw = dict(loss=case.loss, agg=case.agg, backend="jax")
    for kind in ("hessian", "ggn", "ef"):
        fast = fh.diagonal(case.model, theta, X, Y, kind=kind, **kw)
        assert_close(fast, GENERIC.diagonal(problem, kind), **TOL, what=f"diagonal {kind}")
    for kind in ("ggn", "ef"):
        for f, (A, G) in zip(fh.kron(case.model, theta, X, Y, kind=kind, **kw), GENERIC.kron(problem, kind)):
            assert_close(f.A, A, **TOL, what=f"kron {kind} A of {f.layer}")
            assert_close(f.G, G, **TOL, what=f"kron {kind} G of {f.layer}")


@pytest.mark.slow
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ELEMENTWISE)
def test_every_activation_with_every_loss(activation, loss, bias):
    case = _mlp_case(activation, activation, loss, bias, "sum")
    theta, X, Y = make_data(case)
    fast, generic = _structured(case, theta, X, Y), _generic(case, theta, X, Y)
    for kind in ("hessian", "ggn", "ef"):
        assert_close(fast[kind], generic[kind], **TOL, what=f"{kind}: structured vs generic route")


def test_softmax_between_dense_layers_falls_back_to_the_generic_route():
    case = Case("softmax-inside", Chain(Dense(3, 4), Activation("softmax"), Dense(4, 2, "tanh")), "mse", "sum", 5)
    assert dense.split(case.model) is None
    theta, X, Y = make_data(case)
    fast, expected = _structured(case, theta, X, Y), _references(case, theta, X, Y)
    for kind in ("hessian", "ggn", "ef"):
        assert_close(fast[kind], expected[kind], **TOL, what=kind)


@pytest.mark.parametrize("pairwise_below", [1, 10**6], ids=["one-gemm-per-panel", "one-gemm-per-output-pair"])
def test_chunks_of_samples_and_panels_of_rows_give_the_same_matrices(pairwise_below, monkeypatch):
    """A budget of a few kB forces one sample per chunk (so blocks accumulate), one row per
    panel and sub-chunks of samples inside a panel; both ways of forming a panel's GEMM."""
    case = LAYERS[2]
    theta, X, Y = make_data(case)
    whole = _structured(case, theta, X, Y)
    monkeypatch.setattr(dense_matrix, "PAIRWISE_BELOW", pairwise_below)
    monkeypatch.setattr(dense_matrix, "_budget", lambda P, itemsize: 4096)
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4096)
    in_pieces = _structured(case, theta, X, Y)
    for kind in ("hessian", "ggn", "ef"):
        assert_close(in_pieces[kind], whole[kind], rtol=1e-13, atol=1e-15, what=kind)
    diag = fh.diagonal(case.model, theta, X, Y, kind="hessian", loss=case.loss, agg=case.agg, backend="jax")
    assert_close(diag, np.diag(whole["hessian"]), rtol=1e-13, atol=1e-15, what="diagonal")


def test_float32_structured_matrices_are_close_to_float64():
    case = CYCLIC[4]
    theta, X, Y = make_data(case)
    single, double = _structured(case, theta, X, Y, "float32"), _structured(case, theta, X, Y)
    for kind in ("hessian", "ggn", "ef"):
        assert single[kind].dtype == np.float32
        assert_close(single[kind], double[kind], rtol=1e-4, atol=1e-5, what=kind)


@pytest.mark.parametrize("square", [False, True])
def test_mirror_panel_copies_the_panel_onto_its_transpose(square):
    M = np.random.default_rng(0).normal(size=(300, 300))
    expected = M.copy()
    expected[10:190, 200:260] = M[200:260, 10:190].T
    if square:
        lower = np.tril(M[200:260, 200:260])
        expected[200:260, 200:260] = lower + np.tril(lower, -1).T
    dense_matrix.mirror_panel(M, slice(200, 260), slice(10, 190), square, tile=64)
    np.testing.assert_array_equal(M, expected)


def test_the_compile_cache_keeps_only_the_most_recent_models():
    """Compiled functions are kept per model spec for the MODELS_KEPT most recent models, not forever."""
    from fluxhess._backends.jax import compiled as jc

    X = np.ones((2, 1))
    models = [fh.Chain(fh.Dense(1, width), fh.Dense(width, 1)) for width in range(1, jc.MODELS_KEPT + 4)]
    for m in models:
        fh.forward(m, m.init(), X, backend="jax")
    kept = list(jc._CACHE)
    assert len(kept) == jc.MODELS_KEPT
    assert models[0] not in kept and models[-1] == kept[-1]
    fh.forward(models[-2], models[-2].init(), X, backend="jax")
    assert list(jc._CACHE)[-1] == models[-2]  # used again: the most recent


@pytest.mark.parametrize("pairwise_below", [1, 10**6], ids=["one-gemm-per-panel", "one-gemm-per-output-pair"])
def test_sub_chunks_of_samples_inside_a_panel_give_the_same_matrices(pairwise_below, monkeypatch):
    """All samples in one chunk, but each panel's scratch taken one sample at a time."""
    case = LAYERS[2]
    theta, X, Y = make_data(case)
    whole = _structured(case, theta, X, Y)
    monkeypatch.setattr(dense_matrix, "PAIRWISE_BELOW", pairwise_below)
    monkeypatch.setattr(dense_matrix, "_sample_bytes", lambda *args: 2**62)
    for kind, M in _structured(case, theta, X, Y).items():
        assert_close(M, whole[kind], rtol=1e-13, atol=1e-15, what=kind)
