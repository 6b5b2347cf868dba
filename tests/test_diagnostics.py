"""curvature_diagnostics and estimate, against independent matrices and closed forms."""

import numpy as np
import pytest

import fluxhess as fh
import reference as ref
from conftest import assert_close


def _case(model, loss, n=9, seed=0):
    rng = np.random.default_rng(seed)
    theta = model.init(seed) + 0.2 * rng.normal(size=model.num_params)
    X = rng.normal(size=(n, model.in_features))
    Y = rng.normal(size=(n, model.out_features)) if loss == "mse" else rng.dirichlet(np.ones(model.out_features), size=n)
    return theta, X, Y


def test_spectra_and_gaps_match_independent_matrices(backend):
    model, loss, agg = fh.Chain.mlp([3, 4, 3], "tanh"), "logitcrossentropy", "mean"
    theta, X, Y = _case(model, loss)
    d = fh.curvature_diagnostics(model, theta, X, Y, loss=loss, agg=agg, backend=backend)
    H = ref.jax_hessian(model, theta, X, Y, loss, agg)
    G = ref.linearized_ggn(model, theta, X, Y, loss, agg)
    F = ref.scale(loss, agg, *Y.shape) * sum(np.outer(g, g) for g in ref.per_sample_gradients(model, theta, X, Y, loss))
    for name, M in {"hessian": H, "ggn": G, "empirical_fisher": F}.items():
        assert_close(d.eigenvalues[name], np.linalg.eigvalsh(M), rtol=1e-9, atol=1e-12, what=f"eigenvalues of {name}")
    lam = np.linalg.eigvalsh(H)
    assert lam.min() < 0, "the case should have negative curvature for the mass to be tested"
    assert d.negative_mass == pytest.approx(-lam[lam < 0].sum() / np.abs(lam).sum(), rel=1e-8)
    assert d.gap_ef_ggn == pytest.approx(np.linalg.norm(F - G) / np.linalg.norm(G), rel=1e-8)
    assert d.gap_ggn_hessian == pytest.approx(np.linalg.norm(G - H) / np.linalg.norm(H), rel=1e-8)
    assert d.layout is model.layout


def test_linear_mse_has_no_gap_and_no_negative_mass():
    """Closed form: a linear model with mse has H == GGN = 2·Σ_n (x̄ x̄ᵀ ⊗ I), which is PSD."""
    model = fh.Chain(fh.Dense(3, 2))
    theta, X, Y = _case(model, "mse")
    d = fh.curvature_diagnostics(model, theta, X, Y, loss="mse", backend="jax")
    Xb = np.hstack([X, np.ones((9, 1))])  # x̄ = [x; 1]; the eigenvalues do not depend on θ's order
    assert d.gap_ggn_hessian < 1e-14
    assert d.negative_mass == 0.0
    expected = np.sort(np.repeat(np.linalg.eigvalsh(2 * Xb.T @ Xb), 2))
    assert_close(d.eigenvalues["hessian"], expected, rtol=1e-10, atol=1e-12, what="eigenvalues of 2·X̄ᵀX̄ ⊗ I")


def test_printed_tables():
    model = fh.Chain.mlp([2, 3, 2], "tanh")
    theta, X, Y = _case(model, "mse")
    d = fh.curvature_diagnostics(model, theta, X, Y, loss="mse", backend="jax")
    text = str(d)
    for name in ("hessian", "ggn", "empirical_fisher"):
        assert f"\n{name} " in text
    assert f"= {d.negative_mass:.4g}" in text and f"‖EF − GGN‖_F / ‖GGN‖_F = {d.gap_ef_ggn:.4g}" in text
    assert d._repr_html_().count("<table>") == 2


