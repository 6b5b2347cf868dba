"""Chunked loops with a progress bar when the work is long."""

from __future__ import annotations

from typing import Iterator

#: A loop of at least this many chunks shows a progress bar.
MIN_CHUNKS_FOR_BAR = 8


def chunks(total: int, size: int, desc: str) -> Iterator[slice]:
    """``slice``s of at most ``size`` covering ``range(total)``, with a tqdm bar when long."""
    slices = [slice(start, min(start + size, total)) for start in range(0, total, size)]
    if len(slices) < MIN_CHUNKS_FOR_BAR:
        return iter(slices)
    from tqdm.auto import tqdm

    return iter(tqdm(slices, desc=desc, unit="chunk", leave=False))
