"""The memory guard: every result is refused before it is computed when it cannot fit, the
guard sees a container's memory limit, and hvp works through V's columns in chunks.

References: tests/reference.py (a plain JAX Hessian), closed forms for the cgroup files.
"""

from __future__ import annotations

import numpy as np
import pytest

import fluxhess as fh
import reference as ref
from conftest import assert_close
from fluxhess import _memory as memory

M = fh.Chain.mlp([3, 4, 2], "tanh")  # P = 26
SQUARE = fh.Chain(fh.Dense(3, 3, "tanh"))
rng = np.random.default_rng(0)
X = rng.normal(size=(5, 3))
Y = rng.normal(size=(5, 2))
THETA, SQUARE_THETA = M.init(), SQUARE.init()  # drawn once: init is guarded too

#: public function -> (the call, the shape of its result): C = 2, d = 3, N = 5, P = 26.
RESULTS = {
    "forward": (lambda: fh.forward(M, THETA, X, backend="jax"), (5, 2)),
    "gradient": (lambda: fh.gradient(M, THETA, X, Y, backend="jax"), (26,)),
    "hvp": (lambda: fh.hvp(M, THETA, X, Y, np.ones((26, 7)), backend="jax"), (26, 7)),
    "diagonal": (lambda: fh.diagonal(M, THETA, X, Y, backend="jax"), (26,)),
    "hessian": (lambda: fh.hessian(M, THETA, X, Y, backend="jax"), (26, 26)),
    "param_jacobian": (lambda: fh.param_jacobian(M, THETA, X, backend="jax"), (5, 2, 26)),
    "input_jacobian": (lambda: fh.input_jacobian(M, THETA, X, backend="jax"), (5, 2, 3)),
    "input_hessian": (lambda: fh.input_hessian(M, THETA, X, backend="jax"), (5, 2, 3, 3)),
    "laplacian": (lambda: fh.laplacian(M, THETA, X, backend="jax"), (5, 2)),
    "divergence": (lambda: fh.divergence(SQUARE, SQUARE_THETA, X, backend="jax"), (5,)),
}


@pytest.mark.parametrize("quantity", list(RESULTS))
def test_every_result_is_refused_when_it_cannot_fit(quantity, monkeypatch):
    call, shape = RESULTS[quantity]
    call()  # fits normally
    monkeypatch.setattr(memory, "available_bytes", lambda: 64)
    with pytest.raises(fh.MemoryBudgetError, match=rf"{quantity} of shape {re_shape(shape)}"):
        call()


def re_shape(shape) -> str:
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("quantity", ["hvp", "diagonal", "param_jacobian", "input_jacobian", "input_hessian", "laplacian", "divergence"])
def test_chunked_results_count_one_chunk_of_working_memory(quantity, monkeypatch):
    """Room for two copies of the result but not for a chunk of working memory beside it: refused."""
    call, shape = RESULTS[quantity]
    room = 2 * 8 * int(np.prod(shape)) + memory.CHUNK_BYTES // 2
    monkeypatch.setattr(memory, "available_bytes", lambda: int(room / 0.8))
    with pytest.raises(fh.MemoryBudgetError, match=quantity):
        call()


