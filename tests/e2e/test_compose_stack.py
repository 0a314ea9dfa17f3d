"""The README quick start, walked against the real docker-compose.yml brought up by
scripts/setup.sh. Here no registry is reachable, so the stack runs on the stand-in images
(PostgreSQL, Redis, an S3 server in MinIO's place) that tests/standins builds; the compose file,
the gateway image and the session image are the real ones."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import httpx
import pytest

from gateway.store.objects import ObjectStore
from tests.client import Api, is_claude, read_until
from tests.fake_anthropic import FakeAnthropic, text, tool_use
from tests.stack import POSTGRES_IMAGE, REDIS_IMAGE, ROOT, free_port, require_image

pytestmark = pytest.mark.docker

MINIO_STANDIN = os.environ.get("TEST_MINIO_IMAGE", "cc-docker/standin-minio:latest")


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
    for image in (POSTGRES_IMAGE, REDIS_IMAGE, MINIO_STANDIN):
        require_image(docker_client, image, "run scripts/build-standins.sh")
    project = f"ccdtest{secrets.token_hex(3)}"
    port = free_port()
    subnet = secrets.randbelow(200) + 20  # apart from a developer's own stack (10.213.0.0/24)
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "POSTGRES_IMAGE": POSTGRES_IMAGE,
        "REDIS_IMAGE": REDIS_IMAGE,
        "MINIO_IMAGE": MINIO_STANDIN,
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
    blocked = ("redis-ip", "gateway-name", "postgres-name", "postgres-ip", "minio-name")
    for name in (*blocked, "minio-ip", "minio-host"):
        assert reached[name] != "open", reached
    anonymous = (
        "import socket\n"
        f"s = socket.create_connection(('ccd-host', {stack.env['REDIS_SESSIONS_PORT']}), 3)\n"
        "s.sendall(b'PING\\r\\n'); print(s.recv(200).decode())\n"
    )
    code, output = client.containers.get(container_id).exec_run(["python3", "-c", anonymous])
    assert code == 0 and output.decode().startswith("-NOAUTH"), output
