"""Keeps every session within ``SESSION_DISK_LIMIT``.

Docker's local volumes have no size limit (and ``--storage-opt size`` exists only for overlay2
on xfs with project quotas, and only for the root filesystem, which is read-only here), so the
limit is enforced by measuring: every ``DISK_CHECK_INTERVAL`` seconds each running session's
persistent paths are measured in its container, and a session over the limit is stopped with
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
from gateway.services.rounds import every, spread
from gateway.services.termination import Terminator
from wrapper.protocol import CLAUDE_STATE_DIR, WORKSPACE_DIR

log = logging.getLogger(__name__)

MEASURED_PATHS = (WORKSPACE_DIR, CLAUDE_STATE_DIR)
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
        """A round every ``DISK_CHECK_INTERVAL`` seconds while this replica holds the lease,
        each session measured at its own point of the interval."""
        interval = self._settings.disk_check_interval
        await every(interval, is_mine, lambda start: self.round(start, interval, is_mine))

    async def round(self, start: float, interval: float, is_mine: Callable[[], bool]) -> None:
        running = await self._running()
        async for session_id, container_id in spread(running, start, interval, is_mine):
            try:
                await self.check(session_id, container_id)
            except Exception:
                log.exception("disk check of %s failed", session_id)

    async def _running(self) -> list[tuple[uuid.UUID, str]]:
        async with self._db() as db:
            return await queries.running_containers(db, self._settings.instance_name)

    async def check(self, session_id: uuid.UUID, container_id: str) -> None:
        """Measure one session; stop it if it is over the limit."""
        try:
            used = await self._runtime.disk_usage(container_id, MEASURED_PATHS)
        except RuntimeFailure as exc:  # stopped meanwhile, or busy: next round
            log.debug("could not measure the disk use of %s: %s", session_id, exc)
            return
        if used > self._limit:
            reason = (
                f"{DISK_LIMIT_REASON}: the session's files take {used} bytes, "
                f"SESSION_DISK_LIMIT is {self._settings.session_disk_limit} "
                f"({self._limit} bytes)"
            )
            log.warning("stopping session %s: %s", session_id, reason)
            await self._terminator.stop(session_id, reason=reason)
