"""How the supervisor answers the CLI's own control requests, with in-memory stand-ins for the
CLI process and the Redis channel (real subclasses that record instead of doing I/O)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wrapper.channel import Channel
from wrapper.claude_process import ClaudeProcess, RefuseControl
from wrapper.config import WrapperSettings
from wrapper.protocol import ContainerEnv
from wrapper.supervisor import ControlHandler, Supervisor

pytestmark = pytest.mark.timeout(10)


class RecordingProcess(ClaudeProcess):
    """A CLI process that records what would be written to its stdin."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))


class MemoryChannel(Channel):
    def __init__(self) -> None:
        self.events: list[dict[str, str]] = []

    async def publish(self, fields: dict[str, str]) -> str:
        self.events.append(fields)
        return f"{len(self.events)}-0"


def supervisor(handlers: dict[str, ControlHandler], **overrides: Any) -> Supervisor:
    settings = WrapperSettings(
        contract=ContainerEnv(
            session_id="s",
            redis_url="redis://unused",
            gateway_url="http://unused",
            claude_session_id="c",
            permission_mode="default",
            stream_maxlen=100,
        ),
        claude_bin="claude",
        workdir=Path("/tmp"),
        config_dir=Path("/tmp/.claude"),
        handshake_timeout=1,
        max_restarts=0,
        restart_window=1,
        terminate_grace=1,
        max_line_bytes=1024,
        token_file=Path("/tmp/unused-token"),
    )
    return Supervisor(dataclasses.replace(settings, **overrides), MemoryChannel(), handlers)


def control_request(request_id: str, **fields: Any) -> str:
    return json.dumps({"type": "control_request", "request_id": request_id, "request": {**fields}})


async def settle(sup: Supervisor) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    background = list(sup._background)
    if background:
        await asyncio.wait(background, timeout=5)


async def test_a_cancelled_request_is_not_answered() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(request: dict[str, Any]) -> dict[str, Any]:
        if request.get("slow"):
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return {"ok": True}

    sup, proc = supervisor({"mcp_message": slow}), RecordingProcess()
    await sup._on_stdout_line(proc, control_request("r1", subtype="mcp_message", slow=True))
    await sup._on_stdout_line(proc, control_request("r2", subtype="mcp_message"))
    await asyncio.wait_for(started.wait(), 5)
    cancel = {"type": "control_cancel_request", "request_id": "r1"}
    await sup._on_stdout_line(proc, json.dumps(cancel))
    await asyncio.wait_for(cancelled.wait(), 5)
    await sup._on_stdout_line(proc, json.dumps({**cancel, "request_id": "unknown"}))
    await settle(sup)

    assert proc.sent == [
        {
            "type": "control_response",
            "response": {"subtype": "success", "request_id": "r2", "response": {"ok": True}},
        }
    ]
    assert sup._answering == {}


async def test_refusals_and_unknown_subtypes_answer_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refuse(request: dict[str, Any]) -> dict[str, Any]:
        raise RefuseControl("no such server")

    sup, proc = supervisor({"mcp_message": refuse}), RecordingProcess()
    with caplog.at_level(logging.ERROR):
        await sup._on_stdout_line(proc, control_request("r1", subtype="mcp_message"))
        await sup._on_stdout_line(proc, control_request("r2", subtype="can_use_tool"))
        await settle(sup)
    errors = {m["response"]["request_id"]: m["response"]["error"] for m in proc.sent}
    assert errors == {"r1": "no such server", "r2": "unsupported control request 'can_use_tool'"}
    assert not caplog.records  # an expected refusal logs no traceback


class IgnoringProcess(RecordingProcess):
    """A CLI that acknowledges every interrupt and goes on (as the real one does with an
    interrupt that arrives before its turn began)."""

    async def control(self, subtype: str, timeout: float, **fields: Any) -> dict[str, Any]:
        self.sent.append({"control": subtype})
        return {}


def interrupts(proc: RecordingProcess) -> int:
    return proc.sent.count({"control": "interrupt"})


def published(sup: Supervisor) -> list[dict[str, str]]:
    channel = sup._channel
    assert isinstance(channel, MemoryChannel)
    return channel.events


def gateway_events(sup: Supervisor) -> list[tuple[str, str]]:
    return [(e["type"], e["turn"]) for e in published(sup) if e["source"] == "gateway"]


async def until(condition: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


INIT = json.dumps({"type": "system", "subtype": "init"})
RESULT = json.dumps({"type": "result", "subtype": "error_during_execution", "is_error": True})


async def test_an_interrupt_waits_until_the_turn_began() -> None:
    sup, proc = supervisor({}, interrupt_retry=30), IgnoringProcess()
    sup._proc = proc
    sup._turns.add("t1")
    await sup._interrupt("t1")
    await asyncio.sleep(0.1)
    assert interrupts(proc) == 0  # written, not begun: the CLI would ignore it
    await sup._on_stdout_line(proc, INIT)
    await asyncio.sleep(0.1)
    assert interrupts(proc) == 1
    await sup._on_stdout_line(proc, RESULT)
    await settle(sup)
    assert interrupts(proc) == 1
    assert gateway_events(sup) == [("interrupt_sent", "t1")]


async def test_a_turn_slow_to_begin_gets_the_interrupt_the_moment_it_does() -> None:
    sup, proc = supervisor({}, interrupt_retry=1.0), IgnoringProcess()
    sup._proc = proc
    sup._turns.add("t1")
    await sup._interrupt("t1")
    await until(lambda: interrupts(proc) == 1, 3)  # sent anyway, in case it never shows
    await sup._on_stdout_line(proc, INIT)
    await until(lambda: interrupts(proc) == 2, 0.5)  # at once, not a retry interval later
    await sup._on_stdout_line(proc, RESULT)
    await settle(sup)
    assert interrupts(proc) == 2
    assert gateway_events(sup) == [("interrupt_sent", "t1")]


async def test_an_acknowledged_interrupt_the_turn_outlives_is_sent_again() -> None:
    sup, proc = supervisor({}, interrupt_retry=0.05, interrupt_attempts=3), IgnoringProcess()
    sup._proc = proc
    sup._turns.add("t1")
    await sup._on_stdout_line(proc, INIT)
    await sup._interrupt("t1")
    await sup._interrupt("t1")  # a second request joins the delivery under way
    await settle(sup)
    assert interrupts(proc) == 3
    assert gateway_events(sup) == [("interrupt_sent", "t1"), ("error", "t1")]
    assert "acknowledged 3 interrupts" in published(sup)[-1]["data"]


async def test_an_interrupt_for_a_turn_that_ended_sends_nothing() -> None:
    sup, proc = supervisor({}), IgnoringProcess()
    sup._proc = proc
    sup._turns.add("t1")
    await sup._on_stdout_line(proc, INIT)
    await sup._on_stdout_line(proc, RESULT)
    await sup._interrupt("t1")
    await sup._interrupt(None)
    await settle(sup)
    assert interrupts(proc) == 0
    assert gateway_events(sup) == []
