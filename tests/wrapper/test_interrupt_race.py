"""An interrupt at the first moment of a turn, on the host: the real supervisor drives the real
Claude Code CLI against the scripted fake API; inputs and outputs go through an in-memory
channel instead of Redis.

The race: the first turn of a CLI process waits for its MCP servers (here the wrapper's own
``sessions`` server, whose ``tools/list`` answer is held back a second, as a busy one-CPU
container does by itself) before it begins. An interrupt written in that window is answered
``success`` by the CLI and ignored; the wrapper must still end the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.claude_cli import claude_binary, foreign_setting, host_cli_environment
from tests.fake_anthropic import FakeAnthropic, slow_text
from wrapper import protocol
from wrapper.channel import Channel
from wrapper.config import WrapperSettings
from wrapper.mcp_sessions import SessionsServer
from wrapper.protocol import ContainerEnv, InterruptInput, PromptInput
from wrapper.session_tools import SessionsApi
from wrapper.supervisor import Supervisor

pytestmark = pytest.mark.timeout(60)

Json = dict[str, Any]
SLOW_TURN = 12.0  # seconds the turn streams when nothing interrupts it
TOOLS_LIST_DELAY = 1.0


class QueueChannel(Channel):
    """The supervisor's channel with inputs from a queue and outputs kept in a list."""

    def __init__(self) -> None:
        self.events: list[dict[str, str]] = []
        self._inputs: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self._published = asyncio.Condition()

    def send(self, message: PromptInput | InterruptInput) -> None:
        self._inputs.put_nowait(protocol.encode_input(message))

    async def publish(self, fields: dict[str, str]) -> str:
        async with self._published:
            self.events.append(fields)
            self._published.notify_all()
        return f"{len(self.events)}-0"

    async def inputs(self, block_ms: int = 0) -> AsyncIterator[tuple[str, dict[str, str]]]:
        for number in range(1, 1_000_000):
            yield f"{number}-0", await self._inputs.get()

    async def ack(self, entry_id: str) -> None:
        return None

    async def next_event(self, turn_id: str, *types: str, timeout: float) -> Json:
        """The first event of ``turn_id`` of one of ``types`` (already published or next)."""

        def found() -> dict[str, str] | None:
            return next(
                (
                    e
                    for e in self.events
                    if e[protocol.FIELD_TURN] == turn_id and e[protocol.FIELD_TYPE] in types
                ),
                None,
            )

        async with asyncio.timeout(timeout), self._published:
            await self._published.wait_for(found)
        fields = found()
        assert fields is not None
        event: Json = json.loads(fields[protocol.FIELD_DATA])
        return event


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def settings(
    tmp_path: Path, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> WrapperSettings:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    for name in list(os.environ):
        if foreign_setting(name):
            monkeypatch.delenv(name)
    for name, value in host_cli_environment(fake.base_url, home).items():
        monkeypatch.setenv(name, value)
    return WrapperSettings(
        contract=ContainerEnv(
            session_id=str(uuid.uuid4()),
            redis_url="redis://unused",
            gateway_url="http://unused",
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
    )


@contextlib.asynccontextmanager
async def running(settings: WrapperSettings) -> AsyncIterator[QueueChannel]:
    # Listing tools calls no gateway API: the server needs no client here.
    sessions = SessionsServer(cast(SessionsApi, object()))

    async def slow_tools_list(request: Json) -> Json:
        if (request.get("message") or {}).get("method") == "tools/list":
            await asyncio.sleep(TOOLS_LIST_DELAY)
        return await sessions.handle_control(request)

    channel = QueueChannel()
    supervisor = Supervisor(settings, channel, {"mcp_message": slow_tools_list})
    task = asyncio.create_task(supervisor.run())
    try:
        yield channel
    finally:
        supervisor.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_an_interrupt_before_the_turn_began_ends_it(
    settings: WrapperSettings, fake: FakeAnthropic
) -> None:
    tag = f"race-{uuid.uuid4().hex[:8]}"
    fake.on(tag, slow_text([f"w{i} " for i in range(int(SLOW_TURN) + 1)], delay=1.0))
    async with running(settings) as channel:
        await channel.next_event("", protocol.GatewayEvent.CLI_READY, timeout=20)
        channel.send(PromptInput(turn_id="t1", prompt=f"talk slowly {tag}"))
        # The CLI has the user message and asks its MCP server for tools: the turn has not
        # begun (no system/init yet), which is the window in which the CLI ignores interrupts.
        await channel.next_event("t1", "control_request", timeout=20)
        assert not [e for e in channel.events if e[protocol.FIELD_TYPE] == "system"]
        sent = time.monotonic()
        channel.send(InterruptInput(turn_id="t1"))
        result = await channel.next_event("t1", "result", timeout=SLOW_TURN + 10)
        took = time.monotonic() - sent
    print(f"interrupt -> result: {took:.3f} s")
    assert result["subtype"] == "error_during_execution"
    assert result["terminal_reason"] == "aborted_streaming"
    assert took < TOOLS_LIST_DELAY + 3  # the turn would stream for SLOW_TURN seconds
    kinds = [e[protocol.FIELD_TYPE] for e in channel.events if e[protocol.FIELD_TURN] == "t1"]
    assert kinds.count("interrupt_sent") == 1
