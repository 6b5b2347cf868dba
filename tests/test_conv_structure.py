"""The convolutional routes (_backends/jax/conv*.py) against the generic JAX route (``jax.hessian``
for the Hessian at these sizes, per-sample ``jacrev`` for the GGN and Jacobian, ``vmap(grad)``
for the empirical Fisher), and KFAC against curvlinops and laplace-torch on the same weights.

``JaxBackend(structured=False)`` is the generic route; the public API takes the structured one
wherever :func:`conv.split` covers the model.
"""

from __future__ import annotations

import numpy as np
import pytest

import fluxhess as fh
from conftest import Case, assert_close
from fluxhess._backends.jax import JaxBackend, conv, conv_matrix
from fluxhess._backends.jax.kinds import KINDS
from fluxhess._problem import Problem
from fluxhess.errors import UnsupportedModelError

GENERIC = JaxBackend(structured=False)
TOL = dict(rtol=1e-10, atol=1e-13)
MATRIX = {"hessian": fh.hessian, "ggn": fh.ggn, "ef": fh.empirical_fisher}
GENERIC_MATRIX = {"hessian": GENERIC.hessian, "ggn": GENERIC.ggn, "ef": GENERIC.empirical_fisher}

CASES = [
    Case(  # stride, padding pairs, a true convolution, max pool, groups, dilation, Dense head
        "conv-pool-dense",
        fh.Chain(
            fh.Conv((3, 3), 2, 4, "relu", stride=(1, 2), padding=((1, 0), (1, 1))), fh.MaxPool((2, 2)),
            fh.Conv((2, 2), 4, 4, "leakyrelu", groups=2, dilation=(1, 2), padding="same"),
            fh.Flatten(), fh.Dense(16, 3), input_shape=(2, 6, 7),
        ),
        "logitcrossentropy", "mean", 5,
    ),
    Case(  # residual blocks: x + f(x) and a sum of branches, mean pool, CrossCor without bias
        "residual",
        fh.Chain(
            fh.CrossCor((3,), 2, 3, "relu", padding=1),
            fh.SkipConnection(fh.Conv((3,), 3, 3, "relu", padding="same"), fh.Dropout(0.2)),
            fh.Parallel([fh.CrossCor((1,), 3, 3, bias=False)], [fh.MeanPool((3,), stride=1, padding=1)]),
            fh.Flatten(), fh.Dense(18, 2, "relu"), fh.Dense(2, 2), input_shape=(2, 6),
        ),
        "mse", "sum", 4,
    ),
    Case(  # a padded pool widens the Dense tap's input past the conv's output: the cross term in
        # forward mode (conv._in_reverse is False); an overlapping max pool (reduce_window)
        "widening-pool",
        fh.Chain(fh.Conv((2,), 1, 2, "relu"), fh.MaxPool((2,), stride=1), fh.MeanPool((1,), stride=1, padding=2),
                 fh.Flatten(), fh.Dense(12, 2, "relu"), fh.Dense(2, 2), input_shape=(1, 4)),
        "mse", "sum", 4,
    ),
    Case(  # curved tap activations: each adds its own term to the Hessian
        "tanh-meanpool",
        fh.Chain(fh.Conv((3, 3), 1, 3, "tanh", padding=1), fh.MeanPool((2, 2)), fh.Flatten(), fh.Dense(12, 2, "softplus"),
                 fh.Dense(2, 3), input_shape=(1, 4, 4)),
        "logitcrossentropy", "sum", 4,
    ),
    Case(  # curved activations in residual blocks, a grouped Conv, a CrossCor without bias
        "curved-residual",
        fh.Chain(
            fh.Conv((3,), 2, 4, "sigmoid", padding=1),
            fh.SkipConnection(fh.Conv((3,), 4, 4, "elu", padding="same", groups=2), fh.Dropout(0.2)),
            fh.Parallel([fh.CrossCor((1,), 4, 2, "swish", bias=False)], [fh.CrossCor((3,), 4, 2, "tanh", padding=1)]),
            fh.Flatten(), fh.Dense(10, 2, "tanh"), fh.Dense(2, 2), input_shape=(2, 5),
        ),
        "mse", "mean", 4,
    ),
]

