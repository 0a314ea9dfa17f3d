"""The WebSocket stream of one session: every event in order, replay from a cursor, and
prompts and interrupts from the client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gateway.db.models import ACTIVE_STATUSES, SessionRow
from gateway.deps import Services, authenticate, may_access
from gateway.draining import GOING_AWAY, GOING_AWAY_REASON, Drain
from gateway.error_codes import ErrorCode
from gateway.errors import GatewayError, InvalidRequest, SessionNotFound, error_response
from gateway.events.bus import is_stream_id
from gateway.events.hub import FollowControl
from gateway.logging_setup import bind_session
from gateway.schemas import MAX_PROMPT_CHARS
from wrapper.aio import cancel_and_wait
from wrapper.protocol import NO_NUL, Source

log = logging.getLogger(__name__)

router = APIRouter(tags=["stream"])

LIVE_ONLY = "$"


class PromptMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["prompt"]
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NO_NUL)


class InterruptMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["interrupt"]


ClientMessage = Annotated[PromptMessage | InterruptMessage, Field(discriminator="type")]
_client_message: TypeAdapter[PromptMessage | InterruptMessage] = TypeAdapter(ClientMessage)


@router.websocket("/sessions/{session_id}/stream")
async def stream(websocket: WebSocket, session_id: str) -> None:
    """Events as ``{"id", "session_id", "source", "event"}``. ``?after=<cursor>`` replays every
    event after the cursor first (default: from the beginning; ``$``: live only). The token
    comes in the Authorization header or as ``?token=``. Clients may send
    ``{"type": "prompt", "prompt": "..."}`` and ``{"type": "interrupt"}``.
    While the gateway shuts down, a new stream is refused (503 ``shutting_down``) and an open
    one is sent what it has been given, then closed with code 1001."""
    services: Services = websocket.app.state.services
    drain: Drain = websocket.app.state.drain
    try:
        drain.refuse_new_streams()
        session = await _authorize(websocket, services, session_id)
        after = _parse_after(websocket.query_params.get("after"))
    except GatewayError as exc:
        await websocket.send_denial_response(error_response(exc))
        return
    bind_session(session.id)
    with drain.stream() as control:
        await websocket.accept()
        sender = asyncio.create_task(_send_events(websocket, services, session, after, control))
        receiver = asyncio.create_task(_receive_commands(websocket, services, session))
        services.metrics.websocket_clients.inc()
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = None if task.cancelled() else task.exception()
                if failure is not None and not isinstance(
                    failure, WebSocketDisconnect | RuntimeError
                ):
                    log.error("stream of %s failed", session.id, exc_info=failure)
        finally:
            services.metrics.websocket_clients.dec()
            await cancel_and_wait([sender, receiver])
            with contextlib.suppress(Exception):  # the client may be gone already
                await websocket.close()


async def _authorize(websocket: WebSocket, services: Services, session_id: str) -> SessionRow:
    principal = await authenticate(
        services, websocket.headers.get("authorization"), websocket.query_params.get("token")
    )
    try:
        parsed = uuid.UUID(session_id)
    except ValueError:
        raise InvalidRequest(
            f"{session_id!r} is not a session id", code=ErrorCode.INVALID_SESSION_ID
        ) from None
    session = await services.sessions.get(parsed)
    if not may_access(principal, session):
        raise SessionNotFound(parsed)
    return session


def _parse_after(value: str | None) -> str | None:
    """``None`` means live only; "0" means everything."""
    if value is None or value == "":
        return "0"
    if value == LIVE_ONLY:
        return None
    if not is_stream_id(value):
        raise InvalidRequest(f"after={value!r} is not a cursor", code=ErrorCode.INVALID_CURSOR)
    return value


async def _send_events(
    websocket: WebSocket,
    services: Services,
    session: SessionRow,
    after: str | None,
    control: FollowControl,
) -> None:
    sid = str(session.id)
    active = session.status in ACTIVE_STATUSES
    # Events stored from now on are live: their delay to the client is the relay's lag.
    connected_ms = time.time() * 1000
    follow = services.hub.follow(sid, after, track=active, control=control)
    async with contextlib.aclosing(follow) as events:
        async for event in events:
            await websocket.send_text(event.envelope_json())
            services.metrics.event_delivered(event.stored_ms, connected_ms)
    if control.finished:  # the gateway shuts down: the client resumes elsewhere
        await websocket.close(code=GOING_AWAY, reason=GOING_AWAY_REASON)
        return
    # otherwise follow ends only when the session is deleted
    await _send_notice(websocket, sid, {"type": "session_deleted"})
    await websocket.close(code=1000, reason="session deleted")


async def _send_notice(websocket: WebSocket, session_id: str, event: dict[str, Any]) -> None:
    """A message for this client only; it is not part of the session's stream (no cursor)."""
    envelope = {
        "id": None,
        "session_id": session_id,
        "source": Source.GATEWAY,
        "turn_id": event.get("turn_id"),
        "event": event,
    }
    await websocket.send_text(json.dumps(envelope, separators=(",", ":")))


async def _receive_commands(websocket: WebSocket, services: Services, session: SessionRow) -> None:
    sid = str(session.id)
    while True:
        raw = await websocket.receive_text()
        try:
            message = _client_message.validate_json(raw)
            if isinstance(message, PromptMessage):
                turn, _ = await services.turns.begin(session.id, message.prompt)
                await _send_notice(
                    websocket, sid, {"type": "prompt_accepted", "turn_id": str(turn.id)}
                )
            else:
                turn_id = await services.turns.interrupt(session.id)
                await _send_notice(
                    websocket, sid, {"type": "interrupt_accepted", "turn_id": str(turn_id)}
                )
        except ValidationError as exc:
            await _send_notice(
                websocket,
                sid,
                {
                    "type": "error",
                    "code": ErrorCode.INVALID_MESSAGE,
                    "message": 'expected {"type": "prompt", "prompt": "..."} or '
                    f'{{"type": "interrupt"}}: {exc.errors()[0].get("msg", "invalid")}',
                },
            )
        except GatewayError as exc:
            await _send_notice(
                websocket, sid, {"type": "error", "code": exc.code, "message": exc.message}
            )
