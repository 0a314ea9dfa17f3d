"""Chat turns: accept a prompt (one turn at a time), wait for or stream its events, record it.

A turn starts when the gateway accepts a prompt (the session row gets ``current_turn_id`` in
the same transaction that checks it is free) and ends with the CLI's ``result`` line, a
``turn_failed`` event from the wrapper, or the session ending. Recording an end is idempotent:
the recorder and a waiting chat request may both see the result; the first one writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db import queries
from gateway.db.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    SessionRow,
    SessionStatus,
    TurnRow,
    TurnStatus,
)
from gateway.error_codes import ErrorCode
from gateway.errors import (
    NoRunningTurn,
    SessionBusy,
    SessionNotFound,
    SessionNotRunning,
    TurnFailed,
    TurnTimeout,
    Unavailable,
    WaitTimeout,
)
from gateway.events.bus import Event, EventBus, stream_id_before
from gateway.events.hub import EventHub, Lagged, StreamClosed, Subscription
from gateway.metrics import Metrics
from gateway.services import trees
from wrapper.protocol import GatewayEvent, InterruptInput, PromptInput, Source

log = logging.getLogger(__name__)

_ACCEPTS_PROMPTS = (SessionStatus.STARTING, SessionStatus.READY, SessionStatus.BUSY)
_ABORTED = ("aborted_streaming", "aborted_tools")
# How far back in a session's stream a refused prompt looks for the running turn's end. A
# turn's end is followed only by the few events that recording it publishes.
_END_LOOKBACK = 50


def turn_status_of(result: dict[str, Any]) -> TurnStatus:
    if not result.get("is_error"):
        return TurnStatus.COMPLETED
    if result.get("terminal_reason") in _ABORTED:
        return TurnStatus.INTERRUPTED
    return TurnStatus.FAILED


def is_turn_end(event: Event, turn_id: str) -> bool:
    """Whether ``event`` is turn ``turn_id``'s own end: the CLI's result or a ``turn_failed``."""
    return event.turn_id == turn_id and (
        (event.source == Source.CLAUDE and event.type == "result")
        or event.type == GatewayEvent.TURN_FAILED
    )


def ends_turn(event: Event, turn_id: str) -> bool:
    """Whether ``event`` is the last event of turn ``turn_id`` (or of its session)."""
    if is_turn_end(event, turn_id):
        return True
    return event.type == GatewayEvent.STATUS and event.payload.get("status") in FINAL_STATUSES


class TurnService:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        bus: EventBus,
        hub: EventHub,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._db = db
        self._bus = bus
        self._hub = hub

    async def begin(self, session_id: uuid.UUID, prompt: str) -> tuple[TurnRow, str]:
        """Accept a prompt; returns the turn and the cursor of its ``turn_started`` event.
        Raises ``SessionBusy`` while another turn runs, ``SessionNotRunning`` once ended."""
        try:
            turn, went_busy = await self._claim(session_id, prompt)
        except _TurnRunning as running:
            # A client that saw the result on the stream may chat before any recorder (of this
            # replica or another) has written it: the stream, not the row, is then the truth.
            if not await self._record_end_from_stream(session_id, running.turn_id):
                raise running.busy(session_id) from None
            try:
                turn, went_busy = await self._claim(session_id, prompt)
            except _TurnRunning as still:  # another prompt took the session meanwhile
                raise still.busy(session_id) from None
        sid, tid = str(session_id), str(turn.id)
        try:
            if went_busy:
                await self._bus.publish(sid, GatewayEvent.STATUS, status=SessionStatus.BUSY)
            started = await self._bus.publish(
                sid, GatewayEvent.TURN_STARTED, tid, prompt=prompt, seq=turn.seq
            )
            await self._bus.send_input(sid, PromptInput(turn_id=tid, prompt=prompt))
        except Exception as exc:
            await self.fail(session_id, turn.id, f"could not deliver the prompt: {exc}", None)
            raise Unavailable(
                "the event bus is unavailable; the prompt was not sent",
                code=ErrorCode.EVENTS_UNAVAILABLE,
            ) from exc
        return turn, started

    async def _claim(self, session_id: uuid.UUID, prompt: str) -> tuple[TurnRow, bool]:
        """Make ``prompt`` the session's running turn; returns it and whether the session
        went from ``ready`` to ``busy``. Raises ``_TurnRunning`` when a turn runs."""
        async with self._db() as db, db.begin():
            row = await db.get(SessionRow, session_id, with_for_update=True)
            if row is None:
                raise SessionNotFound(session_id)
            if row.status not in _ACCEPTS_PROMPTS:
                detail = f": {row.failure_reason}" if row.failure_reason else ""
                raise SessionNotRunning(f"session {session_id} is {row.status}{detail}")
            if row.current_turn_id is not None:
                raise _TurnRunning(row.current_turn_id)
            turn = TurnRow(
                id=uuid.uuid4(),
                session_id=session_id,
                seq=await queries.next_turn_seq(db, session_id),
                prompt=prompt,
                status=TurnStatus.RUNNING,
            )
            db.add(turn)
            went_busy = row.status == SessionStatus.READY
            row.current_turn_id = turn.id
            row.last_activity_at = queries.utcnow()
            if went_busy:
                row.status = SessionStatus.BUSY
        return turn, went_busy

    async def _record_end_from_stream(self, session_id: uuid.UUID, turn_id: uuid.UUID) -> bool:
        """Record turn ``turn_id``'s end if it is among the stream's newest events; whether
        it was. An unreachable stream counts as no end seen (the turn stays running)."""
        try:
            newest = await self._bus.newest(str(session_id), _END_LOOKBACK)
        except RedisError as exc:
            log.warning("could not look for the end of turn %s: %s", turn_id, exc)
            return False
        end = next((event for event in newest if is_turn_end(event, str(turn_id))), None)
        if end is None:
            return False
        await self.record_end(session_id, turn_id, end)
        return True

    async def interrupt(self, session_id: uuid.UUID) -> uuid.UUID:
        """Ask the CLI to abort the running turn; returns its id. The turn then ends with a
        result of subtype ``error_during_execution``."""
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
        if row is None:
            raise SessionNotFound(session_id)
        if row.current_turn_id is None:
            raise NoRunningTurn(f"session {session_id} has no running turn")
        await self._bus.send_input(
            str(session_id), InterruptInput(turn_id=str(row.current_turn_id))
        )
        return row.current_turn_id

    # -- ending ------------------------------------------------------------------------------

    async def finish(
        self,
        session_id: uuid.UUID,
        turn_id: uuid.UUID,
        result: dict[str, Any],
        cursor: str | None,
        cost: float | None,
    ) -> TurnRow | None:
        """Record the CLI's result for a turn. Idempotent; returns the turn row."""
        text = result.get("result")
        usage = result.get("usage")
        values = {
            "status": turn_status_of(result),
            "result": result,
            "result_text": text if isinstance(text, str) else None,
            "is_error": bool(result.get("is_error")),
            "cost_usd": cost,
            "usage": usage if isinstance(usage, dict) else None,
            "duration_ms": _int_or_none(result.get("duration_ms")),
            "num_turns": _int_or_none(result.get("num_turns")),
        }
        return await self._end(session_id, turn_id, values, cursor)

    async def fail(
        self,
        session_id: uuid.UUID,
        turn_id: uuid.UUID,
        reason: str,
        cursor: str | None,
        interrupted: bool = False,
    ) -> TurnRow | None:
        """Record that a turn ended without a result: the CLI died, or the turn was cut short
        on purpose (``interrupted``: a stop, or an interrupt before it started). Idempotent."""
        status = TurnStatus.INTERRUPTED if interrupted else TurnStatus.FAILED
        values = {"status": status, "error": reason, "is_error": True}
        return await self._end(session_id, turn_id, values, cursor)

    async def record_end(
        self, session_id: uuid.UUID, turn_id: uuid.UUID, end: Event
    ) -> TurnRow | None:
        """Record ``end`` (an event for which ``is_turn_end`` holds) as the turn's end.
        Idempotent; returns the turn row."""
        if end.type == GatewayEvent.TURN_FAILED:
            reason = str(end.payload.get("reason", "the turn failed"))
            interrupted = bool(end.payload.get("interrupted"))
            return await self.fail(session_id, turn_id, reason, end.id, interrupted)
        return await self.finish(session_id, turn_id, end.payload, end.id, end.turn_cost)

    async def _end(
        self,
        session_id: uuid.UUID,
        turn_id: uuid.UUID,
        values: dict[str, Any],
        cursor: str | None,
    ) -> TurnRow | None:
        async with self._db() as db, db.begin():
            statement = (
                update(TurnRow)
                .where(TurnRow.id == turn_id, TurnRow.status == TurnStatus.RUNNING)
                .values(finished_at=queries.utcnow(), **values)
                .returning(TurnRow)
            )
            ended = (await db.execute(statement)).scalar_one_or_none()
            if ended is None:  # someone else recorded it first
                return await db.get(TurnRow, turn_id)
            released = await queries.release_turn(db, session_id, turn_id, cursor)
            parent_id = (
                released.parent_id
                if released is not None
                else await db.scalar(
                    select(SessionRow.parent_id).where(SessionRow.id == session_id)
                )
            )
        self._metrics.turn_ended(ended.status, ended.created_at, ended.finished_at)
        if released is not None and released.status == SessionStatus.READY:
            await self._bus.publish(str(session_id), GatewayEvent.STATUS, status="ready")
        if parent_id is not None:
            await self._bus.publish(
                str(parent_id),
                GatewayEvent.CHILD_FINISHED,
                child_id=str(session_id),
                turn_id=str(turn_id),
                status=ended.status,
                result=ended.result_text,
                is_error=ended.is_error,
            )
        return ended

    # -- waiting -----------------------------------------------------------------------------

    async def events(
        self, session_id: uuid.UUID, turn: TurnRow, started: str, timeout: float
    ) -> AsyncGenerator[Event, None]:
        """The turn's events in order, from its ``turn_started`` event (cursor ``started``) to
        the event that ends it. Raises ``TurnTimeout`` after ``timeout`` seconds (the turn
        itself goes on)."""
        sid, tid = str(session_id), str(turn.id)
        after = stream_id_before(started)
        try:
            async with asyncio.timeout(timeout):
                async with contextlib.aclosing(self._hub.follow(sid, after)) as stream:
                    async for event in stream:
                        # A gap notice belongs to every reader: never skip it silently.
                        if event.is_notice or event.turn_id == tid or ends_turn(event, tid):
                            yield event
                        if ends_turn(event, tid):
                            return
        except TimeoutError:
            raise TurnTimeout(
                f"turn {tid} did not finish within {timeout:g} s; it keeps running "
                "(interrupt it or wait for its result on the stream)",
                turn_id=tid,
            ) from None

    async def wait_idle(
        self, session_id: uuid.UUID, timeout: float
    ) -> tuple[SessionRow, TurnRow | None]:
        """Wait until the session runs no turn (or has ended); returns it and its last finished
        turn. Raises ``WaitTimeout`` after ``timeout`` seconds (the session goes on)."""
        sid = str(session_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._hub.subscribe(sid) as subscription:
            while True:
                async with self._db() as db:
                    row = await db.get(SessionRow, session_id)
                    if row is None:
                        raise SessionNotFound(session_id)
                    if row.current_turn_id is None or row.status in FINAL_STATUSES:
                        return row, await trees.last_finished_turn(db, session_id)
                if row.status in ACTIVE_STATUSES:
                    await self._hub.track(sid)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"session {session_id} is still running turn {row.current_turn_id} "
                        f"after {timeout:g} s",
                        turn_id=str(row.current_turn_id),
                    )
                await _next_relevant(subscription, min(remaining, 1.0))

    async def wait(
        self, session_id: uuid.UUID, turn: TurnRow, started: str, timeout: float
    ) -> tuple[dict[str, Any], TurnRow]:
        """Wait for the turn's result; returns the CLI's result object and the recorded turn."""
        async for event in self.events(session_id, turn, started, timeout):
            if is_turn_end(event, str(turn.id)):
                recorded = await self.record_end(session_id, turn.id, event)
                if event.type == GatewayEvent.TURN_FAILED:
                    reason = event.payload.get("reason", "the turn failed")
                    raise TurnFailed(f"turn {turn.id} failed: {reason}", turn_id=str(turn.id))
                return event.payload, recorded or turn
            if event.type == GatewayEvent.STATUS:
                reason = str(event.payload.get("reason") or event.payload.get("status"))
                raise SessionNotRunning(
                    f"session {session_id} ended before turn {turn.id} finished: {reason}",
                    turn_id=str(turn.id),
                )
        raise TurnFailed(f"turn {turn.id} ended without a result", turn_id=str(turn.id))


class _TurnRunning(Exception):
    """The session runs turn ``turn_id``: no new prompt until it ends."""

    def __init__(self, turn_id: uuid.UUID) -> None:
        super().__init__(str(turn_id))
        self.turn_id = turn_id

    def busy(self, session_id: uuid.UUID) -> SessionBusy:
        return SessionBusy(
            f"session {session_id} is running turn {self.turn_id}; "
            "wait for its result or interrupt it",
            turn_id=str(self.turn_id),
        )


async def _next_relevant(subscription: Subscription, timeout: float) -> None:
    """Return on an event that may end a turn, or after ``timeout`` (the caller re-checks the
    database either way, so a missed or early wake-up costs nothing but a query)."""
    with contextlib.suppress(TimeoutError, Lagged, StreamClosed):
        async with asyncio.timeout(timeout):
            while True:
                event = await subscription.get()
                if event.type in ("result", GatewayEvent.TURN_FAILED, GatewayEvent.STATUS):
                    return


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None
