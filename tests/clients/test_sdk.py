"""The SDK against the real gateway, the real CLI in real containers and the scripted fake
Anthropic API: sessions from start to end, a stream that survives a real TCP cut mid-turn,
one-shot execute, and the errors a caller gets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

import ccd
from ccd.models import Event
from tests.client import Api, marker, mint_token
from tests.fake_anthropic import slow_text, text, tool_use
from tests.tcp_proxy import tcp_proxy

pytestmark = pytest.mark.docker


def containers_of(docker_client: Any, session_id: str) -> list[Any]:
    return list(
        docker_client.containers.list(
            all=True, filters={"label": f"cc-docker.session-id={session_id}"}
        )
    )


async def test_a_session_from_start_to_end(sdk_for, fake_api, docker_client) -> None:
    tag = marker()
    fake_api.on(tag, tool_use("Bash", {"command": "echo hi > made.txt"}), text(f"made it {tag}"))
    client = sdk_for("sdk-alice")
    session = await client.create_session(config={"max_turns": 5})
    assert session.status == "starting"
    await session.wait_until_ready(timeout=60)
    assert session.status == "ready"

    result = await session.chat(f"make a file {tag}")
    assert (result.text, result.is_error) == (f"made it {tag}", False)
    assert result.cost_usd is not None and result.cost_usd > 0
    assert result.raw["type"] == "result" and result.turn is not None
    assert [t.status for t in await session.turns()] == ["completed"]

    assert await session.download("made.txt") == b"hi\n"
    entry = await session.upload("dir/up.txt", b"uploaded")
    assert (entry.path, entry.size) == ("dir/up.txt", 8)
    assert "dir/up.txt" in [f.path for f in await session.list_files("dir")]

    tree = await session.tree()
    assert str(tree.id) == session.id and tree.last_turn is not None
    usage = await session.usage()
    assert usage.session.requests >= 2  # the tool call and the answer
    listed = [s.id for s in await client.list_sessions()]
    assert session.id in listed

    with pytest.raises(ccd.Conflict) as busy:
        await session.interrupt()
    assert (busy.value.status, busy.value.code) == (409, "no_running_turn")

    await session.stop()
    assert session.status == "stopped"
    assert containers_of(docker_client, session.id) == []
    await session.delete()
    with pytest.raises(ccd.NotFound) as gone:
        await client.get_session(session.id)
    assert (gone.value.status, gone.value.code) == (404, "session_not_found")


async def test_the_stream_resumes_across_a_tcp_cut_mid_turn(sdk_for, api_for, fake_api) -> None:
    """The SDK follows a session through a TCP proxy that is cut (every connection closed,
    new ones refused) while the turn produces events, and brought back 2 s later. The SDK
    must deliver exactly the events a direct reader sees: nothing lost, nothing repeated."""
    tag = marker()
    # Tool calls of about a second each: events flow before, during and after the cut.
    steps = [tool_use("Bash", {"command": f"sleep 0.7; echo step-{i}"}) for i in range(6)]
    fake_api.on(tag, *steps, text(f"end {tag}"))
    direct = api_for("sdk-bob")
    session_info = await direct.create()
    sid = session_info["id"]
    await direct.wait_status(sid, "ready")

    with tcp_proxy(direct.base_url.removeprefix("http://")) as proxy:
        client = sdk_for(
            "sdk-bob",
            url=f"http://127.0.0.1:{proxy.port}",
            reconnect=ccd.Backoff(initial=0.1, maximum=0.5, give_up_after=60),
        )
        session = await client.get_session(sid)
        seen: list[Event] = []
        cut = asyncio.Event()

        async def follow() -> None:
            async for event in session.stream():
                seen.append(event)
                if event.source == "claude" and event.type == "user" and not cut.is_set():
                    cut.set()  # the first tool result: the turn is under way
                if event.is_result:
                    return

        follower = asyncio.create_task(follow())
        await direct.chat(sid, f"work in steps {tag}", wait=False, expect=202)
        await asyncio.wait_for(cut.wait(), 60)
        proxy.down()
        ids_at_cut = len(seen)
        await asyncio.sleep(2)  # the turn goes on meanwhile
        proxy.up()
        await asyncio.wait_for(follower, 60)
        assert proxy.accepted >= 3, "the SDK did not reconnect"  # GET, stream, stream again

    async with direct.stream(sid) as ws:  # the reference: one uninterrupted reading
        reference: list[dict[str, Any]] = []
        while not reference or reference[-1]["event"].get("type") != "result":
            reference.append(json.loads(await ws.recv()))
    got = [e.id for e in seen if e.id is not None]
    assert got == [e["id"] for e in reference]
    assert len(set(got)) == len(got)
    assert len(seen) > ids_at_cut + 1, "nothing happened during the cut"
    assert seen[-1].data["result"] == f"end {tag}"
    await direct.stop(sid)


async def test_chat_stream_goes_on_across_a_tcp_cut(sdk_for, api_for, fake_api) -> None:
    """A turn streamed by chat (server-sent events) whose connection is cut mid-turn: the
    rest of the turn comes from the session's stream, after the last event delivered."""
    tag = marker()
    steps = [tool_use("Bash", {"command": f"sleep 0.7; echo part-{i}"}) for i in range(5)]
    fake_api.on(tag, *steps, text(f"whole {tag}"))
    direct = api_for("sdk-chat-cut")
    sid = (await direct.create())["id"]
    await direct.wait_status(sid, "ready")
    with tcp_proxy(direct.base_url.removeprefix("http://")) as proxy:
        client = sdk_for(
            "sdk-chat-cut",
            url=f"http://127.0.0.1:{proxy.port}",
            reconnect=ccd.Backoff(initial=0.1, maximum=0.5, give_up_after=60),
        )
        session = await client.get_session(sid)
        seen: list[Event] = []
        cut = False
        async for event in session.chat_stream(f"in parts {tag}"):
            seen.append(event)
            if not cut and event.source == "claude" and event.type == "user":
                cut = True
                proxy.down()
                await asyncio.sleep(1.5)
                proxy.up()
    turn_id = seen[0].turn_id
    async with direct.stream(sid) as ws:  # the reference: the turn's events, read directly
        reference: list[dict[str, Any]] = []
        while not reference or reference[-1]["event"].get("type") != "result":
            envelope = json.loads(await ws.recv())
            if envelope["turn_id"] == turn_id:
                reference.append(envelope)
    assert [e.id for e in seen] == [e["id"] for e in reference]
    assert seen[-1].is_result and seen[-1].data["result"] == f"whole {tag}"
    await direct.stop(sid)


