"""Faults: backend exceptions, Ctrl-C in the middle of a chunked computation, many threads
at once, and requests too large for memory. After each, the next call must work and
give the same numbers as a call that never saw the fault.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading

import jax
import numpy as np
import pytest

import fluxhess as fh
import fake_bridge
from conftest import assert_close
from fluxhess import _memory as memory, _progress as progress
from fluxhess.api import Call
from fluxhess._problem import Problem
from fluxhess._backends import REGISTRY
from fluxhess._backends.julia import JuliaBackend
from fluxhess.errors import BackendError, InputError, MemoryBudgetError
from fluxhess.flux import flux_model

MODEL = fh.Chain(fh.Dense(3, 6, "tanh"), fh.Dense(6, 5, "softplus", bias=False), fh.Dense(5, 2))
RNG = np.random.default_rng(0)
THETA = MODEL.init(3) + 0.1 * RNG.normal(size=MODEL.num_params)
X = RNG.normal(size=(12, 3))
Y = RNG.normal(size=(12, 2))
V = RNG.normal(size=(MODEL.num_params, 2))

CALLS = {
    "hessian": lambda **kw: fh.hessian(MODEL, THETA, X, Y, **kw),
    "ggn": lambda **kw: fh.ggn(MODEL, THETA, X, Y, loss="mse", agg="mean", **kw),
    "empirical_fisher": lambda **kw: fh.empirical_fisher(MODEL, THETA, X, Y, **kw),
    "hvp": lambda **kw: fh.hvp(MODEL, THETA, X, Y, V, kind="ggn", **kw),
    "diagonal": lambda **kw: fh.diagonal(MODEL, THETA, X, Y, kind="hessian", **kw),
    "kron": lambda **kw: np.concatenate([np.r_[f.A.ravel(), f.G.ravel()] for f in fh.kron(MODEL, THETA, X, Y, **kw)]),
    "param_jacobian": lambda **kw: fh.param_jacobian(MODEL, THETA, X, **kw),
    "input_hessian": lambda **kw: fh.input_hessian(MODEL, THETA, X, **kw),
    "laplacian": lambda **kw: fh.laplacian(MODEL, THETA, X, **kw),
}


def _replace_everywhere(monkeypatch, original, replacement) -> int:
    """Patch every fluxhess module that imported ``original`` by name; returns how many."""
    patched = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("fluxhess"):
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                monkeypatch.setattr(module, attr, replacement)
                patched += 1
    return patched


# --- exceptions inside a backend ----------------------------------------------------


class Exploding:
    """Wraps the jax backend; ``hessian`` raises ``error`` once, then behaves."""

    def __init__(self, inner, error):
        self.inner, self.error, self.name = inner, error, inner.name

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def hessian(self, *args):
        error, self.error = self.error, None
        if error is not None:
            raise error
        return self.inner.hessian(*args)


@pytest.mark.parametrize(
    "error, expected",
    [
        (RuntimeError("XLA: resource exhausted while compiling"), BackendError),
        (ValueError("Ω shapes (3,) and (4,) do not match\nsecond line"), BackendError),
        (MemoryError(), MemoryError),
        (KeyboardInterrupt(), KeyboardInterrupt),
        (fh.InputError("already a clear message"), fh.InputError),
    ],
    ids=["runtime", "value-unicode-multiline", "memory", "interrupt", "fluxhess"],
)
def test_a_backend_exception_is_mapped_and_the_next_call_works(monkeypatch, error, expected):
    reference = CALLS["hessian"](backend="jax")
    monkeypatch.setitem(REGISTRY, "jax", Exploding(REGISTRY["jax"], error))
    with pytest.raises(expected) as info:
        CALLS["hessian"](backend="jax")
    assert type(info.value) is expected
    if expected is BackendError:  # the quantity, the backend, the shapes and the original message
        text = str(info.value)
        for part in ("hessian", "'jax'", f"params ({MODEL.num_params},)", "X (12, 3)", "y (12, 2)", type(error).__name__, str(error)):
            assert part in text, part
        assert info.value.__cause__ is error
    assert CALLS["hessian"](backend="jax").tobytes() == reference.tobytes()


class FakeJulia:
    """Stands in for the FluxHess Julia module: ``gradient`` fails once with ``error``."""

    Float64, Float32 = "Float64", "Float32"
    numpy_view = staticmethod(fake_bridge.numpy_view)

    def __init__(self, error):
        self.error = error

    def build_model(self, source, seed, T, filename, spec=False):
        return ("model", source)

    def gradient(self, jm, params, X, Y, loss, agg):
        error, self.error = self.error, None
        if error is not None:
            raise error
        return np.arange(params.shape[0], dtype=float)


@pytest.mark.parametrize("error", [RuntimeError("MethodError: no method matching *(::Matrix)"), KeyboardInterrupt()], ids=["julia-error", "interrupt"])
def test_the_julia_bridge_survives_an_exception_mid_call(monkeypatch, error):
    """Bridge logic only (no Julia here): the lock is released and the model cache kept."""
    backend = JuliaBackend()
    backend._fh = backend._jl = FakeJulia(error)
    monkeypatch.setitem(REGISTRY, "julia", backend)
    with pytest.raises((BackendError, KeyboardInterrupt)) as info:
        fh.gradient(MODEL, THETA, X, Y, backend="julia")
    assert type(info.value) is (KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else BackendError)
    assert not backend._lock.locked()
    models = dict(backend._models)
    np.testing.assert_array_equal(fh.gradient(MODEL, THETA, X, Y, backend="julia"), np.arange(MODEL.num_params))
    assert backend._models == models


def test_a_real_julia_exception_leaves_the_bridge_usable():
    reason = fh.backends()["julia"]
    if reason is not None:
        pytest.skip(f"needs a Julia runtime: {reason}")
    julia = REGISTRY["julia"]
    # Y with the wrong width, past validation: the call as the API makes it, which names it.
    call = Call("gradient", julia, Problem(MODEL, THETA, X, Y=Y[:, :1].copy(), loss="mse", agg="sum"))
    with pytest.raises(InputError, match="gradient.*DimensionMismatch"):  # an input error, as Julia says
        call.run("gradient")
    with pytest.raises(BackendError):
        fh.forward(flux_model("Chain(Dense(3 => 2), this_is_not_defined)"), THETA, X, backend="julia")
    expected = fh.gradient(MODEL, THETA, X, Y, backend="jax")
    assert_close(fh.gradient(MODEL, THETA, X, Y, backend="julia"), expected, rtol=1e-12, atol=1e-14, what="gradient after errors")


# --- Ctrl-C in the middle of a chunked computation -----------------------------------


@pytest.fixture
def python_sigint_handler():
    """Python's own Ctrl-C handler, as in an interactive session.

    A process started in the background by a shell inherits SIGINT ignored, and
    ``_thread.interrupt_main`` then does nothing.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("quantity", ["hessian", "empirical_fisher", "diagonal", "kron", "input_hessian"])
