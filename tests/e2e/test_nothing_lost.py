"""Nothing is lost: an interrupt at the first moment of a turn, a turn that ends while
PostgreSQL is down. Each test is written as the race or the fault it defends against."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.client import Api, is_status, marker, read_until
from tests.fake_anthropic import slow_text

pytestmark = pytest.mark.docker

TURN_SECONDS = 12  # how long the first turn streams when nothing interrupts it
INTERRUPT_BOUND = 5.0  # generous; an interrupt that works ends the turn in well under 1 s


def ends_turn(turn_id: str) -> Any:
    def check(envelope: dict[str, Any]) -> bool:
        event = envelope["event"]
        if envelope["source"] == "claude":
            return bool(event.get("type") == "result")
        return event.get("type") == "turn_failed" and event.get("turn_id", turn_id) == turn_id

    return check


async def interrupt_when_busy(api: Api, fake_api: Any) -> tuple[float, dict[str, Any]]:
    """Create a session whose first turn (``prompt=``) streams for ~12 s, POST /interrupt the
    moment the WebSocket says ``busy``; returns how long the turn took to end after the
    interrupt was accepted, and the recorded turn."""
    tag = marker()
    fake_api.on(tag, slow_text([f"w{i} " for i in range(TURN_SECONDS + 1)], delay=1.0))
    session = await api.create(prompt=f"talk slowly {tag}")
    sid = session["id"]
    async with api.stream(sid) as ws:
        await read_until(ws, is_status("busy"), timeout=60)
        sent = time.monotonic()
        response = await api.http.post(f"/api/v1/sessions/{sid}/interrupt")
        assert response.status_code == 202, response.text
        turn_id = response.json()["turn_id"]
        await read_until(ws, ends_turn(turn_id), timeout=TURN_SECONDS + 30)
        took = time.monotonic() - sent
    await api.wait_status(sid, "ready", timeout=30)  # the recorder wrote the turn's end
    turns = (await api.http.get(f"/api/v1/sessions/{sid}/turns")).json()["turns"]
    await api.stop(sid)
    (turn,) = turns
    return took, turn


async def test_an_interrupt_the_moment_the_first_turn_is_busy_ends_it(api_for, fake_api) -> None:
    alice = api_for("alice")
    outcomes = await asyncio.gather(*(interrupt_when_busy(alice, fake_api) for _ in range(4)))
    took = [round(seconds, 3) for seconds, _ in outcomes]
    print(f"interrupt -> turn end, 4 sessions: {took} s")
    for seconds, turn in outcomes:
        assert turn["status"] == "interrupted", turn
        assert seconds < INTERRUPT_BOUND, took
