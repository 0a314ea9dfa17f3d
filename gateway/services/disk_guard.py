"""Keeps every session within ``SESSION_DISK_LIMIT``.

Docker's local volumes have no size limit (and ``--storage-opt size`` exists only for overlay2
on xfs with project quotas, and only for the root filesystem, which is read-only here), so the
limit is enforced by measuring: every ``DISK_CHECK_INTERVAL`` seconds the runtime measures all
running sessions' persistent paths in one pass, and a session over the limit is stopped with
reason ``disk_limit``. It can overshoot by what it writes within one interval; the host's disk
is the bound of that.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.db import queries
from gateway.runtime import RuntimeFailure, SessionRuntime
from gateway.services.rounds import every
from gateway.services.termination import Terminator

log = logging.getLogger(__name__)

DISK_LIMIT_REASON = "disk_limit"


class DiskGuard:
    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[AsyncSession],
        runtime: SessionRuntime,
        terminator: Terminator,
    ) -> None:
        self._settings = settings
        self._db = db
        self._runtime = runtime
        self._terminator = terminator
        self._limit = settings.session_disk_limit_bytes

    async def run(self, is_mine: Callable[[], bool]) -> None:
        """A round every ``DISK_CHECK_INTERVAL`` seconds while this replica holds the lease."""
        await every(self._settings.disk_check_interval, is_mine, lambda _start: self.round())

    async def round(self) -> None:
        """Measure every running session at once; stop those over the limit."""
        async with self._db() as db:
            running = await queries.running_containers(db, self._settings.instance_name)
        if not running:
            return
        try:
            used = await self._runtime.disk_usage([container for _, container in running])
        except RuntimeFailure as exc:  # the engine is busy or down: next round
            log.warning("could not measure the sessions' disk use: %s", exc)
            return
        for session_id, container_id in running:
            if used.get(container_id, 0) > self._limit:  # absent: stopped meanwhile
                await self._stop(session_id, used[container_id])

    async def _stop(self, session_id: uuid.UUID, used: int) -> None:
        reason = (
            f"{DISK_LIMIT_REASON}: the session's files take {used} bytes, "
            f"SESSION_DISK_LIMIT is {self._settings.session_disk_limit} ({self._limit} bytes)"
        )
        log.warning("stopping session %s: %s", session_id, reason)
        try:
            await self._terminator.stop(session_id, reason=reason)
        except Exception:
            log.exception("could not stop session %s over its disk limit", session_id)
