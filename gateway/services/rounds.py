"""Background rounds over the running sessions (periodic saves, disk checks): one round per
interval while this replica holds the work's lease. A round that calls the engine once per
session (saves) takes each at its own point of the interval rather than all back to back, so
that with many sessions the engine and the gateway see a steady trickle of calls instead of a
burst that stalls the relay every interval."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def every(
    interval: float, is_mine: Callable[[], bool], round_: Callable[[float], Awaitable[None]]
) -> None:
    """``round_(start)`` (``start`` in loop time) every ``interval`` seconds, the first one
    interval from now, while ``is_mine()``. A round that overruns its interval is followed by
    the next at once; one that fails (the database is down, say) is logged, and the next comes
    when it is due."""
    loop = asyncio.get_running_loop()
    start = loop.time() + interval
    while True:
        await asyncio.sleep(max(0.0, start - loop.time()))
        if is_mine():
            try:
                await round_(start)
            except Exception:
                log.exception("a round of %s failed", getattr(round_, "__qualname__", round_))
        start = max(start + interval, loop.time())


async def spread(
    items: Sequence[T], start: float, interval: float, is_mine: Callable[[], bool]
) -> AsyncIterator[T]:
    """Each of ``items`` in turn, item *i* of *n* no sooner than ``start + i * interval / n``
    (loop time); none once ``is_mine()`` is false (the lease moved on)."""
    loop = asyncio.get_running_loop()
    spacing = interval / max(1, len(items))
    for i, item in enumerate(items):
        await asyncio.sleep(max(0.0, start + i * spacing - loop.time()))
        if not is_mine():
            return
        yield item
