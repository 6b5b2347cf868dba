"""P×P curvature assembled by XLA on JAX devices, its row panels sharded across them.

The devices form a :class:`jax.sharding.Mesh`; the result's rows are split over all of its
axes (``PartitionSpec(mesh.axis_names, None)``) when the device count divides P, and
otherwise as :func:`layout` says (JAX shards an axis only evenly: the rows are computed
padded, and kept split ``gcd(P, D)`` ways); each device computes only its own rows
(:func:`jax.shard_map`) from replicated θ, X and Y, so no device ever holds the whole matrix
and no device talks to another:

- GGN and empirical Fisher: every device forms the factor ``U`` with ``Uᵀ U`` the curvature —
  ``(N·C, P)`` rows ``√s·L_nᵀ J_n`` (``Λ_n = L_n L_nᵀ``) for the GGN, ``(N, P)`` rows ``√s·g_n``
  for the EF — and its rows of ``Uᵀ U`` as one GEMM; samples are taken in chunks whose
  factor fits the working memory (:func:`work_bytes`), their panels summed on the devices.
- Hessian: its rows are Hessian-vector products with the unit vectors of the device's rows
  (H is symmetric), in batches under ``lax.map`` — about four times the flops of the host's
  block GEMMs (:mod:`.dense_matrix`), in exchange for running wherever XLA does.

The result is made exactly symmetric, ``(M + Mᵀ)/2``, which moves each device's panel
transposed onto the others (XLA's all-to-all; still no device holds more than its rows).

Under ``jax.distributed.initialize`` the same code runs on every process with the global
mesh; each process computes and holds the rows of its own devices. On one device a Dense
chain takes :mod:`.dense_device` instead (the host route's blocks, as XLA einsums); other
models take this route on a mesh of that one device.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ...errors import InputError
from ..._memory import CHUNK_BYTES, chunk_size
from ...model import Chain
from .chunked import widest
from .compiled import compiled

#: Mesh axis of a mesh built from a list of devices.
AXIS = "rows"


def as_mesh(devices) -> Mesh:
    """``devices`` (a :class:`~jax.sharding.Mesh` of distinct devices whose axes are all
    ``AxisType.Auto``, or a non-empty list of distinct JAX devices) as a mesh."""
    if isinstance(devices, Mesh):
        flat = list(devices.devices.flat)
        if len(set(flat)) != len(flat):
            raise InputError(f"devices: the Mesh lists a device more than once ({flat}); give each device once")
        types = tuple(getattr(devices, "axis_types", ()))
        if any(t != AxisType.Auto for t in types):
            raise InputError(
                f"devices: the Mesh's axis types are {types}; the result is laid out by fluxhess (rows split "
                "over the mesh), which needs AxisType.Auto axes: build it with "
                "jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names)) or pass a list of devices"
            )
        return devices
    try:
        found = list(devices)
    except TypeError:
        found = None
    if not found or not all(isinstance(d, jax.Device) for d in found) or len(set(found)) != len(found):
        raise InputError(
            "devices must be a jax.sharding.Mesh or a non-empty list of distinct JAX devices (e.g. jax.devices()); "
            f"got {devices!r}"
        )
    return Mesh(np.array(found), (AXIS,))


def mesh_for(devices, as_jax: bool) -> Mesh | None:
    """The mesh a P×P call assembles on: that of ``devices``; else, when ``as_jax`` or when JAX's default
    device is an accelerator, that one device; else None (the host route)."""
    if devices is not None:
        return as_mesh(devices)
    device = _default_device()
    if as_jax or device.platform != "cpu":
        return Mesh(np.array([device]), (AXIS,))
    return None


def _default_device() -> jax.Device:
    """JAX's default device, honouring ``jax.default_device(...)`` around the call."""
    chosen = jax.config.jax_default_device
    if isinstance(chosen, str):
        return jax.devices(chosen)[0]
    return chosen if chosen is not None else jax.devices()[0]


