"""Keeps the database true to what the Docker engine runs, and enforces timeouts.

Three duties, each in its own loop owned by the app's lifespan:
- follow container exits as they happen (a session whose container dies is failed at once);
- every ``RECONCILE_INTERVAL`` compare active sessions with managed containers: fail sessions
  whose container is gone or exited, save then remove containers no active session owns,
  finish stops a previous gateway process left half done, make sure this process follows every
  active session's events (from where it last recorded, so nothing that happened while the
  gateway was down is lost), and keep Redis users true to the sessions (re-create those a Redis
  restart lost, delete those of ended sessions);
- stop sessions idle longer than their timeout and fail sessions stuck starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.db import queries
from gateway.db.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    PoolContainerRow,
    SessionRow,
    SessionStatus,
)
from gateway.db.outage import database_unavailable
from gateway.events.access import SessionAccess
from gateway.events.hub import EventHub
from gateway.model.ledger import Ledger
from gateway.runtime import ContainerPhase, ContainerState, SessionRuntime
from gateway.runtime.naming import LABEL_POOL, LABEL_SESSION
from gateway.services.termination import Terminator, describe_exit
from gateway.services.workspaces import WorkspaceService

log = logging.getLogger(__name__)

STOP_MARGIN = 20.0  # seconds beyond a stop's grace periods before another process finishes it


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[AsyncSession],
        runtime: SessionRuntime,
        terminator: Terminator,
        hub: EventHub,
        access: SessionAccess,
        ledger: Ledger,
        workspaces: WorkspaceService | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._runtime = runtime
        self._terminator = terminator
        self._hub = hub
        self._access = access
        self._ledger = ledger
        self._workspaces = workspaces
        self.wake = asyncio.Event()  # set to reconcile at once (say, Redis came back)

    async def watch_exits(self, is_mine: Callable[[], bool]) -> None:
        """Every replica follows the engine's exits; the holder of the exits lease acts on
        them (an exit nobody acted on is found by the next reconciliation anyway)."""
        async for exit_ in self._runtime.exits():
            if not is_mine():
                continue
            session_id = _session_id(exit_.labels.get(LABEL_SESSION))
            if session_id is None and LABEL_POOL in exit_.labels:
                # A pooled container: a session's once claimed (its row says so); an unclaimed
                # one is replaced by the pool's filler.
                session_id = await self._session_of_container(exit_.container_id)
            if session_id is None:
                continue
            try:
                await self._terminator.on_container_exit(session_id, exit_.container_id)
            except Exception:
                log.exception("could not handle the exit of session %s", session_id)

    async def run(self, is_mine: Callable[[], bool]) -> None:
        """Reconcile every ``RECONCILE_INTERVAL`` while this replica holds the lease."""
        while True:
            if is_mine():
                try:
                    await self.reconcile_once()
                except Exception as exc:
                    if database_unavailable(exc):
                        log.warning("reconciliation waits for the database: %s", exc)
                    else:
                        log.exception(
                            "reconciliation failed; retrying in %.0f s",
                            self._settings.reconcile_interval,
                        )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.reconcile_interval):
                    await self.wake.wait()
            self.wake.clear()

    async def reconcile_once(self) -> None:
        # Containers first, rows second: a container always has its row inserted before it
        # starts, so a container listed here cannot be missing from the rows read after.
        listed = await self._runtime.list_managed()
        async with self._db() as db:
            pooled = {
                str(pool_id)
                for pool_id in await db.scalars(
                    select(PoolContainerRow.id).where(
                        PoolContainerRow.instance == self._settings.instance_name
                    )
                )
            }
            claimed = await self._claimed_sessions(db, listed)
        containers: dict[str, ContainerState] = {}
        for listing in listed:
            pool_id = listing.labels.get(LABEL_POOL)
            if pool_id is None:
                containers[listing.labels.get(LABEL_SESSION, "")] = listing
            elif listing.id in claimed:  # claimed from the pool: its session's row names it
                containers[str(claimed[listing.id])] = listing
            elif pool_id not in pooled:  # neither pooled nor claimed: nobody's
                containers[f"pool:{pool_id}"] = listing
        async with self._db() as db:
            rows = (
                await db.scalars(
                    select(SessionRow).where(
                        SessionRow.instance == self._settings.instance_name,
                        SessionRow.status.in_([*ACTIVE_STATUSES, SessionStatus.STOPPING]),
                    )
                )
            ).all()
            unsaved = (
                await db.scalars(
                    select(SessionRow).where(
                        SessionRow.instance == self._settings.instance_name,
                        SessionRow.status.in_(FINAL_STATUSES),
                        SessionRow.workspace_dirty.is_(True),
                    )
                )
            ).all()
        for row in unsaved:  # their containers are kept until their files are saved
            containers.pop(str(row.id), None)
            await self._terminator.retry_unsaved(row)
        now = queries.utcnow()
        start_timeout = timedelta(seconds=self._settings.session_start_timeout)
        for row in rows:
            state = containers.pop(str(row.id), None)
            if state is None and row.container_id:
                # Created after the listing above (the row was read later): ask for it, rather
                # than fail a session whose container is being started right now.
                state = await self._runtime.inspect(row.container_id)
            if row.status == SessionStatus.STOPPING:
                # A stop takes at most its two grace periods: one still "stopping" well after
                # that lost its gateway process (any replica's) and is finished here.
                stale = now - row.updated_at > timedelta(
                    seconds=self._settings.session_stop_grace
                    + self._settings.session_interrupt_grace
                    + STOP_MARGIN
                )
                if stale:
                    await self._terminator.complete_interrupted_stop(row)
                continue
            if row.status == SessionStatus.STARTING and row.container_id is None:
                # Queued for a start slot, or admitted and being created right now. Admitted
                # long ago with no container: the replica that took it died; another may.
                if row.admitted_at is not None and now - row.admitted_at > start_timeout:
                    async with self._db() as db, db.begin():
                        if await queries.requeue_start(db, row.id):
                            log.warning("session %s: its start was lost; queued again", row.id)
                continue
            started = row.admitted_at or row.started_at  # the start timeout counts from it
            preparing = state is not None and state.phase == ContainerPhase.CREATED
            if preparing and now - started < start_timeout:
                continue  # its container is being filled and started right now
            if state is None or not state.running:
                await self._terminator.fail(
                    row.id,
                    describe_exit(state, self._settings),
                    exit_code=state.exit_code if state else None,
                )
                continue
            await self._hub.track(str(row.id), after=row.event_cursor or "0-0")
            if row.status == SessionStatus.STARTING and now - started > start_timeout:
                await self._terminator.fail(
                    row.id,
                    f"start timeout: the CLI was not ready after "
                    f"{self._settings.session_start_timeout:.0f} s",
                )
            elif row.status == SessionStatus.READY and now - row.last_activity_at > timedelta(
                seconds=self._idle_timeout(row)
            ):
                log.info("stopping idle session %s", row.id)
                await self._terminator.stop(row.id, reason="idle timeout")
        for session_key, state in containers.items():
            await self._remove_orphan(session_key, state)
        await self._sync_redis_users(rows)
        # A model call outlives no upstream timeout: one still reserved after it lost its
        # gateway; its reservation goes back to its tree's budget.
        abandoned = await self._ledger.abandon_stale(
            timedelta(seconds=self._settings.model_upstream_timeout + 60)
        )
        if abandoned:
            log.warning("released the reservations of %d model calls left in flight", abandoned)

    async def _claimed_sessions(
        self, db: AsyncSession, listed: Sequence[ContainerState]
    ) -> dict[str, uuid.UUID]:
        """Container id -> session, for the listed pooled containers a session claimed."""
        ids = [state.id for state in listed if LABEL_POOL in state.labels]
        if not ids:
            return {}
        rows = await db.execute(
            select(SessionRow.container_id, SessionRow.id).where(SessionRow.container_id.in_(ids))
        )
        return {str(container_id): session_id for container_id, session_id in rows.all()}

    async def _session_of_container(self, container_id: str) -> uuid.UUID | None:
        async with self._db() as db:
            return await db.scalar(
                select(SessionRow.id).where(SessionRow.container_id == container_id).limit(1)
            )

    async def _remove_orphan(self, session_key: str, state: ContainerState) -> None:
        """A container no active session owns (its stop or failure was cut short): save what
        it holds for its session, if the session still exists, before removing it."""
        session_id = _session_id(session_key)
        row = None
        if session_id is not None:
            async with self._db() as db:
                row = await db.get(SessionRow, session_id)
        if row is not None and row.container_id == state.id and self._workspaces is not None:
            if state.running:  # its files must hold still while they are saved
                await self._runtime.stop(state.id, self._settings.session_stop_grace)
            try:
                await self._workspaces.save(row, "orphan")
            except Exception as exc:  # kept: the next pass tries again
                log.warning("could not save orphaned container %s: %s", state.name, exc)
                return
        log.info("removing container %s of ended or unknown session %r", state.name, session_key)
        await self._runtime.remove(state.id)

    async def _sync_redis_users(self, active: Sequence[SessionRow]) -> None:
        """Every running session has its Redis user (a Redis restart loses them all) and no
        ended one keeps its own."""
        try:
            users = await self._access.sessions_with_users()
            running = {row.id: row for row in active if row.status in ACTIVE_STATUSES}
            for session_id, row in running.items():
                if session_id not in users:
                    log.info("re-creating the Redis user of session %s", session_id)
                    await self._access.grant(session_id, row.started_at)
            stale = users - set(running)
            if stale:
                async with self._db() as db:
                    still = set(
                        (
                            await db.scalars(
                                select(SessionRow.id).where(
                                    SessionRow.id.in_(stale),
                                    # a stopping session's wrapper still reports its end
                                    SessionRow.status.in_(
                                        [*ACTIVE_STATUSES, SessionStatus.STOPPING]
                                    ),
                                )
                            )
                        ).all()
                    )
                for session_id in stale - still:  # another instance's sessions are spared
                    await self._access.revoke(session_id)
        except RedisError as exc:
            log.warning("could not reconcile Redis users: %s", exc)

    def _idle_timeout(self, row: SessionRow) -> float:
        configured = row.config.get("timeout")
        return float(configured or self._settings.container_timeout_default)


def _session_id(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
