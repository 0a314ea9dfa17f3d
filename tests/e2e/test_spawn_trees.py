"""Spawn trees over the REST API: inheritance, parent events, limits, tokens, subtree stops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.client import Api, is_status, marker, mint_token, read_until
from tests.fake_anthropic import all_text, slow_text, text, tool_use
from tests.stack import Gateway, run_gateway

pytestmark = pytest.mark.docker


def is_gateway(kind: str):
    return lambda e: e["source"] == "gateway" and e["event"].get("type") == kind


async def spawn(api: Api, parent: str, prompt: str, expect: int = 201, **body) -> dict:
    response = await api.http.post(
        f"/api/v1/sessions/{parent}/spawn", json={"prompt": prompt, **body}
    )
    assert response.status_code == expect, response.text
    return dict(response.json())


async def session_token(api: Api, session_id: str) -> str:
    response = await api.http.post(f"/api/v1/sessions/{session_id}/token")
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def containers_of(docker_client, session_ids) -> list:
    found = []
    for sid in session_ids:
        found += docker_client.containers.list(
            all=True, filters={"label": f"cc-docker.session-id={sid}"}
        )
    return found


async def test_spawn_inherits_config_and_reports_to_the_parent(api_for, fake_api) -> None:
    alice = api_for("alice")
    tag = marker("t")
    fake_api.on(tag, text(f"child says {tag}"))
    root = await alice.create(config={"model": "root-model", "append_system_prompt": "be terse"})
    async with alice.stream(root["id"]) as ws:
        await read_until(ws, is_status("ready"))
        child = await spawn(alice, root["id"], f"do {tag}", config={"max_turns": 3})
        spawned = await read_until(ws, is_gateway("child_spawned"))
        finished = await read_until(ws, is_gateway("child_finished"), timeout=60)
    assert (child["parent_id"], child["root_id"], child["depth"]) == (root["id"], root["id"], 1)
    assert child["config"] == {
        "model": "root-model",
        "append_system_prompt": "be terse",
        "max_turns": 3,
    }
    assert spawned[-1]["event"]["child_id"] == child["id"]
    event = finished[-1]["event"]
    assert event["child_id"] == child["id"]
    assert event["result"] == f"child says {tag}"
    assert event["status"] == "completed"
    # the child really ran with the inherited model
    assert {r["model"] for r in fake_api.requests_for(tag)} == {"root-model"}
    children = (await alice.http.get(f"/api/v1/sessions/{root['id']}/children")).json()
    assert [c["id"] for c in children["sessions"]] == [child["id"]]
    waited = (
        await alice.http.post(f"/api/v1/sessions/{child['id']}/wait", json={"timeout": 30})
    ).json()
    assert waited["result"] == f"child says {tag}"
    assert waited["session"]["status"] == "ready"
    await alice.stop(root["id"])


async def test_wait_times_out_and_chat_can_return_at_once(api_for, fake_api) -> None:
    alice = api_for("alice")
    tag = marker("t")
    fake_api.on(tag, slow_text(["a ", "b ", "c"], delay=1.5))
    root = await alice.create()
    await alice.wait_status(root["id"], "ready")
    accepted = await alice.http.post(
        f"/api/v1/sessions/{root['id']}/chat", json={"prompt": f"slow {tag}", "wait": False}
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["turn"]["status"] == "running"
    timed_out = await alice.http.post(f"/api/v1/sessions/{root['id']}/wait", json={"timeout": 0.5})
    assert timed_out.status_code == 504
    assert timed_out.json()["error"]["code"] == "wait_timeout"
    done = await alice.http.post(f"/api/v1/sessions/{root['id']}/wait", json={"timeout": 30})
    assert done.status_code == 200
    assert done.json()["result"] == "a b c"
    await alice.stop(root["id"])


async def test_stopping_the_root_stops_the_whole_tree(api_for, fake_api, docker_client) -> None:
    alice = api_for("alice")
    tag = marker("t")
    fake_api.on(tag, text("ok"))
    root = await alice.create()
    child = await spawn(alice, root["id"], f"level one {tag}")
    grandchild = await spawn(alice, child["id"], f"level two {tag}")
    assert grandchild["depth"] == 2 and grandchild["root_id"] == root["id"]
    ids = [root["id"], child["id"], grandchild["id"]]
    for sid in ids:
        await alice.wait_status(sid, "ready", "busy")
    tree = (await alice.http.get(f"/api/v1/sessions/{root['id']}/tree")).json()
    assert tree["children"][0]["id"] == child["id"]
    assert tree["children"][0]["children"][0]["id"] == grandchild["id"]
    assert len(containers_of(docker_client, ids)) == 3

    stopped = await alice.stop(root["id"])
    assert stopped["status"] == "stopped"
    sessions = [await alice.get(sid) for sid in ids]
    assert [s["status"] for s in sessions] == ["stopped"] * 3
    # deepest first
    assert sessions[2]["stopped_at"] <= sessions[1]["stopped_at"] <= sessions[0]["stopped_at"]
    assert containers_of(docker_client, ids) == []  # the engine agrees, not only the database

    response = await alice.http.delete(f"/api/v1/sessions/{root['id']}")
    assert response.status_code == 204
    for sid in ids:
        assert (await alice.http.get(f"/api/v1/sessions/{sid}")).status_code == 404


async def test_a_failed_parent_takes_its_children_down(api_for, fake_api, docker_client) -> None:
    alice = api_for("alice")
    tag = marker("t")
    fake_api.on(tag, text("ok"))
    root = await alice.create()
    child = await spawn(alice, root["id"], f"child {tag}")
    await alice.wait_status(child["id"], "ready")
    async with alice.stream(root["id"], after="$") as ws:
        docker_client.containers.get(child["container_id"]).kill()
        failed = await read_until(ws, is_gateway("child_failed"), timeout=30)
    assert failed[-1]["event"]["child_id"] == child["id"]
    assert "137" in failed[-1]["event"]["reason"]

    other = await spawn(alice, root["id"], f"second child {tag}")
    await alice.wait_status(other["id"], "ready")
    docker_client.containers.get(root["container_id"]).kill()
    orphan = await alice.wait_status(other["id"], "stopped", timeout=30)
    assert orphan["status"] == "stopped"
    assert containers_of(docker_client, [other["id"]]) == []


async def test_capability_tokens_reach_only_their_own_subtree(
    api_for, fake_api, docker_client, gateway
) -> None:
    alice, mallory = api_for("alice"), api_for("mallory")
    tag = marker("t")
    fake_api.on(tag, text("ok"))
    root = await alice.create()
    child = await spawn(alice, root["id"], f"child {tag}")
    sibling = await spawn(alice, root["id"], f"sibling {tag}")
    grandchild = await spawn(alice, child["id"], f"grandchild {tag}")
    foreign = await mallory.create()
    await alice.wait_status(child["id"], "ready", "busy")

    # the token the container itself was given works as well as a minted one
    env = docker_client.containers.get(child["container_id"]).attrs["Config"]["Env"]
    container_token = next(e.split("=", 1)[1] for e in env if e.startswith("CCD_SESSION_TOKEN="))
    for token in (container_token, await session_token(alice, child["id"])):
        agent = Api(gateway.url, token)
        try:
            assert (await agent.get(child["id"]))["id"] == child["id"]
            assert (await agent.get(grandchild["id"]))["id"] == grandchild["id"]
            own = await agent.http.post(f"/api/v1/sessions/{child['id']}/wait", json={"timeout": 1})
            assert own.status_code == 409 and own.json()["error"]["code"] == "wait_on_self"
            for other in (root, sibling, foreign):
                for method, path in (("GET", ""), ("POST", "/stop"), ("POST", "/token")):
                    response = await agent.http.request(
                        method, f"/api/v1/sessions/{other['id']}{path}"
                    )
                    assert response.status_code == 404, (other["id"], path, response.text)
                refused = await agent.http.post(
                    f"/api/v1/sessions/{other['id']}/spawn", json={"prompt": "x"}
                )
                assert refused.status_code == 404
            for method, path in (
                ("GET", "/api/v1/sessions"),
                ("POST", "/api/v1/sessions"),
                ("DELETE", f"/api/v1/sessions/{grandchild['id']}"),
            ):
                response = await agent.http.request(method, path, json={})
                assert response.status_code == 403, (method, path, response.text)
                assert response.json()["error"]["code"] == "session_token_not_allowed"
            # a session token cannot pass for a user token of the same owner, nor the reverse
            forged = mint_token(
                gateway.jwt_secret, "alice", aud="cc-docker:session", sid=child["id"]
            )
            response = await agent.http.get(
                f"/api/v1/sessions/{child['id']}", headers={"Authorization": f"Bearer {forged}"}
            )
            assert response.status_code == 401
        finally:
            await agent.aclose()

    agent = Api(gateway.url, container_token)
    try:
        await alice.stop(child["id"])
        response = await agent.http.get(f"/api/v1/sessions/{child['id']}")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "token_revoked"
    finally:
        await agent.aclose()
    await alice.stop(root["id"])
    await mallory.stop(foreign["id"])


# -- limits, on a gateway of their own with small limits ------------------------------------------

LIMITS = {
    "MAX_SPAWN_DEPTH": "2",
    "MAX_CHILDREN_PER_SESSION": "5",
    "MAX_SESSIONS_PER_TREE": "8",
    "MAX_SESSIONS_PER_OWNER": "10",
}


@pytest.fixture(scope="module")
def limited_gateway(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[Gateway]:
    with run_gateway(
        infra, fake_api.base_url, s3_endpoint, tmp_path_factory.mktemp("limited"), **LIMITS
    ) as gw:
        yield gw


@pytest.fixture
async def limited(limited_gateway) -> AsyncIterator[Api]:
    api = Api(limited_gateway.url, mint_token(limited_gateway.jwt_secret, f"o-{marker('t')}"))
    yield api
    await api.aclose()


async def test_limits_are_refused_with_their_own_codes(limited, fake_api, docker_client) -> None:
    tag = marker("t")
    fake_api.on(tag, text("ok"))
    root = await limited.create()

    # 20 concurrent spawns against MAX_CHILDREN_PER_SESSION=5 create exactly 5
    responses = await asyncio.gather(
        *(
            limited.http.post(
                f"/api/v1/sessions/{root['id']}/spawn", json={"prompt": f"fan {i} {tag}"}
            )
            for i in range(20)
        )
    )
    created = [r.json() for r in responses if r.status_code == 201]
    refused = [r.json()["error"] for r in responses if r.status_code == 403]
    assert len(created) == 5 and len(refused) == 15
    assert {e["code"] for e in refused} == {"children_limit_reached"}
    assert "MAX_CHILDREN_PER_SESSION is 5" in refused[0]["message"]
    children = (await limited.http.get(f"/api/v1/sessions/{root['id']}/children")).json()
    assert len(children["sessions"]) == 5
    # Starts are admitted a few at a time per engine (SESSION_START_CONCURRENCY): all five
    # get their container, the last ones once a slot frees.
    for child in created:
        await limited.wait_status(child["id"], "ready", timeout=90)
    assert len(containers_of(docker_client, [c["id"] for c in created])) == 5

    # depth: root (0) -> child (1) -> grandchild (2); a child of that would be at depth 3
    grandchild = await spawn(limited, created[0]["id"], f"deeper {tag}")
    deeper = await spawn(limited, grandchild["id"], f"too deep {tag}", expect=403)
    assert deeper["error"]["code"] == "spawn_depth_exceeded"
    assert "MAX_SPAWN_DEPTH is 2" in deeper["error"]["message"]

    # the tree now holds 7; one more fills MAX_SESSIONS_PER_TREE=8, the next is refused
    await spawn(limited, created[1]["id"], f"eighth {tag}")
    full = await spawn(limited, created[2]["id"], f"ninth {tag}", expect=403)
    assert full["error"]["code"] == "tree_limit_reached"
    assert "MAX_SESSIONS_PER_TREE is 8" in full["error"]["message"]

    # 8 running; MAX_SESSIONS_PER_OWNER=10 leaves room for two more roots
    extra = [await limited.create(), await limited.create()]
    over = await limited.http.post("/api/v1/sessions", json={})
    assert over.status_code == 429, over.text  # a capacity limit: a retry can clear it
    assert over.headers["retry-after"] == "5"
    assert over.json()["error"]["code"] == "owner_limit_reached"
    assert "MAX_SESSIONS_PER_OWNER is 10" in over.json()["error"]["message"]

    await limited.stop(root["id"])
    for session in extra:
        await limited.stop(session["id"])
    # stopped sessions no longer count against the owner
    await limited.stop((await limited.create())["id"])


# -- the agent's own tools: the real CLI calls the `sessions` MCP server and ccd-agent -----------


def last_tool_result(body: dict) -> str:
    """The text of the newest tool_result the CLI sent to the model."""
    for message in reversed(body["messages"]):
        content = message.get("content")
        if message["role"] != "user" or not isinstance(content, list):
            continue
        for block in content:
            if block.get("type") == "tool_result":
                inner = block.get("content")
                if isinstance(inner, str):
                    return inner
                return "".join(part.get("text", "") for part in inner or [])
    raise AssertionError("no tool_result in the request")


def child_id_from(body: dict) -> str:
    return str(json.loads(last_tool_result(body))["session_id"])


async def test_root_spawns_a_child_and_gets_its_result(api_for, fake_api) -> None:
    alice = api_for("alice")
    root_tag, child_tag = marker("t"), marker("t")
    fake_api.on(child_tag, text(f"the child computed {child_tag}-42"))
    fake_api.on(
        root_tag,
        tool_use("mcp__sessions__spawn_session", {"prompt": f"compute {child_tag}"}),
        lambda body: tool_use(
            "mcp__sessions__wait_for_session",
            {"session_id": child_id_from(body), "timeout_s": 120},
        ),
        lambda body: text(f"root reports: {json.loads(last_tool_result(body))['result']}"),
    )
    root = await alice.create()
    reply = await alice.chat(root["id"], f"delegate {root_tag}", timeout=180)
    assert reply["result"]["result"] == f"root reports: the child computed {child_tag}-42"
    # the wait's tool_result carried the child's own result text
    assert f"the child computed {child_tag}-42" in last_tool_result(
        fake_api.requests_for(root_tag)[-1]
    )
    (child,) = (await alice.http.get(f"/api/v1/sessions/{root['id']}/children")).json()["sessions"]
    assert child["parent_id"] == root["id"] and child["depth"] == 1
    await alice.stop(root["id"])


async def test_a_runaway_chain_stops_at_max_spawn_depth(limited, fake_api) -> None:
    tag = marker("t")

    def after_spawn(body: dict):
        outcome = last_tool_result(body)
        if "spawn_depth_exceeded" in outcome:
            return text(f"limit reached: {outcome}")
        return tool_use(
            "mcp__sessions__wait_for_session",
            {"session_id": json.loads(outcome)["session_id"], "timeout_s": 120},
        )

    fake_api.on(
        tag,
        tool_use("mcp__sessions__spawn_session", {"prompt": f"recurse {tag}"}),
        after_spawn,
        lambda body: text(f"chain done below me: {json.loads(last_tool_result(body))['result']}"),
    )
    root = await limited.create()
    reply = await limited.chat(root["id"], f"recurse {tag}", timeout=240)
    tree = (await limited.http.get(f"/api/v1/sessions/{root['id']}/tree")).json()
    depths = []
    node = tree
    while node:
        depths.append(node["depth"])
        node = node["children"][0] if node["children"] else None
    assert depths == [0, 1, 2]  # exactly MAX_SPAWN_DEPTH=2 levels below the root
    refusals = [
        all_text(body)
        for body in fake_api.requests_for(tag)
        if "spawn_depth_exceeded" in all_text(body)
    ]
    assert refusals and "MAX_SPAWN_DEPTH is 2" in refusals[0]
    assert reply["result"]["result"].startswith("chain done below me: chain done below me:")
    assert "limit reached" in reply["result"]["result"]
    await limited.stop(root["id"])


async def test_ccd_agent_spawns_from_bash(api_for, fake_api) -> None:
    alice = api_for("alice")
    tag, child_tag = marker("t"), marker("t")
    fake_api.on(child_tag, text("bash child done"))
    fake_api.on(
        tag,
        tool_use("Bash", {"command": f"ccd-agent spawn 'from bash {child_tag}'"}),
        lambda body: text(f"agent said {json.loads(last_tool_result(body))['id']}"),
    )
    root = await alice.create()
    reply = await alice.chat(root["id"], f"use the shell {tag}", timeout=120)
    child_id = reply["result"]["result"].removeprefix("agent said ")
    child = await alice.get(child_id)
    assert child["parent_id"] == root["id"]
    waited = (
        await alice.http.post(f"/api/v1/sessions/{child_id}/wait", json={"timeout": 60})
    ).json()
    assert waited["result"] == "bash child done"
    await alice.stop(root["id"])
