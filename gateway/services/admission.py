"""Start admission: at most ``SESSION_START_CONCURRENCY`` session starts in flight per engine,
shared by every replica.

A burst of creates must not collapse: an engine starts containers (and their CLIs boot) at a
rate it sustains, and everything beyond only makes every start slower until all of them miss
their start timeout. So a new session is admitted to start only while fewer than the setting's
number of sessions of its engine (``INSTANCE_NAME``) are admitted and not yet ready; the rest
wait in ``starting`` (queued: no container yet), and every replica's starter claims the oldest
queued session when a slot frees (told by a notification, whichever replica freed it). The
start timeout counts from admission. The count and the claim happen under one transaction-level
advisory lock per engine, so replicas never admit more than the limit together, and a queued
session is claimed by exactly one of them.
"""

from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.models import SessionRow, SessionStatus

# Sent (by a trigger, migration 0008) with the instance's name when one of its sessions starts
# waiting for a slot or an admitted start ends: every replica's starter looks then.
START_SLOTS_CHANNEL = "ccd_start_slots"


class StartAdmission:
    def __init__(
        self, db: async_sessionmaker[AsyncSession], instance: str, concurrency: int
    ) -> None:
        self._db = db
        self._instance = instance
        self._concurrency = concurrency

    async def slot_free(self, db: AsyncSession) -> bool:
        """Whether a start may be admitted now, in the caller's transaction (which then sets
        the session's ``admitted_at``): the engine's start lock is held until it commits."""
        return await self._slot_free(db)

    async def claim_next(self) -> uuid.UUID | None:
        """Admit the oldest queued session of this engine, if a slot is free; its start is
        then this replica's to do."""
        async with self._db() as db, db.begin():
            if not await self._slot_free(db):
                return None
            oldest = await db.scalar(
                select(SessionRow.id)
                .where(*self._queued())
                .order_by(SessionRow.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if oldest is None:
                return None
            await db.execute(
                update(SessionRow).where(SessionRow.id == oldest).values(admitted_at=func.now())
            )
            return oldest

    def _queued(self) -> tuple[ColumnElement[bool], ...]:
        return (
            SessionRow.instance == self._instance,
            SessionRow.status == SessionStatus.STARTING,
            SessionRow.admitted_at.is_(None),
            SessionRow.container_id.is_(None),
        )

    async def _slot_free(self, db: AsyncSession) -> bool:
        await db.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(f"starts:{self._instance}", 0)))
        )
        starting = await db.scalar(
            select(func.count())
            .select_from(SessionRow)
            .where(
                SessionRow.instance == self._instance,
                SessionRow.status == SessionStatus.STARTING,
                SessionRow.admitted_at.is_not(None),
            )
        )
        return int(starting or 0) < self._concurrency
