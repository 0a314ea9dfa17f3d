"""How many model calls an owner's sessions may have in flight, all replicas together.

A sorted set per owner in Redis holds the slots taken, each scored by the moment it lapses, so
a crashed gateway's slots free themselves. Taking a slot from Redis is one round trip, on the
call's way to the upstream.

A replica keeps a slot for a moment after its call ends (``linger``) and hands it to the
owner's next call here without asking Redis: a session's CLI makes its calls one after another,
and on a quiet machine a round trip to Redis costs 0.5-0.9 ms of the call's time to first
byte (it wakes two processes), more than the rest of the proxy's own work. A kept slot still
counts toward the owner's limit, but in Redis it lapses by itself at most ``linger`` after it
was first kept, so a crashed replica's kept slots free themselves within the linger; a kept
slot is handed out only while a quarter of the linger is left before that lapse. Slots are
kept only while the owner has at most half its limit taken, so near the limit every slot goes
back as its call ends.

Writes never delay a call: what a call's end changes (a slot given back, or kept and so
shortened from a call's lifetime to the linger) and the extension of a kept slot whose call
outlasts it are written in the background, in order, by one writer per replica (a lapse time
cannot be set back by a write that overtook another). A short call on a kept slot writes
nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from gateway import redis_keys

log = logging.getLogger(__name__)

# A slot that Redis could not count (it was down): the call goes ahead uncounted.
UNCOUNTED = ""
_WRITE_BATCH = 256

# Redis's own clock in ms, so every replica scores slots by one clock.
_NOW_MS = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
"""

