"""Memory estimates and the guard that refuses a result that cannot fit.

Every quantity whose result grows with P² or N·C·P asks :func:`require` before
allocating; the refusal names the size and cheaper alternatives.
"""

from __future__ import annotations

import os

from .errors import MemoryBudgetError

#: Working memory a chunked computation may use at once, at most.
CHUNK_BYTES = 256 * 2**20


def available_bytes() -> int:
    """Memory the OS reports as available now (``MemAvailable``), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


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
    "Laplace low-rank factor": "a subset of the parameters (subset='last_layer'), structure='kron' or 'diag'",
}


#: Peak memory of a quantity, in copies of its result, as measured by
#: benchmarks/memory_estimates.py. The Dense-chain P×P routes peak at ~1.1 copies (the
#: result and bounded working memory); the generic route holds XLA's result and the NumPy
#: copy returned, so 2 is the bound the guard uses for both. The per-sample results hold
#: their chunks until they are concatenated; kron holds its running sums and the chunk's
#: factors beside the result (~2.1 copies measured). A low-rank Laplace holds its factor ``U``,
#: the decomposition's ``V`` and a temporary of the same size.
COPIES = {"hessian": 2, "ggn": 2, "empirical_fisher": 2, "param_jacobian": 2, "input_hessian": 2, "kron": 3, "lowrank": 3}


def needed_bytes(quantity: str, elements: int, itemsize: int) -> int:
    """The bytes the guard checks for a result of ``elements`` entries of ``itemsize`` bytes."""
    return COPIES.get(quantity, 1) * elements * itemsize


def require(quantity: str, nbytes: int, shape: tuple[int, ...], *, fraction: float = 0.8) -> None:
    """Raise :class:`MemoryBudgetError` when ``nbytes`` exceeds ``fraction`` of available memory."""
    budget = fraction * available_bytes()
    if nbytes > budget:
        alt = ALTERNATIVES.get(quantity, "a smaller problem")
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
                    f"{ALTERNATIVES.get(quantity, 'a smaller problem')} instead"
                )
        else:
            shared += per_device
    if shared:
        require(quantity, shared, shape, fraction=fraction)
