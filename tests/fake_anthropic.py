"""A scripted fake of the Anthropic Messages API that drives the real Claude Code CLI.

Tests point the CLI at it with ``ANTHROPIC_BASE_URL`` so its real tool execution, history
handling and interrupts run deterministically, without internet and without imitating the
CLI's output by hand. Stdlib only, so it runs wherever the tests run.

Usage::

    with FakeAnthropic() as fake:
        fake.on("make a file", tool_use("Bash", {"command": "touch f"}), text("done"))
        ...  # run the CLI with ANTHROPIC_BASE_URL=fake.base_url
        assert "done" in ...
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "ApiError",
    "FakeAnthropic",
    "SlowText",
    "Step",
    "Text",
    "ToolUse",
    "all_text",
    "api_error",
    "current_prompt",
    "slow_text",
    "text",
    "tool_use",
]

Body = dict[str, Any]

EXHAUSTED = "fake: script exhausted"
# Text the CLI adds to user messages by itself: context reminders and interrupt markers.
_CLI_NOTES = re.compile(
    r"<system-reminder>.*?</system-reminder>|\[Request interrupted by user[^\]]*\]", re.DOTALL
)


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Text:
    """A complete text reply, stop_reason end_turn."""

    text: str


@dataclass(frozen=True)
class ToolUse:
    """A tool call; the CLI runs it and sends the tool_result in its next request."""

    name: str
    input: dict[str, Any]
    text_before: str | None = None


@dataclass(frozen=True)
class SlowText:
    """Text streamed chunk by chunk with a pause, so a test can interrupt mid-turn."""

    chunks: tuple[str, ...]
    delay: float


@dataclass(frozen=True)
class ApiError:
    """An Anthropic-style error body with a non-200 HTTP status."""

    status: int
    message: str


# A callable step looks at the request body (e.g. the history) and picks the reply.
Step = Text | ToolUse | SlowText | ApiError | Callable[[Body], "Step"]


def text(s: str) -> Text:
    """Reply with ``s`` and end the turn."""
    return Text(s)


def tool_use(name: str, input: dict[str, Any], text_before: str | None = None) -> ToolUse:
    """Call tool ``name`` with ``input`` (optionally after a text block)."""
    return ToolUse(name, dict(input), text_before)


def slow_text(chunks: list[str], delay: float) -> SlowText:
    """Stream ``chunks`` with ``delay`` seconds before each one after the first."""
    return SlowText(tuple(chunks), delay)


def api_error(status: int, message: str) -> ApiError:
    """Fail the request with HTTP ``status`` and an Anthropic error body."""
    return ApiError(status, message)


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


# --------------------------------------------------------------------------- body helpers


def _block_texts(content: Any) -> Iterator[str]:
    """Every text inside a message content, tool_result contents included."""
    if isinstance(content, str):
        yield content
        return
    if not isinstance(content, list):
        return
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            yield block["text"]
        elif kind == "tool_result":
            yield from _block_texts(block.get("content"))
        elif kind == "tool_use":
            yield json.dumps(block.get("input", {}))


def all_text(body: Body) -> str:
    """All texts of all messages joined by newlines, to assert what history the CLI sent."""
    parts: list[str] = []
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            parts.extend(_block_texts(message.get("content")))
    return "\n".join(parts)


def _prompt_text(content: Any) -> str | None:
    """The user-typed text of a message, or None if it only holds tool results or CLI notes.

    After an interrupt during a tool call the CLI puts the next prompt in the same message as
    the tool_result, so text beside a tool_result counts as a prompt too.
    """
    if isinstance(content, str):
        texts = [content]
    elif isinstance(content, list):
        texts = [
            b["text"]
            for b in content
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
    else:
        return None
    kept = [t for t in (_CLI_NOTES.sub("", t).strip() for t in texts) if t]
    return "\n".join(kept) if kept else None


def _turn(body: Body) -> tuple[str, int]:
    """The current prompt and how many assistant messages followed it (the step index)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") != "user":
            continue
        prompt = _prompt_text(messages[i].get("content"))
        if prompt is not None:
            answered = sum(1 for m in messages[i + 1 :] if m.get("role") == "assistant")
            return prompt, answered
    return "", 0


def current_prompt(body: Body) -> str:
    """The text of the last user message that has typed text, CLI notes removed."""
    return _turn(body)[0]


