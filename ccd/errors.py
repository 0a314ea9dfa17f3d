"""What the SDK raises. Everything is a ``CcdError``; an answer of the gateway's that refused
the request is an ``ApiError`` with the body's ``code`` and ``message`` (SPEC.md, "Error
codes"), of the subclass its HTTP status names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class CcdError(Exception):
    """Base of every error of the SDK."""


class ConnectionFailed(CcdError):
    """The gateway could not be reached, or the connection broke before its answer was
    complete (a request that changes something may or may not have been carried out)."""


class InvalidArgument(CcdError, ValueError):
    """An argument the gateway would refuse (checked with its own models before sending)."""


class SessionEnded(CcdError):
    """A session waited for stopped or failed instead (``reason``: its failure reason)."""

    def __init__(self, session_id: str, status: str, reason: str | None) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"session {session_id} is {status}{detail}")
        self.session_id = session_id
        self.status = status
        self.reason = reason


class ApiError(CcdError):
    """The gateway refused the request: ``status`` (HTTP), ``code`` (stable, machine-readable),
    ``message`` (for people), ``details`` (the body's other fields, e.g. ``session_id``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    """400."""


class Unauthorized(ApiError):
    """401: no token, a bad or expired one, or a session token whose session ended."""


class Forbidden(ApiError):
    """403: refused by policy (a limit, a session token on a user's route)."""


class NotFound(ApiError):
    """404: no such session, workspace or file for this caller."""


class Conflict(ApiError):
    """409: the session's state does not allow it now (busy, not running, in use)."""


class PayloadTooLarge(ApiError):
    """413."""


class ValidationFailed(ApiError):
    """422: the request is malformed (``details["details"]`` names the fields)."""


class RateLimited(ApiError):
    """429: try again after ``retry_after`` seconds (the ``Retry-After`` header)."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.headers, self.details)


class ServerError(ApiError):
    """5xx: the gateway failed (500) or something behind it did (502, 503, 504)."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.headers, self.details)


class Unavailable(ServerError):
    """503: a dependency of the gateway is down (``retry_after`` when it says)."""


class Timeout(ServerError):
    """504: a wait ran out (``turn_timeout``, ``wait_timeout``); the turn goes on."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: Unavailable,
    504: Timeout,
}


def _retry_after(headers: Mapping[str, str], details: Mapping[str, Any]) -> float | None:
    value = headers.get("retry-after", details.get("retry_after"))
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def api_error(status: int, body: bytes | str, headers: Mapping[str, str] | None = None) -> ApiError:
    """The error an answer with ``status`` and ``body`` stands for. A body that is not the
    gateway's ``{"error": {...}}`` (a proxy's page) still gives one, coded ``http_<status>``."""
    lowered = {key.lower(): value for key, value in (headers or {}).items()}
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        parsed = json.loads(text)
        error = parsed["error"]
        code, message = str(error["code"]), str(error["message"])
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
    except (ValueError, KeyError, TypeError):
        code, message, details = f"http_{status}", text.strip()[:300] or "no body", {}
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return kind(status, code, message, details, lowered)


def stream_error(data: str) -> ApiError:
    """The error a server-sent ``event: error`` reports (its data: the error body, with the
    ``status`` the same error answers as a response)."""
    try:
        status = int(json.loads(data).get("status") or 500)
    except (ValueError, AttributeError, TypeError):
        status = 500
    return api_error(status, data)