#: The cases with a curved tap activation (second-order terms of their own).
CURVED = {"tanh-meanpool", "curved-residual"}


def _data(case: Case, seed=0):
    rng = np.random.default_rng(seed)
    model = case.model
    theta = model.init(seed) + 0.1 * rng.normal(size=model.num_params)
    X = rng.normal(size=(case.n, model.in_features))
    C = model.out_features
    Y = rng.normal(size=(case.n, C)) if case.loss == "mse" else rng.dirichlet(np.ones(C), size=case.n)
    return theta, X, Y


def _problem(case: Case):
    theta, X, Y = _data(case)
    return Problem(case.model, theta, X).with_loss(Y, case.loss, case.agg)


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request):
    assert request.param.model.num_params <= 256  # so that the generic Hessian is one jax.hessian
    assert conv.split(request.param.model) is not None
    return request.param


@pytest.mark.parametrize("kind", ["hessian", "ggn", "ef"])
def test_matrix_equals_generic(case, kind):
    theta, X, Y = _data(case)
    ours = MATRIX[kind](case.model, theta, X, Y, loss=case.loss, agg=case.agg)
    assert_close(ours, GENERIC_MATRIX[kind](_problem(case)), **TOL, what=kind)
    np.testing.assert_array_equal(ours, ours.T)


def test_cross_terms_take_both_modes():
    """The cross terms' Jacobian in the earlier pre-activations: reverse and forward mode are both covered."""
    modes = {conv._in_reverse(st, m) for st in map(conv.split, (c.model for c in CASES)) for m in range(1, len(st.taps))}
    assert modes == {True, False}


@pytest.mark.parametrize("index, kind, factored", [(3, "ggn", (1,)), (0, "hessian", (2,))])
def test_factored_panels_in_small_pieces(monkeypatch, index, kind, factored):
    """A Dense tap's rows of the GGN from its factors (``conv_matrix.FactoredPanel``): one followed
    by a Dense tap that is not factored, and a CNN's head under the Hessian's cross terms, with
    panels of a few rows of ``ā`` and one sample per chunk: the generic route's matrix."""
    case = CASES[index]
    st = conv.split(case.model)
    assert conv_matrix.factored_taps(st, case.model.out_features) == factored
    monkeypatch.setattr(conv_matrix, "_budget", lambda P, itemsize: 64 * P * itemsize)
    monkeypatch.setattr(conv_matrix, "_sample_budget", lambda P, itemsize: 1)
    panels = conv_matrix._panels(st, factored, st.model.num_params, 8, conv_matrix._budget(st.model.num_params, 8))
    assert sum(isinstance(p, conv_matrix.FactoredPanel) for p in panels) > 1
    theta, X, Y = _data(case)
    ours = MATRIX[kind](case.model, theta, X, Y, loss=case.loss, agg=case.agg)
    assert_close(ours, GENERIC_MATRIX[kind](_problem(case)), **TOL, what=kind)
    np.testing.assert_array_equal(ours, ours.T)


def test_route_taken_where_it_is_exact(case):
    """The Hessian's structured route where its second-order terms are the taps' and their
    activations'; the GGN and EF always."""
    st = conv.split(case.model)
    assert st.second_order_free == (case.id not in CURVED)
    assert bool(st.curved) == (case.id in CURVED) and st.exact_hessian
    assert all(conv_matrix.covers(st, KINDS[k]) for k in ("hessian", "ggn", "ef"))


def test_a_curved_activation_layer_leaves_the_hessian_to_the_generic_route():
    """A curved function that is not a tap's own activation (here after a pool) has no term of
    the route's: the Hessian and its diagonal are the generic route's, the GGN stays structured."""
    model = fh.Chain(fh.Conv((2,), 1, 2, "tanh"), fh.MeanPool((2,)), fh.Activation("sigmoid"), fh.Flatten(),
                     fh.Dense(8, 2), input_shape=(1, 9))
    st = conv.split(model)
    assert st.curved == (0,) and not st.exact_hessian
    assert not conv_matrix.covers(st, KINDS["hessian"]) and conv_matrix.covers(st, KINDS["ggn"])
    case = Case("activation-layer", model, "mse", "sum", 3)
    theta, X, Y = _data(case)
    want = GENERIC.hessian(_problem(case))
    assert_close(fh.hessian(model, theta, X, Y), want, **TOL, what="hessian")
    assert_close(fh.diagonal(model, theta, X, Y, kind="hessian"), np.diag(want), **TOL, what="diagonal")


