"""Model access through the gateway: the real CLI in real containers, the scripted fake of the
Anthropic API as the upstream. The operator's key stays in the gateway, every token the upstream
reports is counted exactly, and a tree's budget stops it mid-turn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.model.meter import Usage
from gateway.model.prices import PriceTable
from tests.client import Api, is_claude, marker, mint_token, read_until
from tests.fake_anthropic import api_error, slow_text, text, tool_use
from tests.stack import run_gateway

pytestmark = pytest.mark.docker

OPERATOR_KEY = "sk-test-not-a-real-key"  # tests/stack.py gives every test gateway this key
FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)

# Everything a process in the session could read: every process's environment, and every file
# it may open under the writable places and its home.
HUNT = r"""
import os, sys
needle = sys.argv[1].encode()
found = []
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():  # the needle is in this probe's own argv
        for name in ("environ", "cmdline"):
            try:
                if needle in open(f"/proc/{pid}/{name}", "rb").read():
                    found.append(f"/proc/{pid}/{name}")
            except OSError:
                pass
for top in ("/home/claude", "/workspace", "/tmp", "/run"):
    for root, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(root, name)
            try:
                if needle in open(path, "rb").read():
                    found.append(path)
            except OSError:
                pass
print("\n".join(found) or "clean")
"""


async def session_token(api: Api, session_id: str) -> str:
    minted = await api.http.post(f"/api/v1/sessions/{session_id}/token")
    assert minted.status_code == 200, minted.text
    return str(minted.json()["token"])


def messages_body(tag: str, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": f"say it {tag}"}],
    }


async def test_the_operator_key_stays_in_the_gateway(api_for, fake_api, docker_client) -> None:
    alice = api_for(f"alice-{marker()}")
    tag = marker()
    fake_api.on(tag, tool_use("Bash", {"command": "env | sort > /tmp/env.txt"}), text(f"ok {tag}"))
    session = await alice.create(prompt=f"look around {tag}")
    async with alice.stream(session["id"], after="0") as ws:
        events = await read_until(ws, is_claude("result"), timeout=90)
    assert events[-1]["event"]["result"] == f"ok {tag}"
    # The upstream saw the operator's key on this session's calls, never the session's token.
    calls = [h for h in fake_api.headers if tag in json.dumps(h) or h.get("x-api-key")]
    assert calls and all(h.get("x-api-key") == OPERATOR_KEY for h in calls)
    assert all("authorization" not in h for h in calls)
    attrs = docker_client.api.inspect_container(session["container_id"])
    assert not [v for v in attrs["Config"]["Env"] if OPERATOR_KEY in v]
    base_urls = [v for v in attrs["Config"]["Env"] if v.startswith("ANTHROPIC_BASE_URL=")]
    assert len(base_urls) == 1 and base_urls[0].endswith("/model")
    code, output = docker_client.containers.get(session["container_id"]).exec_run(
        ["python3", "-c", HUNT, OPERATOR_KEY]
    )
    assert code == 0 and output.decode().strip() == "clean", output
    await alice.stop(session["id"])


async def test_streams_pass_through_byte_for_byte_as_they_arrive(
    api_for, fake_api, gateway
) -> None:
    alice = api_for(f"alice-{marker()}")
    session = await alice.create()
    await alice.wait_status(session["id"], "ready")
    token = await session_token(alice, session["id"])
    tag = marker()
    fake_api.on(tag, slow_text(["one ", "two ", "three"], delay=0.8))
    arrivals: list[float] = []
    received = bytearray()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        start = time.monotonic()
        async with http.stream(
            "POST",
            "/model/v1/messages?beta=true",
            json=messages_body(tag),
            headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["request-id"].startswith("req_")  # the upstream's own
            # One hop's headers once, the gateway's: never the upstream's beside them.
            assert len(response.headers.get_list("date")) == 1
            assert "FakeAnthropic" not in ",".join(response.headers.get_list("server"))
            async for chunk in response.aiter_raw():
                received += chunk
                arrivals.append(time.monotonic() - start)
        # Errors pass through unchanged too (status and body), and are not retried here.
        failing = marker()
        fake_api.on(failing, api_error(529, "overloaded, try later"))
        error = await http.post(
            "/model/v1/messages", json=messages_body(failing), headers={"x-api-key": token}
        )
    (sent,) = fake_api.streamed(tag)
    assert bytes(received) == sent
    # Not buffered: the first bytes arrived well before the last (two 0.8 s pauses between).
    assert arrivals[0] < arrivals[-1] - 1.0
    assert error.status_code == 529
    assert error.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "overloaded, try later"},
    }
    await alice.stop(session["id"])


async def test_only_a_running_sessions_own_token_reaches_the_model(api_for, gateway) -> None:
    alice = api_for(f"alice-{marker()}")
    session = await alice.create()
    await alice.wait_status(session["id"], "ready")
    token = await session_token(alice, session["id"])
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        for headers in ({}, {"x-api-key": "sk-guess"}, {"x-api-key": alice.token}):
            refused = await http.post(
                "/model/v1/messages", json=messages_body("x"), headers=headers
            )
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["type"] == "authentication_error"
        counted = await http.post(
            "/model/v1/messages/count_tokens", json=messages_body("x"), headers={"x-api-key": token}
        )
        assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
        await alice.stop(session["id"])
        revoked = await http.post(
            "/model/v1/messages", json=messages_body("x"), headers={"x-api-key": token}
        )
    assert revoked.status_code == 401 and "stopped" in revoked.json()["error"]["message"]


# The environment and command line of the session's CLI, as a process in the session reads them.
CLI_KEY = r"""
import json, os
for pid in os.listdir("/proc"):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        continue
    if b"stream-json" in argv and not argv[0].endswith(b"python3"):
        env = dict(v.decode().split("=", 1) for v in environ if b"=" in v)
        print(json.dumps({"key": env.get("ANTHROPIC_API_KEY"), "argv": [a.decode() for a in argv]}))
        break
