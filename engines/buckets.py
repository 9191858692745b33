"""Static row buckets: the fixed batch sizes a compiled engine is built for.

A compiled graph (and a CUDA graph even more so) is specialised to one shape. The scheduler forms any row count up
to ``max_rows`` (guided images count twice: conditional row + unconditional twin), so the engine compiles a small
ladder of sizes and pads each call up to the next one. Powers of two bound the padding waste at < 2x and the number
of compilations at log2(max_rows) + 1.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def default_buckets(max_rows: int) -> list[int]:
    """``[1, 2, 4, ..., max_rows]``: powers of two below ``max_rows``, then ``max_rows`` itself.

    Raises:
        ValueError: ``max_rows`` < 1.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1; got {max_rows}")
    buckets, size = [], 1
    while size < max_rows:
        buckets.append(size)
        size *= 2
    buckets.append(max_rows)
    return buckets


def validate_buckets(buckets: Sequence[int]) -> list[int]:
    """Sorted, de-duplicated copy of ``buckets``.

    Raises:
        ValueError: empty, or a size < 1 (the message names the value).
    """
    if not buckets:
        raise ValueError("buckets must hold at least one row count; got an empty list")
    for size in buckets:
        if int(size) != size or size < 1:
            raise ValueError(f"every bucket must be an integer >= 1; got {size!r} in {list(buckets)}")
    return sorted({int(b) for b in buckets})


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``rows``. ``buckets`` must be sorted; ``rows`` must be in [1, buckets[-1]]."""
    index = bisect.bisect_left(buckets, rows)
    if rows < 1 or index == len(buckets):
        raise ValueError(f"rows={rows} is outside the buckets' range [1, {buckets[-1]}]")
    return buckets[index]
