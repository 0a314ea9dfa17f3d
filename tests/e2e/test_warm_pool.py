"""The warm pool, against the real engine, Redis, PostgreSQL and the real CLI.

Each test is the thing a pool could get wrong: a pooled container that holds a secret or an
identity before its claim (an attacker inside it, or who stole its key), two creates getting one
container, a claimed session that behaves differently from a cold one (its stream, its model
bill, its transcript on resume), the reconciler mistaking the pool for orphans, and a pool
that does not refill or recycle.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import docker.errors
import httpx
import pytest
import redis

from tests.client import Api, marker, mint_token, read_until
from tests.fake_anthropic import text
from tests.pool import POOL_LABEL, wait_for_pool
from tests.stack import Gateway, run_gateway

pytestmark = pytest.mark.docker

POOL_SIZE = 2
IDENTITY = ("CCD_SESSION_ID", "CCD_SESSION_TOKEN", "CCD_REDIS_URL")


@pytest.fixture(scope="module")
def pool_gateway(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[Gateway]:
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path_factory.mktemp("pool"),
        SESSION_POOL_SIZE=str(POOL_SIZE),
        RECONCILE_INTERVAL="1",
    ) as gateway:
        yield gateway


@pytest.fixture
async def api(pool_gateway: Gateway) -> AsyncIterator[Api]:
    client = Api(pool_gateway.url, mint_token(pool_gateway.jwt_secret, f"pool-{marker()}"))
    yield client
    await client.aclose()


def environment(docker_client: Any, container_id: str) -> dict[str, str]:
    attrs = docker_client.api.inspect_container(container_id)
    return dict(item.split("=", 1) for item in attrs["Config"]["Env"])


async def warm_starts(gateway: Gateway) -> float:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        body = (await client.get("/metrics")).text
    for line in body.splitlines():
        if line.startswith('ccd_session_start_seconds_count{warm="true"}'):
            return float(line.split()[-1])
    return 0.0


async def test_a_pooled_container_holds_no_identity_and_its_secrets_are_worthless(
    api, pool_gateway, docker_client, infra, fake_api
) -> None:
    free = await wait_for_pool(docker_client, pool_gateway, api, POOL_SIZE)
    env = await asyncio.to_thread(environment, docker_client, free[0])
    assert not [name for name in IDENTITY if name in env], env
    assert "CCD_POOL_ID" in env
    # Hardened as any session's container.
    host = docker_client.api.inspect_container(free[0])["HostConfig"]
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    assert host["MemorySwap"] == host["Memory"]
    # Its Redis user reaches nothing but its own claim list.
    theirs, ours = urlsplit(env["CCD_POOL_REDIS_URL"]), urlsplit(infra.redis_url)
    thief = redis.Redis(
        host=ours.hostname, port=ours.port, username=theirs.username, password=theirs.password
    )
    try:
        assert thief.ping()
        victim = await api.create()
        with pytest.raises(redis.exceptions.NoPermissionError):
            thief.xrange(f"ccd:session:{victim['id']}:out")
        with pytest.raises(redis.exceptions.NoPermissionError):
            thief.xadd(f"ccd:session:{victim['id']}:in", {"type": "prompt"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            thief.keys("*")
    finally:
        thief.close()
    # Its model key calls nothing before a claim binds it (nor anywhere but the model proxy).
    key = env["CCD_POOL_MODEL_KEY"]
    async with httpx.AsyncClient(base_url=pool_gateway.url) as client:
        model = await client.post(
            "/model/v1/messages",
            headers={"x-api-key": key},
            json={"model": "claude-x", "max_tokens": 5, "messages": []},
        )
        assert model.status_code == 401, model.text
        assert model.json()["error"]["type"] == "authentication_error"
        listing = await client.get("/api/v1/sessions", headers={"authorization": f"Bearer {key}"})
        assert listing.status_code == 401, listing.text
    await api.wait_status(victim["id"], "ready")
    await api.stop(victim["id"])


async def test_a_warm_session_behaves_as_a_cold_one(
    api, pool_gateway, docker_client, fake_api
) -> None:
    free = await wait_for_pool(docker_client, pool_gateway, api, POOL_SIZE)
    before = await warm_starts(pool_gateway)
    session = await api.create()
    ready = await api.wait_status(session["id"], "ready", timeout=30)
    assert ready["container_id"] in free, "the session did not take a pooled container"
    assert await warm_starts(pool_gateway) == before + 1
    # The claim went through: the container now holds the session's identity (in files).
    files = await asyncio.to_thread(
        docker_client.containers.get(ready["container_id"]).exec_run,
        ["sh", "-c", "cat $HOME/.ccd/session-id"],
    )
    assert files.output.decode().strip() == session["id"]
    # Its stream, its chat and its bill, as for a cold session: the CLI's first model call
    # still uses the key it booted with, which the claim bound to this session.
    tag = marker()
    fake_api.on(tag, text(f"warm answer {tag}"))
    async with api.stream(session["id"]) as ws:
        reply = await api.chat(session["id"], f"hello {tag}", timeout=60)
        assert reply["result"]["result"] == f"warm answer {tag}"
        seen = await read_until(ws, lambda e: e["event"].get("type") == "result", timeout=30)
    kinds = [(e["event"].get("type"), e["event"].get("subtype")) for e in seen]
    assert ("system", "init") in kinds
    assert any(k == ("status", None) for k in kinds)
    # Its key, bound by the claim, bills this session, and only while it runs.
    key = (await asyncio.to_thread(environment, docker_client, ready["container_id"]))[
        "CCD_POOL_MODEL_KEY"
    ]
    direct = marker()
    fake_api.on(direct, text("direct"))
    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
        call = await client.post(
            "/model/v1/messages",
            headers={"x-api-key": key},
            json={
                "model": "claude-x",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": f"bound {direct}"}],
            },
        )
    assert call.status_code == 200, call.text
    async with asyncio.timeout(10):  # settlement follows the response by a moment
        while True:
            usage = (await api.http.get(f"/api/v1/sessions/{session['id']}/usage")).json()
            if usage["session"]["requests"] >= 2:
                break
            await asyncio.sleep(0.2)
    # A stop and a resume continue the same conversation (a cold start, same transcript).
    await api.stop(session["id"])
    async with httpx.AsyncClient(base_url=pool_gateway.url, timeout=30) as client:
        after_stop = await client.post(
            "/model/v1/messages",
            headers={"x-api-key": key},
            json={"model": "claude-x", "max_tokens": 5, "messages": []},
        )
    assert after_stop.status_code == 401, after_stop.text
    resumed = await api.http.post(f"/api/v1/sessions/{session['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    await api.wait_status(session["id"], "ready", timeout=60)
    again = marker()
    fake_api.on(again, text(f"resumed {again}"))
    second = await api.chat(session["id"], f"and now {again}", timeout=60)
    assert second["result"]["result"] == f"resumed {again}"
    history = json.dumps(fake_api.requests_for(again)[-1]["messages"])
    assert f"hello {tag}" in history, "the resumed CLI did not continue the conversation"
    await api.stop(session["id"])


async def test_concurrent_creates_never_share_a_container(api, pool_gateway, docker_client) -> None:
    await wait_for_pool(docker_client, pool_gateway, api, POOL_SIZE)
    created = await asyncio.gather(*(api.create() for _ in range(POOL_SIZE + 2)))
    ready = await asyncio.gather(*(api.wait_status(s["id"], "ready", timeout=90) for s in created))
    containers = [row["container_id"] for row in ready]
    assert len(set(containers)) == len(containers)
    await asyncio.gather(*(api.stop(s["id"]) for s in created))


async def test_the_pool_refills_and_the_reconciler_leaves_it_alone(
    api, pool_gateway, docker_client
) -> None:
    await wait_for_pool(docker_client, pool_gateway, api, POOL_SIZE)
    session = await api.create()
    await api.wait_status(session["id"], "ready")
    free = set(await wait_for_pool(docker_client, pool_gateway, api, POOL_SIZE))  # refilled
    await asyncio.sleep(3)  # three reconciliations (RECONCILE_INTERVAL=1)
    still = set(await wait_for_pool(docker_client, pool_gateway, api, POOL_SIZE))
    assert free <= still, "the reconciler removed pooled containers"
    await api.stop(session["id"])


async def test_a_session_with_its_own_cli_options_starts_cold(
    api, pool_gateway, docker_client
) -> None:
    free = await wait_for_pool(docker_client, pool_gateway, api, POOL_SIZE)
    session = await api.create(config={"append_system_prompt": "be brief"})
    ready = await api.wait_status(session["id"], "ready", timeout=60)
    assert ready["container_id"] not in free
    labels = docker_client.api.inspect_container(ready["container_id"])["Config"]["Labels"]
    assert POOL_LABEL not in labels
    await api.stop(session["id"])


async def test_pooled_containers_past_their_age_are_replaced(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path,
        SESSION_POOL_SIZE="1",
        SESSION_POOL_MAX_AGE="10",
    ) as gateway:
        client = Api(gateway.url, mint_token(gateway.jwt_secret, "recycler"))
        try:
            first = await wait_for_pool(docker_client, gateway, client, 1)
            async with asyncio.timeout(60):
                while True:
                    now = await wait_for_pool(docker_client, gateway, client, 1)
                    if set(now) != set(first):
                        break
                    await asyncio.sleep(0.5)
            with pytest.raises(docker.errors.NotFound):
                docker_client.api.inspect_container(first[0])
        finally:
            await client.aclose()


async def test_a_template_pool_serves_sessions_with_its_cli_options(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    """A further pool (SESSION_POOL_TEMPLATES) whose CLI runs with a model of its own: a
    session asking for that model takes one, and its CLI really uses it; a session with the
    default options finds no pool of its own and starts cold."""
    model = "claude-opus-4-5"
    templates = json.dumps({"opus": {"size": 1, "config": {"model": model}}})
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path,
        SESSION_POOL_SIZE="0",
        SESSION_POOL_TEMPLATES=templates,
    ) as gateway:
        client = Api(gateway.url, mint_token(gateway.jwt_secret, "templated"))
        try:
            free = await wait_for_pool(docker_client, gateway, client, 1)
            session = await client.create(config={"model": model, "timeout": 600})
            ready = await client.wait_status(session["id"], "ready", timeout=30)
            assert ready["container_id"] in free, "the session did not take the template's"
            tag = marker()
            fake_api.on(tag, text(f"opus says {tag}"))
            reply = await client.chat(session["id"], f"which model {tag}", timeout=60)
            assert reply["result"]["result"] == f"opus says {tag}"
            assert fake_api.requests_for(tag)[-1]["model"] == model
            plain = await client.create()
            cold = await client.wait_status(plain["id"], "ready", timeout=60)
            labels = docker_client.api.inspect_container(cold["container_id"])["Config"]["Labels"]
            assert POOL_LABEL not in labels
        finally:
            await client.aclose()