"""


def cli_model_key(docker_client: Any, container_id: str) -> str:
    """The model key the session's CLI holds, read from inside its container; the CLI was
    started without an apiKeyHelper (its key is in its environment)."""
    code, output = docker_client.containers.get(container_id).exec_run(["python3", "-c", CLI_KEY])
    assert code == 0 and output.strip(), output
    found = json.loads(output)
    assert "--settings" not in found["argv"] and found["key"], found
    return str(found["key"])


async def test_a_model_key_is_good_for_its_own_run_of_its_session_only(
    api_for, gateway, docker_client
) -> None:
    """The CLI's key is in its environment for its whole life: what an agent that reads it
    can do with it is call the model for this session while this run lasts. Not the API, not
    after the session stops, not after it was started again (its new CLI has a new key)."""
    alice = api_for(f"alice-{marker()}")
    session = await alice.create()
    sid = session["id"]
    ready = await alice.wait_status(sid, "ready")
    key = cli_model_key(docker_client, ready["container_id"])
    claims = jwt.decode(key, options={"verify_signature": False})
    assert claims["aud"] == "cc-docker:model" and claims["sid"] == sid
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:

        async def count(with_key: str) -> httpx.Response:
            return await http.post(
                "/model/v1/messages/count_tokens",
                json=messages_body("x"),
                headers={"x-api-key": with_key},
            )

        assert (await count(key)).status_code == 200
        for path in (f"/api/v1/sessions/{sid}", "/api/v1/sessions"):
            refused = await http.get(path, headers={"authorization": f"Bearer {key}"})
            assert refused.status_code == 401, refused.text
            assert "model proxy only" in refused.json()["error"]["message"]
        await alice.stop(sid)
        stopped = await count(key)
        assert stopped.status_code == 401 and "stopped" in stopped.json()["error"]["message"]
        resumed = await alice.http.post(f"/api/v1/sessions/{sid}/resume")
        assert resumed.status_code in (200, 202), resumed.text
        again = await alice.wait_status(sid, "ready")
        replaced = await count(key)
        assert replaced.status_code == 401, replaced.text
        assert "started again" in replaced.json()["error"]["message"]
        new_key = cli_model_key(docker_client, again["container_id"])
        assert new_key != key and (await count(new_key)).status_code == 200
    await alice.stop(sid)


async def test_usage_is_exactly_what_the_upstream_reported(api_for, fake_api) -> None:
    owner = f"alice-{marker()}"
    alice = api_for(owner)
    since = (await alice.http.get("/api/v1/usage")).json()["usage"]
    assert since["requests"] == 0
    tag = marker()
    fake_api.cache_creation_tokens, fake_api.cache_read_tokens = 7, 11
    try:
        fake_api.on(tag, tool_use("Bash", {"command": "echo hi"}), text(f"done {tag}"))
        session = await alice.create()
        await alice.wait_status(session["id"], "ready")
        await alice.chat(session["id"], f"work {tag}")
        await alice.chat(session["id"], f"again {tag}")
    finally:
        fake_api.cache_creation_tokens, fake_api.cache_read_tokens = 0, 0
    reported = fake_api.reported(tag)
    assert len(reported) >= 3  # tool call, its result, the second turn
    expected = {name: sum(usage[name] for _, usage in reported) for name in FIELDS}
    prices = PriceTable()
    expected_cost = sum(
        (prices.cost(model, Usage(**{n: usage[n] for n in FIELDS})) for model, usage in reported),
        Decimal(0),
    )
    deadline = time.monotonic() + 10  # settlement follows the response by a moment
    while True:
        usage = (await alice.http.get(f"/api/v1/sessions/{session['id']}/usage")).json()
        if usage["session"]["requests"] >= len(reported) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    own = usage["session"]
    assert {name: own[name] for name in FIELDS} == expected
    assert own["requests"] == len(reported)
    assert Decimal(str(own["cost_usd"])).quantize(Decimal("1e-8")) == expected_cost.quantize(
        Decimal("1e-8")
    )
    ((model, figures),) = own["models"].items()
    assert model == reported[0][0] and figures["input_tokens"] == expected["input_tokens"]
    assert usage["tree"] == own and usage["budget"] is None
    # The session object and the owner's totals carry the same figures.
    got = await alice.get(session["id"])
    assert {name: got["usage"][name] for name in FIELDS} == expected
    totals = (await alice.http.get("/api/v1/usage")).json()["usage"]
    assert {name: totals[name] for name in FIELDS} == expected
    await alice.stop(session["id"])


async def test_calls_that_end_together_are_each_counted_once(api_for, gateway, fake_api) -> None:
    """Calls of two sessions that end at once are settled in one batch: each session's totals,
    and the owner's, are still exactly what the upstream reported for its own calls."""
    tag = marker()
    alice = api_for(f"alice-{tag}")
    sessions = [await alice.create() for _ in range(2)]
    for session in sessions:
        await alice.wait_status(session["id"], "ready")
    tokens = [await session_token(alice, session["id"]) for session in sessions]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:

        async def call(which: int, n: int) -> None:
            answered = await http.post(
                "/model/v1/messages",
                json=messages_body(f"{tag}-{which}-{n}", stream=n % 2 == 0),
                headers={"x-api-key": tokens[which]},
            )
            assert answered.status_code == 200, answered.text

        await asyncio.gather(*(call(which, n) for which in (0, 1) for n in range(6)))
    for which, session in enumerate(sessions):
        reported = fake_api.reported(f"{tag}-{which}-")
        assert len(reported) == 6
        expected = {name: sum(usage[name] for _, usage in reported) for name in FIELDS}
        deadline = time.monotonic() + 10  # settlement follows the response by a moment
        while True:
            usage = (await alice.http.get(f"/api/v1/sessions/{session['id']}/usage")).json()
            if usage["session"]["requests"] >= 6 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert usage["session"]["requests"] == 6
        assert {name: usage["session"][name] for name in FIELDS} == expected
    totals = (await alice.http.get("/api/v1/usage")).json()["usage"]
    assert totals["requests"] == 12
    # A batch the database refused would have been written call by call, with the same
    # totals: the log tells that it never was.
    assert "could not settle" not in gateway.log_path.read_text()
    for session in sessions:
        await alice.stop(session["id"])


