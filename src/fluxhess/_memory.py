"""Memory estimates and the guard that refuses a result that cannot fit.

Every public function that returns an array asks :func:`require` before allocating,
with its result and its working set; the refusal names the size and cheaper
alternatives. "Available" is the smaller of what the machine has free and what the
memory limits of the process's own cgroup and those above it (v2 or v1) still allow.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from .errors import MemoryBudgetError

#: Working memory a chunked computation may use at once, at most.
CHUNK_BYTES = 256 * 2**20

#: Where the cgroup filesystems are mounted, and where a process reads which cgroup it is in.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
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


@dataclass(frozen=True)
class _Hierarchy:
    """One cgroup version's files: the folder under the mount, the limit, usage and statistics
    files, the reclaimable page-cache entry of the statistics, and which /proc/self/cgroup
    line names the process's cgroup in it."""

    mount: str
    limit: str
    usage: str
    stat: str
    cache_entry: str

    def owns(self, controllers: str) -> bool:
        return (controllers == "") if self.mount == "" else ("memory" in controllers.split(","))


_HIERARCHIES = (
    _Hierarchy("", "memory.max", "memory.current", "memory.stat", "inactive_file"),
    _Hierarchy("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_inactive_file"),
)


def cgroup_free_bytes(root: Path | None = None, proc_cgroup: Path | None = None) -> int | None:
    """What the process's cgroup memory limits still allow, in bytes, or None where no limit is set.

    The process's cgroup is read from ``proc_cgroup`` (default :data:`PROC_CGROUP`): the v2 line
    ``0::/path`` and the v1 line whose controllers include ``memory``. Each folder from that
    cgroup up to the hierarchy's root under ``root`` (default :data:`CGROUP_ROOT`; v2 at the
    root, v1 under ``memory/``) that sets a limit gives ``limit − usage + reclaimable page
    cache``, and the smallest of them is returned: a limit set by Slurm or ``systemd-run`` on
    the process's own cgroup, or by a container on one above it, all count. Folders that do
    not exist (a cgroup namespace shows ``/``) are skipped.
    """
    root = CGROUP_ROOT if root is None else Path(root)
    paths = _own_cgroups(PROC_CGROUP if proc_cgroup is None else Path(proc_cgroup))
    free = []
    for hierarchy in _HIERARCHIES:
        base = root / hierarchy.mount
        own = base / paths.get(hierarchy.mount, "")
        for folder in (own, *own.parents):
            if _is_within(folder, base):
                free.append(_free_in(folder, hierarchy))
            if folder == base:
                break
    limits = [f for f in free if f is not None]
    return min(limits) if limits else None


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """The process's cgroup path (relative) in each hierarchy, by its :attr:`_Hierarchy.mount`."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return {}
    paths: dict[str, str] = {}
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        for hierarchy in _HIERARCHIES:
            if hierarchy.owns(controllers) and ".." not in Path(path).parts:
                paths.setdefault(hierarchy.mount, path.lstrip("/"))
    return paths


def _is_within(folder: Path, base: Path) -> bool:
    return folder == base or base in folder.parents


def _free_in(folder: Path, hierarchy: _Hierarchy) -> int | None:
    """``limit − usage + reclaimable cache`` of one cgroup folder, or None without a limit there."""
    try:
        limit_text = (folder / hierarchy.limit).read_text().strip()
        usage = int((folder / hierarchy.usage).read_text())
        limit = None if limit_text == "max" else int(limit_text)
    except (OSError, ValueError):
        return None
    if limit is None or limit >= _NO_LIMIT:
        return None
    return max(0, limit - usage + _stat_entry(folder / hierarchy.stat, hierarchy.cache_entry))


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


def require_disk(target, nbytes: int) -> None:
    """Raise :class:`MemoryBudgetError` when writing ``nbytes`` into the ``numpy.memmap`` ``target``
    could need more disk than its filesystem has free (``os.statvfs``): a sparse file (what
    ``np.lib.format.open_memmap`` makes) takes its blocks only when written, and a write that
    finds the disk full kills the process with SIGBUS instead of raising."""
    filename = getattr(target, "filename", None)
    if filename is None:
        return
    try:
        st = os.stat(filename)
        fs = os.statvfs(os.path.dirname(os.path.abspath(filename)))
    except OSError:
        return
    unallocated = max(0, st.st_size - st.st_blocks * 512)
    needed, free = min(nbytes, unallocated), fs.f_bavail * fs.f_frsize
    if needed > free:
        raise MemoryBudgetError(
            f"out is a memmap of {filename} that may need {format_bytes(needed)} more on disk as it is written, "
            f"but its filesystem has {format_bytes(free)} free; free some space or put the file on a larger filesystem"
        )


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
    "init": "a smaller model",
    "compare data": "a smaller --n or --model",
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
#: benchmarks/memory_estimates.py; 2 (XLA's result and the NumPy copy returned) for every
#: quantity not listed. The P×P routes of a backend that estimates its own routes
#: (``matrix_bytes``, as the JAX backend does) use that estimate instead. The per-sample
#: results hold their chunks until they are concatenated; kron holds its running sums and the
#: chunk's factors beside the result (~2.1 copies measured). A low-rank Laplace holds its
#: factor ``U``, the decomposition's ``V`` and a temporary of the same size.
COPIES = {"kron": 3, "lowrank": 3}

#: Quantities computed in chunks: beside their result they hold one chunk's working set,
#: at most :data:`CHUNK_BYTES`.
CHUNKED = ("hvp", "diagonal", "param_jacobian", "input_jacobian", "input_hessian", "laplacian", "divergence")


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