def work_bytes(mesh: Mesh) -> int:
    """Working memory per device for one batch of rows or chunk of samples: an eighth of an
    accelerator's memory, :data:`CHUNK_BYTES` on CPU devices (which share the host's)."""
    limit = (mesh.local_devices[0].memory_stats() or {}).get("bytes_limit")
    return max(CHUNK_BYTES, limit // 8) if limit else CHUNK_BYTES


def row_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over every axis of ``mesh``, columns whole."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names, None))


@dataclass(frozen=True)
class Layout:
    """Where a ``(P, P)`` result is computed and kept on ``mesh``'s ``D`` devices.

    JAX shards an axis only evenly. The rows are computed over all ``D`` devices, padded to
    ``rows`` (a multiple of ``D``; the padded rows are zero and dropped); the result is kept
    on :attr:`mesh` with the rows split ``parts`` ways: the given mesh and ``D`` parts when
    ``D`` divides P, else the same devices as a ``(g, D/g)`` mesh with ``g = gcd(P, D)``
    parts over its first axis, each part held by ``D/g`` devices.
    """

    mesh: Mesh
    P: int
    parts: int

    @property
    def rows(self) -> int:
        D = self.mesh.size
        return -(-self.P // D) * D

    @property
    def result(self) -> NamedSharding:
        return row_sharding(self.mesh) if self.parts == self.mesh.size else NamedSharding(self.mesh, PartitionSpec(AXIS, None))


def layout(P: int, mesh: Mesh) -> Layout:
    """The :class:`Layout` of a ``(P, P)`` result on ``mesh``."""
    D = mesh.size
    if P % D == 0:
        return Layout(mesh, P, D)
    g = math.gcd(P, D)
    return Layout(Mesh(np.asarray(mesh.devices).reshape(g, D // g), (AXIS, "copies")), P, g)


def _replicated(mesh: Mesh, x: np.ndarray) -> jax.Array:
    """``x`` on every device of ``mesh`` (each process supplies its own devices' copies)."""
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, PartitionSpec()), lambda index: x[index])


def _hvp_rows(model: Chain, loss: str, kind, P: int, batch: int):
    """``(θ, X, Y, s, rows) ↦ M[rows]``: M is symmetric, so row i is ``M e_i``, a curvature-vector product."""
    hvp = compiled(model, loss, "hvp", kind)  # (θ, X, Y, s, V (P, k)) -> (P, k)

    def rows_of(theta, X, Y, s, rows):
        unit = lambda i: hvp(theta, X, Y, s, jax.nn.one_hot(i, P, dtype=theta.dtype)[:, None])[:, 0]  # i ≥ P: zero
        return jax.lax.map(unit, rows, batch_size=batch)

    return rows_of


def _gram_rows(model: Chain, loss: str, kind, P: int, batch: int):
    """``(θ, X, Y, s, rows) ↦ (UᵀU)[rows]`` with ``U`` ``(R, P)`` the kind's factor (GGN, EF)."""
    factor = compiled(model, loss, "factor", kind)  # (θ, X, Y, s) -> U (R, P)

    def rows_of(theta, X, Y, s, rows):
        U = factor(theta, X, Y, s)
        return jnp.take(U, rows, axis=1, mode="fill", fill_value=0).T @ U  # padded rows (≥ P): zero

    return rows_of


@functools.lru_cache(maxsize=16)
def _local_rows(model: Chain, loss: str, kind, mesh: Mesh, P: int, batch: int):
    """The jitted ``(θ, X, Y, s, rows) ↦ M[rows]`` with ``rows`` ``(P,)`` and the result
    ``(P, P)`` sharded by rows: each device computes the rows it holds."""
    sharded = jax.shard_map(
        (_gram_rows if kind.per_sample_terms else _hvp_rows)(model, loss, kind, P, batch),
        mesh=mesh,
        in_specs=(PartitionSpec(),) * 4 + (PartitionSpec(mesh.axis_names),),
        out_specs=PartitionSpec(mesh.axis_names, None),
        check_vma=False,  # the rows vary over the mesh, θ, X, Y do not: mixing them is the point
    )
    return jax.jit(sharded)


def _sample_chunks(kind, N: int, C: int, P: int, itemsize: int, budget: int) -> list[slice]:
    """All samples at once for the Hessian; for the GGN/EF chunks whose factor and Jacobians fit ``budget``."""
    n = chunk_size(3 * kind.rows(C) * P * itemsize, N, budget) if kind.per_sample_terms else N
    return [slice(a, min(a + n, N)) for a in range(0, N, n)]


def matrix(model: Chain, loss: str, kind, theta, X, Y, s: float, mesh: Mesh) -> jax.Array:
    """The curvature ``kind`` (:mod:`.kinds`), ``(P, P)``, as a :class:`jax.Array` sharded by
    rows as :func:`layout` says (over all of ``mesh``'s axes when its size divides P).

    ``theta`` ``(P,)``, ``X`` ``(N, d)``, ``Y`` ``(N, C)`` NumPy arrays of one float dtype (the
    caller scopes JAX's precision to it), the same on every process; ``s`` the aggregation factor.
    """
    P, itemsize = theta.shape[0], theta.dtype.itemsize
    plan = layout(P, mesh)
    mesh = plan.mesh
    budget = work_bytes(mesh)
    batch = max(1, min(plan.rows // mesh.size, budget // (4 * itemsize * (P + X.shape[0] * widest(model)))))
    fn = _local_rows(model, loss, kind, mesh, P, batch)
    rows = np.arange(plan.rows)
    rows_g = jax.make_array_from_callback(rows.shape, NamedSharding(mesh, PartitionSpec(mesh.axis_names)), lambda i: rows[i])
    theta_g, s_g = _replicated(mesh, theta), _replicated(mesh, np.asarray(s, theta.dtype))
    total = None
    for sl in _sample_chunks(kind, X.shape[0], Y.shape[1], P, itemsize, budget):
        part = fn(theta_g, _replicated(mesh, X[sl]), _replicated(mesh, Y[sl]), s_g, rows_g)
        total = part if total is None else total + part
    return _symmetric(plan)(total)


@functools.lru_cache(maxsize=16)
def _symmetric(plan: Layout):
    """``(M + Mᵀ)/2`` of the first P rows, laid out as ``plan`` keeps the result: exact
    symmetry, as on the host route (the rows of a device and the columns of the others round
    differently)."""
    P = plan.P
    return jax.jit(lambda M: 0.5 * (M[:P] + M[:P].T), out_shardings=plan.result)


def device_bytes(P: int, mesh: Mesh, itemsize: int) -> int:
    """Bytes each device holds: its padded rows of one chunk's partial sum and of the running
    sum, and its rows of the result."""
    plan = layout(P, mesh)
    return (2 * plan.rows // plan.mesh.size + P // plan.parts) * P * itemsize


def all_finite(M: jax.Array) -> bool:
    """Whether this process's shards of ``M`` are finite (no communication between processes)."""
    return all(bool(np.isfinite(np.asarray(shard.data)).all()) for shard in M.addressable_shards)
