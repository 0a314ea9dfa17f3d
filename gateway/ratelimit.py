"""Per-owner request rate limit, shared by every gateway replica through Redis.

GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): each owner has a
"theoretical arrival time" (TAT). A request at ``now`` is allowed when ``TAT - now`` stays within
``burst`` emission intervals; then TAT advances by one interval. ``RATE_LIMIT_BURST`` requests
pass at once, then ``RATE_LIMIT_PER_SECOND`` sustained. One Lua script, one round trip, the
clock is Redis's own (``TIME``), so replicas with skewed clocks share one bucket fairly.

If Redis does not answer, requests are let through (availability over limiting) and one
warning is logged per outage; recovery is logged once too.
"""

from __future__ import annotations

import asyncio
import logging
import math

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway import redis_keys

log = logging.getLogger(__name__)

# KEYS[1]: the owner's bucket. ARGV[1]: emission interval (us), ARGV[2]: burst tolerance (us).
# Returns {1, 0} when allowed, {0, microseconds until it would be}.
_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + interval
local allowed_at = new_tat - tolerance
if now < allowed_at then
  return {0, allowed_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat),
           'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
"""

DEFAULT_TIMEOUT = 0.5


class RateLimiter:
    """``retry_after(owner)``: ``None`` if the request may go on, else whole seconds (>= 1)
    until it would be allowed. ``per_second`` 0 turns the limit off."""

    def __init__(
        self,
        redis: aioredis.Redis,
        per_second: float,
        burst: int,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.enabled = per_second > 0
        self._interval_us = max(1, round(1_000_000 / per_second)) if self.enabled else 0
        self._tolerance_us = self._interval_us * burst
        self._script = redis.register_script(_GCRA)
        self._timeout = timeout
        self._failing = False

    async def retry_after(self, owner: str) -> int | None:
        if not self.enabled:
            return None
        try:
            async with asyncio.timeout(self._timeout):
                allowed, wait_us = await self._script(
                    keys=[redis_keys.rate_limit(owner)],
                    args=[self._interval_us, self._tolerance_us],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "rate limit not enforced: Redis did not answer (%s: %s); requests pass "
                    "unlimited until it does",
                    type(exc).__name__,
                    exc,
                )
            return None
        if self._failing:
            self._failing = False
            log.info("rate limit enforced again: Redis answers")
        if int(allowed) == 1:
            return None
        return max(1, math.ceil(int(wait_us) / 1_000_000))
