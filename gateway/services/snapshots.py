"""Periodic saves: every running session's writable workspace is saved once per
``WORKSPACE_SNAPSHOT_INTERVAL``, so a container that dies loses at most about one interval.

Two things keep this cheap with many sessions:
- A round spreads its sessions evenly over the interval (gateway/services/rounds.py).
- Before a save, the container is asked for a digest of its workspace (``tree_digest``: every
  entry's change time, size, mode and name, hashed in the container). If it equals the digest
  read before the last periodic save that succeeded, nothing changed since and the workspace is
  not archived again. A change made while a save reads the workspace moves the digest past the
  one recorded, so the next round saves it. A digest that cannot be taken means a save.

One replica runs this at a time: the one holding the ``snapshots`` lease.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.db import queries
from gateway.db.models import RUNNING_STATUSES, SessionRow
from gateway.events.bus import EventBus
from gateway.metrics import Metrics
from gateway.runtime import RuntimeFailure, SessionRuntime
from gateway.services.rounds import every, spread
from gateway.services.workspaces import MODE_RW, WorkspaceService
from wrapper.protocol import WORKSPACE_DIR, GatewayEvent

log = logging.getLogger(__name__)


class PeriodicSaves:
    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[AsyncSession],
        runtime: SessionRuntime,
        workspaces: WorkspaceService,
        bus: EventBus,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._db = db
        self._runtime = runtime
        self._workspaces = workspaces
        self._bus = bus
        self._metrics = metrics

    async def run(self, is_mine: Callable[[], bool]) -> None:
        """A round every interval, while this replica holds the lease (``is_mine``)."""
        interval = self._settings.workspace_snapshot_interval
        if interval > 0:
            await every(interval, is_mine, lambda start: self.round(start, interval, is_mine))

    async def round(self, start: float, interval: float, is_mine: Callable[[], bool]) -> None:
        """Each running session's turn comes at its own point of the interval from ``start``
        (loop time), in the order of their ids."""
        async for session_id in spread(await self._running(), start, interval, is_mine):
            try:
                await self.save_if_changed(session_id)
            except Exception:  # the database, say: the other sessions' turns still come
                log.exception("periodic save of %s failed", session_id)

    async def _running(self) -> list[uuid.UUID]:
        async with self._db() as db:
            running = await queries.running_containers(
                db, self._settings.instance_name, SessionRow.workspace_mode == MODE_RW
            )
        return [session_id for session_id, _ in running]

    async def save_if_changed(self, session_id: uuid.UUID) -> None:
        """Save the session's workspace unless its digest shows nothing changed since the last
        periodic save (counted by outcome in ``ccd_workspace_periodic_saves_total``); nothing
        when it is no longer running or has nothing to save."""
        async with self._db() as db:
            session = await db.get(SessionRow, session_id)
        # Read again: a round is spread over minutes, and the session may have ended meanwhile.
        if session is None or session.status not in RUNNING_STATUSES or not session.container_id:
            return
        container_id = session.container_id
        digest: str | None
        try:
            digest = await self._runtime.tree_digest(container_id, WORKSPACE_DIR)
        except RuntimeFailure as exc:  # ContainerMissing too: the save says what is lost
            log.info("no workspace digest of %s (%s): saving it", session_id, exc)
            digest = None
        if digest is not None and digest == session.workspace_digest:
            self._metrics.periodic_save("unchanged")
            return
        try:
            stats = await self._workspaces.save(session, "periodic")
        except Exception as exc:  # one bad session must not stop the others' saves
            log.warning("periodic save of %s failed: %s", session_id, exc)
            self._metrics.periodic_save("failed")
            await self._bus.publish(
                str(session_id),
                GatewayEvent.WORKSPACE_SAVE_FAILED,
                reason="periodic",
                error=str(exc)[:500],
            )
            return
        if stats is None:
            return
        self._metrics.periodic_save("saved")
        if digest is not None:
            async with self._db() as db, db.begin():
                await db.execute(
                    update(SessionRow)
                    .where(SessionRow.id == session_id, SessionRow.container_id == container_id)
                    # Not an update of the session as users see it: updated_at stays.
                    .values(workspace_digest=digest, updated_at=SessionRow.updated_at)
                )
