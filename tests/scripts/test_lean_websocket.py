"""scripts/lean_websocket.py, the benchmarks' lean WebSocket reader, against the websockets
library's server: the figures of scripts/bench_relay.py are only as good as its framing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from scripts import lean_websocket

# Every length encoding a server uses: 7 bits, 16 bits, 64 bits.
MESSAGES = ["short", "x" * 200, "y" * 70_000, "last"]


async def _talk(connection: ServerConnection) -> None:
    for message in MESSAGES[:2]:
        await connection.send(message)
    pong = await connection.ping(b"are you there")
    await asyncio.wait_for(pong, 5)  # the reader answered the ping
    await connection.send(b"binary frames are not messages")
    for message in MESSAGES[2:]:
        await connection.send(message)
    await connection.close()


def _only_with_token(connection: ServerConnection, request: Request) -> Response | None:
    if request.headers.get("Authorization") != "Bearer good":
        return connection.respond(401, "no\n")
    return None


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serve(_talk, "127.0.0.1", 0, process_request=_only_with_token) as running:
        yield running


def _url(server: Server) -> str:
    host, port = next(iter(server.sockets)).getsockname()[:2]
    return f"ws://{host}:{port}/stream?after=$"


async def test_reads_every_text_message_in_order_and_answers_pings(server: Server) -> None:
    received: list[bytes] = []
    opened: list[bool] = []

    def on_message(payload: bytes) -> bool:
        received.append(payload)
        return payload == b"last"

    await asyncio.wait_for(
        lean_websocket.follow(
            _url(server), {"Authorization": "Bearer good"}, on_message, lambda: opened.append(True)
        ),
        10,
    )
    assert opened == [True]
    assert received == [message.encode() for message in MESSAGES]


async def test_a_refused_handshake_is_an_error_not_an_empty_stream(server: Server) -> None:
    with pytest.raises(ConnectionError, match=r"handshake refused: HTTP/1\.1 401"):
        await asyncio.wait_for(
            lean_websocket.follow(
                _url(server), {"Authorization": "Bearer bad"}, lambda _: True, lambda: None
            ),
            10,
        )


async def test_a_server_that_closes_first_is_an_error(server: Server) -> None:
    with pytest.raises(ConnectionError, match="closed by the server"):
        await asyncio.wait_for(
            lean_websocket.follow(
                _url(server), {"Authorization": "Bearer good"}, lambda _: False, lambda: None
            ),
            10,
        )
