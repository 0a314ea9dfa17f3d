"""Tenants stay apart: each test is an attack run from inside a real session container (the
real session image, started by the real gateway), or an inspection of that container on the
engine, never of the spec the gateway builds."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.client import Api, marker, mint_token
from tests.fake_anthropic import text
from tests.stack import run_gateway

pytestmark = pytest.mark.docker

# Run inside a session container with the wrapper's own Python (it has redis-py): every
# command an attacker would try with the Redis URL the container was given.
REDIS_ATTACK = """
import json, os, sys, redis
own, other = sys.argv[1], sys.argv[2]
url = os.environ["CCD_REDIS_URL"]
r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
attempts = {
    "read other out": ("XRANGE", f"ccd:session:{other}:out", "-", "+"),
    "read other in": ("XRANGE", f"ccd:session:{other}:in", "-", "+"),
    "inject other in": ("XADD", f"ccd:session:{other}:in", "*", "type", "prompt", "data", "{}"),
    "write other out": ("XADD", f"ccd:session:{other}:out", "*", "a", "b"),
    "read own out": ("XRANGE", f"ccd:session:{own}:out", "-", "+"),
    "delete own out": ("DEL", f"ccd:session:{own}:out"),
    "set own out": ("SET", f"ccd:session:{own}:out", "x"),
    "trim own out": ("XTRIM", f"ccd:session:{own}:out", "MAXLEN", "0"),
    "keys": ("KEYS", "*"),
    "scan": ("SCAN", "0"),
    "config": ("CONFIG", "GET", "*"),
    "acl list": ("ACL", "LIST"),
    "acl setuser": ("ACL", "SETUSER", "evil", "on", ">x", "~*", "+@all"),
    "flushall": ("FLUSHALL",),
    "flushdb": ("FLUSHDB",),
    "publish": ("PUBLISH", "ccd", "x"),
    "subscribe": ("SUBSCRIBE", "ccd"),
    "info": ("INFO",),
    "client list": ("CLIENT", "LIST"),
}
result = {}
for name, command in attempts.items():
    try:
        r.execute_command(*command)
        result[name] = "allowed"
    except redis.exceptions.NoPermissionError:
        result[name] = "refused"
    except Exception as exc:
        result[name] = f"{type(exc).__name__}: {exc}"
anonymous = redis.Redis.from_url(url.split("@")[0].split("//")[0] + "//" + url.split("@")[1])
try:
    anonymous.ping()
    result["no credentials"] = "allowed"
except redis.exceptions.AuthenticationError:
    result["no credentials"] = "refused"
except Exception as exc:
    result["no credentials"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(result))
"""

# Connections a session tries to open to another session and to what it must reach.
CONNECT_PROBE = """
import json, socket, sys
result = {}
for name, (host, port) in json.loads(sys.argv[1]).items():
    try:
        socket.create_connection((host, port), timeout=3).close()
        result[name] = "open"
    except OSError as exc:
        result[name] = type(exc).__name__
