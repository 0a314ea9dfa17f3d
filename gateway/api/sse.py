"""Server-sent events of a session's stream (chat with ``stream: true``, execute): one SSE
event per envelope, ``event:`` its source, ``id:`` its cursor (none for a notice), ``data:``
the envelope as the WebSocket sends it; an error after the response began is a last
``event: error`` whose data is the error body with the ``status`` it answers as a response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from gateway.errors import GatewayError
from gateway.events.bus import Event

PING_SECONDS = 15


def event_message(event: Event) -> dict[str, str]:
    message = {"event": event.source, "data": event.envelope_json()}
    if not event.is_notice:  # a gap notice has no cursor
        message["id"] = event.id
    return message


def error_message(exc: GatewayError) -> dict[str, str]:
    body = {**exc.body(), "status": exc.status}
    return {"event": "error", "data": json.dumps(body, separators=(",", ":"))}


async def messages(events: AsyncIterator[Event]) -> AsyncIterator[dict[str, str]]:
    """The SSE messages of ``events``; a ``GatewayError`` it raises becomes the last one."""
    try:
        async for event in events:
            yield event_message(event)
    except GatewayError as exc:  # the response has begun: report the error as an event
        yield error_message(exc)
