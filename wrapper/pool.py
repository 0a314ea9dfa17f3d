"""A pooled container's wait for its claim: the one moment it learns which session it is.

The container was started ahead of demand with no session's identity or secret, and its CLI
already booted. The gateway's claim arrives on a Redis list only this container's pool user may
pop; until then the wrapper holds nothing worth stealing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis

from wrapper.aio import cancel_and_wait
from wrapper.config import PoolSettings
from wrapper.protocol import PoolClaim, pool_claim_key

log = logging.getLogger(__name__)

RETRY_MAX = 5.0  # seconds between attempts while Redis cannot be reached


async def wait_for_claim(pool: PoolSettings, stop: asyncio.Event) -> PoolClaim | None:
    """The claim, or ``None`` when the container is stopped first. Survives Redis restarts
    (a claim pushed meanwhile is still in its list)."""
    waiter = asyncio.create_task(_pop_claim(pool))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            return waiter.result()
        return None
    finally:
        await cancel_and_wait([waiter, stopper])


async def _pop_claim(pool: PoolSettings) -> PoolClaim:
    key = pool_claim_key(pool.pool_id)
    backoff = 0.1
    while True:
        client = aioredis.Redis.from_url(pool.redis_url, socket_connect_timeout=5)
        try:
            reply = await client.blpop([key], timeout=0)
            if reply is not None:
                return PoolClaim.model_validate_json(reply[1])
        except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
            log.warning("pool %s: Redis unreachable (%s); retrying", pool.pool_id, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
