"""Retried and replayed creates, and what a session's own token may ask for, against the real
gateway, PostgreSQL and Docker: duplicate requests racing, a key reused for another request or
by another owner, expired keys, and a session reaching for its owner's workspaces."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from gateway.services.idempotency import purge_expired
from tests.client import Api, marker

pytestmark = pytest.mark.docker

KEY = "Idempotency-Key"
REPLAYED = "idempotent-replayed"


def containers_of_owner(docker_client: Any, gateway: Any, owner: str) -> list[Any]:
    return list(
        docker_client.containers.list(
            all=True,
            filters={
                "label": [f"cc-docker.owner={owner}", f"cc-docker.instance={gateway.instance}"]
            },
        )
    )


async def sessions_of(api: Api) -> list[dict[str, Any]]:
    response = await api.http.get("/api/v1/sessions")
    assert response.status_code == 200, response.text
    return list(response.json()["sessions"])


async def test_five_identical_creates_at_once_make_one_session(
    api_for, gateway, docker_client
) -> None:
    owner = f"idem-{marker()}"
    alice = api_for(owner)
    key = f"create-{uuid.uuid4()}"
    body = {"config": {"max_turns": 3}}
    answers = await asyncio.gather(
        *(alice.http.post("/api/v1/sessions", json=body, headers={KEY: key}) for _ in range(5))
    )
    assert [a.status_code for a in answers] == [201] * 5, [a.text for a in answers]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    assert sorted(a.headers.get(REPLAYED, "-") for a in answers) == ["-"] + ["true"] * 4
    session_id = ids.pop()
    assert [s["id"] for s in await sessions_of(alice)] == [session_id]
    assert len(containers_of_owner(docker_client, gateway, owner)) == 1

    # a later retry answers the session as it is now, still 201
    await alice.wait_status(session_id, "ready")
    later = await alice.http.post("/api/v1/sessions", json=body, headers={KEY: key})
    assert (later.status_code, later.headers.get(REPLAYED)) == (201, "true")
    assert (later.json()["id"], later.json()["status"]) == (session_id, "ready")
    # the same request spelled differently (defaults written out) is the same request
    spelled = {"config": {"max_turns": 3}, "workspace": {"type": "ephemeral"}, "prompt": None}
    same = await alice.http.post("/api/v1/sessions", json=spelled, headers={KEY: key})
    assert (same.status_code, same.json()["id"]) == (201, session_id)

    # the same key for another request is refused, and creates nothing
    other = await alice.http.post(
        "/api/v1/sessions", json={"config": {"max_turns": 4}}, headers={KEY: key}
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(await sessions_of(alice)) == 1

    # keys are per owner: bob's request with alice's key and body is bob's own
    bob_owner = f"idem-{marker()}"
    bob = api_for(bob_owner)
    bobs = await bob.http.post("/api/v1/sessions", json=body, headers={KEY: key})
    assert bobs.status_code == 201 and REPLAYED not in bobs.headers
    assert bobs.json()["id"] != session_id and bobs.json()["owner"] == bob_owner
    await alice.stop(session_id)
    await bob.stop(bobs.json()["id"])


async def test_malformed_keys_are_refused_before_anything_is_made(api_for) -> None:
    alice = api_for(f"idem-{marker()}")
    bad: list[str | bytes] = ["", "x" * 256, "tab\tinside", "caf\xe9".encode("latin-1")]
    for key in bad:
        response = await alice.http.post("/api/v1/sessions", json={}, headers={KEY: key})
        assert response.status_code == 422, (key, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_idempotency_key" and error["message"]
    assert await sessions_of(alice) == []


async def test_a_retried_spawn_makes_one_child_per_parent(api_for, gateway, fake_api) -> None:
    alice = api_for(f"idem-{marker()}")
    tag = marker("t")
    root = await alice.create()
    key = {KEY: f"spawn-{uuid.uuid4()}"}
    body = {"prompt": f"child {tag}"}
    spawn_url = f"/api/v1/sessions/{root['id']}/spawn"
    first, second = await asyncio.gather(
        alice.http.post(spawn_url, json=body, headers=key),
        alice.http.post(spawn_url, json=body, headers=key),
    )
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    child_id = first.json()["id"]
    assert second.json()["id"] == child_id
    assert sorted(a.headers.get(REPLAYED, "-") for a in (first, second)) == ["-", "true"]
    children = (await alice.http.get(f"/api/v1/sessions/{root['id']}/children")).json()
    assert [c["id"] for c in children["sessions"]] == [child_id]
    # the key is scoped to its parent: under the child it makes a grandchild
    under_child = await alice.http.post(
        f"/api/v1/sessions/{child_id}/spawn", json=body, headers=key
    )
    assert under_child.status_code == 201 and REPLAYED not in under_child.headers
    assert under_child.json()["parent_id"] == child_id
    # a retry after the tree has stopped still answers the child (not 409 "not running")
    await alice.stop(root["id"])
    late = await alice.http.post(spawn_url, json=body, headers=key)
    assert (late.status_code, late.headers.get(REPLAYED)) == (201, "true")
    assert (late.json()["id"], late.json()["status"]) == (child_id, "stopped")


async def test_an_expired_key_makes_a_new_session_and_is_purged(api_for, infra) -> None:
    alice = api_for(f"idem-{marker()}")
    key = f"old-{uuid.uuid4()}"
    first = await alice.create()  # without a key
    keyed = await alice.http.post("/api/v1/sessions", json={}, headers={KEY: key})
    assert keyed.status_code == 201
    engine = create_async_engine(infra.database_url)
    age = text(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = :k"
    )
    try:
        async with engine.begin() as db:
            assert (await db.execute(age, {"k": key})).rowcount == 1
        again = await alice.http.post("/api/v1/sessions", json={}, headers={KEY: key})
        assert again.status_code == 201 and REPLAYED not in again.headers
        assert again.json()["id"] != keyed.json()["id"]
        async with engine.begin() as db:
            await db.execute(age, {"k": key})
        async with engine.begin() as db:
            assert await purge_expired(AsyncSession(bind=db), 24 * 3600) >= 1
        async with engine.connect() as db:
            left = await db.scalar(
                text("SELECT count(*) FROM idempotency_keys WHERE key = :k"), {"k": key}
            )
        assert left == 0
    finally:
        await engine.dispose()
    for session in (first, keyed.json(), again.json()):
        await alice.stop(session["id"])


# -- a session's own token -------------------------------------------------------------------------


async def test_a_session_token_spawns_only_with_workspaces_its_tree_holds(api_for, gateway) -> None:
    owner = f"cap-{marker()}"
    alice = api_for(owner)
    shared, private, fresh = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("proj", "own", "new"))
    put = await alice.http.put(f"/api/v1/workspaces/{private}/files/secret.txt", content=b"s3cr3t")
    assert put.status_code == 201, put.text
    root = await alice.create(workspace={"type": "persistent", "id": shared})
    minted = await alice.http.post(f"/api/v1/sessions/{root['id']}/token")
    as_root = Api(gateway.url, minted.json()["token"])
    spawn_url = f"/api/v1/sessions/{root['id']}/spawn"
    try:
        for workspace in [
            {"type": "persistent", "id": shared},  # writing what the tree only holds
            {"type": "persistent", "id": private, "read_only": True},  # not the tree's
            {"type": "persistent", "id": fresh},  # creating one
            {"type": "persistent", "id": fresh, "read_only": True},
        ]:
            refused = await as_root.http.post(
                spawn_url, json={"prompt": "x", "workspace": workspace}
            )
            assert refused.status_code == 403, (workspace, refused.text)
            assert refused.json()["error"]["code"] == "workspace_not_allowed"
        names = {w["id"] for w in (await alice.http.get("/api/v1/workspaces")).json()["workspaces"]}
        assert fresh not in names and {shared, private} <= names

        # a read-only copy of what its tree holds is allowed
        child = await as_root.http.post(
            spawn_url,
            json={
                "prompt": "x",
                "workspace": {"type": "persistent", "id": shared, "read_only": True},
            },
        )
        assert child.status_code == 201, child.text
        assert child.json()["workspace"]["read_only"] is True

        # no /workspaces route of its owner answers it
        attempts: list[tuple[str, str, bytes | None]] = [
            ("GET", "/api/v1/workspaces", None),
            ("GET", f"/api/v1/workspaces/{private}", None),
            ("GET", f"/api/v1/workspaces/{private}/files", None),
            ("GET", f"/api/v1/workspaces/{private}/files/secret.txt", None),
            ("GET", f"/api/v1/workspaces/{private}/archive", None),
            ("PUT", f"/api/v1/workspaces/{private}/files/secret.txt", b"overwritten"),
            ("POST", f"/api/v1/workspaces/{private}/archive", b"not a tar"),
            ("DELETE", f"/api/v1/workspaces/{private}/files/secret.txt", None),
            ("DELETE", f"/api/v1/workspaces/{private}", None),
        ]
        for method, path, content in attempts:
            response = await as_root.http.request(method, path, content=content)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "session_token_not_allowed"
        kept = await alice.http.get(f"/api/v1/workspaces/{private}/files/secret.txt")
        assert (kept.status_code, kept.content) == (200, b"s3cr3t")
    finally:
        await as_root.aclose()
        await alice.stop(root["id"])
