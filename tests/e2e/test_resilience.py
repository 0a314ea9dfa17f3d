"""Nothing is lost and nothing is left behind: reconnects, crashes, kills, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.client import Api, is_claude, is_status, marker, mint_token, read_until
from tests.fake_anthropic import all_text, slow_text, text
from tests.stack import run_gateway

pytestmark = pytest.mark.docker


async def test_websocket_reconnect_with_after_loses_nothing(api_for, fake_api) -> None:
    alice = api_for("alice")
    tags = [marker() for _ in range(3)]
    for tag in tags:
        fake_api.on(tag, text(f"answer {tag}"))
    session = await alice.create()
    sid = session["id"]
    async with alice.stream(sid) as ws:
        seen = await read_until(ws, is_status("ready"))
    cursor = seen[-1]["id"]
    # the client is away while three turns run
    for tag in tags:
        await alice.chat(sid, f"question {tag}")
    async with alice.stream(sid, after=cursor) as ws:
        resumed = await read_until(
            ws, lambda e: is_claude("result")(e) and tags[-1] in e["event"].get("result", "")
        )
    async with alice.stream(sid, after="0") as ws:
        everything = await read_until(
            ws, lambda e: is_claude("result")(e) and tags[-1] in e["event"].get("result", "")
        )
    ids = [e["id"] for e in everything]
    assert ids[: len(seen)] == [e["id"] for e in seen]
    assert [e["id"] for e in resumed] == ids[len(seen) :]
    assert [e["event"].get("result") for e in resumed if is_claude("result")(e)] == [
        f"answer {tag}" for tag in tags
    ]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    await alice.stop(sid)


async def test_cli_crash_restarts_with_history(api_for, fake_api, docker_client) -> None:
    alice = api_for("alice")
    before, after = marker(), marker()
    fake_api.on(before, text(f"noted {before}"))
    fake_api.on(after, text("recalled"))
    session = await alice.create(prompt=f"note {before}")
    sid = session["id"]
    await alice.wait_status(sid, "ready")
    async with alice.stream(sid, after="$") as ws:
        container = docker_client.containers.get(session["container_id"])
        code, output = container.exec_run(["pkill", "-KILL", "-x", "claude"])
        assert code == 0, output
        events = await read_until(ws, lambda e: e["event"].get("type") == "cli_ready")
    exited = next(e["event"] for e in events if e["event"].get("type") == "cli_exited")
    assert exited == {"type": "cli_exited", "exit_code": -9, "expected": False}
    ready = events[-1]["event"]
    assert ready["resumed"] is True
    # Where the restart's time went: the wrapper has run all along, so its CPU only grew.
    assert ready["cli_handshake_seconds"] > 0 and ready["wrapper_cpu_seconds"] > 0
    reply = await alice.chat(sid, f"what did I note? {after}")
    assert reply["result"]["result"] == "recalled"
    history = all_text(fake_api.requests_for(after)[-1])
    assert f"note {before}" in history and f"noted {before}" in history
    assert (await alice.get(sid))["status"] == "ready"
    await alice.stop(sid)


async def test_killed_container_fails_the_session(api_for, docker_client) -> None:
    alice = api_for("alice")
    session = await alice.create()
    sid = session["id"]
    await alice.wait_status(sid, "ready")
    async with alice.stream(sid, after="$") as ws:
        docker_client.containers.get(session["container_id"]).kill()
        events = await read_until(ws, is_status("failed"), timeout=30)
    failed = await alice.get(sid)
    assert failed["status"] == "failed"
    assert failed["exit_code"] == 137
    assert "137" in failed["failure_reason"]
    assert events[-1]["event"]["reason"] == failed["failure_reason"]
    refused = await alice.chat(sid, "anyone?", expect=409)
    assert refused["error"]["code"] == "session_not_running"
    assert "137" in refused["error"]["message"]
    # the dead container is cleaned up too
    await _until_gone(docker_client, session["container_id"])


async def test_missing_image_is_a_clear_error(infra, fake_api, s3_endpoint, tmp_path) -> None:
    with run_gateway(
        infra, fake_api.base_url, s3_endpoint, tmp_path, SESSION_IMAGE="cc-docker/nope:0"
    ) as gw:
        client = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        try:
            response = await client.http.post("/api/v1/sessions", json={})
            assert response.status_code == 503
            error = response.json()["error"]
            assert error["code"] == "image_not_found"
            assert "cc-docker/nope:0" in error["message"]
            failed = await client.get(error["session_id"])
            assert failed["status"] == "failed"
            assert "not present" in failed["failure_reason"]
        finally:
            await client.aclose()


async def test_gateway_restart_loses_no_result(infra, fake_api, s3_endpoint, tmp_path) -> None:
    """A gateway that dies while a turn's model call streams through it: the CLI retries the
    call (as it does any failed call) once the gateway is back where it was, and the turn's
    result is recorded by the new process."""
    tag = marker()
    fake_api.on(tag, slow_text(["done ", "while ", "away"], delay=1.0))
    with run_gateway(
        infra, fake_api.base_url, s3_endpoint, tmp_path, CLAUDE_CODE_MAX_RETRIES="10"
    ) as first:
        client = Api(first.url, mint_token(first.jwt_secret, "alice"))
        session = await client.create(prompt=f"work {tag}")
        await client.wait_status(session["id"], "busy")
        await client.aclose()
        instance, secret = first.instance, first.jwt_secret
        # Killed: a SIGTERM would drain, and the call in flight would finish before it exits.
        first.process.kill()  # type: ignore[union-attr]
        first.process.wait(10)  # type: ignore[union-attr]
        await asyncio.sleep(2)  # the CLI's call broke; it backs off and retries
        with run_gateway(
            infra,
            fake_api.base_url,
            s3_endpoint,
            tmp_path,
            port=int(first.url.rsplit(":", 1)[1]),
            INSTANCE_NAME=instance,
            JWT_SECRET=secret,
            CLAUDE_CODE_MAX_RETRIES="10",
        ) as second:
            client = Api(second.url, mint_token(secret, "alice"))
            try:
                ready = await client.wait_status(session["id"], "ready", timeout=60)
                assert ready["container_id"] == session["container_id"]
                turns = (await client.http.get(f"/api/v1/sessions/{session['id']}/turns")).json()[
                    "turns"
                ]
                assert [t["result_text"] for t in turns] == ["done while away"]
                await client.stop(session["id"])
            finally:
                await client.aclose()


async def _until_gone(docker_client, container_id: str, timeout: float = 20) -> None:
    import docker.errors

    async with asyncio.timeout(timeout):
        while True:
            try:
                docker_client.containers.get(container_id)
            except docker.errors.NotFound:
                return
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def never_ready(
    infra: Any, fake_api: Any, s3_endpoint: str, tmp_path: Path, timeout: float
) -> AsyncIterator[Api]:
    """A client of alice's, on a gateway whose sessions can never get ready (their Redis URL
    leads nowhere) and whose ``SESSION_START_TIMEOUT`` is ``timeout``."""
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path,
        SESSION_REDIS_URL="redis://ccd-host:1/0",  # nothing listens there
        SESSION_START_TIMEOUT=str(timeout),
    ) as gw:
        client = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        try:
            yield client
        finally:
            await client.aclose()


async def test_a_session_that_never_gets_ready_fails_with_start_timeout(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    async with never_ready(infra, fake_api, s3_endpoint, tmp_path, 3) as client:
        session = await client.create()
        failed = await client.wait_status(session["id"], "failed", timeout=30)
        assert failed["failure_reason"].startswith("start timeout")
        await _until_gone(docker_client, session["container_id"])


async def test_a_resumed_start_is_timed_by_its_own_watch_not_the_failed_start_before_it(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    """A start that fails early (its container killed) leaves its watch running. The session
    is resumed, and its new start is slow: the first start's deadline must not fail it."""
    timeout = 10
    async with never_ready(infra, fake_api, s3_endpoint, tmp_path, timeout) as client:
        session = await client.create()
        first_deadline = time.monotonic() + timeout
        docker_client.containers.get(session["container_id"]).kill()
        await client.wait_status(session["id"], "failed", timeout=30)
        await asyncio.sleep(4)  # the resumed start's deadline comes well after the first's
        resumed = await client.http.post(f"/api/v1/sessions/{session['id']}/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["status"] == "starting"
        second_deadline = time.monotonic() + timeout
        await asyncio.sleep(first_deadline + 2 - time.monotonic())
        assert time.monotonic() < second_deadline - 1
        still = await client.get(session["id"])
        assert still["status"] == "starting", still.get("failure_reason")
        failed = await client.wait_status(session["id"], "failed", timeout=30)
        assert failed["failure_reason"].startswith("start timeout")
        # its own deadline (the gateway's clock started just before the resume answered)
        assert time.monotonic() >= second_deadline - 1


async def test_idle_sessions_are_stopped(api_for, docker_client) -> None:
    alice = api_for("alice")
    session = await alice.create(config={"timeout": 10})
    sid = session["id"]
    async with alice.stream(sid) as ws:
        await read_until(ws, is_status("ready"))
        events = await read_until(ws, is_status("stopped"), timeout=40)
    assert events[-1]["event"]["reason"] == "idle timeout"
    assert (await alice.get(sid))["status"] == "stopped"
    await _until_gone(docker_client, session["container_id"])
