"""A session's model access ends everywhere the moment the session ends, although every replica
keeps what it looked up about a caller between calls (gateway/model/callers.py). Real gateway
processes sharing one PostgreSQL, the real CLI in a real container."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import create_async_engine

from tests.client import Api, marker, mint_token
from tests.e2e.test_model_access import cli_model_key, messages_body, session_token
from tests.stack import run_gateway, run_replica

pytestmark = pytest.mark.docker


async def count_tokens(url: str, key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await http.post(
            "/model/v1/messages/count_tokens", json=messages_body("x"), headers={"x-api-key": key}
        )


async def test_a_session_stopped_through_one_replica_is_refused_by_another_that_kept_it(
    infra, fake_api, s3_endpoint, tmp_path
) -> None:
    """Replica B admitted the session's calls a moment ago (and kept the answer); the session
    is stopped through replica A. B's very next call from it is refused."""
    with run_gateway(infra, fake_api.base_url, s3_endpoint, tmp_path) as first:  # noqa: SIM117
        with run_replica(first, infra, fake_api.base_url, s3_endpoint, tmp_path) as second:
            alice = Api(first.url, mint_token(first.jwt_secret, f"alice-{marker()}"))
            try:
                session = await alice.create()
                await alice.wait_status(session["id"], "ready")
                token = await session_token(alice, session["id"])
                for _ in range(3):  # kept by both replicas
                    for replica in (first, second):
                        assert (await count_tokens(replica.url, token)).status_code == 200
                await alice.stop(session["id"])
                refused = await count_tokens(second.url, token)
                assert refused.status_code == 401, refused.text
                assert "stopped" in refused.json()["error"]["message"]
                assert (await count_tokens(first.url, token)).status_code == 401
            finally:
                await alice.aclose()


async def test_a_replica_that_missed_a_change_while_deaf_keeps_nothing_it_knew(
    api_for, gateway, infra, docker_client
) -> None:
    """The replica's listening connection is cut, and the session is started again (its run
    changes) before the replica can listen again, so no notification reaches it. The CLI's key
    of the old run, which the replica admitted and kept a moment before, is refused."""
    alice = api_for(f"alice-{marker()}")
    session = await alice.create()
    ready = await alice.wait_status(session["id"], "ready")
    key = cli_model_key(docker_client, ready["container_id"])
    for _ in range(3):
        assert (await count_tokens(gateway.url, key)).status_code == 200
    engine = create_async_engine(infra.database_url)
    try:
        async with engine.begin() as db:
            cut = await db.scalar(
                sql(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 5000) FROM "
                    "pg_stat_activity WHERE application_name = 'ccd-listener') AS cut"
                )
            )
            # As a resume would: a new run of the same session (in this transaction, so it
            # commits while no replica listens).
            await db.execute(
                sql("UPDATE sessions SET started_at = now() WHERE id = :id"), {"id": session["id"]}
            )
    finally:
        await engine.dispose()
    assert cut >= 1
    refused = await count_tokens(gateway.url, key)
    assert refused.status_code == 401, refused.text
    assert "started again" in refused.json()["error"]["message"]
    await alice.stop(session["id"])