@pytest.mark.parametrize("kind", ["hessian", "ggn", "ef"])
def test_diagonal_equals_generic(case, kind):
    theta, X, Y = _data(case)
    ours = fh.diagonal(case.model, theta, X, Y, kind=kind, loss=case.loss, agg=case.agg)
    assert_close(ours, np.diag(GENERIC_MATRIX[kind](_problem(case))), **TOL, what=f"diagonal {kind}")


def test_param_jacobian_equals_generic(case):
    theta, X, _ = _data(case)
    ours = fh.param_jacobian(case.model, theta, X)
    assert_close(ours, GENERIC.param_jacobian(Problem(case.model, theta, X)), **TOL, what="param_jacobian")


def test_matrix_into_out(case):
    theta, X, Y = _data(case)
    P = case.model.num_params
    out = np.full((P, P), np.nan)
    returned = fh.ggn(case.model, theta, X, Y, loss=case.loss, agg=case.agg, out=out)
    assert returned is out or np.shares_memory(returned, out)
    assert_close(out, GENERIC.ggn(_problem(case)), **TOL, what="ggn into out")


def test_unknown_layers_leave_the_generic_route():
    """A normalisation with parameters is not a tap: no structure, and the API still answers."""
    model = fh.Chain(fh.Conv((3,), 1, 2, "relu"), fh.BatchNorm(2), fh.Flatten(), fh.Dense(8, 1), input_shape=(1, 6))
    assert conv.split(model) is None
    case = Case("bn", model, "mse", "sum", 3)
    theta, X, Y = _data(case)
    assert_close(fh.ggn(model, theta, X, Y), GENERIC.ggn(_problem(case)), **TOL, what="ggn")


# ---------------------------------------------------------------------------
# KFAC against curvlinops (KFC "expand") and laplace-torch's kron
# ---------------------------------------------------------------------------

KFAC_MODEL = fh.Chain(
    fh.CrossCor((3, 3), 2, 4, "relu", padding=1), fh.MaxPool((2, 2)), fh.CrossCor((3, 3), 4, 3, "relu", stride=(1, 2)),
    fh.Flatten(), fh.Dense(6, 3), input_shape=(2, 8, 8),
)


def _torch_layout(w):
    """A weight array of :meth:`Chain.unflatten` in torch's layout: a Dense weight ``(out, in)`` is
    torch's; a kernel in Julia's order ``(k_w, k_h, cin, cout)`` is torch's with its axes reversed."""
    return np.ascontiguousarray(w if w.ndim == 2 else w.transpose(tuple(reversed(range(w.ndim)))))


def _torch_cnn(model, theta):
    torch = pytest.importorskip("torch", reason="the KFAC comparison needs torch")
    blocks = model.unflatten(theta)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 3, 3, stride=(1, 2)), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6, 3),
    ).double()
    with torch.no_grad():
        for name, module in (("layers.0", net[0]), ("layers.2", net[3]), ("layers.4", net[6])):
            module.weight.copy_(torch.tensor(_torch_layout(blocks[f"{name}.weight"])))
            module.bias.copy_(torch.tensor(blocks[f"{name}.bias"]))
    return net


def _classification_data(N=6, seed=0):
    rng = np.random.default_rng(seed)
    theta = KFAC_MODEL.init(seed) + 0.1 * rng.normal(size=KFAC_MODEL.num_params)
    return theta, rng.normal(size=(N, 2, 8, 8)), rng.integers(0, 3, N)


