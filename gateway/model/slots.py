"""How many model calls an owner's sessions may have in flight, all replicas together.

A sorted set per owner in Redis holds the calls in flight, each scored by the moment it would
be given up as lost (its gateway died mid-call), so a crash frees its slot after the upstream
timeout at worst. Taking and giving back a slot is one round trip each.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from gateway import redis_keys

# KEYS[1]: the owner's set. ARGV: call id, limit, lifetime (ms). Returns 1 if taken, else 0.
_TAKE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


class CallSlots:
    def __init__(self, redis: aioredis.Redis, limit: int, lifetime_seconds: float) -> None:
        self._redis: Any = redis
        self._limit = limit
        self._lifetime_ms = int(lifetime_seconds * 1000) + 60_000
        self._take = self._redis.register_script(_TAKE)

    async def take(self, owner: str, call_id: str) -> bool:
        taken = await self._take(
            keys=[redis_keys.model_calls(owner)],
            args=[call_id, self._limit, self._lifetime_ms],
        )
        return bool(taken)

    async def give_back(self, owner: str, call_id: str) -> None:
        await self._redis.zrem(redis_keys.model_calls(owner), call_id)
