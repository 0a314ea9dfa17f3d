"""Nothing is lost: an interrupt at the first moment of a turn, a turn that ends while
PostgreSQL is down. Each test is written as the race or the fault it defends against."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.client import Api, is_claude, is_status, marker, mint_token, read_until
from tests.fake_anthropic import slow_text
from tests.stack import run_gateway, start_postgres

pytestmark = pytest.mark.docker

TURN_SECONDS = 12  # how long the first turn streams when nothing interrupts it
# The CLI cannot act on an interrupt before its turn has begun (a process's first turn first
# waits for its MCP servers: about 0.5 s, several seconds on a loaded machine), so the bound is
# counted from the moment the turn shows it began, or from the interrupt if that came later.
# Generous: a delivered interrupt ends the turn in well under a second.
INTERRUPT_BOUND = 3.0


def ends_turn(turn_id: str) -> Any:
    def check(envelope: dict[str, Any]) -> bool:
        event = envelope["event"]
        if envelope["source"] == "claude":
            return bool(event.get("type") == "result")
        return bool(event.get("type") == "turn_failed")

    return check


async def interrupt_when_busy(api: Api, fake_api: Any) -> tuple[float, float, dict[str, Any]]:
    """Create a session whose first turn (``prompt=``) streams for ~12 s, POST /interrupt the
    moment the WebSocket says ``busy``. Returns the seconds from the interrupt to the turn's
    end, from the turn's start (or the interrupt, if later) to its end, and the recorded turn."""
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
        began = sent
        while True:
            (envelope,) = await read_until(ws, lambda _: True, timeout=TURN_SECONDS + 30)
            if is_claude("system", "init")(envelope):
                began = max(sent, time.monotonic())
            if ends_turn(turn_id)(envelope):
                break
        ended = time.monotonic()
    await api.wait_status(sid, "ready", timeout=30)  # the recorder wrote the turn's end
    turns = (await api.http.get(f"/api/v1/sessions/{sid}/turns")).json()["turns"]
    await api.stop(sid)
    (turn,) = turns
    assert turn["id"] == turn_id
    return ended - sent, ended - began, turn


async def test_an_interrupt_the_moment_the_first_turn_is_busy_ends_it(api_for, fake_api) -> None:
    alice = api_for("alice")
    outcomes = await asyncio.gather(*(interrupt_when_busy(alice, fake_api) for _ in range(4)))
    print(
        "interrupt -> turn end, 4 sessions:",
        [round(total, 3) for total, _, _ in outcomes],
        "s; from the turn's start:",
        [round(after_start, 3) for _, after_start, _ in outcomes],
        "s",
    )
    for total, after_start, turn in outcomes:
        assert turn["status"] == "interrupted", turn
        assert after_start < INTERRUPT_BOUND, outcomes
        assert total < TURN_SECONDS, outcomes


async def test_a_turn_that_ends_while_postgresql_is_down_is_recorded(
    infra, fake_api, s3_endpoint, docker_client, tmp_path
) -> None:
    """PostgreSQL is stopped while a turn streams, so its result reaches the gateway while the
    database is down; once it is back, the turn is recorded and the session is ready."""
    tag = marker()
    fake_api.on(tag, slow_text(["written ", "while ", "down"], delay=1.5))
    with (
        start_postgres(docker_client, infra) as postgres,
        run_gateway(
            infra, fake_api.base_url, s3_endpoint, tmp_path, DATABASE_URL=postgres.database_url
        ) as gateway,
    ):
        api = Api(gateway.url, mint_token(gateway.jwt_secret, "alice"))
        try:
            session = await api.create()
            sid = session["id"]
            await api.wait_status(sid, "ready")
            async with api.stream(sid, after="$") as ws:
                accepted = await api.chat(sid, f"work {tag}", wait=False, expect=202)
                turn_id = accepted["turn"]["id"]
                await read_until(ws, is_claude("system", "init"))
                await asyncio.to_thread(postgres.stop)
                result = await read_until(ws, is_claude("result"), timeout=30)
            assert result[-1]["event"]["result"] == "written while down"

            # What the API answers meanwhile: 503 with a code, never a 500.
            down = await api.http.get(f"/api/v1/sessions/{sid}")
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "database_unavailable"
            assert int(down.headers["Retry-After"]) > 0
            refused = await api.http.post(f"/api/v1/sessions/{sid}/chat", json={"prompt": "x"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "database_unavailable"
            ready = await api.http.get("/ready")
            assert ready.status_code == 503
            assert "database" in ready.text
            assert "waits for it" in gateway.log_tail(400)  # the recorder met the outage
            await asyncio.sleep(3)  # down for a while: the recorder backs off and tries again

            await asyncio.to_thread(postgres.start)
            back = await api.wait_status(sid, "ready", timeout=30)
            assert back["current_turn_id"] is None
            turns = (await api.http.get(f"/api/v1/sessions/{sid}/turns")).json()["turns"]
            assert [(t["id"], t["status"], t["result_text"]) for t in turns] == [
                (turn_id, "completed", "written while down")
            ]
            await api.stop(sid)
        finally:
            await api.aclose()
