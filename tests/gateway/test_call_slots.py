"""An owner's model call slots against a real Redis, with several replicas (``CallSlots``
instances) sharing it: the limit holds across them, a slot kept for the next call is handed out
without Redis, and kept slots never outlive their replica or crowd out another's calls."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from gateway import redis_keys
from gateway.model.slots import CallSlots

pytestmark = pytest.mark.docker

LINGER = 0.4


@pytest.fixture
async def redis(infra) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def owner() -> str:
    return f"slots-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def replicas(redis) -> AsyncIterator[Callable[[int], CallSlots]]:
    made: list[CallSlots] = []

    def make(limit: int) -> CallSlots:
        made.append(CallSlots(redis, limit, lifetime_seconds=30, linger_seconds=LINGER))
        return made[-1]

    yield make
    for slots in made:
        await slots.close()


async def counted(redis: aioredis.Redis, owner: str) -> int:
    """The owner's slots that count in Redis now (not lapsed)."""
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros // 1000
    return int(await redis.zcount(redis_keys.model_calls(owner), f"({now_ms}", "+inf"))


async def taken_in_redis(redis: aioredis.Redis, owner: str, expected: int) -> None:
    """Wait for the background writes to leave ``expected`` slots counted."""
    async with asyncio.timeout(5):
        while await counted(redis, owner) != expected:
            await asyncio.sleep(0.01)


async def test_the_next_call_gets_the_slot_kept_from_the_last_without_asking_redis(
    replicas, redis, owner
) -> None:
    slots = replicas(8)
    first = await slots.take(owner)
    assert first
    slots.give_back(owner, first)
    await redis.delete(redis_keys.model_calls(owner))  # Redis could not hand it out again
    assert await slots.take(owner) == first  # nor was it asked
    await taken_in_redis(redis, owner, 1)  # the reuse is written back: the call counts


async def test_a_kept_slot_about_to_lapse_is_not_handed_out(replicas, redis, owner) -> None:
    """Handing it out then would let it lapse in Redis mid-call: another replica could take
    the capacity the call still uses."""
    slots = replicas(8)
    first = await slots.take(owner)
    assert first
    slots.give_back(owner, first)
    await asyncio.sleep(LINGER * 0.8)  # less than a quarter of the linger left
    second = await slots.take(owner)
    assert second and second != first
    await taken_in_redis(redis, owner, 1)  # the kept one lapsed; the new one counts


async def test_a_reused_slot_lasts_as_long_as_a_call_may(replicas, redis, owner) -> None:
    slots = replicas(8)
    slot = await slots.take(owner)
    assert slot
    slots.give_back(owner, slot)
    await taken_in_redis(redis, owner, 1)
    assert await slots.take(owner) == slot
    async with asyncio.timeout(5):  # moved from "lapses after the linger" to the lifetime
        while True:
            seconds, micros = await redis.time()
            now_ms = seconds * 1000 + micros // 1000
            score = await redis.zscore(redis_keys.model_calls(owner), slot)
            if score is not None and score > now_ms + 20_000:
                break
            await asyncio.sleep(0.01)


async def test_replicas_together_never_have_more_calls_in_flight_than_the_limit(
    replicas, owner
) -> None:
    limit = 6
    fleet = [replicas(limit) for _ in range(3)]
    in_flight = 0
    most = 0
    refused = 0

    async def calls(slots: CallSlots) -> None:
        nonlocal in_flight, most, refused
        for _ in range(40):
            slot = await slots.take(owner)
            if slot is None:
                refused += 1
                await asyncio.sleep(0.01)
                continue
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(random.uniform(0, 0.02))
            in_flight -= 1
            slots.give_back(owner, slot)
            await asyncio.sleep(random.uniform(0, 0.01))

    await asyncio.gather(*(calls(fleet[i % 3]) for i in range(12)))
    assert most <= limit
    assert refused > 0  # twelve callers for six slots: the limit was reached and held


async def test_a_slot_kept_on_one_replica_frees_itself_for_another_after_the_linger(
    replicas, redis, owner
) -> None:
    one, other = replicas(2), replicas(2)
    kept = await one.take(owner)
    assert kept
    one.give_back(owner, kept)  # one of two in flight: kept for a next call on `one`
    held = await other.take(owner)
    assert held
    await taken_in_redis(redis, owner, 2)
    assert await other.take(owner) is None  # the kept slot counts toward the limit
    started = time.monotonic()
    async with asyncio.timeout(5):
        while await other.take(owner) is None:
            await asyncio.sleep(0.02)
    assert time.monotonic() - started < LINGER + 1


async def test_a_crashed_replicas_kept_slots_lapse_by_themselves(replicas, redis, owner) -> None:
    crashed = CallSlots(redis, 8, lifetime_seconds=30, linger_seconds=LINGER)
    taken = [await crashed.take(owner) for _ in range(3)]
    for slot in taken:
        assert slot
        crashed.give_back(owner, slot)
    await taken_in_redis(redis, owner, 3)
    # `crashed` is never closed: its process died. Within the linger, its slots free.
    survivor = replicas(8)
    async with asyncio.timeout(LINGER + 2):
        await taken_in_redis(redis, owner, 0)
    assert all([await survivor.take(owner) for _ in range(8)])


async def test_near_the_limit_a_slot_goes_back_as_its_call_ends(redis, owner) -> None:
    # Slots kept would count for 30 s: only one given back at once frees in time.
    one, other = (CallSlots(redis, 4, lifetime_seconds=30, linger_seconds=30) for _ in range(2))
    try:
        taken = [await one.take(owner) for _ in range(3)]  # three of four: past half
        assert all(taken)
        one.give_back(owner, taken[2])
        await taken_in_redis(redis, owner, 2)
        assert await other.take(owner)
        assert await other.take(owner)
        assert await other.take(owner) is None
    finally:
        await one.close()
        await other.close()


async def test_a_replica_that_shuts_down_gives_back_the_slots_it_kept(redis, owner) -> None:
    slots = CallSlots(redis, 8, lifetime_seconds=30, linger_seconds=30)
    slot = await slots.take(owner)
    assert slot
    slots.give_back(owner, slot)
    await taken_in_redis(redis, owner, 1)
    await slots.close()
    assert await counted(redis, owner) == 0


async def test_slots_are_recorded_after_redis_lost_its_scripts(replicas, redis, owner) -> None:
    """Calls ending together are written in one batch; a Redis that restarted without its
    script cache (or had it flushed) must not lose them."""
    slots = replicas(16)
    taken = [await slots.take(owner) for _ in range(6)]
    await redis.script_flush()
    for slot in taken:
        assert slot
        slots.give_back(owner, slot)  # queued together: one pipelined batch
    async with asyncio.timeout(5):  # each now lapses after the linger, not the lifetime
        while True:
            seconds, micros = await redis.time()
            soon = seconds * 1000 + micros // 1000 + LINGER * 1000 + 100
            key = redis_keys.model_calls(owner)
            if await redis.zcount(key, "-inf", soon) == len(taken):
                break
            await asyncio.sleep(0.01)
