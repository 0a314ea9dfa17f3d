"""Session lifecycle policy: the status machine, start timeout, stop, failure and cleanup.

The runtime only starts and stops containers; everything about what that means for a session
lives here, once:

    starting -> ready <-> busy -> stopping -> stopped
        \\________\\_______\\______________-> failed (with a reason)

Every status change is a conditional database update, then a ``status`` event on the session's
stream, so clients see the same history the database records.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.db import queries
from gateway.db.models import (
    ACTIVE_STATUSES,
    SessionRow,
    SessionStatus,
    TurnRow,
    TurnStatus,
)
from gateway.errors import (
    ImageNotFound,
    InvalidRequest,
    RuntimeUnavailable,
    SessionNotFound,
    SessionNotRunning,
    Unauthorized,
)
from gateway.events.bus import EventBus
from gateway.events.hub import EventHub
from gateway.runtime import ContainerState, ImageMissing, RuntimeFailure, SessionRuntime
from gateway.security import mint_session_token
from gateway.services import limits
from gateway.services.container_spec import build_container_spec
from gateway.services.turns import TurnService
from wrapper.protocol import GatewayEvent, InterruptInput, SessionConfig

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 30


class SessionService:
    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[AsyncSession],
        runtime: SessionRuntime,
        bus: EventBus,
        hub: EventHub,
        turns: TurnService,
    ) -> None:
        self._settings = settings
        self._db = db
        self._runtime = runtime
        self._bus = bus
        self._hub = hub
        self._turns = turns
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping: set[uuid.UUID] = set()  # stops this process is carrying out

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- reading -------------------------------------------------------------------------------

    async def get(self, session_id: uuid.UUID, owner: str | None = None) -> SessionRow:
        """The session, if it exists and (when given) belongs to ``owner``; else 404."""
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
        if row is None or (owner is not None and row.owner != owner):
            raise SessionNotFound(session_id)
        return row

    async def require_running(self, session_id: uuid.UUID) -> None:
        """A session token is good only while its session runs (it dies with the session)."""
        async with self._db() as db:
            status = await db.scalar(select(SessionRow.status).where(SessionRow.id == session_id))
        if status not in ACTIVE_STATUSES:
            raise Unauthorized(
                f"session {session_id} is {status or 'gone'}: its token is no longer valid",
                code="token_revoked",
            )

    async def list(
        self, owner: str, limit: int, cursor: str | None, status: SessionStatus | None
    ) -> tuple[Sequence[SessionRow], str | None]:
        """Newest first; ``cursor`` is the opaque ``next_cursor`` of the previous page."""
        statement = select(SessionRow).where(SessionRow.owner == owner)
        if status is not None:
            statement = statement.where(SessionRow.status == status)
        if cursor:
            created_at, last_id = _decode_cursor(cursor)
            statement = statement.where(
                tuple_(SessionRow.created_at, SessionRow.id) < tuple_(created_at, last_id)
            )
        statement = statement.order_by(SessionRow.created_at.desc(), SessionRow.id.desc())
        async with self._db() as db:
            rows = list((await db.scalars(statement.limit(limit + 1))).all())
        next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return rows[:limit], next_cursor

    async def turns(self, session_id: uuid.UUID) -> Sequence[TurnRow]:
        async with self._db() as db:
            statement = select(TurnRow).where(TurnRow.session_id == session_id)
            return (await db.scalars(statement.order_by(TurnRow.seq))).all()

    # -- creating ------------------------------------------------------------------------------

    async def create(
        self, owner: str, config: SessionConfig, prompt: str | None = None
    ) -> SessionRow:
        """Insert a root session, queue its first prompt if any, start its container. The
        session is ``starting`` until its CLI answers the handshake; prompts sent meanwhile are
        queued, not refused. Raises ``LimitExceeded`` (nothing is created), or
        ``ImageNotFound``/``RuntimeUnavailable`` (the session is then recorded as failed)."""
        row = await self._insert(owner, config.model_dump(exclude_none=True), parent_id=None)
        return await self._launch(row, prompt)

    async def spawn(
        self, parent_id: uuid.UUID, prompt: str, overrides: SessionConfig
    ) -> SessionRow:
        """Start a child of ``parent_id``: same owner, the parent's config with ``overrides``
        applied, one level deeper. The recursion limits are checked atomically with the
        insert; the parent's stream gets ``child_spawned``."""
        parent = await self.get(parent_id)
        config = {**parent.config, **overrides.model_dump(exclude_none=True)}
        row = await self._insert(parent.owner, config, parent_id=parent_id)
        await self._bus.publish(
            str(parent_id),
            GatewayEvent.CHILD_SPAWNED,
            child_id=str(row.id),
            depth=row.depth,
            prompt=prompt,
        )
        return await self._launch(row, prompt)

    async def _insert(
        self, owner: str, config: dict[str, Any], parent_id: uuid.UUID | None
    ) -> SessionRow:
        session_id = uuid.uuid4()
        async with self._db() as db, db.begin():
            await limits.lock_owner(db, owner)
            parent = None
            if parent_id is not None:
                parent = await db.get(SessionRow, parent_id, with_for_update=True)
                if parent is None:
                    raise SessionNotFound(parent_id)
                if parent.status not in ACTIVE_STATUSES:
                    raise SessionNotRunning(
                        f"session {parent_id} is {parent.status}; only a running session can spawn"
                    )
            await limits.check_limits(db, self._settings, owner, parent)
            row = SessionRow(
                id=session_id,
                owner=owner,
                instance=self._settings.instance_name,
                status=SessionStatus.STARTING,
                image=self._settings.session_image,
                config=config,
                claude_session_id=uuid.uuid4(),
                parent_id=parent_id,
                root_id=parent.root_id if parent else session_id,
                depth=parent.depth + 1 if parent else 0,
                path=[*parent.path, parent.id] if parent else [],
            )
            db.add(row)
        await self._hub.track(str(session_id), after="0-0")
        await self._bus.publish(str(session_id), GatewayEvent.STATUS, status=SessionStatus.STARTING)
        return row

    async def _launch(self, row: SessionRow, prompt: str | None) -> SessionRow:
        if prompt is not None:
            await self._turns.begin(row.id, prompt)
        return await self._start_container(row)

    async def _start_container(self, row: SessionRow) -> SessionRow:
        """Start the session's container. On failure the session is failed and the error says
        why: 503 ``image_not_found`` or 503 ``runtime_unavailable``."""
        token = mint_session_token(self._settings, row.id, row.root_id, row.owner)
        spec = build_container_spec(self._settings, row, token.token)
        try:
            state = await self._runtime.start(spec)
        except ImageMissing as exc:
            reason = f"session image {row.image!r} is not present on the Docker engine"
            await self.fail(row.id, reason)
            raise ImageNotFound(
                f"{reason}; build it with scripts/build-container.sh", session_id=str(row.id)
            ) from exc
        except RuntimeFailure as exc:
            reason = f"the container runtime refused to start the session: {exc}"
            await self.fail(row.id, reason)
            raise RuntimeUnavailable(reason, session_id=str(row.id)) from exc
        async with self._db() as db, db.begin():
            updated = await queries.set_container(db, row.id, state.id)
        if updated is None:  # stopped or failed while starting: do not leak the container
            await self._runtime.remove(state.id)
            return await self.get(row.id)
        self._spawn(self._watch_start(row.id), name=f"start-watch-{row.id}")
        return updated

    async def _watch_start(self, session_id: uuid.UUID) -> None:
        await asyncio.sleep(self._settings.session_start_timeout)
        row = await self.get(session_id)
        if row.status == SessionStatus.STARTING:
            await self.fail(
                session_id,
                f"start timeout: the CLI was not ready after "
                f"{self._settings.session_start_timeout:.0f} s",
            )

    # -- readiness (from the recorder) ---------------------------------------------------------

    async def mark_ready(self, session_id: uuid.UUID, cursor: str) -> None:
        """The CLI answered its handshake. Idempotent: only a ``starting`` session changes."""
        async with self._db() as db, db.begin():
            row = await db.get(SessionRow, session_id, with_for_update=True)
            if row is None or row.status != SessionStatus.STARTING:
                return
            row.status = SessionStatus.BUSY if row.current_turn_id else SessionStatus.READY
            row.event_cursor = cursor
            status = row.status
        await self._bus.publish(str(session_id), GatewayEvent.STATUS, status=status)

    # -- stopping and failing ------------------------------------------------------------------

    async def stop(self, session_id: uuid.UUID, reason: str = "stopped by request") -> SessionRow:
        """Stop the session and its whole subtree, deepest first: interrupt the running turn,
        SIGTERM the container, SIGKILL after the grace period, remove it. Idempotent: stopping
        an ended session returns it unchanged (its running descendants are still stopped)."""
        await self._stop_subtree(session_id, reason, include_root=True)
        return await self._await_final(session_id)

    async def _stop_subtree(self, session_id: uuid.UUID, reason: str, include_root: bool) -> None:
        # One update marks the whole subtree stopping first, so nothing in it can spawn while
        # the containers are stopped level by level.
        async with self._db() as db, db.begin():
            rows = await queries.begin_stopping_subtree(db, session_id, include_root)
        self._stopping.update(row.id for row in rows)
        try:
            for level in _deepest_first(rows):
                await asyncio.gather(
                    *(
                        self._stop_row(
                            row,
                            reason
                            if row.id == session_id
                            else f"ancestor {session_id} stopped: {reason}",
                        )
                        for row in level
                    )
                )
        finally:
            self._stopping.difference_update(row.id for row in rows)

    async def _stop_row(self, row: SessionRow, reason: str) -> None:
        """Stop one session already marked ``stopping``."""
        session_id = row.id
        await self._bus.publish(
            str(session_id), GatewayEvent.STATUS, status=SessionStatus.STOPPING, reason=reason
        )
        if row.current_turn_id is not None:
            await self._interrupt_and_wait(row)
        exit_code = None
        if row.container_id:
            await self._runtime.stop(row.container_id, self._settings.session_stop_grace)
            state = await self._runtime.inspect(row.container_id)
            exit_code = state.exit_code if state else None
            await self._runtime.remove(row.container_id)
        stopped = await self._finish_stop(session_id, reason, exit_code)
        if stopped.parent_id is not None and stopped.status == SessionStatus.STOPPED:
            await self._bus.publish(
                str(stopped.parent_id),
                GatewayEvent.CHILD_STOPPED,
                child_id=str(session_id),
                reason=reason,
            )

    async def complete_interrupted_stop(self, row: SessionRow) -> SessionRow:
        """Finish a stop that a previous gateway process began but did not end."""
        self._stopping.add(row.id)
        try:
            if row.container_id:
                await self._runtime.remove(row.container_id)
            return await self._finish_stop(row.id, "stopped (completed after a gateway restart)")
        finally:
            self._stopping.discard(row.id)

    async def _finish_stop(
        self, session_id: uuid.UUID, reason: str, exit_code: int | None = None
    ) -> SessionRow:
        async with self._db() as db, db.begin():
            await queries.end_running_turns(db, session_id, TurnStatus.INTERRUPTED, reason)
            stopped = await queries.transition(
                db,
                session_id,
                [SessionStatus.STOPPING],
                SessionStatus.STOPPED,
                stopped_at=queries.utcnow(),
                exit_code=exit_code,
                current_turn_id=None,
            )
        if stopped is None:
            return await self.get(session_id)
        await self._bus.publish(
            str(session_id), GatewayEvent.STATUS, status=SessionStatus.STOPPED, reason=reason
        )
        return stopped

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
            await queries.end_running_turns(db, session_id, TurnStatus.FAILED, reason)
        # Its descendants cannot report to it any more: stop them.
        self._spawn(
            self._stop_subtree(session_id, f"parent failed: {reason}", include_root=False),
            name=f"stop-descendants-{session_id}",
        )
        logs = ""
        if row.container_id:
            logs = await self._safe_logs(row.container_id)
            with contextlib.suppress(RuntimeFailure):
                await self._runtime.remove(row.container_id)
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

    async def _safe_logs(self, container_id: str) -> str:
        try:
            return await self._runtime.logs_tail(container_id, _LOG_TAIL_LINES)
        except RuntimeFailure:
            return ""

    async def on_container_exit(self, session_id: uuid.UUID, container_id: str) -> None:
        """A container stopped. Expected during a stop; otherwise the session failed."""
        if session_id in self._stopping:
            return
        state = await self._runtime.inspect(container_id)
        code = state.exit_code if state is not None else None
        await self.fail(session_id, describe_exit(state, self._settings), exit_code=code)

    async def delete(self, session_id: uuid.UUID) -> None:
        """Stop the session and its subtree if needed, then remove their rows and streams."""
        await self._stop_subtree(session_id, "deleted", include_root=True)
        await self._await_final(session_id)
        async with self._db() as db, db.begin():
            deleted = await queries.delete_subtree(db, session_id)
        for gone in deleted:
            self._hub.close_session(str(gone))
            await self._bus.delete(str(gone))

    def is_stopping_here(self, session_id: uuid.UUID) -> bool:
        return session_id in self._stopping


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


def _encode_cursor(row: SessionRow) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, _, session_id = raw.partition("|")
        return datetime.fromisoformat(created_at), uuid.UUID(session_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest(
            "cursor is not a cursor this API returned", code="invalid_cursor"
        ) from None
