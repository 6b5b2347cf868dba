"""``devices=`` and ``as_jax=``: the P×P curvature assembled by XLA, its rows sharded over
JAX devices — four CPU devices in one process, and two processes of two devices each under
``jax.distributed`` on localhost — against the host route in this process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import fluxhess as fh
from conftest import CASES, Case, make_data
from problems_sharded import MODEL, QUANTITIES, UNEVEN, data

HERE = Path(__file__).parent
CHILD = HERE / "sharded_child.py"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE)] + sys.path), JAX_PLATFORMS="cpu")


def _expected() -> dict[str, np.ndarray]:
    theta, X, y = data()
    uneven_theta = UNEVEN.init(0) + 0.1 * np.random.default_rng(1).normal(size=UNEVEN.num_params)
    expected = {
        q: getattr(fh, q)(MODEL, theta, X, y, loss="logitcrossentropy", agg="mean", backend="jax") for q in QUANTITIES
    }
    for q in QUANTITIES:
        expected[f"uneven_{q}"] = getattr(fh, q)(UNEVEN, uneven_theta, X[:, :2], y * 0.1, backend="jax")
    return expected


def _assemble(files: list[Path], n_devices: int) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """The matrices from every process's shards, and each quantity's (rows, device) per shard."""
    names = list(_expected())
    out = {q: None for q in names}
    layout = {q: [] for q in names}
    for f in files:
        with np.load(f) as z:
            assert int(z["devices"]) == n_devices
            for q in names:
                P = (UNEVEN if q.startswith("uneven_") else MODEL).num_params
                if out[q] is None:
                    out[q] = np.full((P, P), np.nan)
                k = 0
                while f"{q}_{k}_rows" in z:
                    rows, block = z[f"{q}_{k}_rows"], z[f"{q}_{k}_data"]
                    assert block.shape == (P // np.gcd(P, n_devices), P), f"{q}: a shard of shape {block.shape}"
                    out[q][rows] = block
                    layout[q].append((tuple(rows[[0, -1]]), int(z[f"{q}_{k}_device"])))
                    k += 1
    return out, layout


def _check(files: list[Path], n_devices: int) -> None:
    """Every quantity equals the host route's. P = 68 is split over the devices, one shard
    each; P = 13 (before: refused) is computed over all of them and each holds all 13 rows."""
    got, layout = _assemble(files, n_devices)
    for q, M in _expected().items():
        assert len(layout[q]) == n_devices and len({d for _, d in layout[q]}) == n_devices  # one shard per device
        assert not np.isnan(got[q]).any(), f"{q}: rows no shard held"
        err = np.abs(got[q] - M).max() / np.abs(M).max()
        assert err < 1e-12, f"{q}: sharded differs from the host route by {err:.2e}"
        np.testing.assert_array_equal(got[q], got[q].T)


def test_four_devices_one_process(tmp_path):
    assert MODEL.num_params % 4 == 0
    out = tmp_path / "single.npz"
    done = subprocess.run([sys.executable, str(CHILD), str(out), "4"], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    _check([out], 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_jax_distributed(tmp_path):
    port = _free_port()
    files = [tmp_path / f"process{i}.npz" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(files[i]), "2", str(i), "2", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        )
        for i in range(2)
    ]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()  # a no-op once it has exited; stops a hung one
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    _check(files, 4)


#: Dense chains (the block route of dense_device: biases or none, adjacent and non-adjacent
#: layer pairs, a softmax head) and a softmax between Dense layers (the generic route on one device).
ONE_DEVICE = [c for c in CASES if c.id in ("gelu-softmax-ce-mean", "swish-elu-nobias-logitbce", "logsoftmax-tanh-mse")] + [
    Case("softmax-between", fh.Chain(fh.Dense(3, 4, "tanh"), fh.Activation("softmax"), fh.Dense(4, 2)), "mse", "mean", 5)
]


@pytest.mark.parametrize("case", ONE_DEVICE, ids=[c.id for c in ONE_DEVICE])
def test_as_jax_on_the_default_device(case):
    theta, X, y = make_data(case)
    for q in QUANTITIES:
        fn = getattr(fh, q)
        M = fn(case.model, theta, X, y, loss=case.loss, agg=case.agg, backend="jax")
        A = fn(case.model, theta, X, y, loss=case.loss, agg=case.agg, backend="jax", as_jax=True)
        assert isinstance(A, jax.Array) and A.devices() == {jax.devices()[0]}
        np.testing.assert_allclose(np.asarray(A), M, rtol=0, atol=1e-12 * np.abs(M).max())
        np.testing.assert_array_equal(np.asarray(A), np.asarray(A).T)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(devices="cpu"), "list of distinct JAX devices"),
        (dict(devices=[]), "non-empty"),
        (dict(devices=jax.devices() * 2), "distinct"),
        (dict(devices=jax.sharding.Mesh(np.array(jax.devices() * 2), ("x",))), "lists a device more than once"),
        (dict(devices=jax.sharding.Mesh(np.array(jax.devices()), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))), "AxisType.Auto"),
        (dict(as_jax=1), "as_jax must be True or False"),
        (dict(as_jax=True, out=np.empty((68, 68))), "one or the other"),
    ],
)
def test_devices_refused(kwargs, words):
    theta, X, y = data()
    with pytest.raises(fh.InputError, match=words):
        fh.ggn(MODEL, theta, X, y, loss="logitcrossentropy", backend="jax", **kwargs)
