"""Ending sessions: stop (whole subtrees, deepest first), fail, delete, and container exits.

Policy that ends a session lives here once. Every end is a conditional status update (so racing
actors cannot both win) followed by a ``status`` event, and leaves no container behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence

from redis.exceptions import RedisError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.db import queries
from gateway.db.models import ACTIVE_STATUSES, SessionRow, SessionStatus, TurnStatus
from gateway.errors import SessionNotFound
from gateway.events.access import SessionAccess
from gateway.events.bus import EventBus
from gateway.events.hub import EventHub
from gateway.metrics import Metrics
from gateway.runtime import ContainerMissing, ContainerState, RuntimeFailure, SessionRuntime
from gateway.services.background import TaskSet
from gateway.services.workspaces import WorkspaceService
from gateway.workspaces.manifest import WorkspaceTooLarge
from wrapper.protocol import GatewayEvent, InterruptInput

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 30


class Terminator:
    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[AsyncSession],
        runtime: SessionRuntime,
        bus: EventBus,
        hub: EventHub,
        access: SessionAccess,
        workspaces: WorkspaceService | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._workspaces = workspaces
        self._access = access
        self._settings = settings
        self._db = db
        self._runtime = runtime
        self._bus = bus
        self._hub = hub
        self._background = TaskSet()

    async def close(self) -> None:
        await self._background.close()

    async def get(self, session_id: uuid.UUID) -> SessionRow:
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
        if row is None:
            raise SessionNotFound(session_id)
        return row

    async def stop(self, session_id: uuid.UUID, reason: str = "stopped by request") -> SessionRow:
        """Stop the session and its whole subtree, deepest first: interrupt the running turn,
        SIGTERM the container, SIGKILL after the grace period, remove it. Idempotent: stopping
        an ended session returns it unchanged (its running descendants are still stopped)."""
        await self._stop_subtree(session_id, reason, include_root=True)
        return await self._await_final(session_id)

    async def _stop_subtree(
        self,
        session_id: uuid.UUID,
        reason: str,
        include_root: bool,
        deleting: bool = False,
    ) -> None:
        """``deleting``: the subtree is stopped to be deleted, so workspaces that go with it
        are not saved first (a save whose result is deleted a moment later)."""
        # One update marks the whole subtree stopping first, so nothing in it can spawn while
        # the containers are stopped level by level.
        async with self._db() as db, db.begin():
            rows = await queries.begin_stopping_subtree(db, session_id, include_root)
        failures: list[BaseException] = []
        # A stop in progress is the rows' status (stopping), which every replica sees.
        for level in _deepest_first(rows):
            outcomes = await asyncio.gather(
                *(
                    self._stop_row(
                        row,
                        reason
                        if row.id == session_id
                        else f"ancestor {session_id} stopped: {reason}",
                        deleted_with=session_id if deleting else None,
                    )
                    for row in level
                ),
                return_exceptions=True,
            )
            # One session that cannot be stopped now (the engine is down) must not keep
            # the others running; it stays "stopping" and the reconciler finishes it.
            for row, outcome in zip(level, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.warning("could not stop session %s: %s", row.id, outcome)
                    failures.append(outcome)
        if failures:
            raise failures[0]

    async def _stop_row(
        self, row: SessionRow, reason: str, deleted_with: uuid.UUID | None = None
    ) -> None:
        """Stop one session already marked ``stopping`` (as part of deleting the subtree of
        ``deleted_with``, if given)."""
        session_id = row.id
        await self._bus.publish(
            str(session_id), GatewayEvent.STATUS, status=SessionStatus.STOPPING, reason=reason
        )
        if row.current_turn_id is not None:
            await self._interrupt_and_wait(row)
        exit_code = None
        kept = False
        if row.container_id:
            await self._runtime.stop(row.container_id, self._settings.session_stop_grace)
            state = await self._runtime.inspect(row.container_id)
            exit_code = state.exit_code if state else None
            kept = not await self._save_then_remove(row, "stop", deleted_with)
        stopped = await self._finish_stop(session_id, reason, exit_code, unsaved=kept)
        if stopped.parent_id is not None and stopped.status == SessionStatus.STOPPED:
            await self._bus.publish(
                str(stopped.parent_id),
                GatewayEvent.CHILD_STOPPED,
                child_id=str(session_id),
                reason=reason,
            )

    async def complete_interrupted_stop(self, row: SessionRow) -> SessionRow:
        """Finish a stop that a gateway process (this or another replica) began but did not
        end in time: it died, or lost the engine."""
        if row.container_id:  # it may still run: stop it so that its files hold still
            await self._runtime.stop(row.container_id, self._settings.session_stop_grace)
        kept = bool(row.container_id) and not await self._save_then_remove(row, "stop")
        reason = "stopped (completed by the reconciler)"
        return await self._finish_stop(row.id, reason, unsaved=kept)

    async def _finish_stop(
        self,
        session_id: uuid.UUID,
        reason: str,
        exit_code: int | None = None,
        unsaved: bool = False,
    ) -> SessionRow:
        async with self._db() as db, db.begin():
            closed = await queries.end_running_turns(db, session_id, TurnStatus.INTERRUPTED, reason)
            stopped = await queries.transition(
                db,
                session_id,
                [SessionStatus.STOPPING],
                SessionStatus.STOPPED,
                stopped_at=queries.utcnow(),
                exit_code=exit_code,
                current_turn_id=None,
                workspace_dirty=unsaved,
            )
        self._metrics.turns_closed(TurnStatus.INTERRUPTED, closed)
        if stopped is None:
            return await self.get(session_id)
        await self.revoke_access(session_id)
        await self._bus.publish(
            str(session_id), GatewayEvent.STATUS, status=SessionStatus.STOPPED, reason=reason
        )
        return stopped

    async def revoke_access(self, session_id: uuid.UUID) -> None:
        """An ended session's Redis user goes, and with it its connections. The reconciler
        removes any that a Redis outage left behind."""
        try:
            await self._access.revoke(session_id)
        except RedisError as exc:
            log.warning("could not remove the Redis user of %s (later): %s", session_id, exc)

    async def _interrupt_and_wait(self, row: SessionRow) -> None:
        """Give a running turn the chance to end cleanly before the container is stopped."""
        turn_id = row.current_turn_id
        assert turn_id is not None
        after = await self._bus.last_id(str(row.id))
        await self._bus.send_input(str(row.id), InterruptInput(turn_id=str(turn_id)))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.session_interrupt_grace):
                async with contextlib.aclosing(self._hub.follow(str(row.id), after)) as events:
                    async for event in events:
                        if event.turn_id == str(turn_id) and event.type in (
                            "result",
                            GatewayEvent.TURN_FAILED,
                        ):
                            return

    async def _await_final(self, session_id: uuid.UUID) -> SessionRow:
        """A stop that lost the race: wait (bounded) for the winner to finish its stop."""
        deadline = self._settings.session_stop_grace + self._settings.session_interrupt_grace + 10
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while True:
            row = await self.get(session_id)
            if row.status != SessionStatus.STOPPING or loop.time() > end:
                return row
            await asyncio.sleep(0.1)

    async def fail(
        self, session_id: uuid.UUID, reason: str, exit_code: int | None = None
    ) -> SessionRow | None:
        """Mark an active session failed, end its turns, remove its container. Idempotent:
        ``None`` when the session had already ended (or is being stopped)."""
        async with self._db() as db, db.begin():
            row = await queries.transition(
                db,
                session_id,
                ACTIVE_STATUSES,
                SessionStatus.FAILED,
                failure_reason=reason,
                exit_code=exit_code,
                stopped_at=queries.utcnow(),
                current_turn_id=None,
            )
            if row is None:
                return None
            closed = await queries.end_running_turns(db, session_id, TurnStatus.FAILED, reason)
        self._metrics.turns_closed(TurnStatus.FAILED, closed)
        await self.revoke_access(session_id)
        # Its descendants cannot report to it any more: stop them.
        self._background.spawn(
            self._stop_subtree(session_id, f"parent failed: {reason}", include_root=False),
            name=f"stop-descendants-{session_id}",
        )
        logs = ""
        if row.container_id:
            logs = await self._safe_logs(row.container_id)
            # A dead container's files can still be read: save them before removing it.
            if not await self._save_then_remove(row, "failure"):
                await self._mark_unsaved(session_id)
        log.warning("session %s failed: %s", session_id, reason)
        await self._bus.publish(
            str(session_id),
            GatewayEvent.STATUS,
            status=SessionStatus.FAILED,
            reason=reason,
            exit_code=exit_code,
            logs=logs,
        )
        if row.parent_id is not None:
            await self._bus.publish(
                str(row.parent_id),
                GatewayEvent.CHILD_FAILED,
                child_id=str(session_id),
                reason=reason,
            )
        return row

    async def _save_then_remove(
        self, row: SessionRow, reason: str, deleted_with: uuid.UUID | None = None
    ) -> bool:
        """Save what the (stopped or dead) container holds, then remove it. ``False`` when a
        save that may succeed later failed: the container is then kept for a retry, so no
        work is lost to a storage outage. A container whose restore never finished is not
        saved: its files are not the session's, and the stored workspace stays as it was.
        Neither is one whose workspace is deleted with the subtree of ``deleted_with``."""
        assert row.container_id is not None
        workspaces = self._workspaces
        if workspaces is not None and await self._worth_saving(workspaces, row, deleted_with):
            try:
                await workspaces.save(row, reason)
            except WorkspaceTooLarge as exc:  # retrying cannot help; the last save stays
                await self._report_unsaved(row, reason, exc, kept=False)
            except ContainerMissing as exc:  # its files are gone: say so, nothing to retry
                await self._report_unsaved(row, reason, exc, kept=False)
                return True
            except Exception as exc:
                await self._report_unsaved(row, reason, exc, kept=True)
                return False
            try:
                await workspaces.transcripts.save(row)
            except Exception as exc:  # costs only the ability to resume
                log.warning("could not save the transcript of %s: %s", row.id, exc)
        with contextlib.suppress(RuntimeFailure):
            await self._runtime.remove(row.container_id)
        return True

    @staticmethod
    async def _worth_saving(
        workspaces: WorkspaceService, row: SessionRow, deleted_with: uuid.UUID | None
    ) -> bool:
        if not row.workspace_restored:
            return False
        return deleted_with is None or not await workspaces.deleted_with(row, deleted_with)

    async def _report_unsaved(
        self, row: SessionRow, reason: str, exc: Exception, kept: bool
    ) -> None:
        log.warning("workspace of %s not saved at %s: %s", row.id, reason, exc)
        await self._bus.publish(
            str(row.id),
            GatewayEvent.WORKSPACE_SAVE_FAILED,
            reason=reason,
            error=f"{type(exc).__name__}: {exc}"[:500],
            kept_container=kept,
        )

    async def _mark_unsaved(self, session_id: uuid.UUID) -> None:
        async with self._db() as db, db.begin():
            await db.execute(
                update(SessionRow).where(SessionRow.id == session_id).values(workspace_dirty=True)
            )

    async def retry_unsaved(self, row: SessionRow) -> bool:
        """Save the workspace of an ended session whose save failed, from its kept container,
        then remove the container. ``True`` when nothing is left to save."""
        if not row.workspace_dirty:
            return True
        if row.container_id and not await self._save_then_remove(row, "retry"):
            return False
        async with self._db() as db, db.begin():
            await db.execute(
                update(SessionRow)
                .where(SessionRow.id == row.id)
                .values(workspace_dirty=False, container_id=None)
            )
        return True

    async def _safe_logs(self, container_id: str) -> str:
        try:
            return await self._runtime.logs_tail(container_id, _LOG_TAIL_LINES)
        except RuntimeFailure:
            return ""

    def stream_damaged(self, session_id: str, reason: str) -> None:
        """The relay found the session's output stream broken by its writer (a hub damage
        handler): fail the session in the background, on a usable stream."""
        self._background.spawn(
            self._fail_damaged(uuid.UUID(session_id), reason), name=f"damaged-{session_id}"
        )

    async def _fail_damaged(self, session_id: uuid.UUID, reason: str) -> None:
        await self.revoke_access(session_id)  # its writer is cut off first
        await self._bus.reset_broken(str(session_id))
        await self._bus.trim(str(session_id))  # then its stream goes back within bounds
        failed = await self.fail(session_id, f"relay: {reason}")
        if failed is not None:
            # Readers waiting on this session get its final status from the fresh stream.
            await self._hub.track(str(session_id), after="0-0")

    async def on_container_exit(self, session_id: uuid.UUID, container_id: str) -> None:
        """A container stopped. Expected during a stop (the session is ``stopping``: ``fail``
        changes only a running session); otherwise the session failed."""
        state = await self._runtime.inspect(container_id)
        code = state.exit_code if state is not None else None
        await self.fail(session_id, describe_exit(state, self._settings), exit_code=code)

    async def delete(self, session_id: uuid.UUID) -> None:
        """Stop the session and its subtree if needed, then remove their rows and streams."""
        await self._stop_subtree(session_id, "deleted", include_root=True, deleting=True)
        await self._await_final(session_id)
        async with self._db() as db, db.begin():
            deleted = await queries.delete_subtree(db, session_id)
        for gone in deleted:
            await self.revoke_access(gone.id)
            if gone.container_id:  # kept after a failed save: deleting gives it up
                with contextlib.suppress(RuntimeFailure):
                    await self._runtime.remove(gone.container_id)
            self._hub.close_session(str(gone.id))
            await self._bus.delete(str(gone.id))
            if self._workspaces is not None:
                await self._workspaces.forget_session(gone.id, gone.owner)


def _deepest_first(rows: Sequence[SessionRow]) -> list[list[SessionRow]]:
    levels: dict[int, list[SessionRow]] = {}
    for row in rows:
        levels.setdefault(row.depth, []).append(row)
    return [levels[depth] for depth in sorted(levels, reverse=True)]


def describe_exit(state: ContainerState | None, settings: Settings) -> str:
    """Why a session's container is no longer running, in words for its failure reason."""
    if state is None:
        return "container disappeared"
    if state.oom_killed:
        return f"container ran out of memory (limit {settings.session_memory})"
    if state.exit_code == 137:
        return "container exited with code 137 (killed)"
    if state.error:
        return f"container exited with code {state.exit_code}: {state.error}"
    return f"container exited with code {state.exit_code}"
