"""Applies the events that change state to the database, in order, once per event type.

The recorder is a listener on the event hub: it sees every event of every tracked session and
queues the few that matter (readiness, turn ends, a wrapper giving up). Every write it makes is
idempotent, so replaying events after a gateway restart, or a chat request recording the same
result first, does no harm.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from gateway.db.models import FINAL_STATUSES
from gateway.events.bus import Event
from gateway.events.hub import EventHub
from gateway.services.sessions import SessionService
from gateway.services.termination import Terminator
from gateway.services.turns import TurnService
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
    ) -> None:
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
            event = await self._queue.get()
            try:
                await self.apply(event)
            except Exception:
                log.exception("could not record event %s of session %s", event.id, event.session_id)

    async def apply(self, event: Event) -> None:
        session_id = uuid.UUID(event.session_id)
        turn_id = uuid.UUID(event.turn_id) if event.turn_id else None
        if event.source == Source.CLAUDE:
            if event.type == "result" and turn_id is not None:
                await self._turns.finish(
                    session_id, turn_id, event.payload, event.id, event.turn_cost
                )
                if self._workspaces is not None:  # the conversation grew: keep it portable
                    session = await self._sessions.get(session_id)
                    self._workspaces.transcripts.schedule_save(session)
            return
        if event.type == GatewayEvent.CLI_READY:
            await self._sessions.mark_ready(session_id, event.id)
        elif event.type == GatewayEvent.TURN_FAILED and turn_id is not None:
            reason = str(event.payload.get("reason", "the turn failed"))
            interrupted = bool(event.payload.get("interrupted"))
            await self._turns.fail(session_id, turn_id, reason, event.id, interrupted)
        elif event.type == GatewayEvent.WRAPPER_FATAL:
            reason = str(event.payload.get("reason", "the wrapper gave up"))
            code = event.payload.get("exit_code")
            await self._terminator.fail(
                session_id,
                f"CLI crashed: {reason}",
                exit_code=code if isinstance(code, int) else None,
            )
