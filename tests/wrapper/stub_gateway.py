"""A stub of the gateway's session API for wrapper tests: canned answers, every call recorded.

Implements the routes a session's own token may use (spawn, chat, wait, get, children, stop,
token) with plausible answers; ``on`` overrides a route with a fixed reply or a callable.
Stdlib only; serves from a daemon thread.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

Json = dict[str, Any]


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Any
    authorization: str | None


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    delay: float = 0.0


Handler = Callable[[Call, re.Match[str]], Reply]


def make_jwt(exp: float, **claims: Any) -> str:
    """An unsigned-looking JWT with ``exp``: the wrapper reads it, never verifies it."""

    def part(data: Json) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    payload = {"exp": int(exp), "jti": uuid.uuid4().hex, **claims}
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


def error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}})


def session(session_id: str, status: str = "ready", depth: int = 1, **extra: Any) -> Json:
    return {
        "id": session_id,
        "status": status,
        "parent_id": extra.pop("parent_id", None),
        "root_id": extra.pop("root_id", session_id),
        "depth": depth,
        "owner": "alice",
        **extra,
    }


def turn(turn_id: str, status: str = "running", seq: int = 1, **extra: Any) -> Json:
    return {"id": turn_id, "seq": seq, "status": status, "prompt": "p", **extra}


class StubGateway:
    """Routes under ``/api/v1``; ``calls`` lists what arrived, oldest first."""

    def __init__(self, parent_id: str) -> None:
        self.parent_id = parent_id
        self.child_id = str(uuid.uuid4())
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._server: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()  # cuts delayed replies short at exit
        self._defaults()

    def _defaults(self) -> None:
        child = self.child_id

        def spawned(call: Call, _m: re.Match[str]) -> Reply:
            return Reply(201, session(child, "starting", parent_id=self.parent_id))

        self.on("POST", r"/sessions/([^/]+)/spawn", spawned)
        self.on("POST", r"/sessions/([^/]+)/chat", Reply(202, {"turn": turn("turn-2", seq=2)}))
        self.on(
            "POST",
            r"/sessions/([^/]+)/wait",
            lambda call, m: Reply(
                200,
                {
                    "session": session(m.group(1)),
                    "turn": turn("turn-1", "completed", result_text="the answer is 42"),
                    "result": "the answer is 42",
                },
            ),
        )
        self.on("GET", r"/sessions/([^/]+)/children", Reply(200, {"sessions": [session(child)]}))
        self.on("GET", r"/sessions/([^/]+)", lambda call, m: Reply(200, session(m.group(1))))
        self.on(
            "POST",
            r"/sessions/([^/]+)/stop",
            lambda call, m: Reply(200, session(m.group(1), "stopped")),
        )
        self.on("POST", r"/sessions/([^/]+)/token", lambda call, m: self._token())

    def _token(self) -> Reply:
        token = make_jwt(time.time() + 3600, sid=self.parent_id)
        return Reply(
            200, {"token": token, "expires_at": "2099-01-01T00:00:00Z", "expires_in": 3600}
        )

    def on(self, method: str, path_pattern: str, reply: Reply | Handler) -> StubGateway:
        """Answer ``method`` on paths matching ``path_pattern`` (after ``/api/v1``); later
        rules win."""
        handler: Handler = reply if callable(reply) else (lambda call, m: reply)
        with self._lock:
            self._routes.insert(0, (method, re.compile(path_pattern + "$"), handler))
        return self

    def calls_to(self, method: str, suffix: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and c.path.endswith(suffix)]

    # -- serving ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> StubGateway:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _answer(self, call: Call) -> Reply:
        with self._lock:
            self.calls.append(call)
            routes = list(self._routes)
        path = call.path.removeprefix("/api/v1")
        for method, pattern, handler in routes:
            match = pattern.match(path)
            if method == call.method and match:
                return handler(call, match)
        return error(404, "not_found", f"no route {call.method} {call.path}")


def _handler_class(stub: StubGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            call = Call(self.command, self.path, body, self.headers.get("Authorization"))
            reply = stub._answer(call)
            if reply.delay and stub._stopping.wait(reply.delay):
                self.close_connection = True
                return
            data = json.dumps(reply.body).encode()
            with contextlib.suppress(ConnectionError):  # the client may have given up
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

    return Handler
