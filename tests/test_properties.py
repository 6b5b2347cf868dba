"""Properties every backend satisfies on random MLPs, data, losses and aggregations.

Each property is a function of a backend and a :class:`Problem`; hypothesis draws the
model structure, ``agg``, the scales of θ and X, and the seed of the data. Each structure is jit-compiled once per quantity, so structures come from a
fixed pool (:data:`POOL`) that together cover depth 1–4, widths 1–16, every
activation, bias on and off, a Flatten input and every loss; the data, parameters
and aggregation vary freely. The number of examples per property comes from the
hypothesis profile of conftest.py (200 in CI, 1000 with ``--slow``); ``--slow`` also
runs :func:`test_every_property_on_random_structures`, where hypothesis builds the
structure itself.

Every comparison is against something computed another way: the dense matrix
against the matrix-free products, ``mean`` against ``s·sum`` with ``s`` restated
from the README's conventions, float32 against float64, a repeat against the first call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fluxhess as fh
import reference as ref
from conftest import assert_close
from fluxhess.model import ACTIVATIONS, ELEMENTWISE

LOSSES = ("mse", "crossentropy", "logitcrossentropy", "binarycrossentropy", "logitbinarycrossentropy")
MATRICES = {"hessian": fh.hessian, "ggn": fh.ggn, "ef": fh.empirical_fisher}

#: Columns of V in every matrix-free product (one compiled shape).
K = 3
#: float32 results lie within this fraction of max|M₆₄| of the float64 result M₆₄ (more
#: near outputs of 0 and 1: see float32_is_close_to_float64). Measured over 240 random
#: examples of this pool: ~1e-6 typically; 1.1e-4 where an output was 0.024.
FLOAT32_RTOL = 2e-4


@dataclass(frozen=True)
class Structure:
    """A model, the loss it is trained with, and its batch shape (fixed: no recompiles)."""

    id: str
    model: fh.Chain
    loss: str
    n: int
    sample_shape: tuple[int, ...] | None = None  # (d,) unless the model starts with Flatten

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.n, *(self.sample_shape or (self.model.in_features,)))


D, A = fh.Dense, fh.Activation
POOL = [
    Structure("flatten-linear-sigmoid-ce", fh.Chain(fh.Flatten(), D(4, 1), A("sigmoid")), "crossentropy", 3, (2, 2)),
    Structure("tanh-w1-softmax-ce", fh.Chain(D(4, 1, "tanh"), D(1, 3), A("softmax")), "crossentropy", 5),
    Structure("relu-elu-logitce", fh.Chain(D(2, 16, "relu"), D(16, 5, "elu", bias=False), D(5, 2)), "logitcrossentropy", 6),
    Structure(
        "gelu-swish-leakyrelu-logsoftmax-mse",
        fh.Chain(D(3, 6, "gelu"), D(6, 16, "swish"), D(16, 4, "leakyrelu"), D(4, 3), A("logsoftmax")),
        "mse",
        3,
    ),
    Structure("softplus-sigmoid-bce", fh.Chain(D(5, 7, "softplus"), D(7, 2, "sigmoid")), "binarycrossentropy", 6),
    Structure("sigmoid-identity-logitbce", fh.Chain(D(3, 8, "sigmoid", bias=False), D(8, 8, "identity"), D(8, 2)), "logitbinarycrossentropy", 5),
]

#: Models linear in θ (one Dense layer, no activation): for mse, hessian == ggn exactly.
LINEAR = [
    Structure("linear-bias", fh.Chain(D(3, 2)), "mse", 5),
    Structure("linear-nobias-1", fh.Chain(D(1, 1, bias=False)), "mse", 1),
    Structure("linear-wide", fh.Chain(D(16, 4)), "mse", 7),
    Structure("flatten-linear", fh.Chain(fh.Flatten(), D(6, 3)), "mse", 2, (2, 3)),
]


def test_the_pool_covers_the_structure_space():
    """Depth 1–4, widths 1–16, every activation, bias on and off, every loss."""
    dense = [[l for _, l in s.model.dense_layers] for s in POOL]
    assert {len(d) for d in dense} == {1, 2, 3, 4}
    widths = {w for d in dense for l in d for w in (l.in_features, l.out_features)}
    assert min(widths) == 1 and max(widths) == 16
    used = {l.activation for d in dense for l in d}
    used |= {l.name for s in POOL for l in s.model.layers if isinstance(l, fh.Activation)}
    assert used == set(ACTIVATIONS)
    assert {l.bias for d in dense for l in d} == {True, False}
    assert {s.loss for s in POOL} == set(LOSSES)


@dataclass(frozen=True)
class Problem:
    structure: Structure
    agg: str
    theta: np.ndarray
    X: np.ndarray
    y: np.ndarray

    @property
    def model(self):
        return self.structure.model

    @property
    def kw(self) -> dict:
        return dict(loss=self.structure.loss, agg=self.agg)

    @property
    def P(self) -> int:
        return self.model.num_params


def targets(rng, loss: str, n: int, C: int) -> np.ndarray:
    """Targets valid for ``loss``: labels or class-probability rows, [0, 1] values, reals."""
    if loss == "mse":
        return rng.normal(size=(n, C))
    if loss in ("crossentropy", "logitcrossentropy") and C >= 2:
        if rng.random() < 0.5:
            return rng.integers(0, C, size=n)  # integer labels
        return rng.dirichlet(np.ones(C), size=n)
    y = rng.uniform(size=(n, C))
    if rng.random() < 0.5:
        y = np.round(y)  # exact 0s and 1s
    return y


@st.composite
def problems(draw, structures=st.sampled_from(POOL)):
    s = draw(structures)
    agg = draw(st.sampled_from(("sum", "mean")))
    theta_scale = draw(st.floats(0.25, 2.0))
    x_scale = draw(st.floats(0.1, 3.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    theta = theta_scale * (s.model.init(int(rng.integers(2**31))) + 0.3 * rng.normal(size=s.model.num_params))
    X = x_scale * rng.normal(size=s.x_shape)
    return Problem(s, agg, theta, X, targets(rng, s.loss, s.n, s.model.out_features))


@st.composite
def random_structures(draw):
    """Any spec MLP: depth 1–4, widths 1–16, any activation and bias, a head that fits the loss."""
    loss = draw(st.sampled_from(LOSSES))
    depth = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 16), min_size=depth + 1, max_size=depth + 1))
    layers = [
        D(a, b, draw(st.sampled_from(ELEMENTWISE)), draw(st.booleans()))
        for a, b in zip(widths[:-2], widths[1:-1])
    ]
    layers.append(D(widths[-2], widths[-1], bias=draw(st.booleans())))
    head = {
        "crossentropy": "softmax" if widths[-1] > 1 else "sigmoid",
        "binarycrossentropy": "sigmoid",
        "mse": draw(st.sampled_from([None, "softmax", "logsoftmax", *ELEMENTWISE])),
    }.get(loss)
    if head is not None:
        layers.append(A(head))
    return Structure("random", fh.Chain(*layers), loss, draw(st.integers(1, 6)))


def _psd_tolerance(M: np.ndarray) -> float:
    return 1e-12 * M.shape[0] * max(1.0, np.abs(M).max())


def _margin(p: Problem, backend: str, floor: float) -> float:
    """How far the model's probability outputs stay from 0 and 1 (1 for losses on raw outputs).

    Derivatives of σ and softmax hold ŷ(1 - ŷ) and Λ holds 1/ŷ² or 1/(1 - ŷ)², so terms of
    size 1/margin cancel to the curvature, amplifying rounding by 1/margin. Examples with a
    margin below ``floor`` (where ŷ's last digits decide the result) are discarded: Flux's
    advice there is the logit losses; test_numerics.py covers outputs of exactly 0 and 1.
    """
    if p.structure.loss not in ("crossentropy", "binarycrossentropy"):
        return 1.0
    yhat = fh.forward(p.model, p.theta, p.X, backend=backend)
    margin = float(np.minimum(yhat, 1 - yhat).min())
    assume(margin >= floor)
    return margin


def _amplified(rtol: float, margin: float) -> float:
    """``rtol`` while the margin is at least 0.1, ``rtol·0.1/margin`` below."""
    return rtol * max(1.0, 0.1 / margin)


# --- the properties: each takes a backend and a Problem --------------------------


def symmetric(backend, p):
    """The matrices are exactly symmetric; the matrix-free route is symmetric up to rounding."""
    U = np.random.default_rng(0).normal(size=(p.P, K))
    rtol = _amplified(1e-12, _margin(p, backend, 1e-8))
    for kind, fn in MATRICES.items():
        M = fn(p.model, p.theta, p.X, p.y, backend=backend, **p.kw)
        np.testing.assert_array_equal(M, M.T, err_msg=kind)
        MU = fh.hvp(p.model, p.theta, p.X, p.y, U, kind=kind, backend=backend, **p.kw)
        bound = rtol * (np.abs(U[:, 0]) @ np.abs(M) @ np.abs(U[:, 1])) + 1e-300
        assert abs(U[:, 0] @ MU[:, 1] - U[:, 1] @ MU[:, 0]) <= bound, kind


def positive_semidefinite(backend, p):
    """GGN and EF have no eigenvalue below -1e-12·P·max|M| (rounding)."""
    for kind in ("ggn", "ef"):
        M = MATRICES[kind](p.model, p.theta, p.X, p.y, backend=backend, **p.kw)
        lowest = np.linalg.eigvalsh(M).min()
        assert lowest >= -_psd_tolerance(M), f"{kind}: eigenvalue {lowest:.3e}"


def hvp_is_matrix_times_v(backend, p):
    V = np.random.default_rng(p.P).normal(size=(p.P, K))
    rtol = _amplified(1e-10, _margin(p, backend, 1e-8))
    for kind, fn in MATRICES.items():
        M = fn(p.model, p.theta, p.X, p.y, backend=backend, **p.kw)
        bound = rtol * (np.abs(M) @ np.abs(V)).max() + 1e-300
        MV = fh.hvp(p.model, p.theta, p.X, p.y, V, kind=kind, backend=backend, **p.kw)
        assert_close(MV, M @ V, rtol=0, atol=bound, what=f"hvp {kind}")


def diagonal_is_diagonal_of_matrix(backend, p):
    rtol = _amplified(1e-10, _margin(p, backend, 1e-8))
    for kind, fn in MATRICES.items():
        M = fn(p.model, p.theta, p.X, p.y, backend=backend, **p.kw)
        d = fh.diagonal(p.model, p.theta, p.X, p.y, kind=kind, backend=backend, **p.kw)
        assert_close(d, np.diag(M), rtol=rtol, atol=1e-300, what=f"diagonal {kind}")


def mean_is_s_times_sum(backend, p):
    """Every quantity with ``agg="mean"`` is ``s`` (restated from the README's conventions) times its ``agg="sum"`` value."""
    m, loss = p.model, p.structure.loss
    s = ref.scale(loss, "mean", p.X.shape[0], m.out_features)
    rtol = _amplified(1e-12, _margin(p, backend, 1e-8))  # s is applied at another step than in "sum"
    V = np.random.default_rng(1).normal(size=(p.P, K))
    quantities = [
        ("loss", lambda agg: fh.loss(m, p.theta, p.X, p.y, loss=loss, agg=agg, backend=backend)),
        ("gradient", lambda agg: fh.gradient(m, p.theta, p.X, p.y, loss=loss, agg=agg, backend=backend)),
    ]
    for kind, fn in MATRICES.items():
        quantities += [
            (kind, lambda agg, fn=fn: fn(m, p.theta, p.X, p.y, loss=loss, agg=agg, backend=backend)),
            (f"hvp {kind}", lambda agg, k=kind: fh.hvp(m, p.theta, p.X, p.y, V, kind=k, loss=loss, agg=agg, backend=backend)),
            (f"diagonal {kind}", lambda agg, k=kind: fh.diagonal(m, p.theta, p.X, p.y, kind=k, loss=loss, agg=agg, backend=backend)),
        ]
    # A sum that cancels (a gradient near a stationary point) is exact only to rounding of its
    # summands: |Σ_n g_n| ≤ Σ_n |g_n| ≤ √(N·Σ_n g_n²) = √(N·diag EF) bounds their size.
    ef = fh.diagonal(m, p.theta, p.X, p.y, kind="ef", loss=loss, agg="sum", backend=backend)
    summands = {"gradient": s * np.sqrt(p.X.shape[0] * np.max(ef))}
    for what, q in quantities:
        atol = rtol * summands.get(what, 0.0) + 1e-300
        assert_close(q("mean"), s * np.asarray(q("sum")), rtol=rtol, atol=atol, what=what)


def deterministic(backend, p):
    """The same call twice gives the same bytes."""
    V = np.random.default_rng(2).normal(size=(p.P, K))
    calls = [
        lambda: fh.forward(p.model, p.theta, p.X, backend=backend),
        lambda: fh.gradient(p.model, p.theta, p.X, p.y, backend=backend, **p.kw),
    ]
    for kind, fn in MATRICES.items():
        calls += [
            lambda fn=fn: fn(p.model, p.theta, p.X, p.y, backend=backend, **p.kw),
            lambda k=kind: fh.hvp(p.model, p.theta, p.X, p.y, V, kind=k, backend=backend, **p.kw),
            lambda k=kind: fh.diagonal(p.model, p.theta, p.X, p.y, kind=k, backend=backend, **p.kw),
        ]
    for call in calls:
        first, again = call(), call()
        assert first.tobytes() == again.tobytes()


def float32_is_close_to_float64(backend, p):
    """|M₃₂ - M₆₄| <= (FLOAT32_RTOL, amplified near 0 and 1, + ϵ₃₂/margin²)·max|M₆₄|.

    The second term is not rounding: Flux's ϵ is eps of the output type, so in float32 the
    losses on probabilities are a different function (ϵ₃₂ = 2⁻²³ against 2⁻⁵²), whose
    curvature differs by about ϵ₃₂/margin² relative. Margins below 1e-2 are discarded.
    """
    margin = _margin(p, backend, 1e-2)
    rtol = _amplified(FLOAT32_RTOL, margin) + 2.0**-23 / margin**2
    for kind, fn in MATRICES.items():
        M64 = fn(p.model, p.theta, p.X, p.y, backend=backend, **p.kw)
        M32 = fn(p.model, p.theta, p.X, p.y, backend=backend, dtype="float32", **p.kw)
        assert M32.dtype == np.float32
        assert_close(M32, M64, rtol=rtol, atol=1e-300, what=f"float32 {kind}")


PROPERTIES = [
    symmetric,
    positive_semidefinite,
    hvp_is_matrix_times_v,
    diagonal_is_diagonal_of_matrix,
    mean_is_s_times_sum,
    deterministic,
    float32_is_close_to_float64,
]


@pytest.mark.parametrize("check", PROPERTIES, ids=[c.__name__ for c in PROPERTIES])
@given(p=problems())
def test_property(backend, check, p):
    check(backend, p)


@given(p=problems(st.sampled_from(LINEAR)))
def test_hessian_equals_ggn_for_a_linear_model_with_mse(backend, p):
    H = fh.hessian(p.model, p.theta, p.X, p.y, backend=backend, **p.kw)
    G = fh.ggn(p.model, p.theta, p.X, p.y, backend=backend, **p.kw)
    assert_close(H, G, rtol=1e-12, atol=1e-300, what="hessian vs ggn")


@pytest.mark.slow
@settings(max_examples=40)
@given(p=problems(random_structures()))
def test_every_property_on_random_structures(backend, p):
    """Structures drawn freely (each compiles anew, hence slow-only)."""
    for check in PROPERTIES:
        check(backend, p)