async def test_a_gap_is_surfaced_once_and_notices_do_not_move_the_cursor(
    sdk_for, api_for, infra
) -> None:
    """A cursor older than what is kept gets a ``gap`` notice (id null), then the replay. The
    connection is cut after the notice and a few events: the SDK resumes after the last event
    it delivered, not from its first cursor, so there is no second gap and no repeat."""
    direct = api_for("sdk-carol")
    sid = (await direct.create())["id"]
    await direct.wait_status(sid, "ready")  # idle: only this test writes to its stream
    admin = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    key = f"ccd:session:{sid}:out"
    fields = {"source": "claude", "type": "noise", "turn": "", "data": "{}"}
    try:
        # The row says ready just before the gateway writes that status into the stream: wait
        # for the stream's own copy, so nothing but this test writes to it from here on.
        async with asyncio.timeout(30):
            while not any(
                fields.get("type") == "status" and '"ready"' in fields.get("data", "")
                for _, fields in await admin.xrange(key)
            ):
                await asyncio.sleep(0.1)
        first = (await admin.xrange(key, count=1))[0][0]
        for _ in range(200):  # more than is kept (trimmed like a long turn's output)
            await admin.xadd(key, fields, maxlen=50, approximate=False)
        kept = [entry_id for entry_id, _ in await admin.xrange(key)]

        with tcp_proxy(direct.base_url.removeprefix("http://")) as proxy:
            client = sdk_for(
                "sdk-carol",
                url=f"http://127.0.0.1:{proxy.port}",
                reconnect=ccd.Backoff(initial=0.1, maximum=0.5, give_up_after=60),
            )
            session = await client.get_session(sid)
            events: list[Event] = []
            later = None
            async for event in session.stream(after=first):
                events.append(event)
                if event.id == kept[-1]:
                    # Everything kept was delivered: cut, and add one more event, which only
                    # a reconnected stream can bring.
                    proxy.down()
                    later = await admin.xadd(key, fields)
                    proxy.up()
                if later is not None and event.id == later:
                    break
    finally:
        await admin.aclose()
    gap = events[0]
    assert (gap.id, gap.type, gap.data["after"]) == (None, "gap", first)
    assert gap.data["first_available"] == kept[0]
    assert [e.id for e in events[1:]] == [*kept, later]  # no second gap, no repeat
    assert proxy.accepted >= 3, "the SDK did not reconnect"
    await direct.stop(sid)


