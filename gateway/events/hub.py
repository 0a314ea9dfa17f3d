"""One Redis reader per gateway process, fanned out in process to every interested party.

The hub follows the output streams of the sessions it tracks and hands each event to the
listeners (the recorder) and to the subscribers of that session (WebSocket clients, waiting
chat requests). Clients never touch Redis for live events, so a thousand viewers of one
session cost one read.

It reads with two blocking XREADs, each on a connection of its own: one over the streams that
had events in the last ``QUIET_SECONDS`` (and the ones just tracked), one over the quiet rest.
An XREAD names every stream it reads and is issued again after each reply, so its cost grows
with the streams it names (measured here, the client's CPU per XREAD: 0.25 ms naming one
stream, 0.8 ms naming 100, 5 ms naming 1,000, when redis-py packed the command; the hub packs
it itself now, and the growth from one stream to 1,000 is a fifth of what it was); a session
streaming a turn beside 99 idle ones would otherwise pay for all 100 on every event. A quiet
stream's first event is read at once all the same (by the quiet read, which then hands the
stream to the other). A stream is in exactly one of the two reads, and only the read that
holds a stream moves it, so no event is read twice.

``follow`` gives a subscriber every event after a cursor with no duplicate: it subscribes
first, replays the range from Redis, then drops live events it already sent. A subscriber that
falls too far behind is cut loose and resynchronises from Redis the same way. Events trimmed
away before a subscriber read them are never skipped silently: it gets a ``gap`` notice first.

One session cannot break the relay for the others. A periodic inspection (run at once when
XREAD fails) trims every stream to its bound whatever its writer does, and finds:
- a key that is no longer a stream (XREAD over it fails with WRONGTYPE): the session is dropped
  from the shared read and reported to the ``on_damage`` handlers, which fail it;
- a stream flooded past any honest writer's trimming: reported the same way;
- a stream that vanished (deleted, or Redis lost its data; a session's own Redis user cannot
  delete keys): a ``gap`` event is written into it, so every reader learns that earlier events
  are gone, and the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any

import redis.asyncio as aioredis

from gateway.events.bus import Event, EventBus, is_wrong_type, parse_stream_id
from wrapper import protocol
from wrapper.protocol import GatewayEvent

log = logging.getLogger(__name__)

Listener = Callable[[Event], None]
DamageHandler = Callable[[str, str], None]  # (session id, reason)

INSPECT_INTERVAL = 5.0  # seconds between checks of every tracked stream
QUIET_SECONDS = 5.0  # a stream without events this long moves to the quiet read
FLOOD_FACTOR = 2  # a stream this many times over its bound ignores the contract
BROKEN_KEY_RETRY = 0.5  # seconds a follower waits for a broken key to be reset, then rereads
# Streams looked at in one script call, which Redis runs alone: about 3 ms for 100 here.
INSPECT_CHUNK = 100

# KEYS: output streams. Returns, per key, {type, entries ever added, length} (0s for a key
# that is not a stream): small replies in one round trip. Pipelined TYPE and XINFO STREAM
# (whose replies redis-py parses into dictionaries) cost the gateway's event loop 8 ms of CPU
# per 100 streams, 100 ms per 1,000, every INSPECT_INTERVAL, and every event waited it out;
# this costs it 1 ms and 8 ms (measured here).
_STREAM_STATES = """
local states = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  local added, length = 0, 0
  if kind == 'stream' then
    local info = redis.call('XINFO', 'STREAM', key)
    for j = 1, #info, 2 do
      if info[j] == 'length' then
        length = info[j + 1]
      elseif info[j] == 'entries-added' then
        added = info[j + 1]
      end
    end
  end
  states[i] = {kind, added, length}
end
return states
"""


class Lagged(Exception):
    """The subscriber's queue overflowed; resynchronise from Redis."""


class StreamClosed(Exception):
    """The session's stream is gone (the session was deleted)."""


