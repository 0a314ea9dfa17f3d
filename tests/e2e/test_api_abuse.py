"""Abuse of the API, tried against the real gateway: huge bodies, no or forged credentials,
request floods across replicas, a Redis that stops answering, a full engine, and tokens that
must never reach a log line. (Idempotency keys and capability-token workspaces are in
test_api_idempotency.py.)"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.client import Api, marker, mint_token
from tests.silent_proxy import SilentProxy
from tests.stack import Gateway, at_address, run_gateway

pytestmark = pytest.mark.docker

MiB = 1024 * 1024
BIG = 64 * MiB


def peak_memory(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


async def chunked(total: int) -> AsyncIterator[bytes]:
    """A body without Content-Length (sent chunked), 1 MiB at a time."""
    block = b"x" * MiB
    for _ in range(total // MiB):
        yield block


@pytest.fixture(scope="module")
def guarded(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[Gateway]:
    """A gateway of its own: its memory and its log file hold only this module's requests."""
    logs = tmp_path_factory.mktemp("guarded")
    with run_gateway(
        infra, fake_api.base_url, s3_endpoint, logs, WORKSPACE_MAX_BYTES=str(8 * MiB)
    ) as gw:
        yield gw


async def test_huge_bodies_are_refused_before_they_are_read(guarded) -> None:
    owner = f"mem-{marker()}"
    auth = {"Authorization": f"Bearer {mint_token(guarded.jwt_secret, owner)}"}
    forged = {"Authorization": f"Bearer {mint_token('not-the-key-' * 4, owner)}"}
    assert guarded.process is not None
    pid = guarded.process.pid
    big = b"{" * BIG
    create, upload = ("POST", "/api/v1/sessions"), ("PUT", "/api/v1/workspaces/m/files/f")
    refused = [
        # (what, (method, path), headers, body, status, code)
        ("no token", create, {}, big, 401, "missing_token"),
        ("no token, chunked", create, {}, "chunked", 401, "missing_token"),
        ("forged token", create, forged, big, 401, "invalid_token"),
        ("no token, upload", upload, {}, big, 401, "missing_token"),
        ("valid token", create, auth, big, 413, "request_too_large"),
        ("valid token, chunked", create, auth, "chunked", 413, "request_too_large"),
        ("upload over WORKSPACE_MAX_BYTES", upload, auth, big, 413, "workspace_too_large"),
    ]
    # An upload is streamed on to storage until it passes its own limit: bounded by one
    # S3 part (5 MiB) and the pipe feeding it, not by the body.
    streamed = [("upload, chunked", upload, auth, "chunked", 413, "workspace_too_large")]
    async with httpx.AsyncClient(base_url=guarded.url, timeout=120) as client:

        async def peak_rise(cases: list) -> float:
            before = peak_memory(pid)
            for what, (method, path), headers, body, status, code in cases:
                content = chunked(BIG) if body == "chunked" else body
                response = await client.request(method, path, headers=headers, content=content)
                assert response.status_code == status, (what, response.text)
                assert response.json()["error"]["code"] == code, what
                if status == 401:
                    assert response.headers["www-authenticate"] == "Bearer"
            return (peak_memory(pid) - before) / MiB

        # Warm up every path measured, so what it imports or caches is not counted.
        for _, (method, path), headers, _, _, _ in refused + streamed:
            await client.request(method, path, headers=headers, content=b"{}")
        # Reading any one of these bodies would raise the peak by 64 MiB or more.
        rise = await peak_rise(refused)
        assert rise < 8, f"refused bodies raised peak memory by {rise:.1f} MiB"
        rise = await peak_rise(streamed)
        assert rise < 24, f"a refused upload raised peak memory by {rise:.1f} MiB"
        # the gateway still serves
        assert (await client.get("/api/v1/sessions", headers=auth)).status_code == 200


async def wait_for_log(gateway: Gateway, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = gateway.log_path.read_text(errors="replace")
        if needle in text or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.1)


