"""The README quick start, walked against the real docker-compose.yml brought up by
scripts/setup.sh with two gateway replicas behind the load balancer. Here no registry is
reachable, so the stack runs on the stand-in images (PostgreSQL, Redis, an S3 server in MinIO's
place, HAProxy from Debian's package) that tests/standins builds; the compose file, the HAProxy
configuration, the gateway image and the session image are the real ones (built under tags of
this run's own, so a developer's images are left alone)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from gateway.store.objects import ObjectStore
from tests.client import Api, is_claude, is_status, marker, read_until
from tests.fake_anthropic import FakeAnthropic, text, tool_use
from tests.stack import POSTGRES_IMAGE, REDIS_IMAGE, ROOT, free_port, require_image

pytestmark = pytest.mark.docker

MINIO_STANDIN = os.environ.get("TEST_MINIO_IMAGE", "cc-docker/standin-minio:latest")
LB_STANDIN = os.environ.get("TEST_LB_IMAGE", "cc-docker/standin-haproxy:2.6")
REPLICAS = 2


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("Docker Compose is missing (the compose plugin or docker-compose)")


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    url: str
    token: str
    setup_output: str


@pytest.fixture(scope="module")
def quickstart_api(infra) -> Iterator[FakeAnthropic]:
    # Bound to every host address: a container on any bridge network reaches the host at a
    # bridge's gateway address, here the test network's.
    with FakeAnthropic(host="0.0.0.0") as fake:
        port = fake.base_url.rsplit(":", 1)[1]
        fake.public_url = f"http://{infra.gateway_ip}:{port}"  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="module")
def stack(docker_client, quickstart_api) -> Iterator[Stack]:
    for image in (POSTGRES_IMAGE, REDIS_IMAGE, MINIO_STANDIN, LB_STANDIN):
        require_image(docker_client, image, "run scripts/build-standins.sh")
    project = f"ccdtest{secrets.token_hex(3)}"
    # Images of this run's own: concurrent runs (and a developer's stack) keep theirs.
    images = {"SESSION_IMAGE": f"cc-docker/session:{project}"}
    images["GATEWAY_IMAGE"] = f"cc-docker/gateway:{project}"
    port = free_port()
    subnet = secrets.randbelow(200) + 20  # apart from a developer's own stack (10.213.0.0/24)
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "POSTGRES_IMAGE": POSTGRES_IMAGE,
        "REDIS_IMAGE": REDIS_IMAGE,
        "MINIO_IMAGE": MINIO_STANDIN,
        "LB_IMAGE": LB_STANDIN,
        "GATEWAY_REPLICAS": str(REPLICAS),
        **images,
        "GATEWAY_PORT": str(port),
        "MINIO_API_PORT": str(free_port()),
        "MINIO_CONSOLE_PORT": str(free_port()),
        "SESSIONS_NETWORK": f"{project}-sessions",
        "SESSIONS_SUBNET": f"10.213.{subnet}.0/24",
        "SESSIONS_HOST_ADDRESS": f"10.213.{subnet}.1",
        "REDIS_SESSIONS_PORT": str(free_port()),
        "INSTANCE_NAME": project,
        "ANTHROPIC_BASE_URL": quickstart_api.public_url,  # type: ignore[attr-defined]
        "ANTHROPIC_API_KEY": "sk-test-not-a-real-key",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "CCD_USER": "alice",
    }
    for name in ("JWT_SECRET", "DATABASE_URL", "REDIS_URL"):  # nothing from a developer's shell
        env.pop(name, None)
    setup = subprocess.run(
        [str(ROOT / "scripts/setup.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    try:
        assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
        token = setup.stdout.strip().splitlines()[-1]
        yield Stack(project, env, f"http://127.0.0.1:{port}", token, setup.stdout)
    finally:
        subprocess.run(
            [str(ROOT / "scripts/setup.sh"), "down", "-v"],
            env=env,
            capture_output=True,
            timeout=300,
        )
        for image in images.values():  # the tag only: the layers stay cached
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(image, noprune=True)


def _leftovers(client: docker.DockerClient, stack: Stack) -> list[str]:
    label = f"com.docker.compose.project={stack.project}"
    found = [c.name for c in client.containers.list(all=True, filters={"label": label})]
    found += [
        c.name
        for c in client.containers.list(
            all=True, filters={"label": f"cc-docker.instance={stack.project}"}
        )
    ]
    found += [n.name for n in client.networks.list(filters={"label": label})]
    found += [n.name for n in client.networks.list(names=[stack.env["SESSIONS_NETWORK"]])]
    found += [v.name for v in client.volumes.list(filters={"label": label})]
    found += [
        v.name
        for v in client.volumes.list(filters={"label": f"cc-docker.instance={stack.project}"})
    ]
    return found


def _service(client: docker.DockerClient, stack: Stack, service: str) -> list[Any]:
    label = f"com.docker.compose.project={stack.project}"
    selector = f"com.docker.compose.service={service}"
    return list(client.containers.list(filters={"label": [label, selector]}))


async def _read_to_close(ws: Any, into: list[dict[str, Any]]) -> int | None:
    """Every envelope until the server closes the socket; the close code."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            into.append(json.loads(await ws.recv()))
    return None if ws.close_code is None else int(ws.close_code)