async def test_a_budget_stops_the_whole_tree_mid_turn(api_for, fake_api) -> None:
    alice = api_for(f"alice-{marker()}")
    root = await alice.create(config={"budget": {"max_tokens": 3000}})
    await alice.wait_status(root["id"], "ready")
    refused = await alice.http.post(
        f"/api/v1/sessions/{root['id']}/spawn",
        json={"prompt": "x", "config": {"budget": {"max_tokens": 10**9}}},
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "budget_not_allowed"
    child_tag = marker()
    fake_api.on(child_tag, text("child " + "words " * 200))  # large enough to count
    spawned = await alice.http.post(
        f"/api/v1/sessions/{root['id']}/spawn", json={"prompt": f"help {child_tag}"}
    )
    assert spawned.status_code == 201, spawned.text
    child = spawned.json()
    await alice.wait_status(child["id"], "ready")
    # The child's spending counts in its root's tree.
    usage = (await alice.http.get(f"/api/v1/sessions/{root['id']}/usage")).json()
    assert usage["tree"]["requests"] >= 1 and usage["session"]["requests"] == 0
    assert usage["budget"]["max_tokens"] == 3000 and usage["budget"]["exceeded"] is False

    # A turn of many model calls: it crosses the budget mid-turn and its next call is refused.
    tag = marker()
    fake_api.on(
        tag,
        *[tool_use("Bash", {"command": f"echo step {i}"}) for i in range(10)],
        text("never reached"),
    )
    async with (
        alice.stream(root["id"], after="$") as ws,
        alice.stream(child["id"], after="$") as cws,
    ):
        reply = await alice.chat(root["id"], f"loop {tag} " + "padding " * 300, timeout=120)
        result = reply["result"]
        assert result["is_error"] is True and "budget" in result["result"], result
        events = await read_until(ws, lambda e: e["event"].get("type") == "budget_exceeded", 20)
        exceeded = events[-1]["event"]
        assert exceeded["max_tokens"] == 3000 and exceeded["spent_tokens"] >= 3000
        child_events = await read_until(
            cws, lambda e: e["event"].get("type") == "budget_exceeded", 20
        )
        assert child_events[-1]["event"]["root_id"] == root["id"]
    calls_made = len(fake_api.requests_for(tag))
    assert 1 <= calls_made < 11  # stopped mid-turn, not after its last call
    # Any session of the tree is refused from now on, at once, without a retry upstream.
    again = await alice.chat(child["id"], f"more {child_tag}", timeout=60)
    assert again["result"]["is_error"] is True and "budget" in again["result"]["result"]
    assert len(fake_api.requests_for(tag)) == calls_made
    # The tree's sessions stay usable for files and can be stopped.
    files = await alice.http.get(f"/api/v1/sessions/{root['id']}/files")
    assert files.status_code == 200
    budget = (await alice.http.get(f"/api/v1/sessions/{child['id']}/usage")).json()["budget"]
    assert budget["exceeded"] is True and budget["reserved_tokens"] == 0
    stopped = await alice.stop(root["id"])
    assert stopped["status"] == "stopped"


@contextlib.asynccontextmanager
async def one_call_slot(
    infra: Any, fake_api: Any, s3_endpoint: Any, tmp_path: Any
) -> AsyncIterator[tuple[str, str]]:
    """A gateway that lets an owner have one model call in flight, and a ready session of
    alice's on it: (the gateway's URL, the session's token). The session is stopped after."""
    with run_gateway(
        infra, fake_api.base_url, s3_endpoint, tmp_path, MODEL_MAX_STREAMS_PER_OWNER="1"
    ) as gw:
        alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        try:
            session = await alice.create()
            await alice.wait_status(session["id"], "ready")
            yield gw.url, await session_token(alice, session["id"])
            await alice.stop(session["id"])
        finally:
            await alice.aclose()


async def test_an_owner_has_a_bounded_number_of_calls_in_flight(
    infra, fake_api, s3_endpoint, tmp_path
) -> None:
    async with one_call_slot(infra, fake_api, s3_endpoint, tmp_path) as (url, token):
        slow = marker()
        fake_api.on(slow, slow_text(["a", "b", "c"], delay=1.0))
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            first = asyncio.create_task(
                http.post(
                    "/model/v1/messages", json=messages_body(slow), headers={"x-api-key": token}
                )
            )
            await asyncio.sleep(0.5)
            second = await http.post(
                "/model/v1/messages",
                json=messages_body(str(uuid.uuid4())),
                headers={"x-api-key": token},
            )
            assert second.status_code == 429
            assert second.json()["error"]["type"] == "rate_limit_error"
            assert int(second.headers["retry-after"]) >= 1
            assert (await first).status_code == 200
            third = await http.post(
                "/model/v1/messages", json=messages_body(slow), headers={"x-api-key": token}
            )
            assert third.status_code == 200  # the slot came back


async def test_a_caller_that_hangs_up_mid_answer_ends_the_upstream_call(
    infra, fake_api, s3_endpoint, tmp_path
) -> None:
    """An interrupted CLI closes its connection mid-stream: the proxy must stop relaying at
    once, not read the upstream's answer to its end (the model would go on generating, and
    billing, for nobody) while the owner's only call slot stays taken."""
    async with one_call_slot(infra, fake_api, s3_endpoint, tmp_path) as (url, token):
        endless = marker()
        fake_api.on(endless, slow_text([f"part {i} " for i in range(30)], delay=2.0))
        headers = {"x-api-key": token}
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as http,
            http.stream(
                "POST", "/model/v1/messages", json=messages_body(endless), headers=headers
            ) as answer,
        ):
            assert answer.status_code == 200
            async for chunk in answer.aiter_raw():
                if b"part 0" in chunk:
                    break  # hang up after the first words
        hung_up = time.monotonic()
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while True:  # the slot comes back once the proxy has let go of the call
                again = await http.post(
                    "/model/v1/messages",
                    json=messages_body(str(uuid.uuid4())),
                    headers=headers,
                )
                if again.status_code != 429 or time.monotonic() - hung_up > 10:
                    break
                await asyncio.sleep(0.1)
        assert again.status_code == 200, again.text
        assert time.monotonic() - hung_up < 5  # the answer had 58 s left to stream