async def test_tokens_never_reach_the_log(guarded) -> None:
    owner = f"log-{marker()}"
    user = Api(guarded.url, mint_token(guarded.jwt_secret, owner))
    forged = mint_token("not-the-key-" * 4, owner)
    try:
        session = await user.create()
        sid = session["id"]
        minted = await user.http.post(f"/api/v1/sessions/{sid}/token")
        assert minted.status_code == 200, minted.text
        as_session = Api(guarded.url, minted.json()["token"])
        # the user's token in a WebSocket URL (browsers cannot set headers)
        async with Api.connect(user.ws_url(sid, after="$", token=True), {}):
            pass
        # the session's token: in headers, in a WebSocket URL, in an HTTP query string
        assert (await as_session.http.get(f"/api/v1/sessions/{sid}")).status_code == 200
        async with Api.connect(as_session.ws_url(sid, after="$", token=True), {}):
            pass
        query = await as_session.http.get(f"/api/v1/sessions/{sid}?token={as_session.token}")
        assert query.status_code == 200
        # a refused upgrade is logged too
        refused_url = user.ws_url(sid).replace("/stream", f"/stream?token={forged}")
        with pytest.raises(InvalidStatus) as refused:
            async with Api.connect(refused_url, {}):
                pass
        assert refused.value.response.status_code == 401
        await user.stop(sid)
        revoked = await as_session.http.get(f"/api/v1/sessions/{sid}")
        assert revoked.json()["error"]["code"] == "token_revoked"
        await as_session.aclose()
    finally:
        await user.aclose()
    log = await wait_for_log(guarded, '"WebSocket /api/v1/sessions/')
    # the lines that would carry them were written, redacted
    assert f'"WebSocket /api/v1/sessions/{sid}/stream?after=$&token=[redacted]" [accepted]' in log
    assert f'"WebSocket /api/v1/sessions/{sid}/stream?token=[redacted]" 401' in log
    assert f'"GET /api/v1/sessions/{sid}?token=[redacted] HTTP/1.1" 200' in log
    for secret in (user.token, as_session.token, forged):
        assert secret not in log
        assert secret.split(".")[2] not in log  # not even the signature alone


# -- rate limits ----------------------------------------------------------------------------------

RATE_SECRET = secrets.token_urlsafe(32)
RATE = {"RATE_LIMIT_PER_SECOND": "0.01", "RATE_LIMIT_BURST": "4", "JWT_SECRET": RATE_SECRET}


