"""Nothing a caller hands in is changed, frozen or kept: every public entry point and every
Laplace setter only reads the arrays it is given.

Each call gets arrays that fluxhess could use without a copy (C-ordered, of the dtype it
computes in), and their fingerprint (bytes, dtype, shape, strides, flags) must be the same
afterwards; no result may share memory with them; a Laplace approximation must not change
when the caller later writes into an array it was built from.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import fluxhess as fh

M = fh.Chain.mlp([3, 4, 2], "tanh")  # P = 26
R = fh.Chain.mlp([3, 4, 1], "tanh")  # P = 21, regression
rng = np.random.default_rng(0)
X = rng.normal(size=(6, 3))
Y = rng.normal(size=(6, 2))
y_reg = rng.normal(size=6)
LABELS = np.array([0, 1, 1, 0, 1, 0])


def _fingerprint(a: np.ndarray):
    flags = {k: a.flags[k] for k in ("WRITEABLE", "C_CONTIGUOUS", "F_CONTIGUOUS", "OWNDATA", "ALIGNED")}
    return hashlib.sha256(a.tobytes()).hexdigest(), a.dtype, a.shape, a.strides, flags


def _results(value):
    """Every array in a result (tuples, named tuples, dataclasses, Laplace objects)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _results(v)
    elif hasattr(value, "__dict__"):
        for v in vars(value).values():
            yield from _results(v)


def _fitted(**kw):
    return fh.Laplace(R, R.init(0), "regression", backend="jax", **kw).fit(X, y_reg)


def _calls(dtype):
    """name -> (arrays handed in, the call that takes them)."""
    theta, x, y, ylab, v = (np.array(a, dtype=dtype) for a in (M.init(0), X, Y, LABELS, np.ones((26, 3))))
    kw = dict(backend="jax", dtype=dtype)
    square = fh.Chain(fh.Dense(3, 3, "tanh"))
    theta_sq = np.array(square.init(0), dtype=dtype)
    calls = {
        "forward": ((theta, x), lambda: fh.forward(M, theta, x, **kw)),
        "loss": ((theta, x, y), lambda: fh.loss(M, theta, x, y, **kw)),
        "gradient": ((theta, x, ylab), lambda: fh.gradient(M, theta, x, ylab, loss="logitcrossentropy", **kw)),
        "hessian": ((theta, x, y), lambda: fh.hessian(M, theta, x, y, **kw)),
        "ggn": ((theta, x, y), lambda: fh.ggn(M, theta, x, y, **kw)),
        "empirical_fisher": ((theta, x, y), lambda: fh.empirical_fisher(M, theta, x, y, **kw)),
        "hvp": ((theta, x, y, v), lambda: fh.hvp(M, theta, x, y, v, kind="ggn", **kw)),
        "hvp-one-vector": ((theta, x, y, v[:, 0]), lambda: fh.hvp(M, theta, x, y, v[:, 0], **kw)),
        "diagonal": ((theta, x, y), lambda: fh.diagonal(M, theta, x, y, **kw)),
        "kron": ((theta, x, y), lambda: fh.kron(M, theta, x, y, **kw)),
        "param_jacobian": ((theta, x), lambda: fh.param_jacobian(M, theta, x, **kw)),
        "input_jacobian": ((theta, x), lambda: fh.input_jacobian(M, theta, x, **kw)),
        "input_hessian": ((theta, x), lambda: fh.input_hessian(M, theta, x, **kw)),
        "laplacian": ((theta, x), lambda: fh.laplacian(M, theta, x, **kw)),
        "divergence": ((theta_sq, x), lambda: fh.divergence(square, theta_sq, x, **kw)),
        "compare": ((theta, x, y), lambda: fh.compare(M, theta, x, y, backends=("jax",), quantities=("forward", "ggn"), dtype=dtype)),
        "curvature_diagnostics": ((theta, x, y), lambda: fh.curvature_diagnostics(M, theta, x, y, **kw)),
        "estimate": ((x,), lambda: fh.estimate(M, x, dtype=dtype)),
    }
    if dtype == "float64":
        theta_r, lam = R.init(0), np.full(R.num_params, 0.5)
        calls["fit_map"] = ((theta_r, X, y_reg, lam), lambda: fh.fit_map(R, theta_r, X, y_reg, prior_precision=lam, gtol=1e-3))
    return calls


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_public_functions_only_read_their_arguments(dtype):
    for name, (arrays, call) in _calls(dtype).items():
        before = [_fingerprint(a) for a in arrays]
        result = call()
        assert [_fingerprint(a) for a in arrays] == before, f"{name} changed an argument"
        for out in _results(result):
            for a in arrays:
                assert not np.shares_memory(out, a), f"{name} returned a view of an argument"


def _laplace_uses():
    """name -> (arrays handed in, the call that takes them, what it gives back to compare after)."""
    theta, p_prec, p_mean = R.init(0), np.array([2.0]), np.full(R.num_params, 0.1)
    Xv, yv, grid = X.copy(), y_reg.copy(), np.array([0.5, 1.0, 2.0])
    la = _fitted()
    return {
        "constructor": ((theta, p_prec, p_mean), lambda: fh.Laplace(R, theta, "regression", prior_precision=p_prec, prior_mean=p_mean, backend="jax")),
        "fit": ((Xv, yv), lambda: fh.Laplace(R, theta, "regression", backend="jax").fit(Xv, yv)),
        "prior_precision setter": ((p_prec,), lambda: setattr(la, "prior_precision", p_prec)),
        "prior_mean setter": ((p_mean,), lambda: setattr(la, "prior_mean", p_mean)),
        "log_marginal_likelihood": ((p_prec,), lambda: la.log_marginal_likelihood(p_prec)),
        "predictive": ((Xv,), lambda: la.predictive(Xv)),
        "gridsearch": ((Xv, yv, grid), lambda: _fitted().optimize_prior_precision("gridsearch", val=(Xv, yv), grid=grid)),
    }


def test_laplace_only_reads_its_arguments():
    for name, (arrays, call) in _laplace_uses().items():
        before = [_fingerprint(a) for a in arrays]
        call()
        assert [_fingerprint(a) for a in arrays] == before, f"Laplace {name} changed, froze or reordered an argument"


def test_laplace_keeps_no_reference_to_the_callers_arrays():
    """Writing into the arrays afterwards changes neither the approximation nor its marginal likelihood."""
    theta, p_prec, p_mean = R.init(0), np.array([2.0]), np.full(R.num_params, 0.1)
    la = fh.Laplace(R, theta, "regression", prior_precision=p_prec, prior_mean=p_mean, backend="jax").fit(X, y_reg)
    params, lml, cov = la.params.copy(), float(la.log_marginal_likelihood()), la.posterior_covariance
    theta += 1.0  # the caller's θ stays writeable
    p_prec[0] = 100.0
    p_mean[:] = -3.0
    np.testing.assert_array_equal(la.params, params)
    assert float(la.log_marginal_likelihood()) == lml
    np.testing.assert_array_equal(la.posterior_covariance, cov)
    later = np.array([3.0])
    la.prior_precision = later
    value = float(la.log_marginal_likelihood())
    later[0] = 0.001
    assert float(la.log_marginal_likelihood()) == value
    got = la.prior_precision
    got[0] = 7.0  # the getter hands out a copy too
    assert float(la.log_marginal_likelihood()) == value
