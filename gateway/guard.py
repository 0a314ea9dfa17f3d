"""The request guard: refuses abuse before a request reaches routing or its body is read.

A pure ASGI middleware (``BaseHTTPMiddleware`` would wrap every body and response in its own
streams). For every request under ``/api/``, HTTP and WebSocket upgrade alike, in this order:

1. credentials: the bearer token (a WebSocket may use ``?token=``) is verified (signature,
   expiry, audience) without touching the database, else 401 like the routes' own answer. The
   route's dependency still runs in full (it also checks that a session token's session runs);
2. the owner's request rate (``RATE_LIMIT_PER_SECOND``, ``RATE_LIMIT_BURST``), else 429
   ``rate_limited`` with ``Retry-After``;
3. the body size: above ``MAX_REQUEST_BYTES`` a declared ``Content-Length`` answers 413
   ``request_too_large`` at once; a chunked body is counted as it is received and refused when
   it passes the limit. Uploads (files, archives) are bounded by ``WORKSPACE_MAX_BYTES``
   instead, where they are streamed (a file's declared length is refused here already).

Nothing of a refused body is read into memory: uvicorn reads and drops the rest of it so the
client can read the answer. ``/health``, ``/ready``, ``/docs`` and ``/openapi.json`` are outside
``/api/``: not authenticated, not limited (only their body size is bounded).
"""

from __future__ import annotations

import logging
import re

from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.config import Settings
from gateway.error_codes import ErrorCode
from gateway.errors import GatewayError, RateLimited, RequestTooLarge, error_response
from gateway.security import Principal, verify_credentials

log = logging.getLogger(__name__)

GUARDED_PREFIX = "/api/"
_FILE_UPLOAD = re.compile(r"^/api/v1/(?:sessions|workspaces)/[^/]+/files/.+$")
_ARCHIVE_UPLOAD = re.compile(r"^/api/v1/workspaces/[^/]+/archive$")


def upload_kind(method: str, path: str) -> str | None:
    """``"file"`` or ``"archive"`` for the routes that stream their body into a workspace (they
    enforce ``WORKSPACE_MAX_BYTES`` as they stream), else ``None``. ``path`` is the decoded path
    the router matches too."""
    if method == "PUT" and _FILE_UPLOAD.match(path):
        return "file"
    if method == "POST" and _ARCHIVE_UPLOAD.match(path):
        return "archive"
    return None


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        limit: int | None = None
        try:
            if scope["path"].startswith(GUARDED_PREFIX):
                principal = self._authenticate(scope)
                await self._rate_limit(scope, principal)
            if scope["type"] == "http":
                limit = self._body_limit(scope)
        except GatewayError as exc:
            await _refuse(scope, receive, send, exc)
            return
        if limit is None:
            await self.app(scope, receive, send)
        else:
            await self.app(*_LimitedBody(scope, receive, send, limit).asgi())

    def _authenticate(self, scope: Scope) -> Principal:
        headers = Headers(scope=scope)
        query_token = None
        if scope["type"] == "websocket":  # browsers cannot set headers on a WebSocket
            query_token = QueryParams(scope["query_string"]).get("token")
        return verify_credentials(self.settings, headers.get("authorization"), query_token)

    async def _rate_limit(self, scope: Scope, principal: Principal) -> None:
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if services is None:  # the lifespan has not started: nothing to count with
            return
        retry_after = await services.rate_limiter.retry_after(principal.owner)
        if retry_after is not None:
            raise RateLimited(
                f"too many requests for {principal.owner!r}: RATE_LIMIT_PER_SECOND is "
                f"{self.settings.rate_limit_per_second:g} (RATE_LIMIT_BURST "
                f"{self.settings.rate_limit_burst}); retry in {retry_after} s",
                retry_after=retry_after,
            )

    def _body_limit(self, scope: Scope) -> int | None:
        """The byte limit to count a chunked body against (``None``: not counted here); raises
        ``RequestTooLarge`` when the declared length is already over it."""
        declared = _content_length(scope)
        kind = upload_kind(scope["method"], scope["path"])
        if kind == "archive":
            return None  # its unpacked contents are bounded as they are read
        if kind == "file":
            maximum = self.settings.workspace_max_bytes
            if declared is not None and declared > maximum:
                raise RequestTooLarge(
                    f"the file is {declared} bytes; WORKSPACE_MAX_BYTES is {maximum}",
                    code=ErrorCode.WORKSPACE_TOO_LARGE,
                    limit=maximum,
                )
            return None  # counted by the upload itself
        maximum = self.settings.max_request_bytes
        if declared is not None and declared > maximum:
            raise RequestTooLarge(
                f"the request body is {declared} bytes; MAX_REQUEST_BYTES is {maximum}",
                limit=maximum,
            )
        return maximum


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # the server refuses a malformed length before it gets here


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: GatewayError) -> None:
    kind = scope.get("method", "WEBSOCKET") if scope["type"] == "http" else "WEBSOCKET"
    log.info("%s %s -> %s %s: %s", kind, scope["path"], exc.status, exc.code, exc.message)
    response = error_response(exc)
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    websocket = WebSocket(scope, receive, send)
    if "websocket.http.response" in scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # a server without the denial extension: refuse the handshake (403)
        await send({"type": "websocket.close", "code": 1008})


class _LimitedBody:
    """Counts a request body as the app receives it. Past ``limit`` it answers 413 itself (if
    the app has not begun a response), tells the app the client is gone, and drops whatever the
    app still sends for this request."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.limit = limit
        self.received = 0
        self.refused = False
        self.response_started = False

    def asgi(self) -> tuple[Scope, Receive, Send]:
        return self.scope, self.receive, self.send

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        self.received += len(message.get("body", b""))
        if self.received <= self.limit:
            return message
        self.refused = True
        if not self.response_started:
            error = RequestTooLarge(
                f"the request body passed MAX_REQUEST_BYTES ({self.limit} bytes)",
                limit=self.limit,
            )
            await _refuse(self.scope, self._receive, self._send, error)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.refused and not self.response_started:
            return  # the 413 is the answer; the app's reaction to the "disconnect" is dropped
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)
