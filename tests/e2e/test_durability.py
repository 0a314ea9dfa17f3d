"""Nothing is lost: a restore that fails part-way never overwrites the stored workspace, the
reconciler saves before it removes, and a missing container is a loss said out loud, never
"nothing to save". Each test plays the fault against the real gateway, S3 server and engine."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.store.objects import ObjectStore
from tests.client import Api, marker, mint_token, read_until
from tests.stack import S3_ACCESS_KEY, S3_SECRET_KEY, Gateway, run_gateway

pytestmark = pytest.mark.docker

FILES = {"a.txt": b"alpha\n", "b.txt": b"bravo\n" * 1000, "c/d.txt": b"delta\n"}


def bucket(gateway: Gateway, endpoint: str) -> ObjectStore:
    return ObjectStore(
        endpoint,
        S3_ACCESS_KEY,
        S3_SECRET_KEY,
        gateway.env["S3_BUCKET"],
        secure=False,
        region="us-east-1",
    )


async def upload(api: Api, workspace: str, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        response = await api.http.put(f"/api/v1/workspaces/{workspace}/files/{path}", content=data)
        assert response.status_code == 201, response.text


async def stored_files(api: Api, workspace: str) -> dict[str, bytes]:
    listing = await api.http.get(f"/api/v1/workspaces/{workspace}/files")
    assert listing.status_code == 200, listing.text
    files = {}
    for entry in listing.json()["files"]:
        if entry["type"] == "file":
            got = await api.http.get(f"/api/v1/workspaces/{workspace}/files/{entry['path']}")
            files[entry["path"]] = got.content
    return files


def container_files(docker_client: Any, container_id: str) -> str:
    code, output = docker_client.containers.get(container_id).exec_run(
        ["sh", "-c", "cd /workspace && find . -type f | sort"]
    )
    assert code == 0, output
    return str(output.decode())


async def test_a_restore_that_loses_an_object_fails_and_changes_nothing(
    api_for, gateway, s3_endpoint, docker_client
) -> None:
    owner = f"alice-{marker()}"
    alice = api_for(owner)
    project = f"proj-{uuid.uuid4().hex[:8]}"
    await upload(alice, project, FILES)
    store = bucket(gateway, s3_endpoint)
    # One object is lost in the store (an operator's mistake, a broken disk).
    lost = f"{owner}/{project}/b.txt"
    with store.open(lost) as data:
        kept_bytes = data.read()
    store.delete_many([lost])

    response = await alice.http.post(
        "/api/v1/sessions", json={"workspace": {"type": "persistent", "id": project}}
    )
    assert response.status_code == 502, response.text  # the store lost what it should hold
    error = response.json()["error"]
    assert error["code"] == "store_error"
    failed = await alice.get(error["session_id"])
    assert failed["status"] == "failed"
    assert "could not restore its workspace" in failed["failure_reason"]
    # The manifest still names every file; the others' bytes are untouched.
    listing = (await alice.http.get(f"/api/v1/workspaces/{project}/files")).json()["files"]
    assert {e["path"] for e in listing if e["type"] == "file"} == set(FILES)
    workspace = (await alice.http.get(f"/api/v1/workspaces/{project}")).json()
    assert workspace["sessions"] == []  # free again
    # Put the lost object back: the next session gets everything.
    store.put_stream(lost, io.BytesIO(kept_bytes), len(kept_bytes))
    session = await alice.create(workspace={"type": "persistent", "id": project})
    await alice.wait_status(session["id"], "ready")
    assert container_files(docker_client, session["container_id"]).split() == [
        "./a.txt",
        "./b.txt",
        "./c/d.txt",
    ]
    await alice.stop(session["id"])
    assert await stored_files(alice, project) == FILES


async def test_a_restore_cut_off_from_storage_fails_and_changes_nothing(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    from tests.tcp_proxy import tcp_proxy

    with (
        tcp_proxy(s3_endpoint) as proxy,
        run_gateway(infra, fake_api.base_url, f"127.0.0.1:{proxy.port}", tmp_path) as gw,
    ):
        alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        project = f"proj-{uuid.uuid4().hex[:8]}"
        try:
            await upload(alice, project, FILES)
            proxy.down()
            response = await alice.http.post(
                "/api/v1/sessions", json={"workspace": {"type": "persistent", "id": project}}
            )
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "store_unavailable"
            failed = await alice.get(response.json()["error"]["session_id"])
            assert failed["status"] == "failed" and failed["workspace"]["unsaved"] is False
            proxy.up()
            assert await stored_files(alice, project) == FILES
            session = await alice.create(workspace={"type": "persistent", "id": project})
            await alice.wait_status(session["id"], "ready")
            assert len(container_files(docker_client, session["container_id"]).split()) == 3
            await alice.stop(session["id"])
        finally:
            await alice.aclose()


async def test_the_reconciler_saves_an_orphaned_container_before_removing_it(
    api_for, infra, docker_client
) -> None:
    alice = api_for(f"alice-{marker()}")
    project = f"proj-{uuid.uuid4().hex[:8]}"
    session = await alice.create(workspace={"type": "persistent", "id": project})
    await alice.wait_status(session["id"], "ready")
    code, output = docker_client.containers.get(session["container_id"]).exec_run(
        ["sh", "-c", "echo 'late work' > /workspace/late.txt"]
    )
    assert code == 0, output
    # A gateway recorded the failure and died before it saved or removed the container.
    engine = create_async_engine(infra.database_url)
    try:
        async with engine.begin() as db:
            await db.execute(
                sql(
                    "UPDATE sessions SET status = 'failed', failure_reason = 'crash' WHERE id = :id"
                ),
                {"id": session["id"]},
            )
    finally:
        await engine.dispose()
    deadline = asyncio.get_running_loop().time() + 30
    while docker_client.containers.list(all=True, filters={"id": session["container_id"]}):
        assert asyncio.get_running_loop().time() < deadline, "the orphan was never removed"
        await asyncio.sleep(0.5)
    got = await alice.http.get(f"/api/v1/workspaces/{project}/files/late.txt")
    assert got.status_code == 200 and got.content == b"late work\n"


async def test_a_missing_container_is_reported_as_lost_not_as_nothing_to_save(
    api_for, docker_client
) -> None:
    alice = api_for(f"alice-{marker()}")
    project = f"proj-{uuid.uuid4().hex[:8]}"
    await upload(alice, project, {"kept.txt": b"kept\n"})
    session = await alice.create(workspace={"type": "persistent", "id": project})
    await alice.wait_status(session["id"], "ready")
    async with alice.stream(session["id"], after="$") as ws:
        docker_client.api.remove_container(session["container_id"], force=True, v=True)
        events = await read_until(
            ws,
            lambda e: e["event"].get("type") == "status" and e["event"].get("status") == "failed",
            timeout=30,
        )
    failures = [e["event"] for e in events if e["event"].get("type") == "workspace_save_failed"]
    assert failures and failures[0]["kept_container"] is False, events
    assert "no such container" in failures[0]["error"].lower(), failures
    assert failures[0]["error"].startswith("ContainerMissing")
    # The last saved state is intact.
    got = await alice.http.get(f"/api/v1/workspaces/{project}/files/kept.txt")
    assert got.content == b"kept\n"
    assert json.loads(json.dumps(await alice.get(session["id"])))["workspace"]["unsaved"] is False
