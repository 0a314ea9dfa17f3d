"""One Redis reader per gateway process, fanned out in process to every interested party.

The hub follows the output streams of the sessions it tracks with a single blocking XREAD
over all of them, and hands each event to the listeners (the recorder) and to the
subscribers of that session (WebSocket clients, waiting chat requests). Clients never touch
Redis for live events, so a thousand viewers of one session cost one read.

``follow`` gives a subscriber every event after a cursor with no gap and no duplicate: it
subscribes first, replays the range from Redis, then drops live events it already sent. A
subscriber that falls too far behind is cut loose and resynchronises from Redis the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

import redis.asyncio as aioredis

from gateway.events.bus import Event, EventBus, parse_stream_id
from wrapper import protocol

log = logging.getLogger(__name__)

Listener = Callable[[Event], None]


class Lagged(Exception):
    """The subscriber's queue overflowed; resynchronise from Redis."""


class StreamClosed(Exception):
    """The session's stream is gone (the session was deleted)."""


class Subscription:
    def __init__(self, session_id: str, maxsize: int) -> None:
        self.session_id = session_id
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.lagged = False
        self.closed = False

    def offer(self, event: Event) -> bool:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged = True
            return False
        return True

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)  # wakes a waiting reader; a full queue is read anyway

    async def get(self) -> Event:
        if self.closed and self._queue.empty():
            raise StreamClosed
        if self.lagged and self._queue.empty():
            raise Lagged
        event = await self._queue.get()
        if event is None:
            raise StreamClosed
        return event


class EventHub:
    def __init__(
        self,
        client: aioredis.Redis,
        bus: EventBus,
        *,
        block_ms: int = 30_000,
        batch: int = 1000,
        subscriber_queue: int = 10_000,
    ) -> None:
        # Typed Any: redis-py's hints cover bytes and RESP3 replies; this client always decodes
        # to str over RESP2, which its stubs cannot express.
        self._redis: Any = client  # must allow blocking reads: no socket timeout below block_ms
        self._bus = bus
        self._block_ms = block_ms
        self._batch = batch
        self._subscriber_queue = subscriber_queue
        self._cursors: dict[str, str] = {}  # tracked session -> last id read
        self._subscribers: dict[str, set[Subscription]] = {}
        self._listeners: list[Listener] = []
        self._wake_key = f"{protocol.KEY_PREFIX}:gateway:{uuid.uuid4().hex}:wake"
        self._wake_cursor = "0-0"

    # -- tracking --------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Called synchronously with every event of every tracked session, in order."""
        self._listeners.append(listener)

    async def track(self, session_id: str, after: str | None = None) -> None:
        """Start reading a session's stream after ``after`` (default: its current end)."""
        if session_id in self._cursors:
            return
        self._cursors[session_id] = after or await self._bus.last_id(session_id)
        await self._wake()

    def untrack(self, session_id: str) -> None:
        self._cursors.pop(session_id, None)

    def close_session(self, session_id: str) -> None:
        """The session is gone: stop reading it and end every ``follow`` of it."""
        self.untrack(session_id)
        for subscription in self._subscribers.pop(session_id, set()):
            subscription.close()

    async def _wake(self) -> None:
        # The reader is blocked in XREAD; a write to its wake stream returns it at once so the
        # next read includes the new session.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=10, approximate=False)
            pipe.expire(self._wake_key, 24 * 3600)
            await pipe.execute()

    # -- reading ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The reader loop; runs until cancelled. Redis errors are retried with backoff."""
        backoff = 0.1
        try:
            while True:
                try:
                    await self._read_once()
                    backoff = 0.1
                except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # The client can turn our own cancellation into a connection error;
                        # swallowing it here would keep a cancelled task alive forever.
                        raise asyncio.CancelledError from exc
                    log.warning("event hub lost Redis (%s); retrying in %.1fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._redis.delete(self._wake_key))

    async def _read_once(self) -> None:
        streams: dict[Any, Any] = {self._wake_key: self._wake_cursor}
        keys: dict[str, str] = {}
        for session_id, cursor in self._cursors.items():
            key = protocol.output_stream_key(session_id)
            streams[key] = cursor
            keys[key] = session_id
        reply = await self._redis.xread(streams, count=self._batch, block=self._block_ms)
        for key, entries in reply or []:
            if key == self._wake_key:
                self._wake_cursor = entries[-1][0]
                continue
            session_id = keys[key]
            if session_id not in self._cursors:
                continue  # untracked while we were reading
            for entry_id, fields in entries:
                self._dispatch(Event.from_entry(session_id, entry_id, fields))
            if session_id in self._cursors:  # a listener may untrack on a final event
                self._cursors[session_id] = entries[-1][0]

    def _dispatch(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", event.id)
        subscribers = self._subscribers.get(event.session_id)
        if not subscribers:
            return
        for subscription in list(subscribers):
            if not subscription.offer(event):
                subscribers.discard(subscription)  # it resyncs from Redis when it notices

    # -- subscribing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self, session_id: str) -> Any:
        subscription = Subscription(session_id, self._subscriber_queue)
        self._subscribers.setdefault(session_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(session_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[session_id]

    async def follow(
        self, session_id: str, after: str | None, *, track: bool = True
    ) -> AsyncGenerator[Event, None]:
        """Every event after cursor ``after`` ("0" for all, ``None`` for live only), then live
        events as they come, with no gap and no duplicate. Runs until the caller stops or the
        session is deleted.
        ``track`` makes sure this process reads the session (pass False for ended sessions)."""
        last = after or await self._bus.last_id(session_id)
        if track:
            await self.track(session_id)
        while True:
            with self.subscribe(session_id) as subscription:
                async for event in self._replay(session_id, last):
                    last = event.id
                    yield event
                position = parse_stream_id(last)
                try:
                    while True:
                        event = await subscription.get()
                        if event.position <= position:
                            continue
                        last, position = event.id, event.position
                        yield event
                except Lagged:
                    log.info("subscriber of %s lagged; resynchronising from %s", session_id, last)
                except StreamClosed:
                    return

    async def _replay(self, session_id: str, after: str) -> AsyncGenerator[Event, None]:
        while True:
            events = await self._bus.read_after(session_id, after, count=self._batch)
            for event in events:
                yield event
            if len(events) < self._batch:
                return
            after = events[-1].id