class Subscription:
    """A follower's queue of live events. Not an ``asyncio.Queue``: every delivery goes
    through one, and its get and put took 6% of the event loop's time with a hundred sessions
    streaming (its loop lookup is a system call), against 1.4% for this (profiled)."""

    def __init__(self, session_id: str, maxsize: int) -> None:
        self.session_id = session_id
        self._events: deque[Event] = deque()
        self._maxsize = maxsize
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self.lagged = False
        self.closed = False

    def offer(self, event: Event) -> bool:
        if self.closed:
            return True  # it ends with what it held when closed
        if len(self._events) >= self._maxsize:
            self.lagged = True
            self._wake()
            return False
        self._events.append(event)
        self._wake()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Event:
        while not self._events:
            if self.closed:
                raise StreamClosed
            if self.lagged:
                raise Lagged
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft()


class FollowControl:
    """Lets the caller of ``follow`` end it gracefully: after ``finish()`` it yields what its
    subscription already holds (events this process has read), then ends, as it does when the
    session is deleted; ``finished`` tells the two apart. A graceful shutdown uses it to send
    each WebSocket client what it has been given before closing it."""

    def __init__(self) -> None:
        self.finished = False
        self._subscription: Subscription | None = None

    def finish(self) -> None:
        self.finished = True
        if self._subscription is not None:
            self._subscription.close()

    def attach(self, subscription: Subscription) -> None:
        self._subscription = subscription
        if self.finished:
            subscription.close()


class _Read:
    """The streams one of the hub's blocking XREADs covers, and the wake stream that makes it
    start over (to take up streams handed to it)."""

    def __init__(self, wake_key: str) -> None:
        self.sessions: set[str] = set()
        self.wake_key = wake_key
        self.wake_cursor = "0-0"
        self.connection: Any = None  # its own, held between XREADs (``EventHub._xread``)


