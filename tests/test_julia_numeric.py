"""The julia backend against the JAX fixtures, through the public API, when Julia can run.

Skipped, with the reason, when no Julia runtime is found (fluxhess.backends()).
Julia starts once for the whole session (the backend is a process-wide singleton).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

import fluxhess as fh
from fluxhess.api import Call
from fluxhess.errors import BackendError, InputError, UnsupportedModelError
from fluxhess._backends import REGISTRY
from fluxhess._problem import Problem
from fluxhess.flux import FluxModel, flux_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted(ROOT.joinpath("julia", "test", "fixtures").glob("*.toml"))
RTOL, ATOL = 1e-10, 1e-12


@pytest.fixture(scope="module", autouse=True)
def julia_available():
    reason = fh.backends()["julia"]
    if reason is not None:
        pytest.skip(f"julia backend unavailable: {reason}")


def _array(t):
    return np.reshape(np.asarray(t["data"], dtype=np.float64), t["shape"], order="F")


def _spec(source: str) -> fh.Chain:
    """The spec Chain whose to_flux() is ``source`` (the fixtures store the source)."""
    chain, _ = FluxModel(source).to_spec()
    assert chain.to_flux() == source
    return chain


def _close(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = max(np.linalg.norm(want), 1e-300)
    assert np.linalg.norm(got - want) <= max(ATOL, RTOL * scale), np.linalg.norm(got - want) / scale


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_every_quantity_matches_the_jax_fixture(path):
    fx = tomllib.loads(path.read_text(encoding="utf-8"))
    model = _spec(fx["source"])
    theta, X, Y, V = (_array(fx[k]) for k in ("theta", "X", "Y", "V"))
    ex = fx["expected"]
    kw = dict(loss=fx["loss"], agg=fx["agg"], backend="julia")
    assert fh.loss(model, theta, X, Y, **kw) == pytest.approx(ex["loss"], rel=RTOL)
    _close(fh.forward(model, theta, X, backend="julia"), _array(ex["forward"]))
    for name in ("gradient", "hessian", "ggn", "empirical_fisher"):
        _close(getattr(fh, name)(model, theta, X, Y, **kw), _array(ex[name]))
    for kind in ("hessian", "ggn", "ef"):
        _close(fh.hvp(model, theta, X, Y, V, kind=kind, **kw), _array(ex[f"hvp_{kind}"]))
        _close(fh.diagonal(model, theta, X, Y, kind=kind, **kw), _array(ex[f"diagonal_{kind}"]))
    for kind in ("ggn", "ef"):
        got = fh.kron(model, theta, X, Y, kind=kind, **kw)
        assert len(got) == len(ex[f"kron_{kind}"])
        for f, e in zip(got, ex[f"kron_{kind}"]):
            _close(f.A, _array(e["A"]))
            _close(f.G, _array(e["G"]))
    for name in ("param_jacobian", "input_jacobian", "input_hessian", "laplacian", "divergence"):
        if name in ex:
            _close(getattr(fh, name)(model, theta, X, backend="julia"), _array(ex[name]))


def test_results_are_owned_c_ordered_numpy():
    path = FIXTURES[0]
    fx = tomllib.loads(path.read_text(encoding="utf-8"))
    model = _spec(fx["source"])
    theta, X, Y = (_array(fx[k]) for k in ("theta", "X", "Y"))
    for out in (
        fh.hessian(model, theta, X, Y, backend="julia"),
        fh.param_jacobian(model, theta, X, backend="julia"),
        fh.input_hessian(model, theta, X, backend="julia"),
    ):
        assert isinstance(out, np.ndarray) and out.flags.c_contiguous and out.flags.owndata
        assert out.dtype == np.float64
    H32 = fh.hessian(model, theta, X, Y, backend="julia", dtype="float32")
    assert H32.dtype == np.float32
    np.testing.assert_allclose(H32, fh.hessian(model, theta, X, Y, backend="julia"), rtol=1e-3, atol=1e-4)


def test_flux_model_round_trips_through_the_spec():
    m = flux_model("Chain(Dense(3 => 4, tanh), Dense(4 => 2; bias=false), softmax)", seed=7)
    theta = m.params
    assert theta.dtype == np.float64 and theta.shape == (m.num_params,) == (3 * 4 + 4 + 4 * 2,)
    chain, theta2 = m.to_spec()
    assert chain.to_flux() == "Chain(Dense(3 => 4, tanh), Dense(4 => 2; bias=false), softmax)"
    np.testing.assert_array_equal(theta, theta2)
    assert np.array_equal(flux_model(m.source, seed=7).params, theta)  # the seed fixes the init
    assert not np.array_equal(flux_model(m.source, seed=8).params, theta)
    X = np.random.default_rng(0).normal(size=(5, 3))
    y = np.array([0, 1, 1, 0, 1])
    H_julia = fh.hessian(m, theta, X, y, loss="crossentropy", backend="julia")
    H_jax = fh.hessian(chain, theta2, X, y, loss="crossentropy", backend="jax")
    _close(H_julia, H_jax)


def test_a_model_outside_the_spec_runs_on_julia_and_says_why_it_has_no_spec():
    m = flux_model("Chain(Dense(2 => 3, x -> x^3), Dense(3 => 1))")
    with pytest.raises(UnsupportedModelError, match="layer 1"):
        m.to_spec()
    X = np.array([[0.1, 0.2], [0.3, -0.4]])
    H = fh.hessian(m, m.params, X, np.zeros(2), backend="julia")
    assert H.shape == (m.num_params, m.num_params)
    np.testing.assert_allclose(H, H.T)


def test_a_julia_failure_is_a_backend_error_and_julia_stays_usable():
    # Zygote cannot differentiate array mutation: the message says so. (Zeroing a row keeps the
    # function from acting as one scalar function entry by entry, which the Dense-chain route
    # would take without Zygote.)
    bad = flux_model("Chain(Dense(2 => 2), x -> (y = similar(x); y .= 2 .* x; y[1, :] .= 0; y))")
    X, y = np.ones((3, 2)), np.zeros((3, 2))
    with pytest.raises(BackendError) as info:
        fh.gradient(bad, bad.params, X, y, backend="julia")
    text = str(info.value)
    assert "gradient" in text and "julia" in text and "X (3, 2)" in text
    assert "Stacktrace" not in text
    good = fh.Chain(fh.Dense(2, 2))
    assert fh.gradient(good, good.init(), X, y, backend="julia").shape == (6,)


def test_a_broken_source_names_the_problem():
    with pytest.raises(BackendError, match="UndefVarError|not defined"):
        flux_model("Chain(Dense(2 => 2), NoSuchLayer())").params


def test_a_julia_dimension_mismatch_is_an_input_error():
    """Targets of the wrong width past the API's checks (the call as the API makes it): Julia's
    DimensionMismatch arrives as an InputError naming the call and Julia's message."""
    model = fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 2))
    X, Y = np.ones((5, 3)), np.zeros((5, 1))
    call = Call("gradient", REGISTRY["julia"], Problem(model, model.init(), X, Y=Y, loss="mse", agg="sum"))
    with pytest.raises(InputError, match=r"gradient on backend 'julia' failed for .*DimensionMismatch"):
        call.run("gradient")


