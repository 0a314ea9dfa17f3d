"""The gateway's error hierarchy and the one place that renders errors as JSON.

Every error a client sees has the shape ``{"error": {"code", "message", ...details}}``. Expected
failures (a ``GatewayError``) log one line, and so does a database that cannot be reached (503
``database_unavailable`` with ``Retry-After``); anything else logs a traceback and answers 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from gateway.db.outage import database_unavailable
from gateway.error_codes import ErrorCode
from gateway.runtime.base import RuntimeFailure
from gateway.store.objects import StoreError
from gateway.workspaces.manifest import WorkspaceError

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """An expected failure with a stable machine-readable ``code`` (an ``ErrorCode``), whose
    status is the response's. ``headers`` go on the response (``Retry-After``, ...); a 401
    always says ``WWW-Authenticate: Bearer``. A category (``Conflict``, ...) takes only codes
    of its ``family`` status: a mismatch is a bug, refused where the error is made."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    family: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if self.family is not None and self.code.status != self.family:
            raise TypeError(
                f"{type(self).__name__} takes {self.family} codes, not {self.code} "
                f"({self.code.status})"
            )
        self.headers = dict(headers or {})
        self.details = details

    @property
    def status(self) -> int:
        return self.code.status

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def response_headers(self) -> dict[str, str]:
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer", **self.headers}
        return dict(self.headers)