class EventHub:
    def __init__(
        self,
        client: aioredis.Redis,
        bus: EventBus,
        *,
        block_ms: int = 30_000,
        batch: int = 1000,
        subscriber_queue: int = 10_000,
        quiet_after: float = QUIET_SECONDS,
    ) -> None:
        # Typed Any: redis-py's hints cover bytes and RESP3 replies; this client always decodes
        # to str, which its stubs cannot express.
        self._redis: Any = client  # must allow blocking reads: no socket timeout below block_ms
        self._bus = bus
        self._block_ms = block_ms
        self._batch = batch
        self._subscriber_queue = subscriber_queue
        self._cursors: dict[str, str] = {}  # tracked session -> last id read
        self._subscribers: dict[str, set[Subscription]] = {}
        self._listeners: list[Listener] = []
        self._damage_handlers: list[DamageHandler] = []
        self._restart_handlers: list[Callable[[], None]] = []
        self._entries_added: dict[str, int] = {}  # per stream, at the last inspection
        # Entries read per stream since tracking began (or since its loss): a stream that says
        # fewer were ever added to it was deleted and written again, even before any inspection.
        self._entries_read: dict[str, int] = {}
        self._disconnected = False
        self._maxlen = bus.maxlen
        self._next_inspection = 0.0
        wake_prefix = f"{protocol.KEY_PREFIX}:gateway:{uuid.uuid4().hex}:wake"
        self._busy = _Read(f"{wake_prefix}:busy")  # streams with recent events
        self._quiet = _Read(f"{wake_prefix}:quiet")
        self._last_event: dict[str, float] = {}  # busy stream -> loop time of its last event
        self._quiet_after = quiet_after
        self._next_quiet_check = 0.0
        # Both reads may notice a lost Redis or a broken key; one of them deals with it.
        self._recovering = asyncio.Lock()
        self._inspecting = asyncio.Lock()
        self._stream_states = self._redis.register_script(_STREAM_STATES)

    # -- tracking --------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Called synchronously with every event of every tracked session, in order."""
        self._listeners.append(listener)

    def on_restart(self, handler: Callable[[], None]) -> None:
        """Called (synchronously) when Redis answers again after the hub lost it: it may have
        restarted without its per-session users, or without the last events written."""
        self._restart_handlers.append(handler)

    def on_damage(self, handler: DamageHandler) -> None:
        """Called (synchronously) with a session whose stream its writer broke."""
        self._damage_handlers.append(handler)

    async def track(self, session_id: str, after: str | None = None) -> None:
        """Start reading a session's stream after ``after`` (default: its current end)."""
        if session_id in self._cursors:
            return
        self._cursors[session_id] = after or await self._bus.last_id(session_id)
        # A session just tracked is about to write (it is starting, or a client follows it).
        self._busy.sessions.add(session_id)
        self._last_event[session_id] = asyncio.get_running_loop().time()
        try:
            await self._wake(self._busy)
        except aioredis.RedisError as error:
            # Not fatal: the reader takes the new cursor up on its next read anyway.
            log.warning("could not wake the event hub for %s: %s", session_id, error)

    def untrack(self, session_id: str) -> None:
        self._cursors.pop(session_id, None)
        self._busy.sessions.discard(session_id)
        self._quiet.sessions.discard(session_id)
        self._last_event.pop(session_id, None)
        self._entries_added.pop(session_id, None)
        self._entries_read.pop(session_id, None)

    def close_session(self, session_id: str) -> None:
        """The session is gone: stop reading it and end every ``follow`` of it."""
        self.untrack(session_id)
        for subscription in self._subscribers.pop(session_id, set()):
            subscription.close()

    async def _wake(self, read: _Read) -> None:
        # The read is blocked in XREAD; a write to its wake stream returns it at once so the
        # next one includes the streams handed to it.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(read.wake_key, {"w": "1"}, maxlen=10, approximate=False)
            pipe.expire(read.wake_key, 24 * 3600)
            await pipe.execute()

    # -- reading ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Both reads; runs until cancelled. Redis errors are retried with backoff."""
        try:
            async with asyncio.TaskGroup() as reads:  # a read that fails ends the other too
                reads.create_task(self._reading(self._busy), name="event-hub-busy")
                reads.create_task(self._reading(self._quiet), name="event-hub-quiet")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._let_go())
            with contextlib.suppress(Exception):
                keys = (self._busy.wake_key, self._quiet.wake_key)
                await asyncio.shield(self._redis.delete(*keys))

    async def _reading(self, read: _Read) -> None:
        """One read's loop. The busy read also runs the periodic inspection (a broken stream
        is found within ``INSPECT_INTERVAL`` whichever read holds it)."""
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._disconnected:
                    await self._recover()
                if read is self._busy and loop.time() >= self._next_inspection:
                    await self.inspect()
                    self._next_inspection = loop.time() + INSPECT_INTERVAL
                await self._read_once(read)
                backoff = 0.1
            except aioredis.ResponseError as exc:
                # WRONGTYPE and the like come from one session's key, not from Redis:
                # find it now instead of failing every read.
                log.warning("event hub read failed (%s); inspecting streams", exc)
                await self.inspect()
            except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # The client can turn our own cancellation into a connection error;
                    # swallowing it here would keep a cancelled task alive forever.
                    raise asyncio.CancelledError from exc
                log.warning("event hub lost Redis (%s); retrying in %.1fs", exc, backoff)
                self._disconnected = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _recover(self) -> None:
        async with self._recovering:
            if self._disconnected:  # the other read may have recovered meanwhile
                await self._after_reconnect()

    async def _read_once(self, read: _Read) -> None:
        streams: dict[Any, Any] = {read.wake_key: read.wake_cursor}
        keys: dict[str, str] = {}
        for session_id in read.sessions:
            key = _stream_key(session_id)
            streams[key] = self._cursors[session_id]
            keys[key] = session_id
        # Never block longer than the inspection interval, so a broken stream is found soon.
        block = min(self._block_ms, int(INSPECT_INTERVAL * 1000))
        reply = await self._xread(read, streams, block)
        now = asyncio.get_running_loop().time()
        handed_to: _Read | None = None  # the other read, when it was given streams
        for key, entries in reply or []:
            if key == read.wake_key:
                read.wake_cursor = entries[-1][0]
                continue
            session_id = keys[key]
            if self._cursors.get(session_id) != streams[key] or session_id not in read.sessions:
                continue  # untracked while we were reading (and maybe tracked again)
            self._entries_read[session_id] = self._entries_read.get(session_id, 0) + len(entries)
            for entry_id, fields in entries:
                self._dispatch(Event.from_entry(session_id, entry_id, fields))
            if session_id not in self._cursors:
                continue  # a listener untracked it on a final event
            self._cursors[session_id] = entries[-1][0]
            self._last_event[session_id] = now
            if read is self._quiet:
                self._quiet.sessions.discard(session_id)
                self._busy.sessions.add(session_id)
                handed_to = self._busy
        if read is self._busy and now >= self._next_quiet_check:
            self._next_quiet_check = now + min(1.0, self._quiet_after)
            since = now - self._quiet_after
            quiet = [s for s in self._busy.sessions if self._last_event[s] <= since]
            if quiet:
                self._busy.sessions.difference_update(quiet)
                self._quiet.sessions.update(quiet)
                for session_id in quiet:
                    del self._last_event[session_id]
                handed_to = self._quiet
        if handed_to is not None:
            await self._wake(handed_to)

    async def _xread(
        self, read: _Read, streams: dict[str, str], block: int
    ) -> list[tuple[str, list[tuple[str, dict[str, str]]]]] | None:
        """XREAD on the read's own connection, held from one XREAD to the next: the client's
        checkout, retry and reply-parsing layers around each call cost as much CPU as the read
        itself when a stream has an event every millisecond. A connection whose reply was not
        read to its end (an error, a cancellation) is closed, and the next read takes a new
        one."""
        connection = read.connection
        if connection is None:
            connection = read.connection = await self._redis.connection_pool.get_connection()
        try:
            await connection.send_packed_command(_xread_command(self._batch, block, streams))
            reply = await connection.read_response()
        except aioredis.ResponseError:
            raise  # the reply was read: the connection is fine
        except BaseException:
            read.connection = None
            await connection.disconnect()
            await self._redis.connection_pool.release(connection)
            raise
        if not reply:
            return None
        by_key = reply.items() if isinstance(reply, dict) else reply  # RESP3: a map; RESP2: pairs
        return [
            (key, [(entry_id, _pairs(flat)) for entry_id, flat in entries])
            for key, entries in by_key
        ]

    async def _let_go(self) -> None:
        for read in (self._busy, self._quiet):
            if read.connection is not None:
                connection, read.connection = read.connection, None
                await self._redis.connection_pool.release(connection)

    async def inspect(self) -> None:
        """Check every tracked stream: trim it to its bound, and drop and report a session
        whose key is gone, is not a stream, or floods past any honest writer's trimming."""
        async with self._inspecting:
            await self._inspect()

    async def _inspect(self) -> None:
        sessions = list(self._cursors)
        if not sessions:
            return
        states: list[list[Any]] = []
        for first in range(0, len(sessions), INSPECT_CHUNK):
            chunk = sessions[first : first + INSPECT_CHUNK]
            keys = [protocol.output_stream_key(session_id) for session_id in chunk]
            states += await self._stream_states(keys=keys)
        for session_id, (kind, added, length) in zip(sessions, states, strict=True):
            if kind == "none":
                await self._mark_lost(session_id)
                continue
            if kind != "stream":
                self.untrack(session_id)  # every XREAD including it would fail
                self._damaged(session_id, f"its output stream was replaced by a {kind}")
                continue
            known = max(
                self._entries_added.get(session_id, 0), self._entries_read.get(session_id, 0)
            )
            if added < known:
                # Fewer entries ever added than at the last look, or than the hub has read:
                # the stream was deleted and written again meanwhile, so its history is gone.
                await self._mark_lost(session_id)
            else:
                self._entries_added[session_id] = added
            if length <= self._maxlen:
                continue
            await self._bus.trim(session_id)
            if length > FLOOD_FACTOR * self._maxlen:
                self._damaged(
                    session_id,
                    f"its output stream was flooded ({length} entries; the bound is about "
                    f"{self._maxlen}, EVENT_STREAM_MAXLEN)",
                )

    async def _after_reconnect(self) -> None:
        """Redis is back. Streams whose newest entry is older than what the hub already read
        lost their tail (Redis came back from an older state): every later reader is told with
        a ``gap`` event in the stream."""
        for session_id, cursor in list(self._cursors.items()):
            try:
                info = await self._redis.xinfo_stream(protocol.output_stream_key(session_id))
            except aioredis.ResponseError:
                continue  # gone altogether: the inspection reports it
            newest = str(info.get("last-generated-id") or "0-0")
            # What Redis came back with is the history from now on (a lost tail is told below,
            # not taken for a deleted stream).
            self._entries_added[session_id] = int(info.get("entries-added") or 0)
            self._entries_read[session_id] = 0
            if parse_stream_id(newest) < parse_stream_id(cursor):
                log.warning(
                    "session %s: Redis lost its events after %s (read up to %s)",
                    session_id,
                    newest,
                    cursor,
                )
                await self._bus.publish(
                    session_id,
                    GatewayEvent.GAP,
                    after=newest,
                    first_available=None,
                    reason=f"Redis restarted without the events after {newest} (up to "
                    f"{cursor}); they were delivered live but are no longer kept",
                )
        self._disconnected = False
        self._next_inspection = 0.0  # a stream may be gone too: look now
        for handler in self._restart_handlers:
            try:
                handler()
            except Exception:
                log.exception("restart handler failed")

    async def _mark_lost(self, session_id: str) -> None:
        cursor = self._cursors.get(session_id)
        if cursor is None:  # untracked meanwhile (deleted): do not bring its key back
            return
        self._entries_added[session_id] = 0  # a new history starts with the gap below
        self._entries_read[session_id] = 0
        log.warning("session %s: its output stream vanished; writing a gap event", session_id)
        await self._bus.publish(
            session_id,
            GatewayEvent.GAP,
            after=cursor,
            first_available=None,
            reason="the output stream was lost (deleted, or Redis lost its data): events "
            f"after {cursor} are gone",
        )

    def _damaged(self, session_id: str, reason: str) -> None:
        log.warning("session %s: %s", session_id, reason)
        for handler in self._damage_handlers:
            try:
                handler(session_id, reason)
            except Exception:
                log.exception("damage handler failed for %s", session_id)

    def _dispatch(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception(
                    "event listener failed on event %s of session %s", event.id, event.session_id
                )
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
        self,
        session_id: str,
        after: str | None,
        *,
        track: bool = True,
        control: FollowControl | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Every event after cursor ``after`` ("0" for all, ``None`` for live only), then live
        events as they come, with no gap and no duplicate. Runs until the caller stops, the
        session is deleted, or ``control`` finishes it.
        ``track`` makes sure this process reads the session (pass False for ended sessions)."""
        last = after or await self._bus.last_id(session_id)
        if track:
            await self.track(session_id)
        while True:
            with self.subscribe(session_id) as subscription:
                if control is not None:
                    control.attach(subscription)
                gap = await self._bus.gap_after(session_id, last)
                if gap is not None:
                    yield gap
                try:
                    async for event in self._replay(session_id, last):
                        last = event.id
                        yield event
                except aioredis.ResponseError as error:
                    if not is_wrong_type(error):
                        raise
                    # Its writer broke the key: the inspection fails the session and resets
                    # the key to a fresh stream, whose events this follower then reads.
                    await asyncio.sleep(BROKEN_KEY_RETRY)
                    continue
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


def _xread_command(count: int, block: int, streams: dict[str, str]) -> bytes:
    """XREAD in Redis's wire format. With a hundred busy streams each read names them all,
    and redis-py's general packer took 6% of the event loop's time (117 us a read); this,
    which packs each stream's name once, 23 us."""
    return b"".join(
        [
            b"*%d\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n" % (6 + 2 * len(streams)),
            _bulk(str(count)),
            b"$5\r\nBLOCK\r\n",
            _bulk(str(block)),
            b"$7\r\nSTREAMS\r\n",
            *map(_packed_key, streams),
            *map(_bulk, streams.values()),
        ]
    )


def _bulk(value: str) -> bytes:
    data = value.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


# Every read names every stream it covers: what does not change between reads is made once.
_packed_key = functools.lru_cache(maxsize=4096)(_bulk)
_stream_key = functools.lru_cache(maxsize=4096)(protocol.output_stream_key)


def _pairs(flat: list[str] | None) -> dict[str, str]:
    """An entry's fields as XREAD sends them (name, value, name, value, ...)."""
    it = iter(flat or ())
    return dict(zip(it, it, strict=False))
