"""An idle session's CLI is frozen (SIGSTOP) and costs no CPU; what needs it thaws it.

The real CLI in real containers, with ``SESSION_IDLE_FREEZE`` at 1 s. The faults this defends
against: a thawed CLI that cannot reach the model any more (its kept-alive connection to the
gateway was closed while it was stopped; the test gateways' CLIs do not retry), a frozen CLI
whose SIGTERM waits out the grace (30 s here, the wrapper's and the engine's), and a
freeze that takes a CLI in the middle of a turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.client import Api, marker, mint_token
from tests.fake_anthropic import slow_text, text
from tests.pool import wait_for_pool
from tests.stack import Gateway, run_gateway

pytestmark = pytest.mark.docker

KILLED = 137  # 128 + SIGKILL
GRACE = 30  # seconds: the engine's and the wrapper's grace between SIGTERM and SIGKILL
FREEZE = 1.0  # SESSION_IDLE_FREEZE here
KEEP_ALIVE = 5.0  # seconds uvicorn keeps an idle connection open (its default)


@pytest.fixture(scope="module")
def freezing_gateway(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[Gateway]:
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path_factory.mktemp("idle-freeze"),
        SESSION_IDLE_FREEZE=str(FREEZE),
        SESSION_STOP_GRACE=str(GRACE),
        # The wrapper's own grace between SIGTERM and SIGKILL for its CLI, long too: a frozen
        # CLI that never saw its SIGTERM would hold the stop that long.
        SESSION_EXTRA_ENV=f"CCD_TERMINATE_GRACE={GRACE}",
    ) as gateway:
        yield gateway


@pytest.fixture
async def api(freezing_gateway: Gateway) -> AsyncIterator[Api]:
    client = Api(freezing_gateway.url, mint_token(freezing_gateway.jwt_secret, marker("idle")))
    yield client
    await client.aclose()


async def container_cli_state(docker_client: Any, container_id: str) -> str:
    """The CLI process's state as ``ps`` shows it (``T``: stopped)."""
    top = await asyncio.to_thread(docker_client.api.top, container_id, "-eo pid,stat,args")
    (state,) = [stat for _, stat, args in top["Processes"] if args.startswith("claude ")]
    return str(state)


async def cli_state(api: Api, docker_client: Any, session_id: str) -> str:
    container_id = (await api.get(session_id))["container_id"]
    return await container_cli_state(docker_client, container_id)


async def frozen_within(
    docker_client: Any, container_id: str, seconds: float = FREEZE + 10
) -> None:
    began = time.monotonic()
    while not (await container_cli_state(docker_client, container_id)).startswith("T"):
        assert time.monotonic() - began < seconds, "the idle CLI was never frozen"
        await asyncio.sleep(0.2)


async def session_frozen(api: Api, docker_client: Any, session_id: str) -> None:
    await frozen_within(docker_client, (await api.get(session_id))["container_id"])


async def test_an_idle_cli_is_frozen_and_a_prompt_thaws_it(api, docker_client, fake_api) -> None:
    first, second = marker(), marker()
    fake_api.on(first, text(f"first {first}"))
    fake_api.on(second, text(f"second {second}"))
    session = await api.create(prompt=f"say {first}")
    sid = session["id"]
    await api.wait_status(sid, "ready")
    await session_frozen(api, docker_client, sid)
    # Stopped longer than the gateway keeps its connections: the thawed CLI's next model call
    # must not fail on the connection the gateway closed meanwhile.
    await asyncio.sleep(KEEP_ALIVE + 2)
    reply = await api.chat(sid, f"now {second}")
    assert reply["result"]["result"] == f"second {second}"
    assert len(fake_api.requests_for(second)) == 1
    await session_frozen(api, docker_client, sid)
    turns = (await api.http.get(f"/api/v1/sessions/{sid}/turns")).json()["turns"]
    assert [t["status"] for t in turns] == ["completed", "completed"]
    await api.stop(sid)


async def test_a_turn_longer_than_the_freeze_is_never_frozen(api, docker_client, fake_api) -> None:
    """Idle means no turn: a turn that streams for several times ``SESSION_IDLE_FREEZE`` runs
    to its end unstopped."""
    tag = marker()
    words = [f"w{i} " for i in range(8)]
    fake_api.on(tag, slow_text(words, delay=0.5))
    session = await api.create()
    sid = session["id"]
    await api.wait_status(sid, "ready")
    chat = asyncio.create_task(api.chat(sid, f"slowly {tag}"))
    states = []
    while not chat.done():
        states.append(await cli_state(api, docker_client, sid))
        await asyncio.sleep(0.2)
    assert (await chat)["result"]["result"] == "".join(words)
    assert not any(state.startswith("T") for state in states), states
    await api.stop(sid)


async def test_a_frozen_cli_stops_at_once(api, docker_client) -> None:
    session = await api.create()
    sid = session["id"]
    await api.wait_status(sid, "ready")
    await session_frozen(api, docker_client, sid)
    began = time.monotonic()
    stopped = await api.stop(sid)
    assert stopped["exit_code"] != KILLED, "the stop waited out the engine's grace"
    assert stopped["exit_code"] == 0
    assert time.monotonic() - began < GRACE / 3, "the stop waited out the wrapper's grace"


@pytest.fixture(scope="module")
def freezing_pool_gateway(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[Gateway]:
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path_factory.mktemp("idle-freeze-pool"),
        SESSION_IDLE_FREEZE=str(FREEZE),
        SESSION_POOL_SIZE="1",
    ) as gateway:
        yield gateway


async def test_a_pooled_cli_waits_frozen_and_its_claim_runs_a_turn(
    freezing_pool_gateway, docker_client, fake_api
) -> None:
    """A pooled container's CLI is frozen until its first prompt; the claim binds it to its
    session all the same (its model key, read through its apiKeyHelper, changes meanwhile)."""
    gateway = freezing_pool_gateway
    api = Api(gateway.url, mint_token(gateway.jwt_secret, marker("pooled")))
    try:
        waiting = (await wait_for_pool(docker_client, gateway, api, 1))[0]
        await frozen_within(docker_client, waiting)
        tag = marker()
        fake_api.on(tag, text(f"warm {tag}"))
        session = await api.create()
        sid = session["id"]
        await api.wait_status(sid, "ready")
        assert (await api.get(sid))["container_id"] == waiting
        reply = await api.chat(sid, f"hello {tag}")
        assert reply["result"]["result"] == f"warm {tag}"
        await api.stop(sid)
    finally:
        await api.aclose()
