"""Process-wide logging: one JSON object per line (or plain text for a terminal), with tokens
redacted from every line, and the session a line is about as its ``session_id``."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

_STANDARD = set(vars(logging.makeLogRecord({})))

REDACTED = "[redacted]"
# ``token=`` in a query string: uvicorn logs the WebSocket handshake and access lines with the
# full path, query included, and browsers can only authenticate a WebSocket that way.
# Names ending in "token" (token=, access_token=, CCD_SESSION_TOKEN=) are covered alike.
_QUERY_TOKEN = re.compile(r"(?i)\b([a-z_]*token=)[^&\s\"'#]+")
# Anything JWT-shaped (header.payload.signature, base64url, the header starting '{"'): user and
# session capability tokens, wherever they appear in a message or an exception.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """``text`` without query-string tokens, bearer credentials or JWT-shaped strings."""
    text = _JWT.sub(REDACTED, text)
    text = _QUERY_TOKEN.sub(rf"\g<1>{REDACTED}", text)
    return _BEARER.sub(rf"\g<1>{REDACTED}", text)


class RedactTokens(logging.Filter):
    """Rewrites a record before any handler formats it: the message is formatted with its args
    and redacted (the args are dropped), and so are its exception text, stack and string
    extras. A record that cannot be formatted is left for the handler to report."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg = redact(record.getMessage())
            record.args = None
        except Exception:  # a broken record is the handler's to report
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


# The session the current request, WebSocket or recorded event is about. A context variable,
# so it follows the work into the tasks it starts and never leaks into another request's.
_session: ContextVar[str | None] = ContextVar("ccd_log_session", default=None)


def bind_session(session_id: object) -> None:
    """Lines logged from here on by this task (and tasks it starts) carry ``session_id``."""
    _session.set(str(session_id))


@contextlib.contextmanager
def session_context(session_id: object) -> Iterator[None]:
    """Lines logged inside the block carry ``session_id``."""
    token = _session.set(str(session_id))
    try:
        yield
    finally:
        _session.reset(token)


class AddSessionId(logging.Filter):
    """Sets ``record.session_id`` from the bound session, unless the call gave one
    (``extra={"session_id": ...}``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        session_id = _session.get()
        if session_id is not None and not hasattr(record, "session_id"):
            record.session_id = session_id
        return True


class TextFormatter(logging.Formatter):
    """Plain lines; the session id is appended when the message does not already name it."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        session_id = getattr(record, "session_id", None)
        if session_id and session_id not in record.message:
            line += f" [session {session_id}]"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _STANDARD)
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(RedactTokens())
    handler.addFilter(AddSessionId())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
