"""Stops never wait out a grace period for a container that is not in a turn.

The fault: a session stopped (or deleted) while its CLI was still booting used to sit out the
whole ``SESSION_STOP_GRACE`` and then be SIGKILLed, because the wrapper waited for the CLI's
answer to ``initialize`` after the CLI had already gone. Here the grace is long (30 s) and the
CLI boots slowly (a fifth of a CPU), so the old behaviour shows as exit code 137 (killed by the
engine); the wrapper ending on its own exits 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import docker.errors
import pytest

from tests.client import Api, mint_token
from tests.stack import Gateway, run_gateway

pytestmark = pytest.mark.docker

KILLED = 137  # 128 + SIGKILL: the engine killed the container after the grace period


@pytest.fixture(scope="module")
def slow_boot_gateway(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[Gateway]:
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path_factory.mktemp("stops"),
        SESSION_CPUS="0.2",
        SESSION_STOP_GRACE="30",
    ) as gateway:
        yield gateway


@pytest.fixture
async def api(slow_boot_gateway: Gateway) -> AsyncIterator[Api]:
    client = Api(slow_boot_gateway.url, mint_token(slow_boot_gateway.jwt_secret, "stopper"))
    yield client
    await client.aclose()


async def cli_booting(api: Api, docker_client: Any, session_id: str) -> dict[str, Any]:
    """Wait until the session's CLI process runs but has not answered its handshake."""
    async with asyncio.timeout(60):
        while True:
            row = await api.get(session_id)
            assert row["status"] == "starting", "the CLI was ready before the test could stop it"
            if row["container_id"]:
                try:
                    top = await asyncio.to_thread(docker_client.api.top, row["container_id"])
                except docker.errors.APIError:
                    top = {"Processes": []}  # created, not started yet
                if any("claude" in " ".join(p) for p in top.get("Processes") or []):
                    return row
            await asyncio.sleep(0.05)


async def test_a_session_stopped_while_its_cli_boots_exits_by_itself(api, docker_client) -> None:
    session = await api.create()
    await cli_booting(api, docker_client, session["id"])
    stopped = await api.stop(session["id"])
    assert stopped["status"] == "stopped"
    assert stopped["exit_code"] != KILLED, "the stop waited out the grace period"
    assert stopped["exit_code"] == 0


async def test_a_session_deleted_while_its_cli_boots_leaves_nothing(api, docker_client) -> None:
    session = await api.create()
    row = await cli_booting(api, docker_client, session["id"])
    response = await api.http.delete(f"/api/v1/sessions/{session['id']}")
    assert response.status_code == 204, response.text
    assert (await api.http.get(f"/api/v1/sessions/{session['id']}")).status_code == 404
    with pytest.raises(docker.errors.NotFound):
        await asyncio.to_thread(docker_client.api.inspect_container, row["container_id"])


async def test_a_ready_idle_session_exits_by_itself(api) -> None:
    session = await api.create()
    await api.wait_status(session["id"], "ready", timeout=120)
    stopped = await api.stop(session["id"])
    assert stopped["exit_code"] == 0
