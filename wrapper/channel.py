"""The wrapper's side of Redis: output events out, prompts and interrupts in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wrapper import protocol

log = logging.getLogger(__name__)

# The wrapper's consumer group on its input stream. A group remembers what was delivered, so a
# replacement container for the same session does not replay prompts the last one consumed.
INPUT_GROUP = "wrapper"
INPUT_CONSUMER = "cli"
INPUT_BLOCK_MS = 5000


def connect(url: str) -> aioredis.Redis:
    """A client that rides out short Redis outages instead of dropping output."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=30),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
        # Longer than the blocking input read, which would otherwise time out client-side.
        socket_timeout=INPUT_BLOCK_MS / 1000 + 10,
        socket_connect_timeout=10,
    )


class EventChannel(Protocol):
    """What the supervisor needs of Redis: publish output, consume and acknowledge input."""

    async def publish(self, fields: dict[str, str]) -> str: ...

    async def publish_gateway(
        self, event: protocol.GatewayEvent, turn_id: str | None = None, **payload: Any
    ) -> str: ...

    def inputs(self) -> AsyncIterator[tuple[str, dict[str, str]]]: ...

    async def ack(self, entry_id: str) -> None: ...


class Channel:
    """Publishes to the session's output stream and consumes its input stream."""

    def __init__(self, client: aioredis.Redis, session_id: str, maxlen: int) -> None:
        # Typed Any: redis-py's hints cover bytes and RESP3 replies; this client always decodes
        # to str over RESP2, which its stubs cannot express.
        self._redis: Any = client
        self._out = protocol.output_stream_key(session_id)
        self._in = protocol.input_stream_key(session_id)
        self._maxlen = maxlen

    async def publish(self, fields: dict[str, str]) -> str:
        """XADD one event; returns its stream id. Order is the order of awaited calls."""
        entry_id: str = await self._redis.xadd(
            self._out, fields, maxlen=self._maxlen, approximate=True
        )
        return entry_id

    async def publish_gateway(
        self, event: protocol.GatewayEvent, turn_id: str | None = None, **payload: Any
    ) -> str:
        return await self.publish(protocol.gateway_event(event, turn_id, **payload))

    async def publish_all(self, events: Sequence[dict[str, str]]) -> None:
        """XADD every event, in order, in one round trip."""
        if not events:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for fields in events:
                pipe.xadd(self._out, fields, maxlen=self._maxlen, approximate=True)
            await pipe.execute()

    async def _ensure_group(self) -> None:
        try:
            # Id 0: prompts queued before this container started are delivered too.
            await self._redis.xgroup_create(self._in, INPUT_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def inputs(
        self, block_ms: int = INPUT_BLOCK_MS
    ) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Yield ``(entry id, fields)`` of new input entries, forever. Ack with ``ack``."""
        await self._ensure_group()
        while True:
            reply = await self._redis.xreadgroup(
                INPUT_GROUP, INPUT_CONSUMER, {self._in: ">"}, count=100, block=block_ms
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    yield entry_id, fields

    async def ack(self, entry_id: str) -> None:
        await self._redis.xack(self._in, INPUT_GROUP, entry_id)


class HeldChannel:
    """The channel of a pooled container, before it knows its session. What the CLI prints
    meanwhile (its handshake answer, ``cli_ready``) is held, in order, and written first when
    ``bind`` gives it the session's channel; reading input waits for that."""

    def __init__(self) -> None:
        self._held: list[dict[str, str]] = []
        self._channel: Channel | None = None
        self._bound = asyncio.Event()
        self._lock = asyncio.Lock()

    async def bind(self, channel: Channel) -> None:
        async with self._lock:
            await channel.publish_all(self._held)
            self._held.clear()
            self._channel = channel
        self._bound.set()

    async def publish(self, fields: dict[str, str]) -> str:
        if self._channel is None:
            async with self._lock:  # a bind in progress writes what is held first
                if self._channel is None:
                    self._held.append(fields)
                    return ""  # no id yet: it gets one when it is written
        return await self._channel.publish(fields)

    async def publish_gateway(
        self, event: protocol.GatewayEvent, turn_id: str | None = None, **payload: Any
    ) -> str:
        return await self.publish(protocol.gateway_event(event, turn_id, **payload))

    async def inputs(self) -> AsyncIterator[tuple[str, dict[str, str]]]:
        await self._bound.wait()
        assert self._channel is not None
        async for entry in self._channel.inputs():
            yield entry

    async def ack(self, entry_id: str) -> None:
        assert self._channel is not None  # nothing is read before the bind
        await self._channel.ack(entry_id)
