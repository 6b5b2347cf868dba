"""The Python side of the julia backend, checked without a Julia runtime.

A fake FluxHess module stands in for Julia where the bridge's own logic is under
test (conversions, error mapping, the lock); real Julia runs in
test_julia_numeric.py when a runtime is found.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fake_bridge
import fluxhess as fh
from fluxhess._backends import REGISTRY
from fluxhess import _memory as memory
from fluxhess._backends.julia import JuliaBackend, julia_error, julia_message
from fluxhess._backends.julia import backend as julia_backend
from fluxhess.errors import BackendError, InputError, JuliaUnavailableError
from fluxhess.flux import FluxModel, flux_model

JULIA_TRACE = (
    "DimensionMismatch: loss function expects size(ŷ) = (2, 3) to match size(y) = (1, 3)\n"
    "Stacktrace:\n"
    " [1] _check_sizes\n"
    "   @ ~/.julia/packages/Flux/src/losses/utils.jl:32 [inlined]\n"
)


class FakeJuliaError(Exception):
    """Shaped like juliacall.JuliaError: str() is showerror with the backtrace; ``exception``,
    when given, is the Julia exception value (here its type's name)."""

    def __init__(self, exception=None):
        super().__init__()
        if exception is not None:
            self.exception = exception

    def __str__(self):
        return JULIA_TRACE


def _clean_env(tmp_path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON_JULIACALL", "PYTHON_JULIAPKG", "JULIA"))
    }
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin", "/bin"])
    env["PYTHON_JULIAPKG_OFFLINE"] = "yes"
    env["PYTHON_JULIAPKG_PROJECT"] = str(tmp_path / "julia_env")
    return env


NO_NETWORK = """
import socket, urllib.request
def _refuse(*a, **k):
    raise AssertionError("fluxhess tried to reach the network")
socket.socket.connect = _refuse
urllib.request.urlopen = _refuse
"""


def _run(code: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_NETWORK + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_import_fluxhess_does_not_import_juliacall(tmp_path):
    proc = _run(
        """
        import sys, fluxhess
        fluxhess.backends()
        assert "juliacall" not in sys.modules, "import fluxhess imported juliacall"
        import os
        project = os.environ["PYTHON_JULIAPKG_PROJECT"]
        assert not os.path.exists(project), "detecting Julia ran a juliapkg resolve (it created " + project + ")"
        print("ok")
        """,
        _clean_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_without_julia_the_error_is_fast_and_auto_is_jax(tmp_path):
    env = _clean_env(tmp_path)
    if any(os.path.exists(os.path.join(d, n)) for d in env["PATH"].split(os.pathsep) for n in ("julia", "juliaup")):
        pytest.skip("a julia executable is on the bare PATH of this machine")
    proc = _run(
        """
        import sys, time
        import numpy as np
        import fluxhess as fh
        m = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1))
        theta, X, y = m.init(), np.ones((4, 2)), np.zeros((4, 1))
        reason = fh.backends()["julia"]
        assert reason and "setup-julia" in reason and "PYTHON_JULIACALL_EXE" in reason, reason
        t0 = time.perf_counter()
        try:
            fh.gradient(m, theta, X, y, backend="julia")
        except fh.JuliaUnavailableError as e:
            msg = str(e)
        else:
            raise AssertionError("backend='julia' ran without Julia")
        elapsed = time.perf_counter() - t0
        assert elapsed < 5, elapsed
        assert "setup-julia" in msg, msg
        g_auto = fh.gradient(m, theta, X, y)
        g_jax = fh.gradient(m, theta, X, y, backend="jax")
        assert np.array_equal(g_auto, g_jax)
        assert "juliacall" not in sys.modules
        print("ok", round(elapsed, 3))
        """,
        env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok")


def test_without_juliacall_installed_julia_is_unavailable_and_auto_is_jax(monkeypatch):
    """An environment without juliacall/juliapkg (e.g. fluxhess on a PYTHONPATH): a reason, no crash."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("juliacall", "juliapkg") else real(name, *a))
    monkeypatch.setitem(REGISTRY, "julia", JuliaBackend())
    reason = fh.backends()["julia"]
    assert reason is not None and "juliacall and juliapkg" in reason and "pip install juliacall" in reason, reason
    m = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1))
    theta, X, y = m.init(), np.ones((4, 2)), np.zeros((4, 1))
    assert np.array_equal(fh.gradient(m, theta, X, y), fh.gradient(m, theta, X, y, backend="jax"))
    with pytest.raises(JuliaUnavailableError, match="juliacall"):
        fh.gradient(m, theta, X, y, backend="julia")


def test_julia_message_drops_the_stacktrace():
    assert julia_message(FakeJuliaError()) == (
        "DimensionMismatch: loss function expects size(ŷ) = (2, 3) to match size(y) = (1, 3)"
    )
    assert julia_message(RuntimeError("")) == "RuntimeError"


def test_julia_error_is_an_input_error_when_julia_classes_it_so():
    what = "hessian on backend 'julia' failed for params (17,), X (3, 2), y (3, 1)"
    for error_class, expected in (("input", InputError), ("backend", BackendError), ("unknown", BackendError)):
        err = julia_error(FakeJuliaError(), what, error_class)
        assert type(err) is expected and isinstance(err, fh.FluxHessError)
        text = str(err)
        for part in ("hessian", "'julia'", "params (17,), X (3, 2), y (3, 1)", "DimensionMismatch", "size(y) = (1, 3)"):
            assert part in text
        assert "Stacktrace" not in text
    assert type(julia_error(FakeJuliaError(), "to_spec", "backend", otherwise=fh.UnsupportedModelError)) is fh.UnsupportedModelError
    # A class of the caller's own wins: Julia's ArgumentError from to_spec means "no spec twin".
    assert type(julia_error(FakeJuliaError(), "to_spec", "input", otherwise=fh.UnsupportedModelError)) is fh.UnsupportedModelError


# --- a fake Julia ---------------------------------------------------------------


class FakeJulia:
    """Stands in for the FluxHess module: answers with NumPy, one call at a time."""

    Float64, Float32 = "Float64", "Float32"
    numpy_view = staticmethod(fake_bridge.numpy_view)

    def __init__(self):
        self.built = []
        self.inside = 0
        self.overlaps = 0
        self.into = []  # the arrays curvature! wrote into
        self.hvp_columns = []  # the columns of V per hvp call
        self.raises = None  # the Julia exception type the Hessian fails with

    def build_model(self, source, seed, T, filename, spec=False):
        self.built.append((source, seed, T, filename))
        return ("julia model", source)

    def _enter(self):
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        time.sleep(0.002)
        self.inside -= 1

    def forward(self, jm, params, X):
        self._enter()
        return np.asfortranarray(np.ones((X.shape[0], 1)))

    def gradient(self, jm, params, X, Y, loss, agg):
        self._enter()
        return np.arange(params.shape[0], dtype=float)

    def curvature_b(self, out, jm, params, X, Y, loss, agg, kind, workspace):  # FluxHess.Bridge.curvature!
        assert out.shape == (params.shape[0],) * 2 and workspace == julia_backend.WORK_BYTES
        self.into.append(out)
        if kind == ("kind", "Hessian"):
            raise FakeJuliaError(self.raises)
        out[...] = self.matrix(params.shape[0])
        return out

    @staticmethod
    def matrix(P):
        M = np.arange(P * P, dtype=float).reshape(P, P)
        return M + M.T

    def hvp(self, jm, params, X, Y, V, loss, agg, kind):
        self.hvp_columns.append(V.shape[1])
        return self.matrix(params.shape[0]) @ V

    @staticmethod
    def error_class(exception):  # FluxHess.Bridge.error_class: how Julia classes its exception
        return {"ArgumentError": "input", "DimensionMismatch": "input"}.get(exception, "backend")

    @staticmethod
    def Hessian():
        return ("kind", "Hessian")

    def kron(self, jm, params, X, Y, loss, agg, kind):
        assert kind == ("kind", "GGN")  # the kind arrives as FluxHess's type, not a string
        return [(np.eye(3), np.eye(5)), (np.eye(6), np.eye(1))]

    @staticmethod
    def GGN():
        return ("kind", "GGN")


@pytest.fixture
def fake_julia(monkeypatch):
    backend = REGISTRY["julia"]  # the process's one julia backend, started on a fake Julia
    fake = FakeJulia()
    for name, value in (("_fh", fake), ("_jl", fake), ("_models", {}), ("_kinds", {}), ("_failure", None)):
        monkeypatch.setattr(backend, name, value)
    return fake


MODEL = fh.Chain(fh.Dense(2, 5, "tanh"), fh.Dense(5, 1))


def test_a_julia_exception_becomes_backend_error_and_the_backend_stays_usable(fake_julia):
    theta, X, y = MODEL.init(), np.ones((3, 2)), np.zeros((3, 1))
    with pytest.raises(BackendError) as info:
        fh.hessian(MODEL, theta, X, y, backend="julia")
    text = str(info.value)
    assert "hessian" in text and "params (21,)" in text and "X (3, 2)" in text and "DimensionMismatch" in text
    g = fh.gradient(MODEL, theta, X, y, backend="julia")  # still usable
    assert g.flags.c_contiguous and g.flags.owndata and g.dtype == np.float64
    assert fake_julia.built == [(MODEL.to_flux(), 0, "Float64", "fluxhess.Chain")]  # built once


@pytest.mark.parametrize("julia_type, expected", [("DimensionMismatch", InputError), ("ArgumentError", InputError), ("MethodError", BackendError)])
def test_julia_input_errors_arrive_as_input_errors(fake_julia, julia_type, expected):
    """One error path: the backend classes Julia's exception (FluxHess.Bridge.error_class)."""
    fake_julia.raises = julia_type
    theta, X, y = MODEL.init(), np.ones((3, 2)), np.zeros((3, 1))
    with pytest.raises(fh.FluxHessError) as info:
        fh.hessian(MODEL, theta, X, y, backend="julia")
    assert type(info.value) is expected
    text = str(info.value)
    assert "hessian on backend 'julia'" in text and "params (21,)" in text and "DimensionMismatch" in text
    assert "Stacktrace" not in text


def test_out_is_written_by_julia_itself_and_guarded_as_a_working_set(fake_julia, tmp_path, monkeypatch):
    """out=: the caller's array (a memmap) goes to Julia's curvature!, no P×P is made beside it, and
    the guard counts only the working set (WORK_BYTES), not a second copy of the result."""
    theta, X, y = MODEL.init(), np.ones((3, 2)), np.zeros((3, 1))
    P = MODEL.num_params
    target = np.lib.format.open_memmap(tmp_path / "ggn.npy", mode="w+", dtype=np.float64, shape=(P, P))
    asked = []
    monkeypatch.setattr(memory, "require", lambda quantity, nbytes, shape, **kw: asked.append((quantity, nbytes)))
    result = fh.ggn(MODEL, theta, X, y, backend="julia", out=target)
    assert result is target and len(fake_julia.into) == 1 and np.shares_memory(fake_julia.into[0], target)
    np.testing.assert_array_equal(np.load(tmp_path / "ggn.npy"), FakeJulia.matrix(P))
    assert asked == [("ggn", julia_backend.WORK_BYTES)]
    fresh = fh.ggn(MODEL, theta, X, y, backend="julia")  # without out=: Julia writes into the array returned
    assert np.shares_memory(fake_julia.into[-1], fresh) and fresh.flags.c_contiguous and fresh.flags.owndata


def test_hvp_runs_in_chunks_of_columns_within_the_chunk_budget(fake_julia, monkeypatch):
    theta, X, y = MODEL.init(), np.ones((3, 2)), np.zeros((3, 1))
    P = MODEL.num_params
    V = np.random.default_rng(0).normal(size=(P, 7))
    monkeypatch.setattr(memory, "CHUNK_BYTES", 3 * P * 8 * 3)  # three columns per chunk
    got = fh.hvp(MODEL, theta, X, y, V, kind="ggn", backend="julia")
    assert fake_julia.hvp_columns == [3, 3, 1]
    M = FakeJulia.matrix(P)
    np.testing.assert_array_equal(got, np.hstack([M @ V[:, :3], M @ V[:, 3:6], M @ V[:, 6:]]))
    assert got.shape == (P, 7) and got.flags.c_contiguous


def test_float32_builds_a_float32_model(fake_julia):
    theta, X, y = MODEL.init(), np.ones((3, 2)), np.zeros((3, 1))
    fh.gradient(MODEL, theta, X, y, backend="julia", dtype="float32")
    assert fake_julia.built[-1][2] == "Float32"


def test_kron_pairs_come_back_as_numpy(fake_julia):
    theta, X, y = MODEL.init(), np.ones((3, 2)), np.zeros((3, 1))
    factors = fh.kron(MODEL, theta, X, y, backend="julia")
    assert [f.layer for f in factors] == ["layers.0", "layers.1"]
    assert factors[0].A.shape == (3, 3) and factors[1].G.shape == (1, 1)


def test_concurrent_calls_are_serialised(fake_julia):
    theta, X, y = MODEL.init(), np.ones((3, 2)), np.zeros((3, 1))
    errors = []

    def work():
        try:
            for _ in range(10):
                fh.gradient(MODEL, theta, X, y, backend="julia")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fake_julia.overlaps == 0


def test_a_failed_start_is_remembered(monkeypatch):
    backend = JuliaBackend()
    backend._failure = "Julia was found but did not start: PythonCall.jl did not start properly"
    assert backend.unavailable_reason() == backend._failure
    for _ in range(2):  # the same message every time, said once
        with pytest.raises(JuliaUnavailableError) as info:
            backend.julia()
        assert str(info.value).count("unavailable") == 1 and "PythonCall.jl" in str(info.value)


def test_unsupported_reason():
    backend = JuliaBackend()
    assert backend.unsupported_reason(MODEL) is None
    assert backend.unsupported_reason(FluxModel("Chain(Dense(2 => 1))")) is None
    assert "FluxModel" in backend.unsupported_reason(object())


# --- FluxModel without Julia ----------------------------------------------------------


def test_flux_model_from_string_and_file(tmp_path):
    m = flux_model("Chain(Dense(2 => 3, tanh), Dense(3 => 1))", seed=3)
    assert m.seed == 3 and m.source.startswith("Chain(")
    path = tmp_path / "model.jl"
    path.write_text("using Flux\nChain(Dense(2 => 1))\n")
    mf = flux_model(path)
    assert mf.source == path.read_text() and mf.filename == str(path.resolve())
    assert flux_model(str(path)).source == mf.source
    with pytest.raises(InputError):
        flux_model(str(tmp_path / "missing.jl"))
    with pytest.raises(InputError):
        FluxModel("   ")
    with pytest.raises(InputError):
        FluxModel("Chain(Dense(2 => 1))", seed=-1)


def test_flux_model_params_need_julia(fake_julia, monkeypatch):
    monkeypatch.setattr(FakeJulia, "parameters", lambda self, jm: np.arange(4.0), raising=False)
    m = flux_model("Chain(Dense(1 => 2))")
    assert m.num_params == 4
    p = m.params
    p[0] = 99.0  # a copy: the model's θ is unchanged
    assert m.params[0] == 0.0
