"""The warm pool's containers as the engine shows them, for the tests that watch a pool."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.client import Api
from tests.stack import Gateway

POOL_LABEL = "cc-docker.pool-id"


def pooled(docker_client: Any, gateway: Gateway) -> list[Any]:
    """The gateway's running pooled containers (claimed ones included: they keep the label)."""
    return docker_client.containers.list(
        filters={"label": [f"cc-docker.instance={gateway.instance}", POOL_LABEL]}
    )


async def wait_for_pool(docker_client: Any, gateway: Gateway, api: Api, count: int) -> list[str]:
    """Container ids of ``count`` pooled containers no session of ``api``'s holds, once
    there are."""
    async with asyncio.timeout(90):
        while True:
            listed = await asyncio.to_thread(pooled, docker_client, gateway)
            held = {s["container_id"] for s in await sessions_of(api)}
            free = [c.id for c in listed if c.id not in held]
            if len(free) >= count:
                return free
            await asyncio.sleep(0.2)


async def sessions_of(api: Api) -> list[dict[str, Any]]:
    return (await api.http.get("/api/v1/sessions", params={"limit": 100})).json()["sessions"]
