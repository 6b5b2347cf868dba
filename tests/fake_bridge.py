"""What the tests' stand-ins for FluxHess.Bridge share: ``numpy_view`` done in NumPy."""

from __future__ import annotations

import ctypes

import numpy as np

_DTYPES = {"Float64": np.float64, "Float32": np.float32}


def numpy_view(address: int, T: str, *shape: int) -> np.ndarray:
    """``FluxHess.Bridge.numpy_view``: the C-ordered array of Julia element type ``T`` (a name
    here) and NumPy ``shape`` at memory ``address``, without a copy (writes reach the caller's)."""
    dtype = np.dtype(_DTYPES[T])
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer((ctypes.c_char * nbytes).from_address(address), dtype).reshape(shape)