@pytest.mark.parametrize("source", ["Chain(Dense(3 => 5, tanh), Dense(5 => 2))",
                                    "Chain(Dense(3 => 5, tanh), x -> 2 .* x, Dense(5 => 2))"], ids=["dense-chain", "generic"])
def test_out_receives_every_curvature_written_by_julia(tmp_path, source):
    m = flux_model(source, seed=1)
    theta = m.params
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(9, 3)), rng.normal(size=(9, 2))
    for fn in (fh.hessian, fh.ggn, fh.empirical_fisher):
        out = np.lib.format.open_memmap(tmp_path / f"{fn.__name__}.npy", mode="w+", dtype=np.float64, shape=(theta.size,) * 2)
        assert fn(m, theta, X, y, backend="julia", out=out) is out
        np.testing.assert_array_equal(np.load(tmp_path / f"{fn.__name__}.npy"), fn(m, theta, X, y, backend="julia"))


def test_hvp_in_chunks_of_columns_equals_the_matrix_times_v(monkeypatch):
    from fluxhess import _memory as memory

    m = fh.Chain(fh.Dense(3, 5, "tanh"), fh.Dense(5, 2))
    theta = m.init(2)
    rng = np.random.default_rng(1)
    X, y, V = rng.normal(size=(9, 3)), rng.normal(size=(9, 2)), rng.normal(size=(m.num_params, 7))
    monkeypatch.setattr(memory, "CHUNK_BYTES", 3 * m.num_params * 8 * 3)  # three columns per call into Julia
    for kind, fn in (("hessian", fh.hessian), ("ggn", fh.ggn), ("ef", fh.empirical_fisher)):
        _close(fh.hvp(m, theta, X, y, V, kind=kind, backend="julia"), fn(m, theta, X, y, backend="julia") @ V)