def test_estimate_sizes_are_closed_forms():
    model = fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 2, bias=False))
    P, N, d, C = 3 * 4 + 4 + 4 * 2, 10, 3, 2
    est = fh.estimate(model, np.zeros((N, d)), backend="jax")
    assert est["hessian"].shape == (P, P) and est["hessian"].result_bytes == 8 * P * P
    # the JAX Dense-chain route: the result and its bounded working set (2 × 16 MiB at least)
    assert est["hessian"].needs_bytes == 8 * P * P + 2 * 16 * 2**20
    assert est["param_jacobian"].result_bytes == 8 * N * C * P
    assert est["input_hessian"].shape == (N, C, d, d)
    assert est["kron"].result_bytes == 8 * ((3 + 1) ** 2 + 4**2 + 4**2 + 2**2)
    assert fh.estimate(model, N, dtype="float32")["ggn"].result_bytes == 4 * P * P
    assert all(r.fits for r in est.rows)
    assert "hessian" in str(est) and est._repr_html_().count("<table>") == 1
    with pytest.raises(fh.InputError, match="no estimate for 'hesian'"):
        est["hesian"]
    with pytest.raises(fh.UnknownNameError, match="backend must be 'auto' or one of jax, julia; got 'jx'"):
        fh.estimate(model, N, backend="jx")


def test_estimate_agrees_with_the_memory_guard():
    """A model whose P×P matrices cannot fit: estimate says so, and hessian refuses before computing."""
    model = fh.Chain.mlp([400, 500, 1])  # P = 201001: a (P, P) matrix is 323 GB
    theta, X, y = np.zeros(model.num_params), np.zeros((2, 400)), np.zeros(2)
    est = fh.estimate(model, X)
    assert not est["hessian"].fits and est["diagonal"].fits and est["gradient"].fits
    with pytest.raises(fh.MemoryBudgetError, match="hessian of shape \\(201001, 201001\\)"):
        fh.hessian(model, theta, X, y, backend="jax")


class _Stop(Exception):
    pass


WITH_TARGETS = ("gradient", "hessian", "ggn", "empirical_fisher", "hvp", "diagonal", "kron")
WITHOUT_TARGETS = ("forward", "param_jacobian", "input_jacobian", "input_hessian", "laplacian")


@pytest.mark.parametrize("quantity", WITH_TARGETS + WITHOUT_TARGETS)
def test_estimate_needs_what_the_api_guard_asks_for(quantity, backend, monkeypatch):
    """The bytes each public function hands the memory guard are the bytes estimate reports."""
    model = fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 2))
    theta, X, Y = _case(model, "mse", n=5)
    expected = fh.estimate(model, X, backend=backend)[quantity].needs_bytes
    asked = []

    def record(q, nbytes, shape, **kw):
        asked.append((q, nbytes))
        raise _Stop

    monkeypatch.setattr(fh._memory, "require", record)
    args = (model, theta, X) if quantity in WITHOUT_TARGETS else (model, theta, X, Y)
    if quantity == "hvp":
        args += (np.ones(model.num_params),)
    with pytest.raises(_Stop):
        getattr(fh, quantity)(*args, backend=backend)
    assert asked == [(quantity, expected)]


def test_estimate_rejects_bad_arguments():
    with pytest.raises(fh.InputError, match="number of samples"):
        fh.estimate(fh.Chain.mlp([2, 1]), 0)
    with pytest.raises(fh.InputError, match="fluxhess.Chain"):
        fh.estimate(object(), 3)


def test_estimate_of_a_multi_input_model_takes_the_tuple_and_checks_it():
    """Before: the tuple (x, t) raised numpy's ValueError (inhomogeneous shape), and (x,) gave N = 1."""
    model = fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 1), inputs={"x": 2, "t": 1})
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(5, 2)), rng.normal(size=5)
    stacked = fh.estimate(model, np.column_stack([x, t]))
    for X in [(x, t), [x, t[:, None]]]:
        got = fh.estimate(model, X)
        assert [r.shape for r in got.rows] == [r.shape for r in stacked.rows]
        assert got["input_hessian"].shape == (5, 1, 3, 3)
    with pytest.raises(fh.InputError, match=r"tuple of 2 arrays \(x, t\)"):
        fh.estimate(model, (x,))
    with pytest.raises(fh.InputError, match="input 'x'"):
        fh.estimate(model, ("a", "b"))
    with pytest.raises(fh.InputError, match=r"input 't' must have shape \(4, 1\)"):
        fh.estimate(model, (x[:4], t))