async def test_the_sync_client_runs_the_same(gateway, fake_api) -> None:
    tag = marker()
    fake_api.on(tag, text(f"parent {tag}"))
    fake_api.on(f"child-{tag}", text(f"child done {tag}"))

    def scenario() -> None:
        with ccd.Client(gateway.url, mint_token(gateway.jwt_secret, "sdk-dave")) as client:
            session = client.create_session(prompt=f"start {tag}").wait_until_ready(60)
            kinds = []
            for event in session.stream():
                kinds.append((event.source, event.type))
                if event.is_result:
                    break
            assert ("gateway", "turn_started") in kinds and kinds[-1] == ("claude", "result")
            child = session.spawn(f"child-{tag} go")
            waited = child.wait(timeout=60)
            assert waited.result == f"child done {tag}"
            assert [str(c.id) for c in session.tree().children] == [child.id]
            streamed = list(session.chat_stream(f"again {tag}"))
            assert streamed[0].type == "turn_started" and streamed[-1].is_result
            session.delete()
            with pytest.raises(ccd.NotFound):
                client.get_session(child.id)

    await asyncio.to_thread(scenario)


async def test_execute_streams_the_run_and_removes_its_container(
    sdk_for, fake_api, docker_client
) -> None:
    tag = marker()
    fake_api.on(tag, tool_use("Bash", {"command": "echo one-shot"}), text(f"ran {tag}"))
    events = [e async for e in sdk_for("sdk-erin").execute(f"run once {tag}")]
    sid = events[0].session_id
    assert (events[0].type, events[0].data.get("status")) == ("status", "starting")
    assert events[-1].is_result and events[-1].data["result"] == f"ran {tag}"
    assert all(e.session_id == sid for e in events)
    ids = [e.id for e in events if e.id is not None]
    assert len(set(ids)) == len(ids) == len(events)
    # The stream ends once the session is stopped and deleted: nothing is left.
    assert containers_of(docker_client, sid) == []
    with pytest.raises(ccd.NotFound):
        await sdk_for("sdk-erin").get_session(sid)


async def test_execute_saves_a_persistent_workspace_first(sdk_for, fake_api) -> None:
    tag = marker()
    name = f"exec-{tag}"
    fake_api.on(tag, tool_use("Bash", {"command": f"echo {tag} > kept.txt"}), text("saved"))
    client = sdk_for("sdk-frank")
    events = [e async for e in client.execute(f"write {tag}", workspace=name)]
    assert events[-1].is_result
    assert await client.workspace(name).download("kept.txt") == f"{tag}\n".encode()
    info = await client.workspace(name).info()
    assert (info.type, info.sessions) == ("persistent", [])  # it outlives its session