#: The child: a P×P curvature of a Dense chain or a CNN written by Julia into a memmap whose
#: result is about twice the working memory FluxHess.jl is given; prints the peak growth of the
#: process's anonymous RSS (the memmap's pages are file-backed) and what the memory guard was
#: asked for.
_MEMMAP_CHILD = r"""
import json, os, sys, threading, time
import numpy as np
import fluxhess as fh
from fluxhess import _memory as memory

quantity, path, kind = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "dense":
    model = fh.Chain.mlp([16, 80, 80, 3], "tanh")  # P = 8,083: a 523 MB float64 result
    small = fh.Chain.mlp([16, 3, 3], "tanh")
else:  # P = 7,920: a 502 MB float64 result; "cnn-tanh": curved activations, their own Hessian terms
    act = "relu" if kind == "cnn" else "tanh"
    model = fh.Chain(fh.CrossCor((3, 3), 1, 16, act, padding=1), fh.MaxPool((2, 2)),
                     fh.CrossCor((3, 3), 16, 32, act, padding=1), fh.MaxPool((2, 2)), fh.Flatten(),
                     fh.Dense(128, 24), input_shape=(1, 8, 8))
    small = fh.Chain(fh.CrossCor((3, 3), 1, 2, "relu", padding=1), fh.MaxPool((2, 2)),
                     fh.CrossCor((3, 3), 2, 2, "relu", padding=1), fh.MaxPool((2, 2)), fh.Flatten(),
                     fh.Dense(8, 24), input_shape=(1, 8, 8))
rng = np.random.default_rng(0)
theta, X, y = model.init(0), rng.normal(size=(1000, model.in_features)), rng.normal(size=(1000, model.out_features))
getattr(fh, quantity)(small, small.init(0), X[:3], y[:3], backend="julia")  # compiled
asked, require = [], memory.require
def spy(q, nbytes, shape, **kw):
    asked.append(nbytes)
    return require(q, nbytes, shape, **kw)
memory.require = spy
def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))
out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(model.num_params,) * 2)
before, peak, done = anon(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.002)
watcher = threading.Thread(target=sample)
watcher.start()
getattr(fh, quantity)(model, theta, X, y, backend="julia", out=out)
done.set()
watcher.join()
print(json.dumps(dict(grown=max(peak[0], anon()) - before, asked=asked)))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc (RssAnon)")
@pytest.mark.parametrize("quantity, kind", [(q, k) for k in ("dense", "cnn") for q in ("hessian", "ggn", "empirical_fisher")]
                         + [("hessian", "cnn-tanh")])
def test_out_memmap_peaks_within_the_working_memory_the_guard_checked(quantity, kind, tmp_path):
    """Before: the Hessian of a P = 8,083 chain into a memmap grew the anonymous RSS by 333 MB
    where the guard was asked for 256 MB (two chunks' factors and their temporaries at once)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TQDM_DISABLE="1")
    done = subprocess.run([sys.executable, "-c", _MEMMAP_CHILD, quantity, str(tmp_path / "M.npy"), kind],
                          capture_output=True, text=True, timeout=900, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["asked"]) == 1 and 0 < result["grown"] <= result["asked"][0], result
