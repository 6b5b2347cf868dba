"""Run by tests/test_sharded.py in a fresh process (JAX's device count is fixed at start-up):
the P×P curvature sharded over this process's CPU devices, or over the devices of two
processes under ``jax.distributed``; writes each local shard (its rows and values) to an .npz.

Usage: python sharded_child.py OUT.npz DEVICES [PROCESS_ID NUM_PROCESSES PORT]
"""

import os
import sys

out, n_devices = sys.argv[1], int(sys.argv[2])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

if len(sys.argv) > 3:
    process_id, num_processes, port = map(int, sys.argv[3:6])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id, initialization_timeout=60
    )

import fluxhess as fh  # noqa: E402
from problems_sharded import MODEL, QUANTITIES, UNEVEN, data  # noqa: E402

theta, X, y = data()
uneven_theta = UNEVEN.init(0) + 0.1 * np.random.default_rng(1).normal(size=UNEVEN.num_params)
shards = {}


def keep(name, M):
    for k, shard in enumerate(M.addressable_shards):
        rows = shard.index[0]
        shards[f"{name}_{k}_rows"] = np.arange(rows.start or 0, rows.stop if rows.stop is not None else M.shape[0])
        shards[f"{name}_{k}_data"] = np.asarray(shard.data)
        shards[f"{name}_{k}_device"] = np.array(shard.device.id)


for name in QUANTITIES:
    M = getattr(fh, name)(MODEL, theta, X, y, loss="logitcrossentropy", agg="mean", backend="jax", devices=jax.devices())
    assert M.shape == (MODEL.num_params,) * 2 and M.sharding.spec[0] is not None
    keep(name, M)
    # P = 13, which no device count here divides: computed over all devices, kept as one
    # jax.Array (13 rows cannot be split evenly, so each device holds them all)
    U = getattr(fh, name)(UNEVEN, uneven_theta, X[:, :2], y * 0.1, backend="jax", devices=jax.devices())
    assert U.shape == (UNEVEN.num_params,) * 2
    keep(f"uneven_{name}", U)
np.savez(out, process=jax.process_index(), devices=len(jax.devices()), **shards)
if len(sys.argv) > 3:
    jax.distributed.shutdown()
