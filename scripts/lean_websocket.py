"""A WebSocket client that does the least a benchmark's reader must: the opening handshake,
then unmasked frames from the server split out of the byte stream, pings answered. No
validation beyond that, no extensions, no fragmented messages.

Why not the ``websockets`` library: on a small machine the benchmark's clients share the CPU
with the relay they measure. In scripts/bench_relay.py's 100-session scenario (10,000
messages/s) the library's readers kept 0.26 of a core busy, this reader 0.17-0.19; most of
what is left is the kernel waking the readers, once per message. Real clients run
elsewhere, so the leaner reader is the closer stand-in for them. For the benchmarks only.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable
from urllib.parse import urlsplit

_TEXT, _CLOSE, _PING = 0x1, 0x8, 0x9
_HEADER_END = b"\r\n\r\n"


class _Reader(asyncio.Protocol):
    def __init__(self, on_message: Callable[[bytes], bool], done: asyncio.Future[None]) -> None:
        self._on_message = on_message
        self._done = done
        self._buffer = bytearray()
        self._open = False
        self._failed = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._open:
            end = self._buffer.find(_HEADER_END)
            if end < 0:
                return
            status = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            if b" 101 " not in status:
                self._fail(ConnectionError(f"handshake refused: {status.decode(errors='replace')}"))
                return
            del self._buffer[: end + len(_HEADER_END)]
            self._open = True
            self.opened.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= 2:
            opcode, length = buffer[start] & 0x0F, buffer[start + 1] & 0x7F
            header = 2
            if length == 126:
                if len(buffer) - start < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, start + 2)
                header = 4
            elif length == 127:
                if len(buffer) - start < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, start + 2)
                header = 10
            end = start + header + length
            if end > len(buffer):
                break
            payload = bytes(buffer[start + header : end])
            start = end
            if opcode == _TEXT:
                if self._on_message(payload):
                    self._finish()
                    return
            elif opcode == _PING:
                self._send(0xA, payload)
            elif opcode == _CLOSE:
                self._fail(ConnectionError(f"closed by the server: {payload!r}"))
                return
        del buffer[:start]

    def _send(self, opcode: int, payload: bytes) -> None:
        # Client frames are masked (RFC 6455 5.3); only short control frames are sent here.
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        assert self.transport is not None
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def _finish(self) -> None:
        if not self._done.done():
            self._send(_CLOSE, struct.pack("!H", 1000))
            self._done.set_result(None)
        assert self.transport is not None
        self.transport.close()

    def _fail(self, error: Exception) -> None:
        # Only the first failure counts. Before the handshake is done the caller awaits
        # ``opened``, after it ``done``.
        if self._failed:
            return
        self._failed = True
        future = self._done if self.opened.done() else self.opened
        if not future.done():
            future.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the connection closed before the reader was done"))


async def follow(
    url: str,
    headers: dict[str, str],
    on_message: Callable[[bytes], bool],
    opened: Callable[[], None],
) -> None:
    """Open a WebSocket at ``url`` (``ws://`` only) and pass each text message to
    ``on_message`` until it returns true. ``opened`` is called once the handshake is done."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"not a ws:// URL: {url}")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    _, reader = await loop.create_connection(
        lambda: _Reader(on_message, done), parts.hostname, parts.port or 80
    )
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    assert reader.transport is not None
    reader.transport.write(("\r\n".join(request) + "\r\n\r\n").encode())
    await reader.opened
    opened()
    await done
