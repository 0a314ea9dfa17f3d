"""Proves tests/fake_anthropic.py against the real Claude Code CLI on the host.

The other tests trust the fake to drive the CLI; these show that the CLI really accepts its
replies, runs its tool calls, keeps history across turns and can be interrupted mid-stream.
The first tests check the fake over plain HTTP, so they run even without the CLI.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.claude_cli import claude_binary, foreign_setting, host_cli_environment
from tests.fake_anthropic import (
    FakeAnthropic,
    all_text,
    api_error,
    current_prompt,
    slow_text,
    text,
    tool_use,
)

pytestmark = pytest.mark.timeout(60)

Json = dict[str, Any]
READ_TIMEOUT = 8.0


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


# --------------------------------------------------------------------------- plain HTTP


def _http(
    fake: FakeAnthropic, method: str, path: str, body: Json | None = None
) -> tuple[int, bytes]:
    """One request to the fake; returns status and raw body."""
    host, port = fake.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=READ_TIMEOUT)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _ask(prompt: str | list[Json], *history: Json, stream: bool = False) -> Json:
    """A Messages API body whose last user message is ``prompt``."""
    return {
        "model": "claude-test-model",
        "max_tokens": 100,
        "stream": stream,
        "messages": [*history, {"role": "user", "content": prompt}],
    }


def _reply_text(raw: bytes) -> str:
    return "".join(b.get("text", "") for b in json.loads(raw)["content"])


def test_http_routes_and_json_reply(fake: FakeAnthropic) -> None:
    fake.on("hi", text("hello"))
    assert _http(fake, "HEAD", "/")[0] == 200
    assert _http(fake, "GET", "/")[0] == 200
    status, raw = _http(fake, "GET", "/nowhere")
    assert status == 404 and json.loads(raw)["type"] == "error"

    status, raw = _http(fake, "POST", "/v1/messages?beta=true", _ask("say hi"))
    reply = json.loads(raw)
    assert status == 200 and reply["model"] == "claude-test-model"
    assert reply["content"] == [{"type": "text", "text": "hello"}]
    assert reply["stop_reason"] == "end_turn" and reply["usage"]["input_tokens"] > 0

    status, raw = _http(fake, "POST", "/v1/messages/count_tokens", _ask("say hi"))
    assert status == 200 and json.loads(raw)["input_tokens"] > 0
    assert len(fake.requests) == 1 and len(fake.requests_for("say hi")) == 1
    fake.clear()
    assert fake.requests == []


def test_script_selection(fake: FakeAnthropic) -> None:
    fake.on("tool", tool_use("Bash", {"command": "true"}), text("after tool"))
    fake.on("tool please", text("later rule wins"))
    fake.on("err", api_error(529, "overloaded now"))
    fake.on("look", lambda body: text(f"saw {len(body['messages'])} messages"))

    def ask(body: Json) -> str:
        return _reply_text(_http(fake, "POST", "/v1/messages", body)[1])

    assert ask(_ask("tool please")) == "later rule wins"
    status, raw = _http(fake, "POST", "/v1/messages", _ask("use a tool"))
    assert json.loads(raw)["stop_reason"] == "tool_use"
    call = json.loads(raw)["content"][0]
    assert call["type"] == "tool_use" and call["id"].startswith("toolu_")
    result = {"type": "tool_result", "tool_use_id": call["id"], "content": "ok"}
    history = [
        {"role": "user", "content": [{"type": "text", "text": "use a tool"}]},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]
    body = {**_ask("x"), "messages": history}
    assert current_prompt(body) == "use a tool"
    assert ask(body) == "after tool"
    exhausted = {
        **body,
        "messages": [*history, {"role": "assistant", "content": "x"}, *history[2:]],
    }
    assert ask(exhausted) == "after tool"  # a text last step repeats

    status, raw = _http(fake, "POST", "/v1/messages", _ask("err"))
    assert status == 529 and json.loads(raw)["error"]["message"] == "overloaded now"
    assert ask(_ask("look here")) == "saw 1 messages"
    reminder = {"type": "text", "text": "<system-reminder>\ntool\n</system-reminder>"}
    assert (
        ask(_ask([reminder, {"type": "text", "text": "unknown"}])) == "fake: no script for unknown"
    )


def test_slow_stream_does_not_block_other_requests(fake: FakeAnthropic) -> None:
    fake.on("slow", slow_text(["a", "b", "c"], 2.0))
    fake.on("fast", text("quick"))
    host, port = fake.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=READ_TIMEOUT)
    try:
        conn.request("POST", "/v1/messages", body=json.dumps(_ask("slow", stream=True)))
        response = conn.getresponse()
        assert response.getheader("Content-Type", "").startswith("text/event-stream")
        first = response.readline()
        assert first == b"event: message_start\n"
        started = time.monotonic()
        assert _reply_text(_http(fake, "POST", "/v1/messages", _ask("fast"))[1]) == "quick"
        assert time.monotonic() - started < 1.0
    finally:
        conn.close()


# --------------------------------------------------------------------------- real CLI


class Cli:
    """One long-lived `claude -p` stream-json process, read by a thread into a queue."""

    def __init__(self, binary: str, base_url: str, home: Path, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not foreign_setting(k)}
        env.update(host_cli_environment(base_url, home))
        self.proc = subprocess.Popen(
            [
                binary,
                "-p",
                "--input-format",
                "stream-json",
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-mode",
                "bypassPermissions",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[Json | None] = queue.Queue()
        self.seen: list[Json] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, message: Json) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def user(self, prompt: str) -> None:
        self.send(
            {
                "type": "user",
                "message": {"role": "user", "content": prompt},
                "parent_tool_use_id": None,
                "session_id": "",
            }
        )

    def wait_for(self, match: Callable[[Json], bool], timeout: float = READ_TIMEOUT) -> Json:
        """The next line matching ``match``; fails on timeout or process exit."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no matching line within {timeout}s; seen: {self.seen[-5:]}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                stderr = self.proc.stderr.read() if self.proc.stderr else ""
                pytest.fail(f"CLI exited ({self.proc.wait()}): {stderr[-2000:]}")
            self.seen.append(line)
            if match(line):
                return line

    def result(self, timeout: float = READ_TIMEOUT) -> Json:
        return self.wait_for(lambda line: line.get("type") == "result", timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def cli(fake: FakeAnthropic, tmp_path: Path, workdir: Path) -> Iterator[Cli]:
    home = tmp_path / "home"
    home.mkdir()
    process = Cli(claude_binary(), fake.base_url, home, workdir)
    try:
        yield process
    finally:
        process.close()


def test_cli_text_reply_reaches_result(fake: FakeAnthropic, cli: Cli) -> None:
    fake.on("ping-1", text("pong-1"))
    cli.user("please ping-1")
    result = cli.result()
    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["result"] == "pong-1"
    assert result["total_cost_usd"] > 0
    (request,) = fake.requests_for("ping-1")
    assert request["stream"] is True
    assistant = next(line for line in cli.seen if line["type"] == "assistant")
    assert assistant["message"]["model"] == request["model"]
    assert "POST /v1/messages?beta=true" in fake.log


def test_cli_two_turns_share_history(fake: FakeAnthropic, cli: Cli) -> None:
    fake.on("turn-one", text("reply-one"))
    fake.on("turn-two", text("reply-two"))
    cli.user("this is turn-one")
    assert cli.result()["result"] == "reply-one"
    cli.user("and now turn-two")
    assert cli.result()["result"] == "reply-two"

    first, second = fake.requests
    assert current_prompt(first) == "this is turn-one"
    assert current_prompt(second) == "and now turn-two"
    assert "reply-one" not in all_text(first)
    assert "this is turn-one" in all_text(second) and "reply-one" in all_text(second)


def test_cli_runs_scripted_bash_tool(fake: FakeAnthropic, cli: Cli, workdir: Path) -> None:
    command = "echo marker-$((6*7)) > out.txt && cat out.txt"
    fake.on(
        "make-file",
        tool_use("Bash", {"command": command, "description": "write marker"}, "Writing it."),
        text("file written"),
    )
    cli.user("make-file please")
    result = cli.result()
    assert result["subtype"] == "success" and result["result"] == "file written"
    assert (workdir / "out.txt").read_text().strip() == "marker-42"

    first, second = fake.requests_for("make-file")
    assert "marker-42" not in all_text(first)
    tool_results = [
        block
        for message in second["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]
    assert len(tool_results) == 1 and "marker-42" in json.dumps(tool_results[0]["content"])
    assert tool_results[0]["is_error"] is False


def test_cli_interrupt_mid_stream(fake: FakeAnthropic, cli: Cli) -> None:
    fake.on("go-slow", slow_text(["partial-start "] + ["tick "] * 200, 0.05))
    fake.on("after-stop", text("still alive"))
    cli.user("go-slow now")
    deadline = time.monotonic() + READ_TIMEOUT
    while not fake.requests_for("go-slow"):
        assert time.monotonic() < deadline, "the CLI never asked the fake"
        time.sleep(0.02)
    time.sleep(0.3)  # let a few chunks stream

    sent = time.monotonic()
    cli.send({"type": "control_request", "request_id": "i1", "request": {"subtype": "interrupt"}})
    ack = cli.wait_for(lambda line: line.get("type") == "control_response")
    assert ack["response"] == {"subtype": "success", "request_id": "i1"}
    result = cli.result()
    assert time.monotonic() - sent < 2.0
    assert result["subtype"] == "error_during_execution" and result["is_error"] is True
    assert result["terminal_reason"] == "aborted_streaming"
    assert "result" not in result

    cli.user("after-stop check")
    result = cli.result()
    assert result["subtype"] == "success" and result["result"] == "still alive"
    (request,) = fake.requests_for("after-stop")
    assert "partial-start" in all_text(request)  # the cut reply stays in the history


def test_cli_messages_sent_during_a_turn(fake: FakeAnthropic, cli: Cli) -> None:
    """Pins CLI behaviour the wrapper relies on: mid-turn messages never get one result each.

    During a text stream they are merged into ONE next turn; during a tool call they are
    injected into the running turn as a role "system" message and get no result of their own.
    """
    fake.on("stream-turn", slow_text(["s1 ", "s2 ", "s3"], 0.3))
    fake.on("queued-a", text("merged reply"))
    fake.on("tool-turn", tool_use("Bash", {"command": "sleep 1.5; echo slept"}), text("tool done"))
    fake.on("last-turn", text("last reply"))

    cli.user("stream-turn")
    deadline = time.monotonic() + READ_TIMEOUT
    while not fake.requests_for("stream-turn"):
        assert time.monotonic() < deadline, "the CLI never asked the fake"
        time.sleep(0.02)
    cli.user("queued-a")
    cli.user("queued-b")
    assert cli.result()["result"] == "s1 s2 s3"
    assert cli.result()["result"] == "merged reply"
    (merged,) = fake.requests_for("queued-a")
    assert "queued-b" in current_prompt(merged)

    cli.user("tool-turn")
    cli.wait_for(
        lambda line: (
            line.get("type") == "assistant"
            and line["message"]["content"][0].get("type") == "tool_use"
        )
    )
    cli.user("during-tool-c")
    cli.user("during-tool-d")
    assert cli.result()["result"] == "tool done"
    after_tool = fake.requests_for("tool-turn")[-1]
    injected = [m for m in after_tool["messages"] if m["role"] == "system"]
    assert any("during-tool-c" in str(m["content"]) for m in injected)
    assert "during-tool-d" in all_text(after_tool)

    cli.user("last-turn")
    assert cli.result()["result"] == "last reply"  # no stray result for the injected messages
