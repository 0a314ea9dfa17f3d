"""The cursor of the session list: where the next page starts (pure).

A cursor is ``<created_at in microseconds since the epoch>.<session id in hex>``, the listing's
sort key. Its pattern is in the OpenAPI schema, and every string that matches it decodes (to a
page that may be empty), so the schema says exactly which cursors the server takes.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from gateway.error_codes import ErrorCode
from gateway.errors import InvalidRequest

# 17 digits reach the year 5138: inside what ``datetime`` holds, past any session.
SESSION_CURSOR_PATTERN = r"^[0-9]{1,17}\.[0-9a-f]{32}$"
_CURSOR = re.compile(SESSION_CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_session_cursor(created_at: datetime, session_id: uuid.UUID) -> str:
    return f"{(created_at - _EPOCH) // _MICROSECOND}.{session_id.hex}"


def decode_session_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The sort key a cursor names, or 422 ``invalid_cursor``."""
    if not _CURSOR.fullmatch(cursor):
        raise InvalidRequest(
            "cursor is not a cursor this API returned", code=ErrorCode.INVALID_CURSOR
        )
    micros, _, session_hex = cursor.partition(".")
    return _EPOCH + int(micros) * _MICROSECOND, uuid.UUID(hex=session_hex)
