"""Progress bars: chunked loops with a bar when the work is long, and the bar class itself."""

from __future__ import annotations

import importlib.util
import sys
from typing import Iterator

#: A loop of at least this many chunks shows a progress bar.
MIN_CHUNKS_FOR_BAR = 8


def bar_class():
    """tqdm's notebook bar inside a Jupyter kernel that has ipywidgets, its text bar anywhere else.

    (``tqdm.auto`` warns "IProgress not found" in a kernel without ipywidgets; this falls
    back to the text bar quietly.)
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    in_kernel = shell is not None and "IPKernelApp" in getattr(shell, "config", {})
    if in_kernel and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def chunks(total: int, size: int, desc: str) -> Iterator[slice]:
    """``slice``s of at most ``size`` covering ``range(total)``, with a tqdm bar when long."""
    slices = [slice(start, min(start + size, total)) for start in range(0, total, size)]
    if len(slices) < MIN_CHUNKS_FOR_BAR:
        return iter(slices)
    return iter(bar_class()(slices, desc=desc, unit="chunk", leave=False))
