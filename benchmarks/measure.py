"""Timing, peak memory and the machine's GEMM rate, all measured in the running process."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field

import numpy as np


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of resident memory (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Run:
    seconds: float
    peak_bytes: int | None  # rise of resident memory during the call, None where unknown
    value: object = field(repr=False, default=None)


#: Seconds of idle before each timed call: the thread pools of OpenBLAS, XLA and torch
#: spin-wait for a while after their work, and on two cores the next library's call would
#: otherwise share the CPU with the previous one's spinning threads.
SETTLE_SECONDS = 0.5


def run_once(fn) -> Run:
    """Call ``fn()`` once, after :data:`SETTLE_SECONDS` of idle: wall time and the rise of
    peak resident memory over the call."""
    gc.collect()
    time.sleep(SETTLE_SECONDS)
    exact = _reset_peak()
    before = _status_kib("VmRSS")
    t = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t
    peak = (_status_kib("VmHWM") - before) * 1024 if exact else None
    return Run(seconds, peak, value)


def load() -> float:
    """The 1-minute load average (other work on the machine slows every library alike)."""
    return os.getloadavg()[0]


def gemm_rates(dtype: str, n: int = 2000, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an ``n×n`` matmul in NumPy (its BLAS), XLA and torch (where installed): best of ``repeats``."""
    a = np.random.default_rng(0).normal(size=(n, n)).astype(dtype)
    fns = {"numpy": lambda: a @ a}
    import jax

    with jax.enable_x64(dtype == "float64"):
        ja = jax.device_put(a)
        mm = jax.jit(lambda x: x @ x)
        mm(ja).block_until_ready()
        fns["xla"] = lambda: mm(ja).block_until_ready()
        try:
            import torch

            ta = torch.from_numpy(a)
            fns["torch"] = lambda: ta @ ta
        except ImportError:
            pass
        rates = {}
        for name, fn in fns.items():
            fn()
            best = min(_timed(fn) for _ in range(repeats))
            rates[name] = 2 * n**3 / best / 1e9
    return rates


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