def _ids(envelopes: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in envelopes if e["id"] is not None]  # notices carry no cursor


async def _until_healthy(container: Any, timeout: float = 120) -> None:
    async with asyncio.timeout(timeout):
        while True:
            container.reload()
            if container.attrs["State"].get("Health", {}).get("Status") == "healthy":
                return
            await asyncio.sleep(1)


async def test_replicas_behind_the_load_balancer(stack, quickstart_api, docker_client) -> None:
    """Two gateways behind HAProxy: requests spread over both; one told to stop (SIGTERM,
    as `docker stop` and a rolling upgrade do) drains: requests through the balancer all
    succeed meanwhile, the WebSocket it held closes with 1001 and resumes through the
    balancer on the other replica with nothing lost or repeated, and its session runs on."""
    replicas = _service(docker_client, stack, "gateway")
    assert len(replicas) == REPLICAS, [c.name for c in replicas]
    tag = marker("lb")
    quickstart_api.on(tag, text(f"answer {tag}"))
    api = Api(stack.url, stack.token)
    try:
        session = await api.create()
        sid = session["id"]
        async with Api.connect(api.ws_url(sid, token=True), {}) as ws:
            await read_until(ws, is_status("ready"), timeout=120)
        for _ in range(20):
            await api.get(sid)
        for replica in replicas:  # each answered some of them
            assert f"GET /api/v1/sessions/{sid} HTTP" in replica.logs().decode(errors="replace")

        got: list[list[dict[str, Any]]] = [[], []]
        async with api.stream(sid, after="0") as one, api.stream(sid, after="0") as two:
            sockets = [one, two]  # fewest connections first: one on each replica
            for ws, into in zip(sockets, got, strict=True):
                into += await read_until(ws, is_status("ready"))
            victim = replicas[0]
            stopping = asyncio.create_task(asyncio.to_thread(victim.stop, timeout=90))
            statuses: list[int] = []

            async def keep_asking() -> None:
                while not stopping.done():
                    statuses.append((await api.http.get(f"/api/v1/sessions/{sid}")).status_code)
                    await asyncio.sleep(0.1)

            asking = asyncio.create_task(keep_asking())
            readers = [
                asyncio.create_task(_read_to_close(ws, into))
                for ws, into in zip(sockets, got, strict=True)
            ]
            done, pending = await asyncio.wait(
                readers, timeout=90, return_when=asyncio.FIRST_COMPLETED
            )
            assert len(done) == 1, "no stream (or both) closed while a replica stopped"
            cut = readers.index(done.pop())
            kept = 1 - cut
            assert readers[cut].result() == 1001
            await asyncio.wait_for(stopping, 90)
            await asyncio.wait_for(asking, 30)
            for reader in pending:
                reader.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            assert statuses and set(statuses) == {200}, statuses
            # the balancer took it out on its /ready while it drained, not once it was gone
            (balancer,) = _service(docker_client, stack, "lb")
            lb_log = balancer.logs().decode(errors="replace")
            assert "is DOWN, reason: Layer7 wrong status, code: 503" in lb_log, lb_log[-3000:]
            victim.reload()
            assert victim.status == "exited", victim.status
            assert victim.attrs["State"]["ExitCode"] == 0, victim.logs(tail=30)
            container = docker_client.containers.get(session["container_id"])
            assert container.status == "running"

            # the cut stream resumes through the balancer, on the replica left
            async with api.stream(sid, after=_ids(got[cut])[-1]) as resumed_ws:
                reply = await api.chat(sid, f"after {tag}", timeout=120)
                resumed = await read_until(resumed_ws, is_claude("result"))
            got[kept] += await read_until(sockets[kept], is_claude("result"))
        assert reply["result"]["result"] == f"answer {tag}"
        async with api.stream(sid, after="0") as ws:
            everything = await read_until(ws, is_claude("result"))
        assert _ids(got[cut]) + _ids(resumed) == _ids(everything)
        assert _ids(got[kept]) == _ids(everything)

        victim.start()  # back to two replicas for the tour
        await _until_healthy(victim)
        await api.stop(sid)
    finally:
        await api.aclose()