def test_keyboard_interrupt_mid_computation_leaves_nothing_behind(monkeypatch, python_sigint_handler, quantity):
    """Every chunked loop runs one item per chunk; SIGINT's KeyboardInterrupt arrives in the third."""
    call = CALLS[quantity]
    reference = call(backend="jax")
    x64 = jax.config.jax_enable_x64
    real_chunks = progress.chunks
    one_per_chunk = lambda bytes_per_item, total, budget=None: 1  # noqa: E731
    assert _replace_everywhere(monkeypatch, memory.chunk_size, one_per_chunk)
    served = []

    def interrupted(total, size, desc):
        for i, sl in enumerate(real_chunks(total, size, desc)):
            served.append(sl)
            if i == 2:
                _thread.interrupt_main()  # as if the user pressed Ctrl-C
            yield sl

    assert _replace_everywhere(monkeypatch, real_chunks, interrupted)
    with pytest.raises(KeyboardInterrupt):
        call(backend="jax")
    assert len(served) >= 3, "the computation was not chunked"
    assert jax.config.jax_enable_x64 == x64, "the float64 scope leaked"
    _replace_everywhere(monkeypatch, interrupted, real_chunks)
    assert_close(call(backend="jax"), reference, rtol=1e-12, atol=1e-14, what=f"{quantity}, chunked, after the interrupt")
    monkeypatch.undo()
    assert call(backend="jax").tobytes() == reference.tobytes()


# --- threads -------------------------------------------------------------------------


def test_eight_threads_give_the_sequential_results(backend):
    """Eight threads, each its own quantity and dtype (float32 and float64 interleaved)."""
    jobs = [(name, ("float64", "float32")[i % 2]) for i, name in enumerate(CALLS)]
    sequential = {job: CALLS[job[0]](backend=backend, dtype=job[1]) for job in jobs}
    results, errors = {}, []
    barrier = threading.Barrier(8)

    def work(mine):
        try:
            barrier.wait()
            for _ in range(3):
                for job in mine:
                    results.setdefault(job, []).append(CALLS[job[0]](backend=backend, dtype=job[1]))
        except Exception as e:  # reported below, with the thread's job
            errors.append((mine, e))

    threads = [threading.Thread(target=work, args=(jobs[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    assert not errors, errors
    for job, outs in results.items():
        assert len(outs) == 3
        for out in outs:
            assert out.dtype == sequential[job].dtype, job
            assert out.tobytes() == sequential[job].tobytes(), job


# --- memory ---------------------------------------------------------------------------

GUARDED = {
    "hessian": lambda: fh.hessian(MODEL, THETA, X, Y, backend="jax"),
    "ggn": lambda: fh.ggn(MODEL, THETA, X, Y, backend="jax"),
    "empirical_fisher": lambda: fh.empirical_fisher(MODEL, THETA, X, Y, backend="jax"),
    "kron": lambda: fh.kron(MODEL, THETA, X, Y, backend="jax"),
    "param_jacobian": lambda: fh.param_jacobian(MODEL, THETA, X, backend="jax"),
    "input_hessian": lambda: fh.input_hessian(MODEL, THETA, X, backend="jax"),
}


@pytest.mark.parametrize("quantity", GUARDED)
def test_a_request_beyond_available_memory_is_refused_before_the_backend_runs(monkeypatch, quantity):
    reached = []
    jax_backend = REGISTRY["jax"]
    monkeypatch.setattr(memory, "available_bytes", lambda: 1024)  # 1 KiB free
    monkeypatch.setattr(type(jax_backend), quantity, lambda self, *a: reached.append(quantity), raising=True)
    with pytest.raises(MemoryBudgetError) as info:
        GUARDED[quantity]()
    assert not reached, "the backend ran before the memory guard"
    text = str(info.value)
    assert quantity in text and "needs about" in text and "instead" in text