async def test_execute_cleans_up_when_the_client_leaves_mid_run(
    gateway, fake_api, docker_client
) -> None:
    tag = marker()
    # A turn of two minutes: a cleanup that waited for it to end would miss the bound below.
    fake_api.on(tag, slow_text([f"w{i} " for i in range(120)], delay=1.0))
    token = mint_token(gateway.jwt_secret, "sdk-gina")
    headers = {"Authorization": f"Bearer {token}"}
    session_id, left_mid_run = None, False
    async with (
        httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=60) as http,
        http.stream("POST", "/api/v1/execute", json={"prompt": f"slow {tag}"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                envelope = json.loads(line.removeprefix("data:"))
                session_id = envelope["session_id"]
                event = envelope["event"]
                if (event.get("type"), event.get("subtype")) == ("system", "init"):
                    left_mid_run = True  # the CLI has started on the turn
                    break
    assert session_id is not None and left_mid_run
    # The client is gone mid-turn: the session is stopped and deleted all the same.
    api = Api(gateway.url, token)
    try:
        for _ in range(600):
            gone = await api.http.get(f"/api/v1/sessions/{session_id}")
            if gone.status_code == 404:
                break
            await asyncio.sleep(0.1)
        assert gone.status_code == 404, gone.text
        assert containers_of(docker_client, str(session_id)) == []
    finally:
        await api.aclose()


async def test_execute_past_its_timeout_ends_with_an_error_and_cleans_up(sdk_for, fake_api) -> None:
    tag = marker()
    fake_api.on(tag, slow_text([f"w{i} " for i in range(30)], delay=1.0))
    client = sdk_for("sdk-hank")
    seen: list[Event] = []
    with pytest.raises(ccd.Timeout) as timed_out:
        async for event in client.execute(f"slow {tag}", timeout=5):
            seen.append(event)
    assert (timed_out.value.status, timed_out.value.code) == (504, "turn_timeout")
    with pytest.raises(ccd.NotFound):
        await client.get_session(seen[0].session_id)


async def test_errors_are_typed(sdk_for, gateway) -> None:
    with pytest.raises(ccd.Unauthorized) as bad_token:
        await ccd.AsyncClient(gateway.url, "not-a-token").list_sessions()
    assert (bad_token.value.status, bad_token.value.code) == (401, "invalid_token")
    client = sdk_for("sdk-ivy")
    with pytest.raises(ccd.NotFound) as unknown:
        await client.get_session(str(uuid.uuid4()))
    assert unknown.value.code == "session_not_found"
    with pytest.raises(ccd.InvalidArgument):  # refused before it is sent
        await client.create_session(workspace="session-mine")
    missing = await _unknown_session(client)
    with pytest.raises(ccd.NotFound) as no_stream:
        async for _ in missing.stream():
            pass
    assert no_stream.value.code == "session_not_found"
    unreachable = ccd.AsyncClient("http://127.0.0.1:9", "x")
    with pytest.raises(ccd.ConnectionFailed):
        await unreachable.list_sessions()
    await unreachable.aclose()


async def _unknown_session(client: ccd.AsyncClient) -> ccd.AsyncSession:
    """A handle on a session id that does not exist (made from a real one's fields)."""
    real = await client.create_session()
    fake = ccd.AsyncSession(client, real.info.model_copy(update={"id": uuid.uuid4()}))
    await real.delete()
    return fake


def test_the_sdk_imports_nothing_of_the_gateway() -> None:
    """``import ccd`` and its clients load neither the gateway nor its dependencies."""
    code = (
        "import sys, ccd, ccd.models\n"
        "ccd.Client, ccd.AsyncClient, ccd.Session\n"
        "heavy = [m for m in ('gateway', 'sqlalchemy', 'docker', 'fastapi', 'redis', 'minio')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_map_every_status() -> None:
    from ccd.errors import api_error, stream_error

    limited = api_error(
        429,
        b'{"error": {"code": "rate_limited", "message": "slow down", "retry_after": 3}}',
        {"Retry-After": "3"},
    )
    assert isinstance(limited, ccd.RateLimited) and limited.retry_after == 3.0
    page = api_error(502, b"<html>bad gateway</html>")
    assert isinstance(page, ccd.ServerError) and page.code == "http_502"
    late = stream_error('{"error": {"code": "turn_timeout", "message": "m"}, "status": 504}')
    assert isinstance(late, ccd.Timeout) and late.message == "m"


def test_the_gateway_imports_only_the_models_of_the_sdk() -> None:
    """The gateway's image installs no client dependency: importing it must not need one."""
    code = (
        "import sys\n"
        "for name in ('httpx_sse', 'typer', 'rich', 'ccd.aio', 'ccd.sync', 'ccd.cli'):\n"
        "    sys.modules[name] = None\n"
        "import gateway.main\n"
        "assert 'ccd.models' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