async def test_readme_quick_start_against_the_compose_stack(
    stack, quickstart_api, docker_client
) -> None:
    assert "MinIO console" in stack.setup_output and "token" in stack.setup_output
    # the README's token command works too
    minted = subprocess.run(
        [str(ROOT / "scripts/setup.sh"), "token", "bob"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert minted.count(".") == 2

    tag = f"qs-{secrets.token_hex(4)}"
    quickstart_api.on(tag, text(f"hello from the stack {tag}"))
    api = Api(stack.url, stack.token)
    try:
        session = await api.create(
            prompt=f"say hello {tag}", workspace={"type": "persistent", "id": "tour"}
        )
        async with Api.connect(api.ws_url(session["id"], token=True), {}) as ws:
            events = await read_until(ws, is_claude("result"), timeout=120)
        assert ("claude", "system") in [(e["source"], e["event"]["type"]) for e in events]
        assert events[-1]["event"]["result"] == f"hello from the stack {tag}"

        file_tag = f"qs-{secrets.token_hex(4)}"
        quickstart_api.on(
            file_tag,
            tool_use("Bash", {"command": "echo 'print(55)' > fib.py && python3 fib.py"}),
            text("ran it"),
        )
        reply = await api.chat(session["id"], f"write and run {file_tag}", timeout=120)
        assert reply["result"]["result"] == "ran it"

        await _check_session_network(docker_client, stack, session["container_id"])

        stopped = await api.stop(session["id"])
        assert stopped["status"] == "stopped" and stopped["workspace"]["unsaved"] is False
        # the workspace is in MinIO (here its stand-in), one object per file
        store = ObjectStore(
            f"127.0.0.1:{stack.env['MINIO_API_PORT']}",
            "ccd-minio",
            "ccd-minio-local-password",
            "workspaces",
            secure=False,
            region="us-east-1",
        )
        with store.open("alice/tour/fib.py") as data:
            assert data.read() == b"print(55)\n"
        console = httpx.get(f"http://127.0.0.1:{stack.env['MINIO_CONSOLE_PORT']}/", timeout=10)
        assert console.status_code == 200 and "fib.py" in console.text
    finally:
        await api.aclose()

    down = subprocess.run(
        [str(ROOT / "scripts/setup.sh"), "down", "-v"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert down.returncode == 0, down.stderr[-2000:]
    assert _leftovers(docker_client, stack) == []


async def _check_session_network(
    client: docker.DockerClient, stack: Stack, container_id: str
) -> None:
    """From inside a session container: Redis and the gateway answer through the host
    (ccd-host), PostgreSQL and MinIO cannot even be connected to (by name, by address, or
    through the host), and Redis refuses a connection without credentials."""
    label = f"com.docker.compose.project={stack.project}"

    def address(service: str) -> str:
        (container,) = client.containers.list(
            filters={"label": [label, f"com.docker.compose.service={service}"]}
        )
        networks = container.attrs["NetworkSettings"]["Networks"]
        # On the sessions network when it is there: the closest a session can get.
        chosen = networks.get(stack.env["SESSIONS_NETWORK"]) or next(iter(networks.values()))
        return str(chosen["IPAddress"])

    targets = {
        "redis": ("ccd-host", int(stack.env["REDIS_SESSIONS_PORT"])),
        "gateway": ("ccd-host", int(stack.env["GATEWAY_PORT"])),
        "redis-ip": (address("redis"), 6379),
        "gateway-name": ("gateway", 8000),
        "lb-name": ("lb", 8000),
        "postgres-name": ("postgres", 5432),
        "postgres-ip": (address("postgres"), 5432),
        "minio-name": ("minio", 9000),
        "minio-ip": (address("minio"), 9000),
        "minio-host": ("ccd-host", int(stack.env["MINIO_API_PORT"])),
    }
    probe = (
        "import json, socket, sys\n"
        "result = {}\n"
        "for name, (host, port) in json.loads(sys.argv[1]).items():\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=3).close()\n"
        "        result[name] = 'open'\n"
        "    except OSError as exc:\n"
        "        result[name] = type(exc).__name__\n"
        "print(json.dumps(result))\n"
    )
    code, output = client.containers.get(container_id).exec_run(
        ["python3", "-c", probe, json.dumps(targets)]
    )
    assert code == 0, output
    reached = json.loads(output.decode())
    assert reached["redis"] == "open" and reached["gateway"] == "open", reached
    blocked = ("redis-ip", "gateway-name", "lb-name", "postgres-name", "postgres-ip", "minio-name")
    for name in (*blocked, "minio-ip", "minio-host"):
        assert reached[name] != "open", reached
    anonymous = (
        "import socket\n"
        f"s = socket.create_connection(('ccd-host', {stack.env['REDIS_SESSIONS_PORT']}), 3)\n"
        "s.sendall(b'PING\\r\\n'); print(s.recv(200).decode())\n"
    )
    code, output = client.containers.get(container_id).exec_run(["python3", "-c", anonymous])
    assert code == 0 and output.decode().startswith("-NOAUTH"), output