@pytest.fixture(scope="module")
def replicas(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateway replicas on one Redis and one database: 4 requests at once, then one per
    100 s (so none refills while the test runs)."""
    logs = tmp_path_factory.mktemp("replicas")
    with (
        run_gateway(infra, fake_api.base_url, s3_endpoint, logs, **RATE) as one,
        run_gateway(infra, fake_api.base_url, s3_endpoint, logs, **RATE) as two,
    ):
        yield one, two


async def test_a_flood_is_limited_per_owner_across_replicas(replicas) -> None:
    one, two = replicas
    flooder = {"Authorization": f"Bearer {mint_token(RATE_SECRET, f'flood-{marker()}')}"}
    bystander = {"Authorization": f"Bearer {mint_token(RATE_SECRET, f'calm-{marker()}')}"}
    async with httpx.AsyncClient(timeout=30) as client:
        answers = [
            await client.get(f"{(one, two)[i % 2].url}/api/v1/sessions", headers=flooder)
            for i in range(6)
        ]
        assert [a.status_code for a in answers] == [200] * 4 + [429] * 2
        for refused in answers[4:]:
            error = refused.json()["error"]
            assert error["code"] == "rate_limited"
            assert "RATE_LIMIT_PER_SECOND" in error["message"]
            retry_after = refused.headers["retry-after"]
            assert retry_after.isdigit() and 1 <= int(retry_after) <= 100
            assert error["retry_after"] == int(retry_after)
        # another owner is not slowed down by the flood
        for gateway in (one, two):
            calm = await client.get(f"{gateway.url}/api/v1/sessions", headers=bystander)
            assert calm.status_code == 200
        # health, readiness and the schema are not limited; bad credentials are refused first
        for path in ["/health", "/ready", "/openapi.json", "/docs"] * 3:
            assert (await client.get(one.url + path, headers=flooder)).status_code == 200
        assert (await client.get(f"{one.url}/api/v1/sessions")).status_code == 401
    # the WebSocket upgrade counts too
    url = one.url.replace("http://", "ws://") + f"/api/v1/sessions/{uuid.uuid4()}/stream"
    with pytest.raises(InvalidStatus) as refused_ws:
        async with Api.connect(url, flooder):
            pass
    assert refused_ws.value.response.status_code == 429
    assert int(refused_ws.value.response.headers["retry-after"]) >= 1


def through(proxy: SilentProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's (credentials kept)."""
    return at_address(url, proxy.host, proxy.port)


async def test_a_silent_redis_lets_requests_through_with_one_warning(
    infra, fake_api, s3_endpoint, tmp_path_factory
) -> None:
    redis = urlsplit(infra.redis_url)
    with (
        SilentProxy(redis.hostname or "127.0.0.1", redis.port or 6379).running() as proxy,
        run_gateway(
            infra,
            fake_api.base_url,
            s3_endpoint,
            tmp_path_factory.mktemp("silent-redis"),
            REDIS_URL=through(proxy, infra.redis_url),
            RATE_LIMIT_PER_SECOND="0.01",
            RATE_LIMIT_BURST="2",
        ) as gateway,
    ):
        api = Api(gateway.url, mint_token(gateway.jwt_secret, f"open-{marker()}"))
        proxy.silent = True
        try:
            during = [(await api.http.get("/api/v1/sessions")).status_code for _ in range(4)]
        finally:
            proxy.silent = False
        assert during == [200] * 4  # twice the burst: availability over limiting
        after = [(await api.http.get("/api/v1/sessions")).status_code for _ in range(3)]
        assert after == [200, 200, 429]  # enforced again once Redis answers
        await api.aclose()
        log = gateway.log_path.read_text(errors="replace")
    assert log.count("rate limit not enforced: Redis did not answer") == 1
    assert log.count("rate limit enforced again") == 1


# -- capacity -------------------------------------------------------------------------------------

CAPACITY = {
    "MAX_SESSIONS_PER_ENGINE": "2",
    "MAX_SESSIONS_PER_OWNER": "1",
    "CAPACITY_RETRY_AFTER": "7",
    "MAX_SPAWN_DEPTH": "0",
}


@pytest.fixture(scope="module")
def small_engine(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("small-engine")
    with run_gateway(infra, fake_api.base_url, s3_endpoint, logs, **CAPACITY) as gw:
        yield gw


def assert_capacity(response: httpx.Response, code: str) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "7"
    error = response.json()["error"]
    assert (error["code"], error["retry_after"]) == (code, 7)


async def test_a_full_owner_or_engine_answers_429_until_a_session_ends(
    small_engine, docker_client
) -> None:
    first = Api(small_engine.url, mint_token(small_engine.jwt_secret, f"cap-{marker()}"))
    others = [
        Api(small_engine.url, mint_token(small_engine.jwt_secret, f"cap-{marker()}"))
        for _ in range(20)
    ]
    try:
        held = await first.create()
        assert_capacity(await first.http.post("/api/v1/sessions", json={}), "owner_limit_reached")
        # a policy limit stays 403 (a retry cannot clear it), even with the owner full
        deeper = await first.http.post(f"/api/v1/sessions/{held['id']}/spawn", json={"prompt": "x"})
        assert (deeper.status_code, deeper.json()["error"]["code"]) == (
            403,
            "spawn_depth_exceeded",
        )
        # twenty owners at once for the engine's one free slot: exactly one gets it
        answers = await asyncio.gather(
            *(api.http.post("/api/v1/sessions", json={}) for api in others)
        )
        assert sorted(a.status_code for a in answers) == [201] + [429] * 19
        for refused in (a for a in answers if a.status_code == 429):
            assert_capacity(refused, "engine_at_capacity")
        running = docker_client.containers.list(
            filters={"label": f"cc-docker.instance={small_engine.instance}"}
        )
        assert len(running) == 2
        # the retry the 429 invites succeeds once a session has ended
        await first.stop(held["id"])
        outcomes = list(zip(others, answers, strict=True))
        loser = next(api for api, answer in outcomes if answer.status_code == 429)
        retried = await loser.create()
        await loser.stop(retried["id"])
        for api, answer in outcomes:
            if answer.status_code == 201:
                await api.stop(answer.json()["id"])
    finally:
        for api in [first, *others]:
            await api.aclose()
