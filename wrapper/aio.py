"""asyncio helpers shared by the wrapper and the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], retry_every: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until every one has finished.

    On Python 3.11 a cancellation that lands while a task sits in ``asyncio.timeout`` (which
    redis-py uses for every read) can be swallowed when the timeout fires at the same moment,
    and the task runs on. Cancelling once and awaiting would then wait forever; so the
    cancellation is repeated until the task is really gone.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_every)


async def wait_any(events: Iterable[asyncio.Event], timeout: float) -> bool:
    """Wait until one of ``events`` is set or ``timeout`` seconds pass; whether one is set."""
    events = list(events)
    if any(event.is_set() for event in events):
        return True
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
