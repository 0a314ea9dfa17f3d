"""The shutdown state a gateway process shares between its server, readiness and streams
(gateway/draining.py); the whole sequence against a real process is
tests/e2e/test_graceful_shutdown.py."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import Settings
from gateway.draining import Drain, ShuttingDown
from gateway.main import create_app

SECRET = "s" * 40


async def test_open_streams_are_finished_and_awaited_new_ones_refused() -> None:
    drain = Drain()
    drain.refuse_new_streams()  # serving: nothing refused
    ended: list[int] = []

    async def stream(n: int) -> None:
        with drain.stream() as control:
            while not control.finished:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05 * n)  # sending what it holds, then closing
            ended.append(n)

    tasks = [asyncio.create_task(stream(n)) for n in range(3)]
    await asyncio.sleep(0.05)
    assert drain.open_streams == 3
    drain.draining = True
    with pytest.raises(ShuttingDown) as refused:
        drain.refuse_new_streams()
    assert refused.value.status == 503 and refused.value.code == "shutting_down"
    assert refused.value.headers["Retry-After"] == "1"
    assert await drain.close_streams(10) == 0
    assert sorted(ended) == [0, 1, 2]
    await asyncio.gather(*tasks)
    with drain.stream() as late:  # one that slipped in after the close is finished at once
        assert late.finished


async def test_a_stream_that_does_not_end_is_left_after_the_timeout() -> None:
    drain = Drain()
    release = asyncio.Event()

    async def stuck() -> None:
        with drain.stream():
            await release.wait()

    task = asyncio.create_task(stuck())
    await asyncio.sleep(0.05)
    assert await drain.close_streams(0.2) == 1
    release.set()
    await task
    assert drain.open_streams == 0


async def test_the_drain_waits_its_delay_unless_abandoned() -> None:
    drain = Drain()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await drain.shutdown(delay=30, stream_timeout=30, abandon=lambda: True)
    assert drain.draining
    assert loop.time() - start < 10  # a second Ctrl-C skips the wait


def test_an_app_has_a_drain_of_its_own_unless_given_one() -> None:
    settings = Settings(jwt_secret=SECRET)  # type: ignore[arg-type]
    shared = Drain()
    assert create_app(settings, shared).state.drain is shared
    assert isinstance(create_app(settings).state.drain, Drain)
    assert not create_app(settings).state.drain.draining