class RawUpstream:
    """An upstream of the test's own on a plain socket, to see when a request's bytes arrive
    and how they are framed. It answers a minimal streamed message."""

    ANSWER = (
        b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_raw", '
        b'"type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [], '
        b'"stop_reason": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}\n\n'
        b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    )

    def __init__(self) -> None:
        self.head = b""
        self.body = b""
        self.body_began = asyncio.Event()
        self.requests = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        self.head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", self.head).group(1))  # type: ignore[union-attr]
        self.body = b""
        while len(self.body) < length:
            chunk = await reader.read(65536)
            if not chunk:
                return
            self.body += chunk
            self.body_began.set()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n"
        writer.write(head % len(self.ANSWER) + self.ANSWER)
        await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def raw_upstream_gateway(
    infra: Any, s3_endpoint: Any, tmp_path: Any
) -> AsyncIterator[tuple[RawUpstream, str, str]]:
    """A gateway whose upstream is a ``RawUpstream`` and whose model requests may be 4 MiB at
    most, with a ready session of alice's: (the upstream, the gateway's URL, the session's
    token)."""
    upstream = RawUpstream()
    server = await asyncio.start_server(upstream.serve, infra.gateway_ip, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with run_gateway(
            infra,
            f"http://{infra.gateway_ip}:{port}",
            s3_endpoint,
            tmp_path,
            MODEL_MAX_REQUEST_BYTES=str(4 * 1024 * 1024),
        ) as gw:
            alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
            try:
                session = await alice.create()
                await alice.wait_status(session["id"], "ready")
                yield upstream, gw.url, await session_token(alice, session["id"])
                await alice.stop(session["id"])
            finally:
                await alice.aclose()
    finally:
        server.close()


async def test_a_large_request_goes_upstream_while_it_is_still_arriving(
    infra, s3_endpoint, tmp_path
) -> None:
    """A long conversation's request (3 MiB here) is sent on as it arrives, framed as it came
    (with its length, never re-chunked), byte for byte. The client sends half, then waits for
    the upstream to see body bytes before it sends the rest: a proxy that reads the whole body
    first never lets that happen."""
    body = messages_body("big")
    body["system"] = "x" * (3 * 1024 * 1024)
    raw = json.dumps(body).encode()
    async with raw_upstream_gateway(infra, s3_endpoint, tmp_path) as (upstream, url, token):

        async def halves() -> AsyncIterator[bytes]:
            yield raw[: len(raw) // 2]
            await asyncio.wait_for(upstream.body_began.wait(), timeout=10)
            yield raw[len(raw) // 2 :]

        headers = {"x-api-key": token, "content-length": str(len(raw))}
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            answered = await http.post("/model/v1/messages", content=halves(), headers=headers)
        assert answered.status_code == 200, answered.text
        assert answered.content == RawUpstream.ANSWER
        assert upstream.body == raw
        head = upstream.head.decode().lower()
        assert f"content-length: {len(raw)}\r\n" in head and "transfer-encoding" not in head


async def test_a_caller_that_hangs_up_mid_request_is_not_an_unreachable_upstream(
    infra, s3_endpoint, tmp_path
) -> None:
    """A CLI killed while its long request is still being sent on: the upstream was reached
    and did nothing wrong, so the call counts as ``caller_gone``. Counted as ``unreachable``
    it would tell an operator that the model API is down."""
    body = messages_body("cut short")
    body["system"] = "x" * (1024 * 1024)
    raw = json.dumps(body).encode()
    async with raw_upstream_gateway(infra, s3_endpoint, tmp_path) as (upstream, url, token):

        async def half_then_killed() -> AsyncIterator[bytes]:
            yield raw[: len(raw) // 2]
            await asyncio.wait_for(upstream.body_began.wait(), timeout=10)
            raise ConnectionAbortedError("the CLI was killed")

        headers = {"x-api-key": token, "content-length": str(len(raw))}
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            with pytest.raises(ConnectionAbortedError):
                await http.post("/model/v1/messages", content=half_then_killed(), headers=headers)
            counted: dict[str, float] = {}
            deadline = time.monotonic() + 15
            while not counted and time.monotonic() < deadline:  # settled in batches
                await asyncio.sleep(0.2)
                scraped = (await http.get("/metrics")).text
                counted = {
                    sample.labels["status"]: sample.value
                    for family in text_string_to_metric_families(scraped)
                    for sample in family.samples
                    if sample.name == "ccd_model_requests_total"
                }
        assert counted == {"caller_gone": 1.0}
        assert len(upstream.body) < len(raw)  # the upstream never got the whole request


async def test_a_request_over_the_size_limit_never_reaches_the_upstream(
    infra, s3_endpoint, tmp_path
) -> None:
    """MODEL_MAX_REQUEST_BYTES (4 MiB here) holds whether the body declares its length or comes
    in chunks: 413 ``request_too_large``, in the Anthropic shape the CLI shows."""
    raw = json.dumps({**messages_body("huge"), "system": "x" * (5 * 1024 * 1024)}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 1024 * 1024):
            yield raw[start : start + 1024 * 1024]

    async with raw_upstream_gateway(infra, s3_endpoint, tmp_path) as (upstream, url, token):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for content in (raw, chunked()):
                refused = await http.post(
                    "/model/v1/messages", content=content, headers={"x-api-key": token}
                )
                assert refused.status_code == 413, refused.text
                error = refused.json()["error"]
                assert error["type"] == "request_too_large" and "4194304" in error["message"]
        assert upstream.requests == 0
