"""A session end to end: real gateway, real container, real CLI, scripted fake API."""

from __future__ import annotations

import asyncio
import json

import docker.errors
import pytest
import websockets
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import create_async_engine

from tests.client import is_claude, is_status, marker, read_until
from tests.fake_anthropic import all_text, slow_text, text, tool_use

pytestmark = pytest.mark.docker


async def test_create_stream_chat(api_for, fake_api) -> None:
    alice = api_for("alice")
    tag = marker()
    fake_api.on(tag, text(f"hello from {tag}"))
    session = await alice.create(config={"model": "claude-test-model"})
    assert session["status"] == "starting"
    assert session["owner"] == "alice"

    async with alice.stream(session["id"]) as ws:
        await read_until(ws, is_status("ready"))
        reply = await alice.chat(session["id"], f"say hello {tag}")
        events = await read_until(ws, is_claude("result"))

    assert reply["result"]["result"] == f"hello from {tag}"
    assert reply["turn"]["status"] == "completed"
    assert reply["turn"]["result_text"] == f"hello from {tag}"
    kinds = [(e["source"], e["event"].get("type"), e["event"].get("subtype")) for e in events]
    assert ("claude", "system", "init") in kinds
    assert ("claude", "assistant", None) in kinds
    init = next(e["event"] for e in events if is_claude("system", "init")(e))
    assert init["model"] == "claude-test-model"
    assert init["cwd"] == "/workspace"
    # every envelope carries a cursor and the session id
    assert all(e["id"] and e["session_id"] == session["id"] for e in events)
    assert [r["model"] for r in fake_api.requests_for(tag)] == ["claude-test-model"]

    stopped = await alice.stop(session["id"])
    assert stopped["status"] == "stopped"


async def test_second_turn_sees_the_first(api_for, fake_api) -> None:
    alice = api_for("alice")
    first, second = marker(), marker()
    fake_api.on(first, text(f"the secret word is {first}-word"))
    fake_api.on(second, text("I remember"))
    session = await alice.create(prompt=f"remember {first}")
    await alice.wait_status(session["id"], "ready")
    reply = await alice.chat(session["id"], f"what was it? {second}")
    assert reply["result"]["result"] == "I remember"
    (request,) = fake_api.requests_for(second)
    history = all_text(request)
    assert f"remember {first}" in history
    assert f"the secret word is {first}-word" in history
    turns = (await alice.http.get(f"/api/v1/sessions/{session['id']}/turns")).json()["turns"]
    assert [t["seq"] for t in turns] == [1, 2]
    assert all(t["status"] == "completed" for t in turns)
    await alice.stop(session["id"])


async def test_chat_at_once_after_the_result_while_no_recorder_has_written_it(
    api_for, fake_api, infra
) -> None:
    """A client that sees the result on its stream and chats at once is not told the session is
    busy, even while every recorder is behind (held here by a lock on the turn's row)."""
    alice = api_for(f"alice-{marker()}")
    first, second = marker(), marker()
    fake_api.on(first, slow_text(["first ", "done"], 0.3))
    fake_api.on(second, text("second done"))
    session = await alice.create()
    await alice.wait_status(session["id"], "ready")
    engine = create_async_engine(infra.database_url)
    try:
        async with alice.stream(session["id"], after="$") as ws:
            accepted = await alice.chat(session["id"], f"go {first}", wait=False, expect=202)
            async with engine.begin() as held, engine.connect() as watcher:
                await held.execute(
                    sql("SELECT 1 FROM turns WHERE id = :id FOR UPDATE"),
                    {"id": accepted["turn"]["id"]},
                )
                await read_until(ws, is_claude("result"))
                chat = asyncio.create_task(alice.chat(session["id"], f"then {second}"))
                # Release once both the recorder and the chat wait for the row, or the chat
                # answered (it must not have: a 409 fails the test below).
                deadline = asyncio.get_running_loop().time() + 30
                while not chat.done() and asyncio.get_running_loop().time() < deadline:
                    waiting = await watcher.scalar(
                        sql(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE wait_event_type = 'Lock' AND query ILIKE 'UPDATE turns%'"
                        )
                    )
                    if waiting >= 2:
                        break
                    await asyncio.sleep(0.05)
            reply = await chat
    finally:
        await engine.dispose()
    assert reply["result"]["result"] == "second done"
    turns = (await alice.http.get(f"/api/v1/sessions/{session['id']}/turns")).json()["turns"]
    assert [(t["seq"], t["status"], t["result_text"]) for t in turns] == [
        (1, "completed", "first done"),
        (2, "completed", "second done"),
    ]
    await alice.stop(session["id"])


