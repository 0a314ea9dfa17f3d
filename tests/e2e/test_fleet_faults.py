"""Three real gateway replicas of one instance behind the test's own load balancer, each with
its own port, sharing a PostgreSQL and a Redis of this module's own (so the faults played here
touch nothing else), the real CLI in real containers: any replica serves any session, and the
faults a fleet meets lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, WebSocketException

from tests.client import Api, marker
from tests.fake_anthropic import slow_text, text
from tests.fleet import Fleet, token
from tests.stack import start_postgres, start_redis

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def fleet(infra, fake_api, s3_endpoint, docker_client, tmp_path_factory) -> Iterator[Any]:
    with (
        start_postgres(docker_client, infra) as postgres,
        start_redis(docker_client, infra) as redis,
    ):
        fleet = Fleet(
            infra,
            fake_api.base_url,
            s3_endpoint,
            tmp_path_factory.mktemp("fleet"),
            overrides={
                "DATABASE_URL": postgres.database_url,
                "REDIS_URL": redis.url,
                "SESSION_REDIS_URL": redis.session_url,
                "LEASE_TTL": "3",
                # A CLI whose model call broke with its replica tries again (through the
                # balancer, so on another replica), as it would in production.
                "CLAUDE_CODE_MAX_RETRIES": "6",
            },
        )
        with fleet.running():
            fleet.postgres, fleet.redis = postgres, redis  # type: ignore[attr-defined]
            yield fleet


def api(fleet: Fleet, url: str | None = None, owner: str = "alice") -> Api:
    return Api(url or fleet.url, token(fleet, owner))


class Follower:
    """Follows a session's stream through the balancer, reconnecting with ``?after=`` whenever
    the connection drops (its replica died), and keeps every envelope it was given."""

    def __init__(self, client: Api, session_id: str, then: Api | None = None) -> None:
        """``then``: where to reconnect after the first drop (default ``client``)."""
        self.client = client
        self.then = then or client
        self.session_id = session_id
        self.envelopes: list[dict[str, Any]] = []
        self.reconnects = 0
        self.close_codes: list[int] = []

    @property
    def last_id(self) -> str:
        ids = [e["id"] for e in self.envelopes if e["id"]]
        return ids[-1] if ids else "0"

    async def until(self, predicate: Any, timeout: float = 90) -> None:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    async with self.client.stream(self.session_id, after=self.last_id) as ws:
                        async for raw in ws:
                            envelope = json.loads(raw)
                            envelope["_received"] = time.time()  # for latency figures
                            self.envelopes.append(envelope)
                            if predicate(envelope):
                                return
                        # Closed cleanly by the server (a drain): resume elsewhere.
                        if ws.close_code is not None:
                            self.close_codes.append(ws.close_code)
                        self.reconnects += 1
                        self.client = self.then
                except (WebSocketException, OSError) as exc:  # its replica went, or a refusal
                    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
                        self.close_codes.append(exc.rcvd.code)
                    self.reconnects += 1
                    self.client = self.then
                    await asyncio.sleep(0.3)

    def ids(self) -> list[str]:
        return [e["id"] for e in self.envelopes if e["id"]]


def is_result(envelope: dict[str, Any]) -> bool:
    return envelope["source"] == "claude" and envelope["event"].get("type") == "result"


def assert_exactly_once(follower: Follower) -> None:
    ids = follower.ids()
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


async def test_any_replica_serves_any_session(fleet, fake_api) -> None:
    first, second, third = (r.url for r in fleet.replicas)  # type: ignore[union-attr]
    creator, viewer, chatter = api(fleet, first), api(fleet, second), api(fleet, third)
    try:
        tag = marker()
        fake_api.on(tag, text(f"served {tag}"))
        session = await creator.create()
        follower = Follower(viewer, session["id"])
        watching = asyncio.create_task(follower.until(is_result))
        await chatter.wait_status(session["id"], "ready")
        reply = await chatter.chat(session["id"], f"hello {tag}")
        assert reply["result"]["result"] == f"served {tag}"
        await watching
        assert follower.envelopes[-1]["event"]["result"] == f"served {tag}"
        await creator.stop(session["id"])
    finally:
        for client in (creator, viewer, chatter):
            await client.aclose()


async def test_a_replica_killed_during_turns_loses_no_result(fleet, fake_api) -> None:
    client = api(fleet)
    try:
        tag = marker()
        fake_api.on(tag, slow_text(["long ", "running ", "answer"], delay=1.5))
        sessions = [await client.create() for _ in range(3)]
        for session in sessions:
            await client.wait_status(session["id"], "ready")
        followers = [Follower(client, s["id"]) for s in sessions]
        watching = [asyncio.create_task(f.until(is_result, timeout=120)) for f in followers]
        for session in sessions:
            await client.chat(session["id"], f"work {tag}", wait=False, expect=202)
        await asyncio.sleep(1.0)
        fleet.stop(0, signal.SIGKILL)  # mid-turn: its streams and model calls die with it
        await asyncio.gather(*watching)
        for follower in followers:
            assert_exactly_once(follower)
            assert follower.envelopes[-1]["event"]["result"] == "long running answer"
        for session in sessions:
            turns = (await client.http.get(f"/api/v1/sessions/{session['id']}/turns")).json()
            assert [(t["status"], t["result_text"]) for t in turns["turns"]] == [
                ("completed", "long running answer")
            ]
            await client.stop(session["id"])
    finally:
        await client.aclose()
        fleet.start(0)


async def test_a_replica_stopped_with_a_websocket_attached_drains_it(fleet, fake_api) -> None:
    """SIGTERM: the stream it serves closes with 1001 after its last event; the client resumes
    through the balancer on another replica and loses nothing, repeats nothing."""
    replica = fleet.replicas[1]
    assert replica is not None
    direct, balanced = api(fleet, replica.url), api(fleet)
    try:
        tag = marker()
        fake_api.on(tag, slow_text(["through ", "a ", "drain"], delay=1.0))
        session = await balanced.create()
        await balanced.wait_status(session["id"], "ready")
        follower = Follower(direct, session["id"], then=balanced)
        watching = asyncio.create_task(follower.until(is_result, timeout=90))
        await balanced.chat(session["id"], f"work {tag}", wait=False, expect=202)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(fleet.stop, 1, signal.SIGTERM)
        await watching
        assert follower.close_codes[:1] == [1001]
        assert_exactly_once(follower)
        assert follower.envelopes[-1]["event"]["result"] == "through a drain"
        await balanced.stop(session["id"])
    finally:
        await direct.aclose()
        await balanced.aclose()
        fleet.start(1)


async def test_postgresql_down_for_ten_seconds_during_a_turn(fleet, fake_api) -> None:
    client = api(fleet)
    try:
        tag = marker()
        fake_api.on(tag, slow_text(["written ", "without ", "a ", "database"], delay=1.0))
        session = await client.create()
        await client.wait_status(session["id"], "ready")
        follower = Follower(client, session["id"])
        watching = asyncio.create_task(follower.until(is_result, timeout=120))
        await client.chat(session["id"], f"work {tag}", wait=False, expect=202)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(fleet.postgres.stop)  # type: ignore[attr-defined]
        try:
            down = await client.http.get(f"/api/v1/sessions/{session['id']}")
            assert down.status_code == 503, down.text
            assert int(down.headers["Retry-After"]) > 0
            await asyncio.sleep(10)
        finally:
            await asyncio.to_thread(fleet.postgres.start)  # type: ignore[attr-defined]
        await watching  # the stream went on while the database was down
        assert_exactly_once(follower)
        assert follower.envelopes[-1]["event"]["result"] == "written without a database"
        back = await client.wait_status(session["id"], "ready", timeout=60)
        assert back["current_turn_id"] is None  # nothing stays busy
        turns = (await client.http.get(f"/api/v1/sessions/{session['id']}/turns")).json()
        assert [t["result_text"] for t in turns["turns"]] == ["written without a database"]
        await client.stop(session["id"])
    finally:
        await client.aclose()


async def test_redis_restarted_streams_resume_and_sessions_go_on(fleet, fake_api) -> None:
    client = api(fleet)
    try:
        sessions = [await client.create() for _ in range(2)]
        for session in sessions:
            await client.wait_status(session["id"], "ready")
        followers = [Follower(client, s["id"]) for s in sessions]
        await asyncio.to_thread(fleet.redis.restart)  # type: ignore[attr-defined]
        tag = marker()
        fake_api.on(tag, text(f"after the restart {tag}"))
        for session in sessions:
            # Prompts may be refused (503) for a moment while everything reconnects.
            async with asyncio.timeout(60):
                while True:
                    response = await client.http.post(
                        f"/api/v1/sessions/{session['id']}/chat",
                        json={"prompt": f"again {tag}", "timeout": 60},
                    )
                    if response.status_code != 503:
                        break
                    await asyncio.sleep(1)
            assert response.status_code == 200, response.text
            assert response.json()["result"]["result"] == f"after the restart {tag}"
        for follower in followers:
            await follower.until(
                lambda e: is_result(e) and tag in e["event"].get("result", ""), timeout=30
            )
            assert_exactly_once(follower)
            assert not [e for e in follower.envelopes if e["event"].get("type") == "gap"]
        # Every replica's pooled connections died with the old server: none of them may turn
        # that into a 500 once Redis is back.
        for replica in fleet.replicas:
            assert replica is not None
            direct = api(fleet, replica.url)
            try:
                sessions.append(await direct.create())
            finally:
                await direct.aclose()
        for session in sessions:
            with contextlib.suppress(Exception):
                await client.stop(session["id"])
    finally:
        await client.aclose()


async def test_a_container_killed_while_no_replica_watched_is_noticed(fleet, docker_client) -> None:
    client = api(fleet)
    try:
        session = await client.create()
        ready = await client.wait_status(session["id"], "ready")
        alive = fleet.alive()
        for index in alive:
            fleet.stop(index, signal.SIGKILL)
        docker_client.api.kill(ready["container_id"])  # nobody is there to see it die
        fleet.start(alive[0])  # the next lease holder
        failed = await client.wait_status(session["id"], "failed", timeout=60)
        assert "container exited" in failed["failure_reason"]
    finally:
        await client.aclose()
        for index in range(fleet.size):
            if fleet.replicas[index] is None:
                fleet.start(index)
