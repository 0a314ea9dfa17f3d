"""Many gateways, one fleet: start admission shared by replicas, and work one replica accepted
finished by another after it died. Real gateway processes, PostgreSQL, Redis, the engine and
the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import create_async_engine

from tests.client import Api, marker, mint_token
from tests.fake_anthropic import text
from tests.stack import run_gateway, run_replica

pytestmark = pytest.mark.docker


async def admitted_now(database_url: str, instance: str) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as db:
            count = await db.scalar(
                sql(
                    "SELECT count(*) FROM sessions WHERE instance = :i AND status = 'starting'"
                    " AND admitted_at IS NOT NULL"
                ),
                {"i": instance},
            )
    finally:
        await engine.dispose()
    return int(count or 0)


async def test_a_burst_waits_for_start_slots_and_every_session_gets_ready(
    infra, fake_api, s3_endpoint, tmp_path
) -> None:
    with run_gateway(
        infra, fake_api.base_url, s3_endpoint, tmp_path, SESSION_START_CONCURRENCY="2"
    ) as gw:
        alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        try:
            tag = marker()
            fake_api.on(tag, text(f"burst {tag}"))
            created = await asyncio.gather(*(alice.create(prompt=f"go {tag}") for _ in range(6)))
            queued = [s for s in created if s["container_id"] is None]
            assert queued, "with 2 slots, some of 6 creates at once must wait"
            peak = 0
            while True:
                peak = max(peak, await admitted_now(infra.database_url, gw.instance))
                states = [(await alice.get(s["id"]))["status"] for s in created]
                if all(state in ("ready", "failed") for state in states):
                    break
                await asyncio.sleep(0.1)
            assert states == ["ready"] * 6
            assert peak <= 2
            for session in created:
                turns = (await alice.http.get(f"/api/v1/sessions/{session['id']}/turns")).json()
                assert [t["result_text"] for t in turns["turns"]] == [f"burst {tag}"]
                await alice.stop(session["id"])
        finally:
            await alice.aclose()


async def test_a_queued_start_is_finished_by_another_replica(
    infra, fake_api, s3_endpoint, tmp_path
) -> None:
    """Replica A accepts a create that must wait for a start slot, then is killed; replica B
    (same instance, same database) starts it once the slot frees."""
    common: dict[str, Any] = {"SESSION_START_CONCURRENCY": "1", "LEASE_TTL": "3"}
    with run_gateway(infra, fake_api.base_url, s3_endpoint, tmp_path, **common) as first:  # noqa: SIM117
        with run_replica(
            first, infra, fake_api.base_url, s3_endpoint, tmp_path, **common
        ) as second:
            token = mint_token(first.jwt_secret, "alice")
            via_first, via_second = Api(first.url, token), Api(second.url, token)
            try:
                running = await via_first.create()
                waiting = await via_first.create()
                assert waiting["container_id"] is None  # the one slot is taken
                assert first.process is not None
                os.kill(first.process.pid, signal.SIGKILL)
                first.process.wait(10)
                ready = await via_second.wait_status(waiting["id"], "ready", timeout=90)
                assert ready["container_id"]
                assert (await via_second.get(running["id"]))["status"] == "ready"
                for session in (running, waiting):
                    await via_second.stop(session["id"])
            finally:
                await via_first.aclose()
                await via_second.aclose()
