"""Where every JAX route runs: the call's float width, full-precision products, NumPy results."""

from __future__ import annotations

from contextlib import contextmanager

import jax
import numpy as np


@contextmanager
def precision(*arrays):
    """float64 when any array is float64, and full-precision matrix products in any case
    (on GPUs JAX's default multiplies float32 in TensorFloat-32, ~1e-3 relative error).

    Scoped to the call: the user's global JAX configuration is never changed."""
    with jax.enable_x64(any(np.asarray(a).dtype == np.float64 for a in arrays)), jax.default_matmul_precision("highest"):
        yield


def to_numpy(x) -> np.ndarray:
    """A JAX array on the host, as NumPy (``np.asarray``: ``jax.device_get``'s tree walk costs
    about 0.1 ms an array, which the small results of the diagonal and KFAC routes notice)."""
    return np.asarray(x)