def test_hvp_runs_over_chunks_of_the_columns_of_V(monkeypatch):
    """With room for 3 columns at a time, 10 columns run as 3 + 3 + 3 + 1 and equal H @ V."""
    from fluxhess._backends.jax import curvature

    seen = []

    def chunks(total, size, desc):
        seen.append((total, size))
        return iter([slice(a, min(a + size, total)) for a in range(0, total, size)])

    monkeypatch.setattr(curvature, "column_bytes", lambda *a: memory.CHUNK_BYTES // 3)
    monkeypatch.setattr(curvature, "chunks", chunks)
    theta = M.init(1)
    V = np.random.default_rng(2).normal(size=(26, 10))
    for kind in ("hessian", "ggn"):
        got = fh.hvp(M, theta, X, Y, V, kind=kind, backend="jax")
        H = ref.jax_hessian(M, theta, X, Y, "mse", "sum") if kind == "hessian" else ref.linearized_ggn(M, theta, X, Y, "mse", "sum")
        assert_close(got, H @ V, rtol=1e-12, atol=1e-12, what=f"hvp ({kind}) in chunks")
    assert (10, 3) in seen


def test_laplace_sample_is_refused_by_the_guard():
    model = fh.Chain.mlp([3, 4, 1], "tanh")
    la = fh.Laplace(model, model.init(0), "regression", backend="jax").fit(X, Y[:, 0])
    with pytest.raises(fh.MemoryBudgetError, match=r"sample of shape \(1000000000000, 21\)"):
        la.sample(10**12)
    assert la.sample(3).shape == (3, 21)


@pytest.mark.parametrize("kw", [dict(pred_type="nn"), dict(link_approx="mc")], ids=["nn", "glm-mc"])
def test_a_sampled_predictive_is_refused_by_the_guard(kw):
    model = fh.Chain.mlp([3, 4, 2], "tanh")
    la = fh.Laplace(model, model.init(0), "classification", backend="jax").fit(X, np.arange(len(X)) % 2)
    with pytest.raises(fh.MemoryBudgetError, match=r"predictive of shape \(1000000000000, 2, 2\)"):
        la.predictive(X[:2], n_samples=10**12, **kw)
    assert la.predictive(X[:2], n_samples=5, **kw).mean.shape == (2, 2)


# --- a container's memory limit ------------------------------------------------------


def _cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_cgroup_v2_limit_is_limit_minus_usage_plus_reclaimable_cache(tmp_path):
    root = _cgroup(tmp_path, {"memory.max": "1000000\n", "memory.current": "400000\n",
                              "memory.stat": "anon 300000\nfile 100000\ninactive_file 50000\n"})
    assert memory.cgroup_free_bytes(root) == 1000000 - 400000 + 50000


def _proc(tmp_path, text: str):
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def test_cgroup_limit_of_the_process_own_v2_cgroup_and_the_tightest_above_it(tmp_path):
    """A limit set on the process's own cgroup (Slurm, systemd-run) is read, not only the root's;
    the smallest room left along the path up to the root is what counts."""
    root = _cgroup(tmp_path / "sys", {
        "user.slice/job42/memory.max": "1000000\n", "user.slice/job42/memory.current": "400000\n",
        "user.slice/job42/memory.stat": "inactive_file 50000\n",
        "user.slice/memory.max": "max\n", "user.slice/memory.current": "900000\n",
    })
    proc = _proc(tmp_path, "0::/user.slice/job42\n")
    assert memory.cgroup_free_bytes(root, proc) == 1000000 - 400000 + 50000
    _cgroup(root, {"user.slice/memory.max": "700000\n"})  # the parent leaves less
    assert memory.cgroup_free_bytes(root, proc) == 0  # usage above the parent's limit: nothing left


def test_cgroup_limit_of_the_process_own_v1_memory_cgroup(tmp_path):
    root = _cgroup(tmp_path / "sys", {
        "memory/slurm/uid_1/job_7/memory.limit_in_bytes": "3000000\n",
        "memory/slurm/uid_1/job_7/memory.usage_in_bytes": "1000000\n",
        "memory/slurm/uid_1/job_7/memory.stat": "cache 5\ntotal_inactive_file 7\n",
        "memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "5\n",
    })
    proc = _proc(tmp_path, "5:devices:/other\n4:memory:/slurm/uid_1/job_7\n0::/\n")
    assert memory.cgroup_free_bytes(root, proc) == 3000000 - 1000000 + 7
    # a cgroup namespace shows "/": the mount itself is the process's cgroup
    _cgroup(root, {"memory/memory.limit_in_bytes": "100\n", "memory/memory.usage_in_bytes": "40\n"})
    assert memory.cgroup_free_bytes(root, _proc(tmp_path, "4:memory:/\n")) == 60
    # a path that climbs out of the mount is not followed
    assert memory.cgroup_free_bytes(root, _proc(tmp_path, "4:memory:/../../etc\n")) == 60
    assert memory.cgroup_free_bytes(root, tmp_path / "no-proc-file") == 60


def test_cgroup_v1_limit_and_no_limit(tmp_path):
    v1 = _cgroup(tmp_path / "v1", {"memory/memory.limit_in_bytes": "2000000\n", "memory/memory.usage_in_bytes": "500000\n",
                                    "memory/memory.stat": "cache 10\ntotal_inactive_file 1000\n"})
    assert memory.cgroup_free_bytes(v1) == 2000000 - 500000 + 1000
    unlimited_v2 = _cgroup(tmp_path / "v2", {"memory.max": "max\n", "memory.current": "5\n"})
    assert memory.cgroup_free_bytes(unlimited_v2) is None
    unlimited_v1 = _cgroup(tmp_path / "v1-none", {"memory/memory.limit_in_bytes": "9223372036854771712\n",
                                                  "memory/memory.usage_in_bytes": "5\n"})
    assert memory.cgroup_free_bytes(unlimited_v1) is None
    assert memory.cgroup_free_bytes(tmp_path / "absent") is None


def test_the_guard_honours_a_cgroup_limit(tmp_path, monkeypatch):
    """A container with 64 MiB free: a 26 × 26 Hessian (5.4 KB and the route's 32 MiB working
    set) fits, a 2600 × 2600 one (54 MB and the same working set) does not."""
    root = _cgroup(tmp_path, {"memory.max": str(64 * 2**20), "memory.current": "0", "memory.stat": ""})
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    assert memory.available_bytes() == 64 * 2**20
    fh.hessian(M, THETA, X, Y, backend="jax")
    wide = fh.Chain(fh.Dense(3, 650))  # P = 2600
    with pytest.raises(fh.MemoryBudgetError, match=r"hessian of shape \(2600, 2600\)"):
        fh.hessian(wide, wide.init(), X, np.zeros((5, 650)), backend="jax")


# --- every allocation of a P×P route inside the estimate the guard checks -----------------

#: The child: runs a P×P quantity once to compile, then again after resetting the kernel's
#: peak-RSS mark, and prints the peak's growth and what the guard was asked for on that call.
_PEAK_CHILD = r"""
import json, sys
import numpy as np
import fluxhess as fh
from fluxhess import _memory as memory

quantity, widths, N, generic = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "generic"
model = fh.Chain.mlp(widths, "tanh")
if generic:  # a softmax after the first Dense layer: the structured route does not cover it
    model = fh.Chain(model.layers[0], fh.Activation("softmax"), *model.layers[1:])
rng = np.random.default_rng(0)
theta, X, y = model.init(0), rng.normal(size=(N, widths[0])), rng.normal(size=(N, widths[-1]))
asked, require = [], memory.require
def spy(q, nbytes, shape, **kw):
    if len(shape) == 2 and shape[0] == shape[1] == model.num_params:
        asked.append(nbytes)
    return require(q, nbytes, shape, **kw)
memory.require = spy
call = lambda: getattr(fh, quantity)(model, theta, X, y, backend="jax")
call()
asked.clear()
def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
start = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
call()
print(json.dumps(dict(grown=status("VmHWM") - start, asked=asked, P=model.num_params)))
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc (VmHWM, clear_refs)")
@pytest.mark.parametrize(
    "quantity, widths, N, route",
    [
        ("ggn", [200, 1], 1500, "structured"),  # logistic-regression-like: a 0.3 MB result
        ("hessian", [200, 1], 1500, "structured"),
        ("hessian", [6, 20, 20, 1], 3000, "structured"),  # wide blocks, many samples
        ("ggn", [6, 40, 40, 3], 300, "generic"),
        ("hessian", [6, 40, 40, 3], 300, "generic"),
    ],
)
def test_a_square_route_peaks_within_the_estimate_the_guard_checked(quantity, widths, N, route):
    """Before: the Dense-chain route's scratch ā_m ⊗ ā_l (N_chunk × rows × cols) was in no
    estimate: the GGN of Dense(200, 1) on 1,500 samples peaked at ~480 MB for a 0.3 MB result
    whose guard asked for 0.6 MB; the generic route held three or four copies of its result
    where two were counted."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TQDM_DISABLE="1")
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, quantity, json.dumps(widths), str(N), route],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    (asked,) = report["asked"]
    assert report["grown"] <= asked, f"peak grew by {report['grown'] / 2**20:.1f} MiB, the guard checked {asked / 2**20:.1f} MiB"
    assert asked <= 2 * 8 * report["P"] ** 2 + 2 * memory.CHUNK_BYTES  # an estimate, not "everything"