async def test_bash_tool_runs_in_the_container(api_for, fake_api, docker_client) -> None:
    alice = api_for("alice")
    tag = marker()
    command = f"echo {tag}-$((6*7)) > proof.txt && id -u && cat proof.txt"
    fake_api.on(tag, tool_use("Bash", {"command": command}), text("ran it"))
    session = await alice.create()
    reply = await alice.chat(session["id"], f"run bash {tag}")
    assert reply["result"]["result"] == "ran it"
    # the tool's real output went back to the model
    follow_up = fake_api.requests_for(tag)[-1]
    assert f"{tag}-42" in all_text(follow_up)
    assert "10001" in all_text(follow_up)  # the non-root user of the image
    # and the file is in the session's own container
    container = docker_client.containers.get(session["container_id"])
    exit_code, output = container.exec_run(["cat", "/workspace/proof.txt"])
    assert exit_code == 0 and output.decode().strip() == f"{tag}-42"
    await alice.stop(session["id"])


async def test_stop_removes_the_container(api_for, docker_client) -> None:
    alice = api_for("alice")
    session = await alice.create()
    ready = await alice.wait_status(session["id"], "ready")
    container_id = ready["container_id"]
    assert docker_client.containers.get(container_id).status == "running"
    stopped = await alice.stop(session["id"])
    assert stopped["status"] == "stopped"
    assert stopped["stopped_at"] is not None
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container_id)
    # stopping again is harmless, and chat is refused with a clear code
    assert (await alice.stop(session["id"]))["status"] == "stopped"
    refused = await alice.chat(session["id"], "hello?", expect=409)
    assert refused["error"]["code"] == "session_not_running"


