"""Pure parts of the abuse defences: which routes are uploads, token redaction in log lines,
Idempotency-Key parsing and request hashing, and the schema that declares them."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from gateway.config import Settings
from gateway.errors import InvalidRequest
from gateway.guard import upload_kind
from gateway.logging_setup import JsonFormatter, RedactTokens, redact
from gateway.main import create_app
from gateway.schemas import CreateSessionRequest, SpawnRequest
from gateway.services import idempotency
from tests.client import mint_token

SETTINGS = Settings(_env_file=None, jwt_secret="x" * 32)  # type: ignore[call-arg]
UPLOADS = {
    ("PUT", "/api/v1/sessions/{session_id}/files/{path}"): "file",
    ("PUT", "/api/v1/workspaces/{workspace_id}/files/{path}"): "file",
    ("POST", "/api/v1/workspaces/{workspace_id}/archive"): "archive",
}


def test_exactly_the_upload_routes_escape_max_request_bytes() -> None:
    """Every other route's body is held to MAX_REQUEST_BYTES: a new route that reads a body
    cannot slip past the limit by resembling an upload's path."""
    paths = create_app(SETTINGS).openapi()["paths"]
    assert len(paths) > 10
    for template, operations in paths.items():
        concrete = re.sub(r"\{[^}]+\}", "a", template).replace("/a/files/a", "/a/files/d/e.txt")
        for method in operations:
            expected = UPLOADS.get((method.upper(), template))
            assert upload_kind(method.upper(), concrete) == expected, (method, template)
    # a decoded path with more segments than a route has is not an upload either
    assert upload_kind("POST", "/api/v1/workspaces/a/b/archive") is None
    assert upload_kind("PUT", "/api/v1/sessions/a/files/") is None


def test_redaction_removes_query_tokens_bearer_credentials_and_jwts() -> None:
    jwt = mint_token("k" * 32, "alice")
    lines = {
        f'1.2.3.4:5 - "WebSocket /api/v1/sessions/x/stream?after=0&token={jwt}" [accepted]': (
            '"WebSocket /api/v1/sessions/x/stream?after=0&token=[redacted]" [accepted]'
        ),
        'GET /x?token=not-even-a-jwt&b=1 HTTP/1.1" 200': "GET /x?token=[redacted]&b=1",
        "headers: {'authorization': 'Bearer abc.def'}": "'Bearer [redacted]'",
        f"env CCD_SESSION_TOKEN={jwt} leaked": "env CCD_SESSION_TOKEN=[redacted] leaked",
        "access_token=zzz": "access_token=[redacted]",
        "CCD_SESSION_TOKEN=opaque-value": "CCD_SESSION_TOKEN=[redacted]",
    }
    for line, expected in lines.items():
        redacted = redact(line)
        assert expected in redacted, redacted
        for secret in (jwt, "not-even-a-jwt", "zzz", "opaque-value"):
            assert secret not in redacted
    untouched = "tokens=5 max_tokens=3 turn 1795415544617-0 session 4e9c.json"
    assert redact(untouched) == untouched


@pytest.mark.parametrize("formatter", [JsonFormatter(), logging.Formatter("%(message)s")])
def test_the_filter_redacts_args_exceptions_and_extras(formatter: logging.Formatter) -> None:
    jwt = mint_token("k" * 32, "alice")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(RedactTokens())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning('%s - "WebSocket %s" 401', "1.2.3.4:5", f"/s?token={jwt}")
        try:
            raise RuntimeError(f"refused Bearer {jwt}")
        except RuntimeError:
            logger.exception("failed", extra={"detail": f"token {jwt}"})
    finally:
        logger.removeHandler(handler)
    written = out.getvalue()
    assert jwt not in written and jwt.split(".")[2] not in written
    assert "token=[redacted]" in written and "RuntimeError" in written


def test_idempotency_keys_are_printable_ascii_up_to_255() -> None:
    body = CreateSessionRequest()
    for good in ["a", "x" * 255, "order 42 / retry #1", "~!"]:
        parsed = idempotency.parse(good, idempotency.CREATE_SCOPE, body)
        assert parsed is not None and parsed.key == good
    assert idempotency.parse(None, idempotency.CREATE_SCOPE, body) is None
    for bad in ["", " ", " lead", "trail ", "x" * 256, "tab\there", "caf\xe9", "nul\x00", "\x7f"]:
        with pytest.raises(InvalidRequest) as refused:
            idempotency.parse(bad, idempotency.CREATE_SCOPE, body)
        assert refused.value.code == "invalid_idempotency_key"


def test_the_request_hash_is_of_the_validated_body() -> None:
    spelled_out = CreateSessionRequest.model_validate(
        {"config": {}, "workspace": {"type": "ephemeral", "read_only": False}, "prompt": None}
    )
    assert idempotency.request_hash(CreateSessionRequest()) == idempotency.request_hash(spelled_out)
    one = SpawnRequest(prompt="a")
    assert idempotency.request_hash(one) != idempotency.request_hash(SpawnRequest(prompt="b"))
    assert re.fullmatch(r"[0-9a-f]{64}", idempotency.request_hash(one))


def test_the_schema_declares_the_key_the_replay_and_retry_after() -> None:
    paths = create_app(SETTINGS).openapi()["paths"]
    for path in ["/api/v1/sessions", "/api/v1/sessions/{session_id}/spawn"]:
        operation = paths[path]["post"]
        header = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
        assert header["in"] == "header" and not header["required"]
        assert header["schema"]["maxLength"] == 255
        assert "Idempotent-Replayed" in operation["responses"]["201"]["headers"]
        assert "Retry-After" in operation["responses"]["429"]["headers"]
    # what the guard answers before any route runs is declared on every route it guards
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path.startswith("/api/"):
                assert {"401", "413", "429"} <= set(operation["responses"]), (method, path)
    assert json.dumps(paths)  # serialisable as served
