"""The gateway's error hierarchy and the one place that renders errors as JSON.

Every error a client sees has the shape ``{"error": {"code", "message", ...details}}``. Expected
failures (a ``GatewayError``) log one line, and so does a database that cannot be reached (503
``database_unavailable`` with ``Retry-After``); anything else logs a traceback and answers 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.db.outage import database_unavailable
from gateway.runtime.base import RuntimeFailure
from gateway.store.objects import ObjectMissing, StoreError, StoreUnavailable
from gateway.workspaces.manifest import WorkspaceError, WorkspaceTooLarge

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """An expected failure with a stable machine-readable ``code`` and an HTTP status.
    ``headers`` go on the response (``Retry-After``, ...); a 401 always says
    ``WWW-Authenticate: Bearer``."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.details = details

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


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class Conflict(GatewayError):
    status = 409
    code = "conflict"


class InvalidRequest(GatewayError):
    status = 422
    code = "invalid_request"


class GatewayTimeout(GatewayError):
    status = 504
    code = "timeout"


class Unavailable(GatewayError):
    status = 503
    code = "unavailable"


class RequestTooLarge(GatewayError):
    status = 413
    code = "request_too_large"


class TooManyRequests(GatewayError):
    """Refused for now; a retry after ``retry_after`` seconds may pass (``Retry-After``)."""

    status = 429
    code = "too_many_requests"

    def __init__(
        self, message: str, *, retry_after: int, code: str | None = None, **details: Any
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
    code = "rate_limited"


class CapacityReached(TooManyRequests):
    """A capacity limit (the owner's running sessions, the engine's) that a retry can clear,
    unlike the recursion limits (``LimitExceeded``, 403)."""


class SessionNotFound(NotFound):
    code = "session_not_found"

    def __init__(self, session_id: object) -> None:
        super().__init__(f"session {session_id} not found")


class SessionBusy(Conflict):
    code = "session_busy"


class SessionNotRunning(Conflict):
    code = "session_not_running"


class LimitExceeded(Forbidden):
    """A recursion limit refused a new session; ``code`` names the limit."""


class SessionTokenNotAllowed(Forbidden):
    code = "session_token_not_allowed"


class WaitTimeout(GatewayTimeout):
    code = "wait_timeout"


class NoRunningTurn(Conflict):
    code = "no_running_turn"


class TurnFailed(GatewayError):
    status = 502
    code = "turn_failed"


class TurnTimeout(GatewayTimeout):
    code = "turn_timeout"


class RuntimeUnavailable(Unavailable):
    code = "runtime_unavailable"


class ImageNotFound(Unavailable):
    code = "image_not_found"


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"


# Seconds a client is asked to wait when PostgreSQL cannot be reached (a restart takes a few).
DATABASE_RETRY_AFTER = 5


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
        error = RuntimeUnavailable(f"the container runtime failed: {exc}")
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(WorkspaceError)
    async def _workspace_error(request: Request, exc: WorkspaceError) -> JSONResponse:
        status = 413 if isinstance(exc, WorkspaceTooLarge) else 422
        log.info(
            "%s %s -> %s %s: %s", request.method, request.url.path, status, exc.code, exc.message
        )
        body = {"error": {"code": exc.code, "message": exc.message}}
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        status = (
            404
            if isinstance(exc, ObjectMissing)
            else (503 if isinstance(exc, StoreUnavailable) else 502)
        )
        log.warning("%s %s -> %s %s: %s", request.method, request.url.path, status, exc.code, exc)
        body = {"error": {"code": exc.code, "message": f"object storage: {exc}"}}
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

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = {
            "error": {
                "code": "validation_error",
                "message": _validation_message(exc),
                "details": _jsonable_errors(exc),
            }
        }
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        body = {
            "error": {"code": codes.get(exc.status_code, "http_error"), "message": str(exc.detail)}
        }
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {"error": {"code": "internal_error", "message": "internal server error"}}
        return JSONResponse(body, status_code=500)


def _jsonable_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg"), "type": error.get("type")}
        for error in exc.errors()[:20]
    ]
