"""SIGTERM to a real gateway process mid-turn (the real CLI in a real container): readiness
turns at once, new streams are refused, the open stream closes with 1001 and resumes on the
next gateway without a gap or a duplicate, the request in flight completes, and the session's
container runs on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.client import Api, is_claude, marker, mint_token, read_until
from tests.fake_anthropic import slow_text
from tests.stack import run_gateway, run_replica

pytestmark = pytest.mark.docker

DRAIN_DELAY = 4  # generous: the test opens a WebSocket inside it
GRACE = 60


async def _poll_ready(url: str, seen: list[tuple[int, dict[str, Any]]]) -> None:
    """Every answer of ``/ready`` until the gateway stops listening."""
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            try:
                response = await http.get(f"{url}/ready")
            except httpx.TransportError:
                return
            seen.append((response.status_code, response.json()))
            await asyncio.sleep(0.1)


async def _read_to_close(ws: Any, into: list[dict[str, Any]]) -> int | None:
    """Every envelope until the server closes the socket; the close code."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(60):
            while True:
                into.append(json.loads(await ws.recv()))
    return int(ws.close_code) if ws.close_code is not None else None


def _ids(envelopes: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in envelopes if e["id"] is not None]  # notices carry no cursor


async def test_sigterm_drains_and_the_next_gateway_resumes(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    tag = marker()
    chunks = [f"part{i} " for i in range(16)]
    fake_api.on(tag, slow_text(chunks, delay=0.5))  # one model call of about 8 s
    answer = "".join(chunks)
    settings = {"SHUTDOWN_DRAIN_DELAY": str(DRAIN_DELAY), "SHUTDOWN_GRACE": str(GRACE)}
    with run_gateway(infra, fake_api.base_url, s3_endpoint, tmp_path, **settings) as first:
        assert first.process is not None
        token = mint_token(first.jwt_secret, "alice")
        client = Api(first.url, token)
        try:
            session = await client.create()
            sid = session["id"]
            await client.wait_status(sid, "ready")
            got: list[dict[str, Any]] = []
            async with client.stream(sid, after="0") as ws:
                chat = asyncio.create_task(client.chat(sid, f"work {tag}", timeout=GRACE))
                got += await read_until(
                    ws, lambda e: tag in str(e["event"].get("prompt", ""))
                )  # turn_started
                got += await read_until(ws, is_claude("system", "init"))  # the CLI runs it

                first.process.send_signal(signal.SIGTERM)
                sigterm = time.monotonic()
                ready: list[tuple[int, dict[str, Any]]] = []
                poller = asyncio.create_task(_poll_ready(first.url, ready))
                # a new stream is refused before it is accepted, with the error body
                with pytest.raises(InvalidStatus) as refused:
                    async with client.stream(sid, after="0"):
                        pass
                assert refused.value.response.status_code == 503
                body = json.loads(refused.value.response.body or b"{}")
                assert body["error"]["code"] == "shutting_down", body
                # the open one gets what was read for it, then 1001
                code = await _read_to_close(ws, got)
            assert code == 1001, (code, got[-3:])
            assert not any(is_claude("result")(e) for e in got)  # closed mid-turn

            # the request in flight completes within the grace
            reply = await asyncio.wait_for(chat, GRACE)
            assert reply["result"]["result"] == answer
            assert reply["turn"]["status"] == "completed"
            exit_code = await asyncio.to_thread(first.process.wait, GRACE)
            assert time.monotonic() - sigterm < DRAIN_DELAY + GRACE
            assert exit_code in (0, -signal.SIGTERM), first.log_tail()
            await poller
            assert ready, "no /ready answer between SIGTERM and exit"
            assert {status for status, _ in ready} == {503}, ready
            assert {body["status"] for _, body in ready} == {"draining"}, ready
            log = first.log_tail(200)
            assert "closed 1 stream(s) with 1001" in log, log
            assert "Traceback" not in log, log
        finally:
            await client.aclose()

        # the session's container runs on without any gateway
        container = docker_client.containers.get(session["container_id"])
        assert container.status == "running", container.status

        # the next gateway of the instance, where the client looks for it
        with run_replica(
            first,
            infra,
            fake_api.base_url,
            s3_endpoint,
            tmp_path,
            port=int(first.url.rsplit(":", 1)[1]),
            **settings,
        ) as second:
            client = Api(second.url, token)
            try:
                after = _ids(got)[-1]
                async with client.stream(sid, after=after) as ws:
                    resumed = await read_until(ws, is_claude("result"))
                async with client.stream(sid, after="0") as ws:
                    everything = await read_until(ws, is_claude("result"))
                assert _ids(got) + _ids(resumed) == _ids(everything)
                assert resumed[-1]["event"]["result"] == answer
                assert not [e for e in got + resumed if e["event"].get("type") == "gap"]
                current = await client.get(sid)
                assert current["status"] == "ready"
                assert current["container_id"] == session["container_id"]
                await client.stop(sid)
            finally:
                await client.aclose()
