"""Background work a service starts from a request and must neither lose nor leak."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from wrapper.aio import cancel_and_wait

log = logging.getLogger(__name__)


class TaskSet:
    """Owns the tasks it spawns: keeps them referenced while they run, logs their failures, and
    cancels and awaits whatever still runs on ``close`` (called by the app's lifespan)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self, grace: float = 0.0) -> None:
        """Cancel what still runs, after letting it run up to ``grace`` seconds to end."""
        if grace > 0 and self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        await cancel_and_wait(list(self._tasks))
