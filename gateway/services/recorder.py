"""Applies the events that change state to the database, in order, once per event type.

The recorder is a listener on the event hub: it sees every event of every tracked session and
queues the few that matter (readiness, turn ends, a wrapper giving up). Every write it makes is
idempotent, so replaying events after a gateway restart, or a chat request recording the same
result first, does no harm.

Nothing it could not write is dropped: while PostgreSQL cannot be reached the event at the head
of the queue is tried again with backoff, and nothing behind it (of any session) overtakes it,
so each session's events are applied in stream order once the database is back. Any other
failure is a bug: it is logged with its traceback and that one event is skipped, so a bug never
blocks the queue.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from gateway.db.models import FINAL_STATUSES
from gateway.db.outage import database_unavailable
from gateway.events.bus import Event
from gateway.events.hub import EventHub
from gateway.logging_setup import bind_session
from gateway.services.sessions import SessionService
from gateway.services.termination import Terminator
from gateway.services.turns import TurnService, is_turn_end
from gateway.services.workspaces import WorkspaceService
from wrapper.protocol import GatewayEvent, Source

log = logging.getLogger(__name__)

_RECORDED = frozenset(
    {
        "result",
        GatewayEvent.CLI_READY,
        GatewayEvent.TURN_FAILED,
        GatewayEvent.WRAPPER_FATAL,
    }
)


class Recorder:
    def __init__(
        self,
        sessions: SessionService,
        turns: TurnService,
        terminator: Terminator,
        hub: EventHub,
        workspaces: WorkspaceService | None = None,
        retry_first: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._workspaces = workspaces
        self._sessions = sessions
        self._terminator = terminator
        self._turns = turns
        self._hub = hub
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        hub.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.type in _RECORDED:
            self._queue.put_nowait(event)
        elif event.type == GatewayEvent.STATUS and event.payload.get("status") in FINAL_STATUSES:
            # The session's last event: nothing more to read for it.
            self._hub.untrack(event.session_id)

    async def run(self) -> None:
        while True:
            await self.record(await self._queue.get())

    async def record(self, event: Event) -> None:
        """Apply ``event``, retrying for as long as the database is unavailable; returns once
        it is recorded, or at once (after logging a traceback) when applying it is a bug."""
        bind_session(event.session_id)  # the recorder's lines are about this event's session
        delay, attempts = self._retry_first, 0
        while True:
            attempts += 1
            try:
                await self.apply(event)
            except Exception as exc:
                if not database_unavailable(exc):
                    log.exception(
                        "could not record event %s of session %s", event.id, event.session_id
                    )
                    return
                if attempts == 1:
                    log.warning(
                        "database unavailable, event %s (%s) of session %s waits for it: %s",
                        event.id,
                        event.type,
                        event.session_id,
                        _first_line(exc),
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            if attempts > 1:
                log.info(
                    "recorded event %s of session %s after %d attempts",
                    event.id,
                    event.session_id,
                    attempts,
                )
            return

    async def apply(self, event: Event) -> None:
        session_id = uuid.UUID(event.session_id)
        if event.turn_id and is_turn_end(event, event.turn_id):
            await self._turns.record_end(session_id, uuid.UUID(event.turn_id), event)
            if event.type == "result" and self._workspaces is not None:
                # the conversation grew: keep it portable
                session = await self._sessions.get(session_id)
                self._workspaces.transcripts.schedule_save(session)
            return
        if event.source == Source.CLAUDE:
            return
        if event.type == GatewayEvent.CLI_READY:
            await self._sessions.mark_ready(session_id, event.id, event.payload)
        elif event.type == GatewayEvent.WRAPPER_FATAL:
            reason = str(event.payload.get("reason", "the wrapper gave up"))
            code = event.payload.get("exit_code")
            await self._terminator.fail(
                session_id,
                f"CLI crashed: {reason}",
                exit_code=code if isinstance(code, int) else None,
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
