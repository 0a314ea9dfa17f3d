"""The ``sessions`` MCP tools end to end on the host: the real wrapper (supervisor, Redis
channel, gateway client, token file) runs the real Claude Code CLI, which the scripted fake
Anthropic API makes call the tools; a stub gateway answers them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.claude_cli import claude_binary, foreign_setting, host_cli_environment
from tests.fake_anthropic import FakeAnthropic, Step, text, tool_use
from tests.wrapper.stub_gateway import Reply, StubGateway, error, make_jwt
from wrapper import protocol
from wrapper.__main__ import assemble
from wrapper.config import WrapperSettings
from wrapper.protocol import ContainerEnv, InterruptInput, PromptInput
from wrapper.supervisor import Supervisor

pytestmark = [pytest.mark.timeout(30), pytest.mark.docker]  # Redis runs in a container

Json = dict[str, Any]
READ_TIMEOUT = 15.0
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def redis_url(infra: Any) -> str:
    """The tests' real Redis (a container; see tests/stack.py)."""
    return str(infra.redis_url)


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def parent_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def stub(parent_id: str) -> Iterator[StubGateway]:
    with StubGateway(parent_id) as gateway:
        yield gateway


TOKEN = make_jwt(time.time() + 3600)


@pytest.fixture
def settings(
    tmp_path: Path,
    redis_url: str,
    stub: StubGateway,
    fake: FakeAnthropic,
    parent_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> WrapperSettings:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    # The supervisor gives the CLI the process environment (minus the wrapper's variables).
    for name in list(os.environ):
        if foreign_setting(name):
            monkeypatch.delenv(name)
    for name, value in host_cli_environment(fake.base_url, home).items():
        monkeypatch.setenv(name, value)
    return WrapperSettings(
        contract=ContainerEnv(
            session_id=parent_id,
            redis_url=redis_url,
            gateway_url=stub.base_url,
            claude_session_id=str(uuid.uuid4()),
            permission_mode="bypassPermissions",
            stream_maxlen=1000,
        ),
        claude_bin=claude_binary(),
        workdir=work,
        config_dir=home / ".claude",
        handshake_timeout=20,
        max_restarts=0,
        restart_window=60,
        terminate_grace=3,
        max_line_bytes=16 * 1024 * 1024,
        token_file=home / protocol.SESSION_TOKEN_FILE,
        session_token=TOKEN,
    )


class Session:
    """The running wrapper as the gateway sees it: prompts in, events out, over Redis."""

    def __init__(self, redis: aioredis.Redis, session_id: str) -> None:
        self._redis: Any = redis
        self._in = protocol.input_stream_key(session_id)
        self._out = protocol.output_stream_key(session_id)
        self._cursor = "0"
        self.events: list[Json] = []

    async def send(self, message: PromptInput | InterruptInput) -> None:
        await self._redis.xadd(self._in, protocol.encode_input(message))

    async def result(self, turn_id: str, timeout: float = READ_TIMEOUT) -> Json:
        """The CLI's ``result`` line for ``turn_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = await self._redis.xread({self._out: self._cursor}, block=200, count=100)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._cursor = entry_id
                    event = json.loads(fields[protocol.FIELD_DATA])
                    self.events.append(event)
                    if event.get("type") == "result" and fields[protocol.FIELD_TURN] == turn_id:
                        result: Json = event
                        return result
        pytest.fail(f"no result for {turn_id} in {timeout}s; last events: {self.events[-5:]}")


@contextlib.asynccontextmanager
async def running(settings: WrapperSettings) -> AsyncIterator[tuple[Session, Supervisor]]:
    redis = aioredis.Redis.from_url(settings.contract.redis_url, decode_responses=True)
    async with assemble(settings) as supervisor:
        task = asyncio.create_task(supervisor.run())
        try:
            yield Session(redis, settings.contract.session_id), supervisor
        finally:
            supervisor.stop()
            assert await asyncio.wait_for(task, 10) == 0
            await redis.aclose()


def last_tool_result(body: Json) -> Json:
    for message in reversed(body.get("messages") or []):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    return block
    raise AssertionError("no tool_result in the request")


def result_text(block: Json) -> str:
    content = block["content"]
    return content if isinstance(content, str) else json.dumps(content)


def wait_for_spawned_child(body: Json) -> Step:
    """The model reads the child id from spawn's tool result and waits for that child."""
    found = UUID.search(result_text(last_tool_result(body)))
    assert found, "no session id in the spawn result"
    return tool_use("mcp__sessions__wait_for_session", {"session_id": found[0], "timeout_s": 5})


async def test_model_spawns_a_child_and_waits_for_its_result(
    settings: WrapperSettings, fake: FakeAnthropic, stub: StubGateway
) -> None:
    fake.on(
        "delegate-1",
        tool_use("mcp__sessions__spawn_session", {"prompt": "compute 6*7"}),
        wait_for_spawned_child,
        text("the child is done"),
    )
    async with running(settings) as (session, _):
        await session.send(PromptInput(turn_id="t1", prompt="delegate-1 please"))
        result = await session.result("t1")

    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["result"] == "the child is done"
    (spawn,) = stub.calls_to("POST", "/spawn")
    assert spawn.path == f"/api/v1/sessions/{settings.contract.session_id}/spawn"
    assert spawn.body == {"prompt": "compute 6*7", "config": {}}
    (wait,) = stub.calls_to("POST", "/wait")
    assert wait.path == f"/api/v1/sessions/{stub.child_id}/wait"
    assert wait.body == {"timeout": 5}
    assert spawn.authorization == wait.authorization == f"Bearer {TOKEN}"

    asked_spawn, asked_wait, final = fake.requests_for("delegate-1")
    assert "mcp__sessions__spawn_session" in [t["name"] for t in asked_spawn["tools"]]
    spawned = last_tool_result(asked_wait)
    assert stub.child_id in result_text(spawned) and not spawned.get("is_error")
    waited = last_tool_result(final)
    assert "the answer is 42" in result_text(waited) and not waited.get("is_error")

    # The wrapper saved its token for ccd-agent.
    assert settings.token_file.read_text().strip() == TOKEN
    assert stat.S_IMODE(settings.token_file.stat().st_mode) == 0o600


async def test_a_refused_spawn_is_a_tool_error_and_the_turn_goes_on(
    settings: WrapperSettings, fake: FakeAnthropic, stub: StubGateway
) -> None:
    message = "spawn depth 2 would exceed MAX_SPAWN_DEPTH=1"
    stub.on("POST", r"/sessions/[^/]+/spawn", error(403, "spawn_depth_exceeded", message))
    fake.on(
        "delegate-2",
        tool_use("mcp__sessions__spawn_session", {"prompt": "go deeper"}),
        text("I could not spawn"),
    )
    async with running(settings) as (session, _):
        await session.send(PromptInput(turn_id="t2", prompt="delegate-2 please"))
        result = await session.result("t2")

    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["result"] == "I could not spawn"
    _, after = fake.requests_for("delegate-2")
    refused = last_tool_result(after)
    assert refused["is_error"] is True
    assert f"spawn_depth_exceeded: {message}" in result_text(refused)
    assert stub.calls_to("POST", "/wait") == []


async def test_an_interrupt_cancels_a_waiting_tool_call(
    settings: WrapperSettings,
    fake: FakeAnthropic,
    stub: StubGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wrapper.mcp_sessions")
    stub.on("POST", r"/sessions/[^/]+/wait", Reply(200, {}, delay=20))
    fake.on("delegate-3", tool_use("mcp__sessions__wait_for_session", {"session_id": "c"}))
    fake.on("after-3", text("still here"))
    async with running(settings) as (session, _):
        await session.send(PromptInput(turn_id="t3", prompt="delegate-3 please"))
        deadline = time.monotonic() + READ_TIMEOUT
        while not stub.calls_to("POST", "/wait"):
            assert time.monotonic() < deadline, "the tool never called the gateway"
            await asyncio.sleep(0.05)
        interrupted = time.monotonic()
        await session.send(InterruptInput(turn_id="t3"))
        result = await session.result("t3")
        assert time.monotonic() - interrupted < 5
        assert result["subtype"] == "error_during_execution"
        await session.send(PromptInput(turn_id="t4", prompt="after-3 check"))
        assert (await session.result("t4"))["result"] == "still here"

    assert any("cancelled by the CLI" in r.getMessage() for r in caplog.records)
