"""Following a session's WebSocket stream across dropped connections.

Every event carries its cursor (``id``); after a drop the follower connects again with
``?after=<the last id it delivered>``, and the gateway replays exactly what came after it, so a
consumer sees every event once, in order. Notices (``id`` null: ``prompt_accepted``, ``gap``,
...) are delivered but never move the cursor. A ``gap`` notice says the gateway no longer had
some events; it is delivered like any other, never hidden.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ccd.errors import ConnectionFailed, api_error
from ccd.models import Event
from ccd.transport import Transport, path_of

LIVE_ONLY = "$"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a CLI line may be large (tool results, files)


@dataclass(frozen=True)
class Backoff:
    """How the follower reconnects: after ``initial`` seconds, doubling up to ``maximum``;
    it gives up (``ConnectionFailed``) once the gateway has been unreachable for
    ``give_up_after`` seconds in a row (``None``: never)."""

    initial: float = 0.25
    maximum: float = 5.0
    give_up_after: float | None = 300.0


async def follow(
    transport: Transport,
    session_id: str,
    after: str | None,
    backoff: Backoff,
    connected: asyncio.Event | None = None,
) -> AsyncIterator[Event]:
    """Every event of the session after cursor ``after`` (``None``: from the first event
    kept; ``"$"``: only new ones), live, until the session is deleted. ``connected`` is set
    once the stream is open (events from then on reach it). Reconnects by itself;
    raises ``ApiError`` when the gateway refuses the stream (4xx: a bad token, an unknown
    session) and ``ConnectionFailed`` when ``backoff`` gives up."""
    cursor = after or "0"
    delay = backoff.initial
    failing_since: float | None = None
    headers = {"Authorization": f"Bearer {transport.token}"} if transport.token else {}
    path = path_of("/sessions", session_id, "stream")
    while True:
        try:
            url = transport.websocket_url(path, {"after": cursor})
            async with connect(url, additional_headers=headers, max_size=MAX_MESSAGE_BYTES) as ws:
                delay, failing_since = backoff.initial, None
                if connected is not None:
                    connected.set()
                async for message in ws:
                    event = Event.model_validate_json(message)
                    if event.id is not None:
                        cursor = event.id
                    yield event
                    if event.is_notice and event.type == "session_deleted":
                        return
            reason = f"the gateway closed the stream ({ws.close_code})"
        except InvalidStatus as exc:
            response = exc.response
            if response.status_code < 500:
                body = bytes(response.body or b"")
                raise api_error(response.status_code, body, response.headers) from None
            reason = f"the gateway answered {response.status_code}"
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
        now = time.monotonic()
        failing_since = failing_since or now
        if backoff.give_up_after is not None and now - failing_since > backoff.give_up_after:
            raise ConnectionFailed(
                f"lost the stream of session {session_id} at {transport.base_url}: {reason}"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, backoff.maximum)