@pytest.mark.parametrize("kind, fisher_type", [("ggn", "type-2"), ("ef", "empirical")])
def test_kron_matches_curvlinops(kind, fisher_type):
    torch = pytest.importorskip("torch", reason="the KFAC comparison needs torch")
    curvlinops = pytest.importorskip("curvlinops", reason="the KFAC comparison needs curvlinops")
    theta, X, labels = _classification_data()
    ours = fh.kron(KFAC_MODEL, theta, X, np.eye(3)[labels], kind=kind, loss="logitcrossentropy", agg="sum")
    net = _torch_cnn(KFAC_MODEL, theta)
    kfac = curvlinops.KFACLinearOperator(
        net, torch.nn.CrossEntropyLoss(reduction="sum"), [p for p in net.parameters()],
        [(torch.tensor(X), torch.tensor(labels))], fisher_type=fisher_type, kfac_approx="expand",
        separate_weight_and_bias=False, check_deterministic=False,
    )
    kfac.compute_kronecker_factors()
    state = kfac.state_dict()
    for factors, module in zip(ours, ("0", "3", "6")):
        assert_close(factors.A, state["input_covariances"][module].numpy(), **TOL, what=f"A of {factors.layer}")
        assert_close(factors.G, state["gradient_covariances"][module].numpy(), **TOL, what=f"G of {factors.layer}")


def test_kron_of_a_single_sample_is_the_ggn_block():
    """One sample and a Dense layer: ``A ⊗ G`` is the exact GGN block; a Conv weight block ``G ⊗ A``
    is exact when the layer has one output position (here a 1-d conv over its whole input)."""
    model = fh.Chain(fh.Conv((4,), 2, 3, "relu"), fh.Flatten(), fh.Dense(3, 2), input_shape=(2, 4))
    case = Case("one", model, "mse", "sum", 1)
    theta, X, Y = _data(case)
    (_, A0, G0), (_, A1, G1) = fh.kron(model, theta, X, Y, kind="ggn")
    H = GENERIC.ggn(_problem(case))
    assert_close(H[:24, :24], np.kron(G0, A0[:-1, :-1]), **TOL, what="conv weight block")
    assert_close(H[27:33, 27:33], np.kron(A1[:-1, :-1], G1), **TOL, what="dense weight block")


def test_kron_refuses_grouped_convolutions_and_affine_normalisations():
    grouped = fh.Chain(fh.Conv((3,), 2, 2, groups=2), fh.Flatten(), fh.Dense(16, 1), input_shape=(2, 10))
    normed = fh.Chain(fh.Conv((3,), 2, 2), fh.BatchNorm(2), fh.Flatten(), fh.Dense(16, 1), input_shape=(2, 10))
    for model, said in ((grouped, "groups=2"), (normed, "BatchNorm")):
        X = np.zeros((2, model.in_features))
        with pytest.raises(UnsupportedModelError, match=said):
            fh.kron(model, model.init(), X, np.zeros((2, 1)))


def test_laplace_kron_matches_laplace_torch():
    """``Laplace(structure="kron")`` on a CNN: the posterior precision equals laplace-torch's
    (curvlinops' KFAC backend: its GGN factors are the exact type-2 ones) on the same weights."""
    torch = pytest.importorskip("torch", reason="laplace-torch parity needs torch")
    laplace = pytest.importorskip("laplace", reason="laplace-torch is not installed")
    theta, X, labels = _classification_data(N=8)
    ours = fh.Laplace(KFAC_MODEL, theta, "classification", structure="kron", prior_precision=0.7, backend="jax").fit(X, labels)
    theirs = laplace.Laplace(_torch_cnn(KFAC_MODEL, theta), "classification", subset_of_weights="all",
                             hessian_structure="kron", backend=laplace.curvature.CurvlinopsGGN, prior_precision=0.7)
    theirs.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(X), torch.tensor(labels)), batch_size=8))
    index = KFAC_MODEL.unflatten(np.arange(KFAC_MODEL.num_params, dtype=float))
    order = np.concatenate([_torch_layout(index[n]).ravel() for n in index]).astype(int)  # torch's parameter vector
    P_theirs = theirs.posterior_precision.to_matrix().numpy()
    assert_close(ours.posterior_precision[np.ix_(order, order)], P_theirs, rtol=1e-10, atol=1e-12, what="posterior precision")
