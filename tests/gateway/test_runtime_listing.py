"""The runtime's listing of its containers against a real engine, while they come and go."""

from __future__ import annotations

import uuid
from typing import Any

import docker.errors
import pytest

from gateway.runtime.docker import DockerRuntime
from gateway.runtime.naming import LABEL_INSTANCE, LABEL_MANAGED
from tests.stack import SESSION_IMAGE

pytestmark = pytest.mark.docker


async def test_a_container_removed_while_listed_is_left_out(docker_client: Any) -> None:
    """The reconciler lists an instance's containers while stops remove them: one removed
    between the listing and its inspection is gone, not an error that ends the pass."""
    instance = f"list-{uuid.uuid4().hex[:8]}"
    labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: instance}
    kept = docker_client.containers.create(SESSION_IMAGE, labels=labels)
    doomed = docker_client.containers.create(SESSION_IMAGE, labels=labels)
    runtime = DockerRuntime(instance, helper_image=SESSION_IMAGE)
    inspect = runtime._client.api.inspect_container

    def removed_first(container_id: str) -> Any:
        if container_id == doomed.id:
            doomed.remove(force=True)  # a stop's removal, just before the inspection
        return inspect(container_id)

    runtime._client.api.inspect_container = removed_first
    try:
        listed = await runtime.list_managed()
        assert [state.id for state in listed] == [kept.id]
    finally:
        await runtime.close()
        kept.remove(force=True)
        with pytest.raises(docker.errors.NotFound):
            doomed.reload()


async def test_a_listed_running_container_is_described_as_its_inspection_says(
    docker_client: Any,
) -> None:
    """Running containers are described from the listing alone (not inspected one by one):
    what the reconciler and the warm pool read of them is what an inspection says."""
    instance = f"list-{uuid.uuid4().hex[:8]}"
    labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: instance, "cc-docker.session-id": "s1"}
    running = docker_client.containers.run(
        SESSION_IMAGE, ["sleep", "60"], entrypoint=[], labels=labels, detach=True
    )
    runtime = DockerRuntime(instance, helper_image=SESSION_IMAGE)
    try:
        (listed,) = await runtime.list_managed()
        assert listed == await runtime.inspect(running.id)
        assert listed.image_id.startswith("sha256:") and labels.items() <= listed.labels.items()
    finally:
        await runtime.close()
        running.remove(force=True)
