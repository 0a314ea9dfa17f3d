"""The event hub against a real Redis: replay, live fan-out, lag recovery, multiplexing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from gateway.events.bus import Event, EventBus
from gateway.events.hub import EventHub, FollowControl, _xread_command
from wrapper.aio import cancel_and_wait
from wrapper.protocol import GatewayEvent

pytestmark = pytest.mark.docker


@pytest.fixture
async def hub_and_bus(infra) -> AsyncIterator[tuple[EventHub, EventBus]]:
    client = aioredis.Redis.from_url(
        infra.redis_url, decode_responses=True, socket_connect_timeout=5
    )
    reader = aioredis.Redis.from_url(
        infra.redis_url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5
    )
    bus = EventBus(client, maxlen=100_000)
    hub = EventHub(reader, bus, block_ms=2000, batch=50, subscriber_queue=5)
    task = asyncio.create_task(hub.run())
    yield hub, bus
    async with asyncio.timeout(15):  # a hang here is a bug; fail rather than stall the run
        await cancel_and_wait([task])
        await client.aclose()
        await reader.aclose()


async def publish(bus: EventBus, session_id: str, count: int) -> list[str]:
    return [
        await bus.publish(session_id, GatewayEvent.ERROR, code=f"c{i}", message="m")
        for i in range(count)
    ]


async def test_follow_replays_then_streams_live_and_recovers_from_lag(hub_and_bus) -> None:
    hub, bus = hub_and_bus
    sid = str(uuid.uuid4())
    before = await publish(bus, sid, 120)  # more than one replay batch
    received: list[str] = []

    async def slow_reader() -> None:
        async for event in hub.follow(sid, "0"):
            received.append(event.id)
            await asyncio.sleep(0.002)  # slower than the publisher: its queue of 5 overflows
            if len(received) == 420:
                return

    reader = asyncio.create_task(slow_reader())
    await asyncio.sleep(0.1)
    after = await publish(bus, sid, 300)
    await asyncio.wait_for(reader, 30)
    assert received == before + after  # every event, in order, exactly once


async def test_follow_after_a_cursor_and_live_only(hub_and_bus) -> None:
    hub, bus = hub_and_bus
    sid = str(uuid.uuid4())
    ids = await publish(bus, sid, 5)

    async def first(after: str | None, n: int) -> list[str]:
        out: list[str] = []
        async for event in hub.follow(sid, after):
            out.append(event.id)
            if len(out) == n:
                return out
        return out

    assert await asyncio.wait_for(first(ids[1], 3), 5) == ids[2:]
    live = asyncio.create_task(first(None, 2))
    await asyncio.sleep(0.2)
    more = await publish(bus, sid, 2)
    assert await asyncio.wait_for(live, 5) == more


async def test_a_finished_follow_yields_what_it_holds_then_ends(hub_and_bus) -> None:
    """What a shutting-down gateway does to each WebSocket: the events already read for it
    are still delivered, nothing after them, and a follow waiting for more ends at once."""
    hub, bus = hub_and_bus
    sid = str(uuid.uuid4())
    dispatched: list[str] = []
    # listeners run in the same dispatch that queues an event for the subscribers
    hub.add_listener(lambda event: dispatched.append(event.id))
    first = await publish(bus, sid, 1)
    control = FollowControl()
    got: list[str] = []
    gate = asyncio.Event()

    async def busy_reader() -> None:
        async for event in hub.follow(sid, "0", control=control):
            got.append(event.id)
            await gate.wait()  # busy: what arrives meanwhile waits in its queue

    reader = asyncio.create_task(busy_reader())
    async with asyncio.timeout(10):
        while not got:
            await asyncio.sleep(0.01)
    held = await publish(bus, sid, 3)
    async with asyncio.timeout(10):
        while not set(held) <= set(dispatched):
            await asyncio.sleep(0.01)
    control.finish()
    gate.set()
    await asyncio.wait_for(reader, 10)
    assert got == first + held
    assert control.finished

    # finished while waiting with nothing held: it ends at once
    idle = FollowControl()
    more: list[str] = []

    async def idle_reader() -> None:
        async for event in hub.follow(sid, held[-1], control=idle):
            more.append(event.id)

    waiting = asyncio.create_task(idle_reader())
    await asyncio.sleep(0.2)  # usually waiting by now; finished earlier, it ends all the same
    idle.finish()
    await asyncio.wait_for(waiting, 10)
    assert more == []


async def test_listeners_see_every_tracked_session_in_order(hub_and_bus) -> None:
    hub, bus = hub_and_bus
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    seen: dict[str, list[str]] = {a: [], b: []}

    def listener(event: Event) -> None:
        if event.session_id in seen:
            seen[event.session_id].append(event.id)

    hub.add_listener(listener)
    await hub.track(a, after="0-0")
    await hub.track(b, after="0-0")
    published = {a: [], b: []}
    for _ in range(10):
        for sid in (a, b):
            published[sid] += await publish(bus, sid, 3)
    async with asyncio.timeout(5):
        while seen != published:
            await asyncio.sleep(0.02)
    hub.untrack(a)
    await publish(bus, a, 3)
    await publish(bus, b, 1)
    async with asyncio.timeout(5):
        while len(seen[b]) != 31:
            await asyncio.sleep(0.02)
    assert seen[a] == published[a]  # nothing after untrack


async def test_streams_going_quiet_and_busy_again_lose_and_repeat_nothing(infra) -> None:
    """The hub reads busy and quiet streams with two XREADs and hands streams between them:
    every event is seen once, in order, whichever read holds its stream when it comes."""
    client = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    reader = aioredis.Redis.from_url(infra.redis_url, decode_responses=True, socket_timeout=10)
    bus = EventBus(client, maxlen=100_000)
    hub = EventHub(reader, bus, block_ms=300, batch=50, quiet_after=0.2)
    task = asyncio.create_task(hub.run())
    talker, sleeper = str(uuid.uuid4()), str(uuid.uuid4())
    seen: dict[str, list[str]] = {talker: [], sleeper: []}
    hub.add_listener(lambda event: seen[event.session_id].append(event.id))
    # Streams that exist before they are tracked (a missing one gets a gap event).
    published = {sid: await publish(bus, sid, 1) for sid in (talker, sleeper)}
    try:
        await hub.track(talker, after="0-0")
        await hub.track(sleeper, after="0-0")
        for round_ in range(4):
            # The sleeper goes quiet while the talker streams; then it speaks up again.
            async with asyncio.timeout(10):
                while sleeper not in hub._quiet.sessions:
                    published[talker] += await publish(bus, talker, 1)
                    await asyncio.sleep(0.02)
            assert talker not in hub._quiet.sessions
            published[sleeper] += await publish(bus, sleeper, 2 + round_)
            async with asyncio.timeout(5):
                while seen != published:
                    await asyncio.sleep(0.01)
            assert sleeper in hub._busy.sessions  # its event brought it back to the busy read
        # Both quiet now: the next events still come, once each.
        async with asyncio.timeout(10):
            while hub._busy.sessions:
                await asyncio.sleep(0.05)
        for sid in (talker, sleeper):
            published[sid] += await publish(bus, sid, 3)
        async with asyncio.timeout(5):
            while seen != published:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # and nothing comes twice afterwards
        assert seen == published
    finally:
        async with asyncio.timeout(15):
            await cancel_and_wait([task])
            await client.aclose()
            await reader.aclose()


async def test_a_reader_resynchronised_past_trimmed_events_gets_a_gap_first(infra) -> None:
    """A reader that lags while its events are trimmed is told so (the mechanism the WebSocket
    and the chat SSE stream share), then gets what is left, in order, once each."""
    client = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    reader = aioredis.Redis.from_url(infra.redis_url, decode_responses=True, socket_timeout=10)
    bus = EventBus(client, maxlen=100)
    hub = EventHub(reader, bus, block_ms=2000, batch=50, subscriber_queue=5)
    task = asyncio.create_task(hub.run())
    sid = str(uuid.uuid4())
    try:
        first = await publish(bus, sid, 1)
        received: list[Event] = []
        stalled = asyncio.Event()
        last: list[str] = ["never"]

        async def stalling_reader() -> None:
            async for event in hub.follow(sid, "0"):
                received.append(event)
                if len(received) == 2:
                    await stalled.wait()  # meanwhile its queue overflows and events are trimmed
                if not event.is_notice and event.id == last[-1]:
                    return

        consumer = asyncio.create_task(stalling_reader())
        await asyncio.sleep(0.2)
        last = await publish(bus, sid, 1)  # the second event it sees
        await asyncio.sleep(0.2)
        last = await publish(bus, sid, 400)  # far more than is kept
        stalled.set()
        await asyncio.wait_for(consumer, 20)
        assert [e.id for e in received[:2]] == [first[0], received[1].id]
        gaps = [e for e in received if e.is_notice]
        assert len(gaps) == 1
        at = received.index(gaps[0])
        assert gaps[0].payload["after"] == received[at - 1].id  # the last one it got
        after_gap = [e.id for e in received[at + 1 :]]
        assert after_gap[0] == gaps[0].payload["first_available"]
        assert after_gap == sorted(after_gap, key=lambda i: tuple(map(int, i.split("-"))))
        assert len(set(after_gap)) == len(after_gap) and after_gap[-1] == last[-1]
    finally:
        await cancel_and_wait([task])
        await client.aclose()
        await reader.aclose()


async def test_readers_arriving_while_a_key_is_broken_get_what_follows_its_repair(
    hub_and_bus, infra
) -> None:
    """A session's key turned into a string before a reader's first look (the race a stream
    opened just before the damage runs): no reader fails; each gets the events written into
    the fresh stream once the gateway has reset it, as the termination service does."""
    hub, bus = hub_and_bus
    sid = str(uuid.uuid4())
    await publish(bus, sid, 3)
    await hub.track(sid)
    repaired: list[str] = []

    async def repair(session_id: str) -> None:
        await bus.reset_broken(session_id)
        repaired.append(await bus.publish(session_id, GatewayEvent.STATUS, status="failed"))
        await hub.track(session_id, after="0-0")

    hub.on_damage(lambda session_id, _reason: asyncio.create_task(repair(session_id)))
    admin = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    try:
        key = f"ccd:session:{sid}:out"
        await admin.delete(key)
        await admin.set(key, "not a stream")
    finally:
        await admin.aclose()

    async def first_event(after: str | None) -> str:
        async for event in hub.follow(sid, after):
            return event.id
        raise AssertionError("the follow ended")

    readers = [asyncio.create_task(first_event(after)) for after in (None, "0")]
    got = await asyncio.wait_for(asyncio.gather(*readers), 20)
    assert got == repaired * 2


def test_the_hubs_xread_is_the_command_redis_py_would_send() -> None:
    """The hub packs its XREAD itself (it names every busy stream on every read); a framing
    slip would be a protocol error on every read, or worse, another command."""
    streams = {"ccd:session:a:out": "1-0", "ccd:session:é:out": "0-0", "wake": "17-3"}
    expected = Connection().pack_command(
        "XREAD", "COUNT", 50, "BLOCK", 2000, "STREAMS", *streams, *streams.values()
    )
    assert _xread_command(50, 2000, streams) == b"".join(expected)
