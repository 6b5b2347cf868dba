"""Progress bars: chunked loops with a bar when the work is long, and the bar class itself."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from typing import Any, Iterator

#: A loop of at least this many chunks shows a progress bar.
MIN_CHUNKS_FOR_BAR = 8


def bar_class() -> Any:
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


@contextmanager
def iterations(max_iter: int, desc: str) -> Iterator[Any]:
    """A bar for an iterative loop of at most ``max_iter`` steps that may stop early (an
    optimiser that converges); the loop calls ``bar.update(1)`` per step.

    tqdm's notebook bar turns red ("danger") when it is closed short of its total, which is
    how it shows an error or an interrupt. So on a normal exit the bar's total becomes the
    steps taken, and it closes complete; an exception leaves it short: red.
    """
    bar = bar_class()(total=max_iter, desc=desc, unit="it", leave=False, disable=None)
    try:
        yield bar
    except BaseException:
        bar.close()
        raise
    bar.total = bar.n
    bar.refresh()
    bar.close()
