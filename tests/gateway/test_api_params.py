"""The patterns the OpenAPI schema states are exactly what the server takes (pure: no gateway).

A path, prefix or cursor the schema allows is accepted, and one it refuses is refused: checked
exhaustively over short strings of the characters that matter, in Python's regex engine and in
the Rust one that validators (schemathesis among them) use.
"""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, datetime

import jsonschema_rs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.params import FILE_PATH_PATTERN, PREFIX_PATTERN, checked_path
from gateway.config import Settings
from gateway.cursors import SESSION_CURSOR_PATTERN, decode_session_cursor, encode_session_cursor
from gateway.errors import InvalidRequest
from gateway.main import create_app
from gateway.workspaces.paths import UnsafePath

# Each character a path rule turns on: a name character, the dot, the separator, a backslash,
# a control character, and one that needs two UTF-8 bytes.
ALPHABET = "a./\\\x01é"


def _server_takes(path: str, allow_root: bool) -> bool:
    try:
        checked_path(path, allow_root=allow_root)
    except UnsafePath:
        return False
    return True


@pytest.mark.parametrize(
    ("allow_root", "pattern"), [(False, FILE_PATH_PATTERN), (True, PREFIX_PATTERN)]
)
def test_the_path_pattern_is_what_the_server_takes(allow_root: bool, pattern: str) -> None:
    validator = jsonschema_rs.validator_for({"type": "string", "pattern": pattern})
    compiled = re.compile(pattern)
    disagree = []
    for length in range(7):
        for chars in itertools.product(ALPHABET, repeat=length):
            path = "".join(chars)
            takes = _server_takes(path, allow_root)
            if takes != bool(compiled.fullmatch(path)) or takes != validator.is_valid(path):
                disagree.append(path)
    assert disagree == []


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("a/../b", "has a '..' step"),  # normalize would resolve it; the API refuses it
        ("../a", "escapes"),
        ("a\nb", "control character"),
        ("/etc/passwd", "absolute"),
        ("a" * 256, "longer than 255 bytes"),
        ("./" * 600 + "a", "longer than 1024 characters"),
    ],
)
def test_refused_paths_say_why(path: str, reason: str) -> None:
    with pytest.raises(UnsafePath, match=re.escape(reason)):
        checked_path(path)


def test_names_are_limited_in_bytes_which_the_pattern_cannot_count() -> None:
    """The one known difference: 200 two-byte characters match the pattern and are refused."""
    name = "é" * 200
    assert re.fullmatch(FILE_PATH_PATTERN, name)
    assert not _server_takes(name, allow_root=False)


def test_the_served_schema_states_the_patterns() -> None:
    schema = create_app(Settings(_env_file=None, jwt_secret="x" * 32)).openapi()  # type: ignore[call-arg]
    paths = schema["paths"]

    def parameter(path: str, method: str, name: str) -> dict[str, object]:
        found = [p for p in paths[path][method]["parameters"] if p["name"] == name]
        assert len(found) == 1, (path, method, name)
        return dict(found[0]["schema"])

    for base in ("/api/v1/sessions/{session_id}", "/api/v1/workspaces/{workspace_id}"):
        for method in ("get", "put", "delete"):
            assert (
                parameter(f"{base}/files/{{path}}", method, "path")["pattern"] == FILE_PATH_PATTERN
            )
        assert parameter(f"{base}/files", "get", "prefix")["pattern"] == PREFIX_PATTERN
    assert parameter("/api/v1/sessions", "get", "cursor")["pattern"] == SESSION_CURSOR_PATTERN


def test_cursors_round_trip() -> None:
    created_at = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)
    session_id = uuid.uuid4()
    cursor = encode_session_cursor(created_at, session_id)
    assert re.fullmatch(SESSION_CURSOR_PATTERN, cursor)
    assert decode_session_cursor(cursor) == (created_at, session_id)


@given(st.from_regex(SESSION_CURSOR_PATTERN, fullmatch=True))
def test_every_cursor_the_pattern_allows_decodes(cursor: str) -> None:
    decode_session_cursor(cursor)


@pytest.mark.parametrize(
    "cursor",
    ["", "1.", "x." + "0" * 32, "1." + "0" * 31, "1." + "A" * 32, "1" * 18 + "." + "0" * 32],
)
def test_cursors_the_pattern_refuses_are_refused(cursor: str) -> None:
    assert not re.fullmatch(SESSION_CURSOR_PATTERN, cursor)
    with pytest.raises(InvalidRequest) as refused:
        decode_session_cursor(cursor)
    assert refused.value.code == "invalid_cursor"