# KEYS[1]: the owner's set. ARGV: slot id, limit, lifetime (ms). Returns 0 if refused, else
# the number of slots taken, this one included.
_TAKE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local taken = redis.call('ZCARD', KEYS[1])
if taken >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return taken + 1
"""
)

# KEYS[1]: the owner's set. ARGV: slot id, lapse after (ms), key lifetime (ms), "in use" (1:
# counted again even if it lapsed, for its call is running; 0: only moved if still there).
# Returns the number of slots taken.
_RESCORE = (
    _NOW_MS
    + """
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
else
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
"""
)


@dataclass
class _Held:
    """A slot this replica holds, in a call or kept for the next."""

    owner: str
    lapses_at: float  # monotonic; no later than Redis lets it lapse (as last written)
    extending: asyncio.TimerHandle | None = None  # while in a call: before it lapses


class CallSlots:
    def __init__(
        self,
        redis: aioredis.Redis,
        limit: int,
        lifetime_seconds: float,
        linger_seconds: float = 2.0,
    ) -> None:
        self._redis: Any = redis
        self._limit = limit
        self._lifetime = lifetime_seconds + 60
        self._linger = linger_seconds
        # A write that moves a slot's lapse is sent this long before the lapse it moves.
        self._margin = linger_seconds / 4
        self._take_script = self._redis.register_script(_TAKE)
        self._rescore = self._redis.register_script(_RESCORE)
        self._held: dict[str, _Held] = {}
        self._kept: dict[str, list[str]] = {}  # per owner, the slots kept here, last kept last
        # Per owner, the slots taken as last heard from Redis, and when (forgotten once stale).
        self._load: dict[str, tuple[int, float]] = {}
        self._forgotten_at = time.monotonic()
        self._writes: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def take(self, owner: str) -> str | None:
        """A slot for one call of ``owner``'s (its id), or ``None`` when the owner has its
        limit in flight. Raises ``RedisError`` when Redis cannot tell."""
        kept = self._kept.get(owner)
        now = time.monotonic()
        while kept:
            slot = kept.pop()
            held = self._held[slot]
            if self._usable(held, now):
                self._in_call(slot, held, now)
                return slot
            del self._held[slot]  # too close to lapsing: Redis drops it by itself
        slot = uuid.uuid4().hex
        taken = await self._take_script(
            keys=[redis_keys.model_calls(owner)],
            args=[slot, self._limit, int(self._lifetime * 1000)],
        )
        if not taken:
            return None
        self._heard(owner, taken)
        held = _Held(owner, now + self._lifetime)
        self._held[slot] = held
        self._in_call(slot, held, now)
        return slot

    def give_back(self, owner: str, slot: str) -> None:
        """The call holding ``slot`` ended: the slot is kept for the owner's next call here,
        or given back to the fleet."""
        held = self._held.get(slot)
        if held is None or held.extending is None:  # uncounted, or given back already
            return
        held.extending.cancel()
        held.extending = None
        taken, _ = self._load.get(owner, (self._limit, 0.0))
        now = time.monotonic()
        if self._linger <= 0 or taken > self._limit // 2:
            del self._held[slot]
            self._write("free", owner, slot)
            return
        if held.lapses_at > now + self._linger:  # counted for a call's lifetime: shorten
            held.lapses_at = now + self._linger
            self._write("keep", owner, slot)
        self._kept.setdefault(owner, []).append(slot)

    async def close(self) -> None:
        """Give back the slots kept here, once what was written before has been."""
        for owner, kept in self._kept.items():
            for slot in kept:
                self._held.pop(slot, None)
                self._write("free", owner, slot)
        self._kept.clear()
        if self._writer is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._writes.join()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    def _usable(self, held: _Held, now: float) -> bool:
        """Whether a kept slot may be handed out: its lapse is far enough off for the write
        that extends it, should its call outlast it, to land first."""
        return held.lapses_at - self._margin > now

    def _in_call(self, slot: str, held: _Held, now: float) -> None:
        """``slot`` is in a call from ``now``: should the call outlast the slot's lapse, it is
        counted for a call's lifetime first. Most calls end before: nothing to write."""
        held.extending = asyncio.get_running_loop().call_later(
            max(0.0, held.lapses_at - self._margin - now), self._extend, slot
        )

    def _extend(self, slot: str) -> None:
        held = self._held.get(slot)
        if held is None:
            return
        held.lapses_at = time.monotonic() + self._lifetime
        self._write("use", held.owner, slot)
        self._in_call(slot, held, time.monotonic())

    def _write(self, kind: str, owner: str, slot: str) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name="call-slot-writer")
        self._writes.put_nowait((kind, owner, slot))

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._writes.get()]
            while len(batch) < _WRITE_BATCH and not self._writes.empty():
                batch.append(self._writes.get_nowait())
            try:
                await self._apply(batch)
            except RedisError as exc:  # what was not written lapses by itself
                log.warning("could not record %d model call slots: %s", len(batch), exc)
            finally:
                for _ in batch:
                    self._writes.task_done()
            self._forget_lapsed()

    async def _apply(self, batch: list[tuple[str, str, str]]) -> None:
        if len(batch) == 1:  # the usual case: no pipeline to build
            kind, owner, slot = batch[0]
            if kind == "free":
                await self._redis.zrem(redis_keys.model_calls(owner), slot)
            else:
                keys, args = self._rescoring(kind, owner, slot)
                self._heard(owner, await self._rescore(keys=keys, args=args))
            return
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for kind, owner, slot in batch:
                if kind == "free":
                    pipe.zrem(redis_keys.model_calls(owner), slot)
                else:
                    keys, args = self._rescoring(kind, owner, slot)
                    pipe.evalsha(self._rescore.sha, 1, *keys, *args)
            results = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                await self._redis.script_load(_RESCORE)  # Redis lost its scripts: once more
                continue
            for (kind, owner, _), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    raise result
                if kind != "free":
                    self._heard(owner, result)
            return

    def _rescoring(self, kind: str, owner: str, slot: str) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of a rescore: a slot handed out again is counted for a
        call's lifetime; one kept lapses after the linger."""
        in_use = kind == "use"
        lapse = self._lifetime if in_use else self._linger
        lifetime_ms = int(self._lifetime * 1000)
        return [redis_keys.model_calls(owner)], [slot, int(lapse * 1000), lifetime_ms, int(in_use)]

    def _heard(self, owner: str, taken: Any) -> None:
        self._load[owner] = (int(taken), time.monotonic())

    def _forget_lapsed(self) -> None:
        """Drop kept slots too close to lapsing to hand out (Redis drops them by itself) and
        figures too old to matter, at most once per linger."""
        now = time.monotonic()
        if now - self._forgotten_at < max(self._linger, 1.0):
            return
        self._forgotten_at = now
        for owner in list(self._kept):
            kept = []
            for slot in self._kept[owner]:
                if self._usable(self._held[slot], now):
                    kept.append(slot)
                else:
                    del self._held[slot]
            if kept:
                self._kept[owner] = kept
            else:
                del self._kept[owner]
        stale = now - self._lifetime
        for owner in [owner for owner, (_, heard) in self._load.items() if heard < stale]:
            del self._load[owner]
