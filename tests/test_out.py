"""``out=`` on the P×P routes: the array (an in-memory array or a memmap file) receives the
same matrix as a plain call, and a result larger than the process's memory cap is written
to disk with bounded working memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

import fluxhess as fh
from conftest import CASES, Case, make_data
from fluxhess import _memory as memory
from fluxhess._backends.jax import dense_matrix

QUANTITIES = {"hessian": fh.hessian, "ggn": fh.ggn, "empirical_fisher": fh.empirical_fisher}
#: A Dense chain (panel-by-panel route) and a model the structured route does not cover
#: (a softmax between Dense layers: the generic route, whose result is copied into out).
MODELS = {
    "dense-chain": CASES[2],
    "generic": Case("softmax-between", fh.Chain(fh.Dense(3, 4, "tanh"), fh.Activation("softmax"), fh.Dense(4, 2)), "mse", "mean", 5),
}


@pytest.mark.parametrize("quantity", list(QUANTITIES))
@pytest.mark.parametrize("route", list(MODELS))
def test_out_memmap_equals_in_memory(quantity, route, tmp_path):
    case = MODELS[route]
    theta, X, Y = make_data(case)
    fn = QUANTITIES[quantity]
    expected = fn(case.model, theta, X, Y, loss=case.loss, agg=case.agg, backend="jax")
    P = theta.shape[0]
    path = tmp_path / "M.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(P, P))
    out[:] = np.nan  # every entry must be written
    got = fn(case.model, theta, X, Y, loss=case.loss, agg=case.agg, backend="jax", out=out)
    assert got is out
    del out, got
    np.testing.assert_array_equal(np.load(path), expected)


def test_out_float32_array():
    case = MODELS["dense-chain"]
    theta, X, Y = make_data(case)
    P = theta.shape[0]
    out = np.full((P, P), np.nan, dtype=np.float32)
    got = fh.ggn(case.model, theta, X, Y, loss=case.loss, agg=case.agg, backend="jax", dtype="float32", out=out)
    assert got is out
    np.testing.assert_array_equal(out, fh.ggn(case.model, theta, X, Y, loss=case.loss, agg=case.agg, backend="jax", dtype="float32"))


@pytest.mark.parametrize(
    "bad, words",
    [
        (lambda P: np.empty((P, P + 1)), "shape"),
        (lambda P: np.empty((P, P), dtype=np.float32), "dtype float32"),
        (lambda P: np.empty((P, P)).T[:, :], "non-contiguous"),
        (lambda P: np.empty((P, P)).copy().view(), None),
        (lambda P: [[0.0] * P] * P, "list"),
    ],
)
def test_out_refused(bad, words):
    case = MODELS["dense-chain"]
    theta, X, Y = make_data(case)
    out = bad(theta.shape[0])
    if words is None:  # a writable view is accepted
        fh.hessian(case.model, theta, X, Y, loss=case.loss, backend="jax", out=out)
        return
    with pytest.raises(fh.InputError, match=words):
        fh.hessian(case.model, theta, X, Y, loss=case.loss, backend="jax", out=out)


def test_out_read_only_refused():
    case = MODELS["dense-chain"]
    theta, X, Y = make_data(case)
    out = np.empty((theta.shape[0],) * 2)
    out.setflags(write=False)
    with pytest.raises(fh.InputError, match="read-only"):
        fh.ggn(case.model, theta, X, Y, loss=case.loss, backend="jax", out=out)


@pytest.mark.parametrize("quantity", list(QUANTITIES))
def test_out_sharing_memory_with_an_input_is_refused(quantity):
    """``out=X`` (or an array that θ or y is a view of) would be overwritten while the route
    reads it: refused, and the input left as it was (before: the result was written over X,
    numbers off by ~1e15)."""
    fn, rng = QUANTITIES[quantity], np.random.default_rng(0)
    model = fh.Chain(fh.Dense(6, 1, bias=False))  # P == d == 6: X (6, 6) has out's shape
    theta, X, y = model.init(seed=0), rng.normal(size=(6, 6)), rng.normal(size=(6, 1))
    before = X.copy()
    with pytest.raises(fh.InputError, match="out shares memory with X"):
        fn(model, theta, X, y, backend="jax", out=X)
    np.testing.assert_array_equal(X, before)
    buffer = np.zeros((6, 6))
    with pytest.raises(fh.InputError, match="out shares memory with y"):
        fn(model, theta, X, buffer[:, :1], backend="jax", out=buffer)
    buffer[0] = theta
    with pytest.raises(fh.InputError, match="out shares memory with params"):
        fn(model, buffer[0], X, y, backend="jax", out=buffer)
    expected = fn(model, theta, X, y, backend="jax")  # a separate array is fine
    np.testing.assert_array_equal(fn(model, theta, X, y, backend="jax", out=np.empty((6, 6))), expected)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_out_matrix_subclass_refused():
    case = MODELS["dense-chain"]
    theta, X, Y = make_data(case)
    out = np.asmatrix(np.empty((theta.shape[0],) * 2))
    with pytest.raises(fh.InputError, match="out must be .* got a matrix"):
        fh.ggn(case.model, theta, X, Y, loss=case.loss, backend="jax", out=out)


def test_out_memmap_without_room_on_disk_is_refused(tmp_path, monkeypatch):
    """A sparse memmap (open_memmap's) takes disk blocks only as it is written; a full disk then
    kills the process with SIGBUS. The free space is checked first (the file's allocation and
    the filesystem's free space faked here: a sparse file with no block yet, a full disk)."""
    case = MODELS["dense-chain"]
    theta, X, Y = make_data(case)
    P = theta.shape[0]
    out = np.lib.format.open_memmap(tmp_path / "M.npy", mode="w+", dtype=np.float64, shape=(P, P))
    size = os.stat(tmp_path / "M.npy").st_size
    full_disk = types.SimpleNamespace(**{
        **vars(os),
        "stat": lambda path: types.SimpleNamespace(st_size=size, st_blocks=0),
        "statvfs": lambda path: types.SimpleNamespace(f_bavail=0, f_frsize=4096),
    })
    monkeypatch.setattr(memory, "os", full_disk)
    with pytest.raises(fh.MemoryBudgetError, match="filesystem has 0 B free"):
        fh.ggn(case.model, theta, X, Y, loss=case.loss, backend="jax", out=out)
    monkeypatch.setattr(memory, "os", os)
    expected = fh.ggn(case.model, theta, X, Y, loss=case.loss, backend="jax")
    np.testing.assert_array_equal(fh.ggn(case.model, theta, X, Y, loss=case.loss, backend="jax", out=out), expected)


# -- beyond the memory cap ------------------------------------------------------------

#: The child process: caps its private writable memory (RLIMIT_DATA, which counts the heap and
#: anonymous mappings but not a shared file mapping such as a memmap), computes a Hessian
#: larger than the cap into a memmap, and reports its peak anonymous RSS, sampled every 2 ms.
_CHILD = textwrap.dedent(
    """
    import json, resource, sys, threading, time
    import numpy as np
    import fluxhess as fh

    path, cap, widths, N = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    model = fh.Chain.mlp(widths, "tanh")
    P = model.num_params
    rng = np.random.default_rng(0)
    theta = model.init(0)
    X, y = rng.normal(size=(N, widths[0])), rng.normal(size=(N, widths[-1]))
    fh.hessian(fh.Chain.mlp([2, 3, 1], "tanh"), fh.Chain.mlp([2, 3, 1], "tanh").init(0), X[:3, :2], y[:3, :1], backend="jax")

    def anon():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))

    before, peak, done = anon(), [0], threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon()); time.sleep(0.002)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(P, P))
    watcher = threading.Thread(target=sample); watcher.start()
    fh.hessian(model, theta, X, y, backend="jax", out=out)
    done.set(); watcher.join()
    try:
        np.empty((P, P))  # the whole result in memory: refused by the cap
        whole = "allocated"
    except MemoryError:
        whole = "refused"
    print(json.dumps(dict(P=P, before=before, peak=max(peak[0], anon()), whole=whole)))
    """
)


def _run_capped(tmp_path: Path, widths: list[int], N: int) -> tuple[dict, Path, int]:
    """Run the child with a cap of 60 % of the result's bytes."""
    model = fh.Chain.mlp(widths, "tanh")
    P = model.num_params
    cap = int(0.6 * 8 * P * P)  # below the result, above the child's baseline (~0.25 GB) plus the working set
    path = tmp_path / "H.npy"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(cap), json.dumps(widths), str(N)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), path, cap


def test_memmap_result_larger_than_the_memory_cap(tmp_path):
    widths, N = [16, 96, 96, 1], 12  # P = 11,041: the result is 975 MB, the cap 585 MB
    report, path, cap = _run_capped(tmp_path, widths, N)
    P = report["P"]
    assert 8 * P * P > cap and report["whole"] == "refused"
    working = dense_matrix.working_bytes(P, 8)
    grown = report["peak"] - report["before"]
    assert grown <= working, f"anonymous RSS grew by {grown / 2**20:.0f} MiB; working set {working / 2**20:.0f} MiB"
    model = fh.Chain.mlp(widths, "tanh")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(N, widths[0])), rng.normal(size=(N, widths[-1]))
    H = np.load(path, mmap_mode="r")
    rows = np.arange(0, P, 997)
    V = np.zeros((P, rows.size))
    V[rows, np.arange(rows.size)] = 1.0
    expected = fh.hvp(model, model.init(0), X, y, V, backend="jax")  # columns of H, matrix-free
    np.testing.assert_allclose(H[:, rows], expected, rtol=0, atol=1e-10 * np.abs(expected).max())
