"""Memory estimates and the guard that refuses a result that cannot fit.

Every public function that returns an array asks :func:`require` before allocating,
with its result and its working set; the refusal names the size and cheaper
alternatives. "Available" is the smaller of what the machine has free and what the
container's memory limit (a cgroup, v2 or v1) still allows.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator, Mapping

from .errors import MemoryBudgetError

#: Working memory a chunked computation may use at once, at most.
CHUNK_BYTES = 256 * 2**20

#: Where a process sees its own cgroup's memory files (the container's, inside one).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: cgroup v2 and v1 file names: (limit, usage, statistics, reclaimable page-cache entry).
_CGROUP_FILES = (
    ("memory.max", "memory.current", "memory.stat", "inactive_file"),
    ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
)
#: A cgroup "limit" at or above this is the kernel's way of saying "none" (v1 writes 2⁶³ − 4096).
_NO_LIMIT = 2**60


def available_bytes() -> int:
    """Memory that can be allocated now, in bytes: the machine's ``MemAvailable``, or less
    where a cgroup memory limit leaves less (:func:`cgroup_free_bytes`)."""
    machine = _machine_available_bytes()
    container = cgroup_free_bytes()
    return machine if container is None else min(machine, container)


def _machine_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cgroup_free_bytes(root: Path | None = None) -> int | None:
    """``limit − usage + reclaimable page cache`` of the cgroup at ``root`` (default
    :data:`CGROUP_ROOT`; v2, else v1), or None where no memory limit is set or none can be read."""
    root = CGROUP_ROOT if root is None else Path(root)
    for limit_file, usage_file, stat_file, cache_entry in _CGROUP_FILES:
        try:
            limit_text = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= _NO_LIMIT:
            return None
        return max(0, int(limit_text) - usage + _stat_entry(root / stat_file, cache_entry))
    return None


def _stat_entry(path: Path, name: str) -> int:
    """The value of ``name`` in a cgroup ``memory.stat`` file (0 when absent)."""
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


ALTERNATIVES = {
    "hessian": "diagonal(..., kind='hessian'), hvp(..., kind='hessian') or kron(...)",
    "ggn": "diagonal(..., kind='ggn'), hvp(..., kind='ggn') or kron(..., kind='ggn')",
    "empirical_fisher": "diagonal(..., kind='ef'), hvp(..., kind='ef') or kron(..., kind='ef')",
    "param_jacobian": "a smaller batch of X, or hvp/diagonal for curvature",
    "input_hessian": "laplacian(...) for the trace only, or a smaller batch of X",
    "kron": "diagonal(...) or hvp(...)",
    "hvp": "fewer columns of V per call",
    "input_jacobian": "a smaller batch of X",
    "sample": "fewer samples per call",
    "Laplace low-rank factor": "a subset of the parameters (subset='last_layer'), structure='kron' or 'diag'",
}


#: Alternatives that a caller's own context offers instead (set by :func:`hints`).
_HINTS: ContextVar[Mapping[str, str]] = ContextVar("fluxhess_memory_hints", default={})


@contextmanager
def hints(alternatives: Mapping[str, str]) -> Iterator[None]:
    """Within the block, a refusal of a quantity in ``alternatives`` names that alternative
    instead of :data:`ALTERNATIVES`' — the caller's own options (a Laplace fit's
    ``structure=`` and ``subset=``) rather than the standalone functions."""
    token = _HINTS.set({**_HINTS.get(), **alternatives})
    try:
        yield
    finally:
        _HINTS.reset(token)


def alternative(quantity: str) -> str:
    """What a refusal of ``quantity`` suggests instead, here."""
    return _HINTS.get().get(quantity) or ALTERNATIVES.get(quantity, "a smaller problem")


#: Peak memory of a quantity, in copies of its result, as measured by
#: benchmarks/memory_estimates.py. The Dense-chain P×P routes peak at ~1.1 copies (the
#: result and bounded working memory); the generic route holds XLA's result and the NumPy
#: copy returned, so 2 is the bound the guard uses for both, and for every quantity not
#: listed. The per-sample results hold their chunks until they are concatenated; kron
#: holds its running sums and the chunk's factors beside the result (~2.1 copies measured).
COPIES = {"kron": 3}

#: Quantities computed in chunks: beside their result they hold one chunk's working set,
#: at most :data:`CHUNK_BYTES`.
CHUNKED = ("hvp", "diagonal", "param_jacobian", "input_jacobian", "input_hessian", "laplacian", "divergence")
#: copy returned, so 2 is the bound the guard uses for both. The per-sample results hold
#: their chunks until they are concatenated; kron holds its running sums and the chunk's
#: factors beside the result (~2.1 copies measured). A low-rank Laplace holds its factor ``U``,
#: the decomposition's ``V`` and a temporary of the same size.
COPIES = {"hessian": 2, "ggn": 2, "empirical_fisher": 2, "param_jacobian": 2, "input_hessian": 2, "kron": 3, "lowrank": 3}


def needed_bytes(quantity: str, elements: int, itemsize: int) -> int:
    """The bytes the guard checks for a result of ``elements`` entries of ``itemsize`` bytes:
    its copies (:data:`COPIES`, 2 by default) and, for a chunked quantity, one chunk."""
    working = CHUNK_BYTES if quantity in CHUNKED else 0
    return COPIES.get(quantity, 2) * elements * itemsize + working


def require(quantity: str, nbytes: int, shape: tuple[int, ...], *, fraction: float = 0.8) -> None:
    """Raise :class:`MemoryBudgetError` when ``nbytes`` exceeds ``fraction`` of available memory."""
    budget = fraction * available_bytes()
    if nbytes > budget:
        alt = alternative(quantity)
        raise MemoryBudgetError(
            f"{quantity} of shape {shape} needs about {format_bytes(nbytes)}, but only "
            f"{format_bytes(budget)} can be used here; use {alt} instead"
        )


def chunk_size(bytes_per_item: int, total: int, budget: int = CHUNK_BYTES) -> int:
    """How many items of ``bytes_per_item`` fit in ``budget`` (at least 1, at most ``total``)."""
    return max(1, min(total, budget // max(1, bytes_per_item)))


def require_on_devices(quantity: str, per_device: int, devices, shape: tuple[int, ...], *, fraction: float = 0.8) -> None:
    """Raise :class:`MemoryBudgetError` when ``per_device`` bytes exceed ``fraction`` of a device's
    memory (``memory_stats()["bytes_limit"]``); devices that report none (CPU devices) share
    the host's available memory."""
    shared = 0
    for device in devices:
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            budget = fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))
            if per_device > budget:
                raise MemoryBudgetError(
                    f"{quantity} of shape {shape} needs about {format_bytes(per_device)} on each device, but only "
                    f"{format_bytes(budget)} can be used on {device}; use more devices or "
                    f"{alternative(quantity)} instead"
                )
        else:
            shared += per_device
    if shared:
        require(quantity, shared, shape, fraction=fraction)