def error_response(exc: GatewayError) -> JSONResponse:
    """The one rendering of an expected failure, for the error handler, the request guard
    (which answers before routing) and the WebSocket's refused upgrade."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.response_headers())


def error_body(code: ErrorCode, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **details}}


# Categories: each takes the codes of one status (``code=`` says which, unless a subclass
# fixes it).


class Unauthorized(GatewayError):
    family = 401


class Forbidden(GatewayError):
    family = 403


class NotFound(GatewayError):
    family = 404


class Conflict(GatewayError):
    family = 409


class InvalidRequest(GatewayError):
    family = 422


class GatewayTimeout(GatewayError):
    family = 504


class Unavailable(GatewayError):
    family = 503


class RequestTooLarge(GatewayError):
    family = 413
    code = ErrorCode.REQUEST_TOO_LARGE


class TooManyRequests(GatewayError):
    """Refused for now; a retry after ``retry_after`` seconds may pass (``Retry-After``)."""

    family = 429

    def __init__(
        self, message: str, *, retry_after: int, code: ErrorCode | None = None, **details: Any
    ) -> None:
        retry_after = max(1, retry_after)
        super().__init__(
            message,
            code=code,
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
            **details,
        )


class RateLimited(TooManyRequests):
    code = ErrorCode.RATE_LIMITED


class CapacityReached(TooManyRequests):
    """A capacity limit (the owner's running sessions, the engine's) that a retry can clear,
    unlike the recursion limits (``LimitExceeded``, 403)."""


class SessionNotFound(NotFound):
    code = ErrorCode.SESSION_NOT_FOUND

    def __init__(self, session_id: object) -> None:
        super().__init__(f"session {session_id} not found")


class SessionBusy(Conflict):
    code = ErrorCode.SESSION_BUSY


class SessionNotRunning(Conflict):
    code = ErrorCode.SESSION_NOT_RUNNING


class LimitExceeded(Forbidden):
    """A recursion limit refused a new session; ``code`` names the limit."""


class SessionTokenNotAllowed(Forbidden):
    code = ErrorCode.SESSION_TOKEN_NOT_ALLOWED


class WaitTimeout(GatewayTimeout):
    code = ErrorCode.WAIT_TIMEOUT


class NoRunningTurn(Conflict):
    code = ErrorCode.NO_RUNNING_TURN


class TurnFailed(GatewayError):
    code = ErrorCode.TURN_FAILED


class TurnTimeout(GatewayTimeout):
    code = ErrorCode.TURN_TIMEOUT


class RuntimeUnavailable(Unavailable):
    code = ErrorCode.RUNTIME_UNAVAILABLE


class ImageNotFound(Unavailable):
    code = ErrorCode.IMAGE_NOT_FOUND


class DatabaseUnavailable(Unavailable):
    code = ErrorCode.DATABASE_UNAVAILABLE


# Seconds a client is asked to wait when PostgreSQL cannot be reached (a restart takes a few).
DATABASE_RETRY_AFTER = 5
EVENTS_RETRY_AFTER = 2  # a Redis connection is made again within a second or two


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        log.info(
            "%s %s -> %s %s: %s",
            request.method,
            request.url.path,
            exc.status,
            exc.code,
            exc.message,
        )
        return error_response(exc)

    @app.exception_handler(RuntimeFailure)
    async def _runtime_failure(request: Request, exc: RuntimeFailure) -> JSONResponse:
        log.warning("%s %s -> container runtime failed: %s", request.method, request.url.path, exc)
        return error_response(RuntimeUnavailable(f"the container runtime failed: {exc}"))

    @app.exception_handler(WorkspaceError)
    async def _workspace_error(request: Request, exc: WorkspaceError) -> JSONResponse:
        status = exc.code.status
        log.info(
            "%s %s -> %s %s: %s", request.method, request.url.path, status, exc.code, exc.message
        )
        return JSONResponse(error_body(exc.code, exc.message), status_code=status)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        status = exc.code.status
        log.warning("%s %s -> %s %s: %s", request.method, request.url.path, status, exc.code, exc)
        body = error_body(exc.code, f"object storage: {exc}")
        return JSONResponse(body, status_code=status)

    # OSError too: asyncpg lets a refused connection out unwrapped when the pool connects.
    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(OSError)
    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        if not database_unavailable(exc):
            return await _unexpected(request, exc)
        log.warning(
            "%s %s -> 503 database_unavailable: %s",
            request.method,
            request.url.path,
            f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
        )
        error = DatabaseUnavailable("the database is unavailable; retry shortly")
        headers = {"Retry-After": str(DATABASE_RETRY_AFTER)}
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(RedisError)
    async def _events_error(request: Request, exc: RedisError) -> JSONResponse:
        """Redis down, restarting or failing over: the caller retries, as for the database."""
        log.warning(
            "%s %s -> 503 events_unavailable: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            str(exc).splitlines()[0][:300] if str(exc) else "",
        )
        code = ErrorCode.EVENTS_UNAVAILABLE
        body = error_body(code, "the event store (Redis) is unavailable; retry shortly")
        headers = {"Retry-After": str(EVENTS_RETRY_AFTER)}
        return JSONResponse(body, status_code=code.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = error_body(
            ErrorCode.VALIDATION_ERROR, _validation_message(exc), details=_jsonable_errors(exc)
        )
        return JSONResponse(body, status_code=ErrorCode.VALIDATION_ERROR.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """What the framework itself refuses: no route (404), a method the path has not (405,
        with ``Allow``), a body FastAPI could not decode (its 400, answered as the 422 every
        other malformed body gets)."""
        if exc.status_code == 404:
            code = ErrorCode.NOT_FOUND
            return JSONResponse(error_body(code, str(exc.detail)), status_code=code.status)
        if exc.status_code == 405:
            code = ErrorCode.METHOD_NOT_ALLOWED
            allow = ", ".join(allowed_methods(request))
            body = error_body(code, f"{request.method} is not allowed here; use {allow}")
            return JSONResponse(body, status_code=code.status, headers={"Allow": allow})
        if exc.status_code == 400:
            code = ErrorCode.VALIDATION_ERROR
            details = [{"loc": ["body"], "msg": str(exc.detail), "type": "json_invalid"}]
            body = error_body(code, f"body: {exc.detail}", details=details)
            return JSONResponse(body, status_code=code.status)
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        code = ErrorCode.INTERNAL_ERROR
        return JSONResponse(error_body(code, "internal server error"), status_code=code.status)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path: the router's own 405 names only
    the methods of the first route that matched the path, and FastAPI makes one per method."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]


def _jsonable_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg"), "type": error.get("type")}
        for error in exc.errors()[:20]
    ]