def _estimate_tokens(body: Body) -> int:
    """A stable rough count (4 chars a token), enough for the CLI to compute a cost."""
    return max(1, len(json.dumps(body.get("messages", []))) // 4)


# --------------------------------------------------------------------------- server


class FakeAnthropic:
    """The fake server: register scripts with :meth:`on`, point the CLI at :attr:`base_url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._rules: list[tuple[str, tuple[Step, ...]]] = []
        self._requests: list[Body] = []
        self._headers: list[dict[str, str]] = []
        self._reported: list[tuple[str, str, Body]] = []  # (prompt, model, usage) per reply
        self._streamed: list[tuple[str, bytes]] = []  # (prompt, exact body) per streamed reply
        self._log: list[str] = []
        # Cache tokens every reply reports (0 by default), so tests can check each usage field.
        self.cache_creation_tokens = 0
        self.cache_read_tokens = 0
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------

    def start(self) -> FakeAnthropic:
        """Bind and serve in a daemon thread; returns self for chaining."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = ThreadingHTTPServer((self._host, self._port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; running slow streams are cut short."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server (for ANTHROPIC_BASE_URL)."""
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started")
        port = self._server.server_address[1]
        return f"http://{self._host}:{port}"

    # scripting ---------------------------------------------------------------

    def on(self, marker: str, *steps: Step) -> FakeAnthropic:
        """Answer turns whose prompt contains ``marker`` with ``steps``; later rules win.

        Step *n* answers the request with *n* assistant messages after the prompt, so each
        tool_use step is followed by the next once the CLI sends the tool_result. ``""``
        matches every prompt (a default rule, when registered first).
        """
        if not steps:
            raise ValueError("a rule needs at least one step")
        with self._lock:
            self._rules.append((marker, steps))
        return self

    # recording ---------------------------------------------------------------

    @property
    def requests(self) -> list[Body]:
        """A copy of every /v1/messages request body received, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def log(self) -> list[str]:
        """``METHOD path`` of every HTTP request received, any path, oldest first."""
        with self._lock:
            return list(self._log)

    def requests_for(self, marker: str) -> list[Body]:
        """The recorded requests whose current prompt contains ``marker``."""
        return [b for b in self.requests if marker in current_prompt(b)]

    @property
    def headers(self) -> list[dict[str, str]]:
        """The (lower-cased) headers of every POST received, oldest first."""
        with self._lock:
            return list(self._headers)

    def reported(self, marker: str = "") -> list[tuple[str, Body]]:
        """``(model, usage)`` this fake reported for each /v1/messages reply whose prompt
        contains ``marker``: its own accounting, for tests of metering."""
        with self._lock:
            return [
                (model, dict(usage)) for prompt, model, usage in self._reported if marker in prompt
            ]

    def streamed(self, marker: str) -> list[bytes]:
        """The exact bytes of each streamed reply whose prompt contains ``marker``."""
        with self._lock:
            return [data for prompt, data in self._streamed if marker in prompt]

    def clear(self) -> None:
        """Forget recorded requests and the request log (rules stay)."""
        with self._lock:
            self._requests.clear()
            self._streamed.clear()
            self._headers.clear()
            self._reported.clear()
            self._log.clear()

    # internals used by the handler -------------------------------------------

    def _record(self, method: str, path: str, body: Body | None) -> None:
        with self._lock:
            self._log.append(f"{method} {path}")
            if body is not None:
                self._requests.append(body)

    def _record_headers(self, headers: Any) -> None:
        with self._lock:
            self._headers.append({name.lower(): value for name, value in headers.items()})

    def _report(self, body: Body, model: str, usage: Body) -> None:
        with self._lock:
            self._reported.append((current_prompt(body), model, usage))

    def _record_stream(self, body: Body, data: bytes) -> None:
        with self._lock:
            self._streamed.append((current_prompt(body), data))

    def _choose(self, body: Body) -> Text | ToolUse | SlowText | ApiError:
        """The step that answers ``body`` according to the registered rules."""
        prompt, index = _turn(body)
        with self._lock:
            rules = list(self._rules)
        steps = next((s for marker, s in reversed(rules) if marker in prompt), None)
        if steps is None:
            return Text(f"fake: no script for {prompt[:80]}")
        if index < len(steps):
            step = steps[index]
        else:
            last = steps[-1]
            step = last if isinstance(last, Text | SlowText) else Text(EXHAUSTED)
        for _ in range(10):  # a callable may return another callable
            if isinstance(step, Text | ToolUse | SlowText | ApiError):
                return step
            step = step(body)
        raise TypeError("callable steps nested too deeply")

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}{uuid.uuid4().hex[:20]}"

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops; False when stopping."""
        return not self._stopping.wait(seconds)


def _content_blocks(fake: FakeAnthropic, step: Text | ToolUse | SlowText) -> list[Body]:
    """The final content blocks of a reply (non-streaming form)."""
    if isinstance(step, Text):
        return [{"type": "text", "text": step.text}]
    if isinstance(step, SlowText):
        return [{"type": "text", "text": "".join(step.chunks)}]
    blocks: list[Body] = []
    if step.text_before:
        blocks.append({"type": "text", "text": step.text_before})
    blocks.append(
        {"type": "tool_use", "id": fake._next_id("toolu"), "name": step.name, "input": step.input}
    )
    return blocks


def _usage(
    input_tokens: int, output_tokens: int, cache_creation: int = 0, cache_read: int = 0
) -> Body:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
    }


def _make_handler(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to ``fake`` (http.server instantiates it per request)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeAnthropic/1"
        # Each event is its own small write on a connection kept alive: without TCP_NODELAY,
        # Nagle's algorithm holds one back for the client's delayed ACK (40 ms).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the per-request stderr line."""

        # routing -------------------------------------------------------------

        def do_HEAD(self) -> None:
            fake._record("HEAD", self.path, None)
            if urlsplit(self.path).path == "/":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send_json(404, _error_body(404, "not found"), head=True)

        def do_GET(self) -> None:
            fake._record("GET", self.path, None)
            if urlsplit(self.path).path == "/":
                self._send_json(200, {"ok": True, "server": "fake-anthropic"})
            else:
                self._send_json(404, _error_body(404, f"no route GET {self.path}"))

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            fake._record_headers(self.headers)
            try:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw or b"{}")
            except (ValueError, OSError):
                fake._record("POST", self.path, None)
                self._send_json(400, _error_body(400, "invalid JSON body"))
                return
            if not isinstance(body, dict):
                body = {}
            if path == "/v1/messages":
                fake._record("POST", self.path, body)
                self._messages(body)
            elif path == "/v1/messages/count_tokens":
                fake._record("POST", self.path, None)
                self._send_json(200, {"input_tokens": _estimate_tokens(body)})
            else:
                fake._record("POST", self.path, None)
                self._send_json(404, _error_body(404, f"no route POST {self.path}"))

        # replies -------------------------------------------------------------

        def _send_json(self, status: int, payload: Body, head: bool = False) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("request-id", fake._next_id("req"))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _messages(self, body: Body) -> None:
            try:
                step = fake._choose(body)
            except Exception as exc:  # a broken callable step must not hang the CLI
                step = ApiError(500, f"fake: step raised {exc!r}")
            if isinstance(step, ApiError):
                self._send_json(step.status, _error_body(step.status, step.message))
                return
            model = str(body.get("model") or "claude-fake")
            input_tokens = _estimate_tokens(body)
            if body.get("stream"):
                finished = False
                with contextlib.suppress(ConnectionError, TimeoutError):
                    finished = self._stream(step, model, input_tokens, body)
                    if finished:
                        self.wfile.write(b"0\r\n\r\n")  # the last chunk: the connection stays
                self.close_connection = not finished
                return
            if isinstance(step, SlowText):
                fake._sleep(step.delay * max(0, len(step.chunks) - 1))
            blocks = _content_blocks(fake, step)
            output_tokens = max(1, len(json.dumps(blocks)) // 4)
            usage = _usage(
                input_tokens, output_tokens, fake.cache_creation_tokens, fake.cache_read_tokens
            )
            fake._report(body, model, usage)
            self._send_json(
                200,
                {
                    "id": fake._next_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": "tool_use" if isinstance(step, ToolUse) else "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                },
            )

        def _event(self, payload: Body) -> None:
            data = f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()
            self._sent.append(data)
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))  # one chunk per event
            self.wfile.flush()

        def _stream(
            self, step: Text | ToolUse | SlowText, model: str, input_tokens: int, body: Body
        ) -> bool:
            """Server-sent events in chunks on a connection kept alive, as the real API sends
            them; False when the server stopped mid-answer (the connection is then closed)."""
            self._sent: list[bytes] = []
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("request-id", fake._next_id("req"))
            self.end_headers()
            self._event(
                {
                    "type": "message_start",
                    "message": {
                        "id": fake._next_id("msg"),
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": _usage(
                            input_tokens, 1, fake.cache_creation_tokens, fake.cache_read_tokens
                        ),
                    },
                }
            )
            output = 0
            blocks = _content_blocks(fake, step)
            for index, block in enumerate(blocks):
                if block["type"] == "text":
                    self._event(
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "text", "text": ""},
                        }
                    )
                    chunks = step.chunks if isinstance(step, SlowText) else (block["text"],)
                    for n, chunk in enumerate(chunks):
                        if n and isinstance(step, SlowText) and not fake._sleep(step.delay):
                            return False
                        output += max(1, len(chunk) // 4)
                        self._event(
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "text_delta", "text": chunk},
                            }
                        )
                else:
                    self._event(
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {**block, "input": {}},
                        }
                    )
                    encoded = json.dumps(block["input"])
                    half = len(encoded) // 2
                    for part in (encoded[:half], encoded[half:]):
                        output += max(1, len(part) // 4)
                        self._event(
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": part},
                            }
                        )
                self._event({"type": "content_block_stop", "index": index})
            self._event(
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": "tool_use" if isinstance(step, ToolUse) else "end_turn",
                        "stop_sequence": None,
                    },
                    "usage": {"output_tokens": output},
                }
            )
            self._event({"type": "message_stop"})
            fake._report(
                body,
                model,
                _usage(input_tokens, output, fake.cache_creation_tokens, fake.cache_read_tokens),
            )
            fake._record_stream(body, b"".join(self._sent))
            return True

    return Handler


def _error_body(status: int, message: str) -> Body:
    """The JSON the real API sends on errors."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


if __name__ == "__main__":  # manual probing: python tests/fake_anthropic.py
    with FakeAnthropic(port=8765) as _fake:
        _fake.on("", text("hello from the fake"))
        print(_fake.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
