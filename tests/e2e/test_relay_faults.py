"""The relay survives any one session's misbehaviour, and no reader skips lost events silently.

Each test plays the fault for real against the real gateway and Redis: a key turned into a
string (done with the gateway's credentials, since a session's own Redis user cannot), a flood
written from inside a real session container with its own credentials, a deleted stream, a
reader whose cursor is older than what is kept.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.client import Api, is_claude, marker, mint_token, read_until
from tests.fake_anthropic import text
from tests.stack import run_gateway

pytestmark = pytest.mark.docker

FLOOD = """
import os, redis, sys
r = redis.Redis.from_url(os.environ["CCD_REDIS_URL"])
key = f"ccd:session:{sys.argv[1]}:out"
pipe = r.pipeline(transaction=False)
for i in range(int(sys.argv[2])):
    pipe.xadd(key, {"source": "claude", "type": "flood", "turn": "", "data": "{}"})  # no MAXLEN
    if i % 1000 == 999:
        pipe.execute()
pipe.execute()
print("flooded")
"""


@pytest.fixture
async def admin(infra) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def chat_works(api: Api, fake_api, session_id: str) -> None:
    tag = marker()
    fake_api.on(tag, text(f"still here {tag}"))
    reply = await api.chat(session_id, f"are you there {tag}", timeout=60)
    assert reply["result"]["result"] == f"still here {tag}"


async def failure_reason(api: Api, session_id: str) -> str:
    failed = await api.wait_status(session_id, "failed", timeout=30)
    return str(failed["failure_reason"])


async def test_a_key_of_the_wrong_type_fails_only_its_session(api_for, fake_api, admin) -> None:
    alice = api_for(f"alice-{marker()}")
    broken = await alice.create()
    healthy = await alice.create()
    await alice.wait_status(broken["id"], "ready")
    await alice.wait_status(healthy["id"], "ready")
    async with alice.stream(broken["id"], after="$") as watcher:
        key = f"ccd:session:{broken['id']}:out"
        await admin.delete(key)
        await admin.set(key, "not a stream")
        reason = await failure_reason(alice, broken["id"])
        assert "replaced by a string" in reason, reason
        # A reader of the broken session learns that it failed (from a fresh stream).
        seen = await read_until(
            watcher,
            lambda e: e["event"].get("type") == "status" and e["event"].get("status") == "failed",
            timeout=20,
        )
        assert "replaced by a string" in seen[-1]["event"]["reason"]
    await chat_works(alice, fake_api, healthy["id"])
    await alice.stop(healthy["id"])


async def test_a_flood_from_inside_a_session_is_bounded_and_fails_it(
    infra, fake_api, s3_endpoint, tmp_path, docker_client, admin
) -> None:
    with run_gateway(
        infra, fake_api.base_url, s3_endpoint, tmp_path, EVENT_STREAM_MAXLEN="500"
    ) as gw:
        alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        try:
            flooder = await alice.create()
            healthy = await alice.create()
            await alice.wait_status(flooder["id"], "ready")
            await alice.wait_status(healthy["id"], "ready")
            # Its own Redis user may XADD to its own output stream, without MAXLEN. The
            # gateway may kill the container before the flood is over: its exit code says
            # nothing, the session's status does.
            docker_client.containers.get(flooder["container_id"]).exec_run(
                ["/opt/ccd/bin/python", "-c", FLOOD, flooder["id"], "20000"]
            )
            reason = await failure_reason(alice, flooder["id"])
            assert "flooded" in reason, reason
            length = await admin.xlen(f"ccd:session:{flooder['id']}:out")
            assert length < 2 * 500 + 200, length  # trimmed back to its bound
            await chat_works(alice, fake_api, healthy["id"])
            await alice.stop(healthy["id"])
        finally:
            await alice.aclose()


async def test_a_deleted_stream_is_announced_as_a_gap_and_the_session_goes_on(
    api_for, fake_api, admin
) -> None:
    alice = api_for(f"alice-{marker()}")
    session = await alice.create()
    await alice.wait_status(session["id"], "ready")
    async with alice.stream(session["id"], after="$") as ws:
        await admin.delete(f"ccd:session:{session['id']}:out")
        seen = await read_until(ws, lambda e: e["event"].get("type") == "gap", timeout=20)
        gap = seen[-1]
        assert gap["id"] is not None  # written into the stream: every reader gets it
        assert "lost" in gap["event"]["reason"]
        await chat_works(alice, fake_api, session["id"])
        await read_until(ws, is_claude("result"), timeout=20)
    assert (await alice.get(session["id"]))["status"] == "ready"
    await alice.stop(session["id"])


async def test_a_cursor_older_than_what_is_kept_gets_a_gap_first(
    infra, fake_api, s3_endpoint, tmp_path, admin
) -> None:
    with run_gateway(
        infra, fake_api.base_url, s3_endpoint, tmp_path, EVENT_STREAM_MAXLEN="100"
    ) as gw:
        alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        try:
            session = await alice.create()
            await alice.wait_status(session["id"], "ready")
            key = f"ccd:session:{session['id']}:out"
            first = (await admin.xrange(key, count=1))[0][0]
            # More output than is kept (as a long turn would write), trimmed like the wrapper.
            for i in range(400):
                await admin.xadd(
                    key,
                    {"source": "claude", "type": "noise", "turn": "", "data": json.dumps({"i": i})},
                    maxlen=100,
                    approximate=False,
                )
            async with alice.stream(session["id"], after=first) as ws:
                envelope = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert envelope["id"] is None and envelope["event"]["type"] == "gap"
                assert envelope["event"]["after"] == first
                oldest = (await admin.xrange(key, count=1))[0][0]
                assert envelope["event"]["first_available"] == oldest
                following = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert following["id"] == oldest  # then the replay, from what is left
            await alice.stop(session["id"])
        finally:
            await alice.aclose()
