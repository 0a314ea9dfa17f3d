"""Periodic saves: a workspace nothing touched is not archived again, and whatever changes it
(a background process between turns too) is saved by the next round. Real engine, real CLI,
real PostgreSQL and S3."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.runtime import RuntimeFailure
from gateway.runtime.docker import DockerRuntime
from gateway.store import layout
from gateway.store.objects import ObjectStore
from tests.client import Api, marker, mint_token
from tests.e2e.test_metrics import METRICS_TOKEN, scrape, value
from tests.e2e.test_workspaces import bucket_of, exec_in, keys
from tests.stack import SESSION_IMAGE, Gateway, run_gateway

pytestmark = pytest.mark.docker

SESSION_USER = "10001:10001"
SAVES = "ccd_workspace_periodic_saves_total"


@pytest.fixture
def sandbox(docker_client: Any) -> Iterator[Any]:
    """A container of the session image, idle, with a workspace its user owns."""
    container = docker_client.containers.run(
        SESSION_IMAGE,
        ["sh", "-c", "mkdir -p /tmp/ws/src && echo one > /tmp/ws/src/a.txt && sleep 600"],
        entrypoint=[],
        user=SESSION_USER,
        detach=True,
    )
    try:
        exec_in(docker_client, container.id, "until [ -e /tmp/ws/src/a.txt ]; do sleep 0.1; done")
        yield container
    finally:
        container.remove(force=True)


CHANGES = {
    "a write that keeps size and mtime": "touch -r src/a.txt /tmp/t && echo two > src/a.txt"
    " && touch -r /tmp/t src/a.txt",
    "a new file": "echo new > src/b.txt",
    "a removal": "rm src/b.txt",
    "a mode change": "chmod 600 src/a.txt",
    "a rename": "mv src/a.txt src/c.txt",
    "an empty directory": "mkdir empty",
    "a symlink": "ln -s src/c.txt link",
}


async def test_the_workspace_digest_moves_with_every_kind_of_change(
    docker_client: Any, sandbox: Any
) -> None:
    runtime = DockerRuntime(f"digest-{uuid.uuid4().hex[:8]}", helper_image=SESSION_IMAGE)
    try:
        before = await runtime.tree_digest(sandbox.id, "/tmp/ws")
        assert await runtime.tree_digest(sandbox.id, "/tmp/ws") == before  # nothing changed
        for change, script in CHANGES.items():
            exec_in(docker_client, sandbox.id, f"cd /tmp/ws && {script}")
            after = await runtime.tree_digest(sandbox.id, "/tmp/ws")
            assert after != before, change
            before = after
        # What it cannot read, it cannot vouch for: no digest (the caller saves).
        exec_in(docker_client, sandbox.id, "mkdir /tmp/ws/hide && chmod 000 /tmp/ws/hide")
        with pytest.raises(RuntimeFailure):
            await runtime.tree_digest(sandbox.id, "/tmp/ws")
    finally:
        await runtime.close()


@pytest.fixture(scope="module")
def autosaving(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[Gateway]:
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path_factory.mktemp("autosaving"),
        WORKSPACE_SNAPSHOT_INTERVAL="1",
        METRICS_TOKEN=METRICS_TOKEN,
    ) as gw:
        yield gw


async def saved_count(api: Api, workspace: str) -> int:
    response = await api.http.get(f"/api/v1/workspaces/{workspace}")
    assert response.status_code == 200, response.text
    return int(response.json()["save_count"])


async def test_an_untouched_workspace_is_not_saved_again_and_a_background_change_is(
    autosaving: Gateway, s3_endpoint: str, docker_client: Any
) -> None:
    owner = marker("autosave")
    api = Api(autosaving.url, mint_token(autosaving.jwt_secret, owner))
    store: ObjectStore = bucket_of(autosaving, s3_endpoint)
    project = f"proj-{uuid.uuid4().hex[:8]}"
    try:
        session = await api.create(workspace={"type": "persistent", "id": project})
        session = await api.wait_status(session["id"], "ready")

        async def rounds_pass(count: int) -> dict[str, float]:
            """Wait until ``count`` more periodic checks of this gateway have ended."""
            start = scrape(autosaving.url)
            for _ in range(300):
                now = scrape(autosaving.url)
                done = sum(
                    value(now, SAVES, outcome=o) - value(start, SAVES, outcome=o)
                    for o in ("saved", "unchanged", "failed")
                )
                if done >= count:
                    return {
                        o: value(now, SAVES, outcome=o) - value(start, SAVES, outcome=o)
                        for o in ("saved", "unchanged", "failed")
                    }
                await asyncio.sleep(0.2)
            raise AssertionError("no periodic saves ran")

        await rounds_pass(1)  # the first round saves what the restore left
        saved = await saved_count(api, project)

        outcomes = await rounds_pass(3)
        assert outcomes == {"saved": 0, "unchanged": 3, "failed": 0}
        assert await saved_count(api, project) == saved

        # A process the agent left running writes between turns: no turn, no request.
        exec_in(docker_client, session["container_id"], "echo late > /workspace/late.txt")
        for _ in range(100):
            if "late.txt" in keys(store, layout.workspace_prefix(owner, project)):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the background change was never saved")
        assert await saved_count(api, project) == saved + 1
    finally:
        await api.aclose()