print(json.dumps(result))
"""

PRIVILEGE_PROBE = r"""
import json, os
def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        return True
    except OSError:
        return False
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({
    "uid": os.getuid(),
    "CapEff": status["CapEff"].strip(),
    "CapBnd": status["CapBnd"].strip(),
    "NoNewPrivs": status["NoNewPrivs"].strip(),
    "usr writable": writable("/usr/probe"),
    "etc writable": writable("/etc/probe"),
    "root writable": writable("/probe"),
    "tmp writable": writable("/tmp/probe"),
    "home writable": writable(os.path.expanduser("~/probe")),
    "workspace writable": writable("/workspace/.probe"),
    "docker socket": any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock")),
    "mounts": open("/proc/self/mounts").read(),
}))
"""


def run_in(docker_client: Any, container_id: str, argv: list[str]) -> str:
    code, output = docker_client.containers.get(container_id).exec_run(argv)
    assert code == 0, output
    return str(output.decode())


async def ready_session(api: Api, **body: Any) -> dict[str, Any]:
    session = await api.create(**body)
    return await api.wait_status(session["id"], "ready")


async def test_a_session_redis_user_reaches_only_its_own_streams(
    api_for, docker_client, infra, gateway
) -> None:
    victim_api, attacker_api = api_for(f"victim-{marker()}"), api_for(f"attacker-{marker()}")
    victim = await ready_session(victim_api)
    attacker = await ready_session(attacker_api)
    report = json.loads(
        run_in(
            docker_client,
            attacker["container_id"],
            ["/opt/ccd/bin/python", "-c", REDIS_ATTACK, attacker["id"], victim["id"]],
        )
    )
    assert report == {name: "refused" for name in report}, report
    # Its environment holds its own Redis user, never the gateway's credentials.
    environ = run_in(docker_client, attacker["container_id"], ["cat", "/proc/1/environ"])
    password = infra.redis_url.split("@")[0].rsplit(":", 1)[1]
    assert password not in environ
    assert f"ccd-session-{gateway.instance}-{attacker['id']}:" in environ
    # The victim's input stream holds nothing the attacker wrote.
    admin = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    try:
        inputs = await admin.xrange(f"ccd:session:{victim['id']}:in")
        assert inputs == []
        users = await admin.execute_command("ACL", "USERS")
        assert f"ccd-session-{gateway.instance}-{attacker['id']}" in users
        await attacker_api.stop(attacker["id"])
        # An ended session's user is gone, and with it every connection it had.
        users = await admin.execute_command("ACL", "USERS")
        assert f"ccd-session-{gateway.instance}-{attacker['id']}" not in users
    finally:
        await admin.aclose()
        await victim_api.stop(victim["id"])


async def test_the_container_is_hardened_on_the_engine(api_for, docker_client) -> None:
    alice = api_for(f"alice-{marker()}")
    session = await ready_session(alice)
    attrs = docker_client.api.inspect_container(session["container_id"])
    host = attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] > 0 and host["MemorySwap"] == host["Memory"]  # no swap
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["OomScoreAdj"] > 0
    assert host["Privileged"] is False
    assert host["LogConfig"]["Config"].get("max-size") and host["LogConfig"]["Config"].get(
        "max-file"
    )
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]}["nofile"] <= 65536
    assert attrs["Config"]["User"] == "10001:10001"
    assert set(host["Tmpfs"]) == {"/tmp", "/run", "/home/claude"}
    assert all("size=" in options for options in host["Tmpfs"].values())
    assert {m["Destination"] for m in attrs["Mounts"] if m["Type"] == "volume"} == {
        "/workspace",
        "/home/claude/.claude",
    }
    assert not [m for m in attrs["Mounts"] if m["Type"] == "bind"]  # no host path, no socket

    probe = json.loads(
        run_in(docker_client, session["container_id"], ["python3", "-c", PRIVILEGE_PROBE])
    )
    assert probe["uid"] != 0
    assert int(probe["CapEff"], 16) == 0 and int(probe["CapBnd"], 16) == 0
    assert probe["NoNewPrivs"] == "1"
    assert not probe["usr writable"] and not probe["etc writable"] and not probe["root writable"]
    assert probe["tmp writable"] and probe["home writable"] and probe["workspace writable"]
    assert probe["docker socket"] is False
    assert " / overlay ro," in probe["mounts"]
    await alice.stop(session["id"])


async def test_sessions_cannot_connect_to_each_other(api_for, docker_client, gateway) -> None:
    alice, mallory = api_for(f"alice-{marker()}"), api_for(f"mallory-{marker()}")
    target = await ready_session(alice)
    attacker = await ready_session(mallory)
    # The target listens on a port, as a dev server started by an agent would.
    docker_client.containers.get(target["container_id"]).exec_run(
        ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"], detach=True
    )
    target_attrs = docker_client.api.inspect_container(target["container_id"])
    (network,) = target_attrs["NetworkSettings"]["Networks"].values()
    target_name = target_attrs["Name"].lstrip("/")
    gateway_port = int(gateway.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 10
    while True:  # the listener is up (seen from inside the target itself)
        own = json.loads(
            run_in(
                docker_client,
                target["container_id"],
                ["python3", "-c", CONNECT_PROBE, json.dumps({"self": ["127.0.0.1", 8080]})],
            )
        )
        if own["self"] == "open" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert own["self"] == "open"
    targets = {
        "by address": [network["IPAddress"], 8080],
        "by name": [target_name, 8080],
        "gateway": ["ccd-host", gateway_port],
    }
    reached = json.loads(
        run_in(
            docker_client,
            attacker["container_id"],
            ["python3", "-c", CONNECT_PROBE, json.dumps(targets)],
        )
    )
    assert reached["by address"] != "open" and reached["by name"] != "open", reached
    assert reached["gateway"] == "open", reached
    await alice.stop(target["id"])
    await mallory.stop(attacker["id"])


async def test_the_gateway_makes_an_isolated_network_and_refuses_one_that_is_not(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    # Default (SESSION_NETWORK empty): the gateway makes ccd-<instance>-sessions itself.
    with run_gateway(infra, fake_api.base_url, s3_endpoint, tmp_path, SESSION_NETWORK="") as gw:
        network = docker_client.networks.get(f"ccd-{gw.instance}-sessions")
        assert network.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
        alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        try:
            tag = marker()
            fake_api.on(tag, text(f"works {tag}"))
            session = await ready_session(alice)
            reply = await alice.chat(session["id"], f"hello {tag}")
            assert reply["result"]["result"] == f"works {tag}"
            attrs = docker_client.api.inspect_container(session["container_id"])
            assert list(attrs["NetworkSettings"]["Networks"]) == [network.name]
            await alice.stop(session["id"])
        finally:
            await alice.aclose()
    # An operator's network that lets containers talk: the gateway does not start.
    open_network = docker_client.networks.create(f"ccd-open-{uuid.uuid4().hex[:8]}")
    try:
        with (
            pytest.raises(RuntimeError, match="enable_icc"),
            run_gateway(
                infra,
                fake_api.base_url,
                s3_endpoint,
                tmp_path,
                SESSION_NETWORK=open_network.name,
            ),
        ):
            pass
    finally:
        open_network.remove()


async def test_a_session_over_its_disk_limit_is_stopped(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path,
        SESSION_DISK_LIMIT="20m",
        DISK_CHECK_INTERVAL="1",
    ) as gw:
        alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        try:
            session = await ready_session(alice)
            # Half hidden in a directory the session made unreadable to itself, half in a
            # sparse file: neither half is over the limit alone, and du in the session (as the
            # session user, counting allocated blocks) would have seen neither.
            run_in(
                docker_client,
                session["container_id"],
                [
                    "sh",
                    "-c",
                    "mkdir /workspace/hide && head -c 12000000 /dev/urandom > /workspace/hide/big"
                    " && chmod 000 /workspace/hide && truncate -s 12000000 /workspace/sparse",
                ],
            )
            stopped = await alice.wait_status(session["id"], "stopped", "failed", timeout=30)
            assert stopped["status"] == "stopped"
            turns = await alice.http.get(f"/api/v1/sessions/{session['id']}")
            assert turns.status_code == 200
            async with alice.stream(session["id"], after="0") as ws:
                reason = None
                while reason is None:
                    envelope = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    event = envelope["event"]
                    if event.get("type") == "status" and event.get("status") == "stopping":
                        reason = event.get("reason", "")
            assert reason.startswith("disk_limit:"), reason
        finally:
            await alice.aclose()