async def test_delete_then_404(api_for, docker_client) -> None:
    alice = api_for("alice")
    session = await alice.create()
    await alice.wait_status(session["id"], "ready")
    response = await alice.http.delete(f"/api/v1/sessions/{session['id']}")
    assert response.status_code == 204
    missing = await alice.http.get(f"/api/v1/sessions/{session['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "session_not_found"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(session["container_id"])
    again = await alice.http.delete(f"/api/v1/sessions/{session['id']}")
    assert again.status_code == 404


async def test_interrupt_a_slow_turn(api_for, fake_api) -> None:
    alice = api_for("alice")
    tag, after = marker(), marker()
    fake_api.on(tag, slow_text([f"chunk {i} " for i in range(100)], delay=0.2))
    fake_api.on(after, text("still alive"))
    session = await alice.create()
    await alice.wait_status(session["id"], "ready")
    chat = asyncio.create_task(alice.chat(session["id"], f"talk slowly {tag}"))
    await _until(lambda: fake_api.requests_for(tag))
    busy = await alice.chat(session["id"], "another", expect=409)
    assert busy["error"]["code"] == "session_busy"
    response = await alice.http.post(f"/api/v1/sessions/{session['id']}/interrupt")
    assert response.status_code == 202, response.text
    reply = await asyncio.wait_for(chat, 15)
    assert reply["result"]["subtype"] == "error_during_execution"
    assert reply["turn"]["status"] == "interrupted"
    # the same CLI process takes the next turn
    assert (await alice.chat(session["id"], f"are you there {after}"))["result"][
        "result"
    ] == "still alive"
    nothing = await alice.http.post(f"/api/v1/sessions/{session['id']}/interrupt")
    assert nothing.status_code == 409
    assert nothing.json()["error"]["code"] == "no_running_turn"
    await alice.stop(session["id"])


async def test_interrupt_over_the_websocket(api_for, fake_api) -> None:
    alice = api_for("alice")
    tag = marker()
    fake_api.on(tag, slow_text([f"word{i} " for i in range(100)], delay=0.2))
    session = await alice.create()
    async with alice.stream(session["id"]) as ws:
        await read_until(ws, is_status("ready"))
        await ws.send(json.dumps({"type": "prompt", "prompt": f"slow {tag}"}))
        accepted = await read_until(ws, lambda e: e["event"].get("type") == "prompt_accepted")
        assert accepted[-1]["id"] is None  # a notice to this client, not a stream event
        await _until(lambda: fake_api.requests_for(tag))
        await ws.send(json.dumps({"type": "interrupt"}))
        events = await read_until(ws, is_claude("result"), timeout=15)
        result = events[-1]["event"]
        assert result["subtype"] == "error_during_execution"
        assert result["terminal_reason"] == "aborted_streaming"
        await ws.send(json.dumps({"type": "bogus"}))
        error = await read_until(ws, lambda e: e["event"].get("type") == "error")
        assert error[-1]["event"]["code"] == "invalid_message"
    await alice.stop(session["id"])


async def test_turn_timeout_leaves_the_turn_running(api_for, fake_api) -> None:
    alice = api_for("alice")
    tag = marker()
    fake_api.on(tag, slow_text(["slow ", "but ", "sure"], delay=1.0))
    session = await alice.create()
    timed_out = await alice.chat(session["id"], f"take your time {tag}", timeout=0.5, expect=504)
    assert timed_out["error"]["code"] == "turn_timeout"
    turn_id = timed_out["error"]["turn_id"]
    # the turn goes on and is recorded when it ends
    await alice.wait_status(session["id"], "ready", timeout=30)
    turns = (await alice.http.get(f"/api/v1/sessions/{session['id']}/turns")).json()["turns"]
    (turn,) = [t for t in turns if t["id"] == turn_id]
    assert turn["status"] == "completed"
    assert turn["result_text"] == "slow but sure"
    assert turn["cost_usd"] is not None and turn["cost_usd"] > 0
    await alice.stop(session["id"])


async def test_streaming_chat_as_server_sent_events(api_for, fake_api) -> None:
    alice = api_for("alice")
    tag = marker()
    fake_api.on(tag, tool_use("Bash", {"command": "echo sse"}), text("streamed"))
    session = await alice.create()
    await alice.wait_status(session["id"], "ready")
    envelopes = []
    async with alice.http.stream(
        "POST",
        f"/api/v1/sessions/{session['id']}/chat",
        json={"prompt": f"stream it {tag}", "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                envelopes.append(json.loads(line[5:]))
    kinds = [(e["source"], e["event"]["type"]) for e in envelopes]
    assert kinds[0] == ("gateway", "turn_started")
    assert ("claude", "system") in kinds
    assert kinds.count(("claude", "assistant")) == 2  # the tool call, then the text
    assert ("claude", "user") in kinds  # the tool result
    assert kinds[-1] == ("claude", "result")
    assert envelopes[-1]["event"]["result"] == "streamed"
    await alice.stop(session["id"])


async def _until(predicate, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_delete_ends_open_streams(api_for) -> None:
    alice = api_for("alice")
    session = await alice.create()
    async with alice.stream(session["id"]) as ws:
        await read_until(ws, is_status("ready"))
        response = await alice.http.delete(f"/api/v1/sessions/{session['id']}")
        assert response.status_code == 204
        events = await read_until(ws, lambda e: e["event"].get("type") == "session_deleted")
        assert events[-1]["id"] is None
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), 10)
