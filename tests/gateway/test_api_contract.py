"""Auth, ownership, validation and listing against the real gateway (no turn is run)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import httpx
import jwt
import pytest
from websockets.exceptions import InvalidStatus

from tests.client import Api, mint_token

pytestmark = pytest.mark.docker

SESSION_ROUTES = [
    ("GET", ""),
    ("GET", "/turns"),
    ("POST", "/chat"),
    ("POST", "/interrupt"),
    ("POST", "/stop"),
    ("DELETE", ""),
]


async def test_health_needs_no_token_and_ready_checks_dependencies(gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        health = await anonymous.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        ready = await anonymous.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {
            "database": "ok",
            "redis": "ok",
            "docker": "ok",
            "storage": "ok",
        }


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-jwt",
        "Bearer {expired}",
        "Bearer {wrong_key}",
        "Bearer {no_exp}",
        "Bearer {none_alg}",
    ],
)
async def test_bad_or_missing_tokens_get_401(gateway, header) -> None:
    now = int(time.time())
    tokens = {
        "expired": mint_token(gateway.jwt_secret, "alice", ttl=-10),
        "wrong_key": mint_token("another-secret-that-is-long-enough-for-hs256", "alice"),
        "no_exp": jwt.encode({"sub": "alice", "iat": now}, gateway.jwt_secret, "HS256"),
        "none_alg": jwt.encode({"sub": "alice", "exp": now + 60}, None, "none"),
    }
    headers = {"Authorization": header.format(**tokens)} if header else {}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as client:
        for method, path in [("GET", "/api/v1/sessions"), ("POST", "/api/v1/sessions")]:
            response = await client.request(method, path, json={})
            assert response.status_code == 401, response.text
            body = response.json()["error"]
            assert body["code"] in {"missing_token", "invalid_token", "token_expired"}
            assert body["message"]
            assert response.headers["www-authenticate"] == "Bearer"


async def test_websocket_refuses_bad_tokens(api_for, gateway) -> None:
    alice = api_for("alice")
    session = await alice.create()
    url = alice.ws_url(session["id"])
    for headers in ({}, {"Authorization": "Bearer nope"}):
        with pytest.raises(InvalidStatus) as refused:
            async with Api.connect(url, headers):
                pass
        assert refused.value.response.status_code == 401
    # the query-string token works where headers cannot be set (browsers)
    async with Api.connect(alice.ws_url(session["id"], token=True), {}) as ws:
        assert ws is not None
    await alice.stop(session["id"])


async def test_another_users_session_is_404_everywhere(api_for) -> None:
    alice, mallory = api_for("alice"), api_for("mallory")
    session = await alice.create()
    for method, suffix in SESSION_ROUTES:
        response = await mallory.http.request(
            method, f"/api/v1/sessions/{session['id']}{suffix}", json={"prompt": "x"}
        )
        assert response.status_code == 404, (method, suffix, response.text)
        assert response.json()["error"]["code"] == "session_not_found"
    with pytest.raises(InvalidStatus) as refused:
        async with mallory.stream(session["id"]):
            pass
    assert refused.value.response.status_code == 404
    listed = (await mallory.http.get("/api/v1/sessions")).json()["sessions"]
    assert session["id"] not in {s["id"] for s in listed}
    # alice's session is untouched
    assert (await alice.get(session["id"]))["status"] in {"starting", "ready"}
    await alice.stop(session["id"])


@pytest.mark.parametrize(
    "body",
    [
        {"config": {"model": "m", "colour": "blue"}},
        {"unexpected": 1},
        {"config": {"permission_mode": "yolo"}},
        {"config": {"max_turns": 0}},
        {"config": {"timeout": "soon"}},
        {"config": {"allowed_tools": "Bash"}},
        {"prompt": ""},
        {"prompt": 42},
        [],
        "not json",
        b"\xff\xfe not UTF-8",  # FastAPI's own answer would be an undeclared 400
        {"prompt": "a\x00b"},  # PostgreSQL cannot store NUL: this was a 500
        b'{"prompt": "a\\ud800b"}',  # a lone surrogate: valid JSON, not encodable text
        b'{"config": {"system_prompt": "\\udfff"}}',
        {"config": {"model": "m\x00"}},
        {"config": {"allowed_tools": ["Bash\x00"]}},
        {"workspace": {"type": "ephemeral", "id": "mine"}},
        {"workspace": {"type": "persistent"}},
        {"workspace": {"type": "persistent", "id": "session-abc"}},
        {"workspace": {"type": "inherit"}},  # spawn only
    ],
)
async def test_malformed_create_bodies_get_422(api_for, body) -> None:
    alice = api_for("alice")
    if isinstance(body, str | bytes):
        response = await alice.http.post(
            "/api/v1/sessions", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = await alice.http.post("/api/v1/sessions", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"]


async def test_malformed_chat_and_ids(api_for) -> None:
    alice = api_for("alice")
    session = await alice.create()
    sid = session["id"]
    for body in ({}, {"prompt": ""}, {"prompt": "x", "timeout": 0}, {"prompt": "x", "extra": 1}):
        response = await alice.http.post(f"/api/v1/sessions/{sid}/chat", json=body)
        assert response.status_code == 422, (body, response.text)
    response = await alice.http.post(
        f"/api/v1/sessions/{sid}/chat",
        content=b'{"prompt": "a\\ud800b"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    response = await alice.http.get("/api/v1/sessions/not-a-uuid")
    assert response.status_code == 422
    for query in ("limit=0", "limit=1000", "status=sleeping", "cursor=%%%"):
        response = await alice.http.get(f"/api/v1/sessions?{query}")
        assert response.status_code == 422, (query, response.text)
    with pytest.raises(InvalidStatus) as refused:
        async with alice.stream(sid, after="yesterday"):
            pass
    assert refused.value.response.status_code == 422
    await alice.stop(sid)


async def test_a_method_the_path_has_not_gets_405_naming_those_it_has(api_for, gateway) -> None:
    alice = api_for("alice")
    some_session = f"/api/v1/sessions/{uuid.uuid4()}"
    for method, path, allowed in [
        ("PUT", some_session, "GET, DELETE"),
        ("PATCH", "/api/v1/workspaces/w/files/a/b", "GET, PUT, DELETE"),
        ("DELETE", "/api/v1/sessions", "GET, POST"),
    ]:
        response = await alice.http.request(method, path)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allowed
        assert response.json()["error"]["code"] == "method_not_allowed"
    health = httpx.post(f"{gateway.url}/health")
    assert (health.status_code, health.headers["allow"]) == (405, "GET")


async def test_paths_and_cursors_are_taken_exactly_as_the_schema_says(api_for) -> None:
    alice = api_for(f"paths-{time.time_ns()}")
    files = f"/api/v1/workspaces/paths-{uuid.uuid4().hex[:6]}/files"
    assert (await alice.http.put(f"{files}/a/b", content=b"x")).status_code == 201
    for method, url in [
        ("PUT", f"{files}/a%2F..%2Fc"),  # a '..' that stays inside: refused all the same
        ("PUT", f"{files}/a%0Ab"),  # a newline: 422 from the path check, not a 404 from routing
        ("GET", f"{files}?prefix=a%2F.."),
        ("GET", f"{files}?after=..%2Fa"),
        # Not UTF-8 once decoded (a lone surrogate's bytes): refused, not stored as U+FFFD.
        ("PUT", f"{files}/a%ED%A0%80"),
        ("GET", f"{files}/a%FF"),
        ("GET", f"{files}?prefix=a%C3"),
    ]:
        response = await alice.http.request(method, url, content=b"x")
        assert response.status_code == 422, (method, url, response.text)
        assert response.json()["error"]["code"] == "unsafe_path"
    listed = (await alice.http.get(f"{files}?prefix=./a//")).json()["files"]
    assert [f["path"] for f in listed] == ["a", "a/b"]
    # U+FFFD itself, sent as its UTF-8 bytes, is a name like any other.
    replacement = f"{files}/r%EF%BF%BD"
    assert (await alice.http.put(replacement, content=b"y")).status_code == 201
    assert (await alice.http.get(replacement)).content == b"y"
    for cursor in ("", "1." + "0" * 31, "MjAyNnwx"):  # the last: the old base64 kind
        response = await alice.http.get(f"/api/v1/sessions?cursor={cursor}")
        assert response.status_code == 422, (cursor, response.text)
        assert response.json()["error"]["code"] == "invalid_cursor"
    for cursor in ("0." + "0" * 32, "9" * 17 + "." + "f" * 32):  # any such cursor is taken
        response = await alice.http.get(f"/api/v1/sessions?cursor={cursor}")
        assert response.status_code == 200, (cursor, response.text)


async def test_list_is_newest_first_with_cursor_and_status_filter(api_for) -> None:
    owner = api_for(f"lister-{time.time_ns()}")
    created = [await owner.create() for _ in range(3)]
    await owner.stop(created[0]["id"])
    first = (await owner.http.get("/api/v1/sessions?limit=2")).json()
    assert [s["id"] for s in first["sessions"]] == [created[2]["id"], created[1]["id"]]
    assert first["next_cursor"]
    second = (
        await owner.http.get(f"/api/v1/sessions?limit=2&cursor={first['next_cursor']}")
    ).json()
    assert [s["id"] for s in second["sessions"]] == [created[0]["id"]]
    assert second["next_cursor"] is None
    stopped = (await owner.http.get("/api/v1/sessions?status=stopped")).json()["sessions"]
    assert [s["id"] for s in stopped] == [created[0]["id"]]
    for session in created[1:]:
        await owner.stop(session["id"])


def test_token_command_mints_a_token_the_gateway_accepts(gateway) -> None:
    minted = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--sub", "carol", "--ttl", "120"],
        env=gateway.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    claims = jwt.decode(minted, gateway.jwt_secret, algorithms=["HS256"])
    assert claims["sub"] == "carol" and claims["exp"] - claims["iat"] == 120
    response = httpx.get(
        f"{gateway.url}/api/v1/sessions", headers={"Authorization": f"Bearer {minted}"}
    )
    assert response.status_code == 200


def test_commands_refuse_to_start_without_a_jwt_secret(gateway) -> None:
    env = {**gateway.env, "JWT_SECRET": ""}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--sub", "x"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "JWT_SECRET" in result.stderr


def test_migrate_is_idempotent(gateway) -> None:
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-m", "gateway", "migrate"],
            env=gateway.env,
            check=True,
            capture_output=True,
        )
