"""SESSION_EGRESS, attacked from inside real session containers started by the real gateway:
what a session can open a connection to, and what it can resolve. Under ``none`` only the
gateway and Redis at ``ccd-host``; under ``open`` whatever the host routes. Plus the rules
themselves on the engine's host: applied again idempotently, removed with their network, and a
gateway that cannot enforce ``none`` does not start."""

from __future__ import annotations

import contextlib
import io
import json
import random
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.runtime import OPEN_EGRESS, EgressPolicy
from gateway.runtime.docker import DockerRuntime
from tests.client import Api, marker, mint_token
from tests.fake_anthropic import text
from tests.stack import SESSION_IMAGE, remove_instance_containers, run_gateway

pytestmark = pytest.mark.docker

# Run in a session container: a TCP connection to each target, and a lookup of each name.
EGRESS_PROBE = """
import json, socket, sys
targets, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
result = {}
for name, (host, port) in targets.items():
    try:
        socket.create_connection((host, port), timeout=3).close()
        result[name] = "open"
    except OSError as exc:
        result[name] = type(exc).__name__
for name in names:
    try:
        result[name] = "resolved " + socket.gethostbyname(name)
    except OSError as exc:
        result[name] = type(exc).__name__
print(json.dumps(result))
"""

# A name no session network knows: only an upstream resolver could answer it.
EXTERNAL_NAME = "example.com"

# Our chains on the engine's host, whichever iptables backend holds them.
SHOW_RULES = (
    "for t in iptables-nft iptables-legacy ip6tables-nft ip6tables-legacy; do "
    '"$t" -S 2>/dev/null; done; true'
)


def probe(docker_client: Any, container_id: str, targets: dict[str, Any]) -> dict[str, str]:
    container = docker_client.containers.get(container_id)
    argv = ["python3", "-c", EGRESS_PROBE, json.dumps(targets), json.dumps([EXTERNAL_NAME])]
    code, output = container.exec_run(argv)
    assert code == 0, output
    return dict(json.loads(output))


def host_rules(docker_client: Any, bridge: str) -> list[str]:
    """Our iptables rules and chains for ``bridge`` on the engine's host (not Docker's)."""
    output = docker_client.containers.run(
        SESSION_IMAGE,
        ["sh", "-c", SHOW_RULES],
        entrypoint=[],
        user="0:0",
        network_mode="host",
        cap_add=["NET_ADMIN", "NET_RAW"],
        remove=True,
    )
    return [
        line
        for line in output.decode().splitlines()
        if f"CCD-IN-{bridge}" in line or f"CCD-FWD-{bridge}" in line
    ]


@contextlib.contextmanager
def listening(host: str) -> Iterator[int]:
    """A host service: a socket listening on ``host`` (connections complete in its backlog)."""
    with socket.create_server((host, 0)) as server:
        yield int(server.getsockname()[1])


LISTEN = (
    "import socket, sys, time\n"
    "server = socket.create_server((sys.argv[1], int(sys.argv[2])))\n"
    "print('listening', flush=True)\n"
    "time.sleep(3600)\n"
)


@contextlib.contextmanager
def internet_standin() -> Iterator[tuple[str, int]]:
    """An address outside every network of this machine, answered in a network namespace of its
    own behind a veth pair: the host forwards a session's packets to it out of the session
    bridge, masqueraded, exactly as it would to the internet, while the traffic stays on this
    machine. TEST-NET-2 (198.51.100.0/24) addresses, never routed on the internet."""
    tag = secrets.token_hex(3)
    namespace, outside, inside = f"ccd-inet-{tag}", f"ccdo{tag}", f"ccdi{tag}"
    block = random.randrange(64) * 4
    near, far = f"198.51.100.{block + 1}", f"198.51.100.{block + 2}"

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    def inside_ns(*argv: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]

    run("ip", "netns", "add", namespace)
    server: subprocess.Popen[bytes] | None = None
    try:
        run(
            "ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace
        )
        run("ip", "addr", "add", f"{near}/30", "dev", outside)
        run("ip", "link", "set", outside, "up")
        run(*inside_ns("ip", "addr", "add", f"{far}/30", "dev", inside))
        run(*inside_ns("ip", "link", "set", inside, "up"))
        run(*inside_ns("ip", "route", "add", "default", "via", near))
        port = 8080
        server = subprocess.Popen(
            inside_ns(sys.executable, "-c", LISTEN, far, str(port)), stdout=subprocess.PIPE
        )
        assert server.stdout is not None and server.stdout.readline() == b"listening\n"
        yield far, port
    finally:
        if server is not None:
            server.kill()
            server.wait()
        run("ip", "netns", "del", namespace)  # and the veth pair with it


async def ready_session(api: Api) -> dict[str, Any]:
    session = await api.create()
    return await api.wait_status(session["id"], "ready", timeout=60)


def session_network(docker_client: Any, container_id: str) -> tuple[str, str]:
    """(bridge interface, host address as the session sees it: ccd-host)."""
    attrs = docker_client.api.inspect_container(container_id)
    (name,) = attrs["NetworkSettings"]["Networks"]
    network = docker_client.networks.get(name)
    address = network.attrs["IPAM"]["Config"][0]["Gateway"]
    return f"br-{network.id[:12]}", address


async def test_under_none_a_session_reaches_only_the_gateway_and_redis(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    redis_port = urlsplit(infra.session_redis_url).port
    api = urlsplit(fake_api.base_url)
    with (
        listening("0.0.0.0") as service_port,
        internet_standin() as (internet, internet_port),
        run_gateway(infra, fake_api.base_url, s3_endpoint, tmp_path, SESSION_EGRESS="none") as gw,
    ):
        gateway_port = int(gw.url.rsplit(":", 1)[1])
        alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        try:
            # Ready means its wrapper reached Redis and the gateway.
            session = await ready_session(alice)
            bridge, host_address = session_network(docker_client, session["container_id"])
            reached = probe(
                docker_client,
                session["container_id"],
                {
                    "gateway": ["ccd-host", gateway_port],
                    "redis": ["ccd-host", redis_port],
                    "gateway at another host address": [infra.gateway_ip, gateway_port],
                    "model API (a host service)": [api.hostname, api.port],
                    "host service on 0.0.0.0": ["ccd-host", service_port],
                    "same, at another host address": [infra.gateway_ip, service_port],
                    "internet": [internet, internet_port],
                    "cloud metadata": ["169.254.169.254", 80],
                },
            )
            assert reached == {
                "gateway": "open",
                "redis": "open",
                "gateway at another host address": "ConnectionRefusedError",
                "model API (a host service)": "ConnectionRefusedError",
                "host service on 0.0.0.0": "ConnectionRefusedError",
                "same, at another host address": "ConnectionRefusedError",
                "internet": "ConnectionRefusedError",
                "cloud metadata": "ConnectionRefusedError",
                EXTERNAL_NAME: "gaierror",
            }, reached
            # The model API is out of reach, yet chat works: through the gateway's proxy.
            tag = marker()
            fake_api.on(tag, text(f"through the proxy {tag}"))
            reply = await alice.chat(session["id"], f"hello {tag}")
            assert reply["result"]["result"] == f"through the proxy {tag}"
            rules = host_rules(docker_client, bridge)
            assert f"-A INPUT -i {bridge} -j CCD-IN-{bridge}" in rules
            assert f"-A DOCKER-USER -i {bridge} -j CCD-FWD-{bridge}" in rules
            assert any(f"-d {host_address}/32" in rule for rule in rules)
            await alice.stop(session["id"])
        finally:
            await alice.aclose()
    assert host_rules(docker_client, bridge) == []  # removed with the gateway's network


async def test_under_open_a_session_reaches_what_the_host_routes(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    api = urlsplit(fake_api.base_url)
    with (
        listening("0.0.0.0") as service_port,
        internet_standin() as (internet, internet_port),
        run_gateway(infra, fake_api.base_url, s3_endpoint, tmp_path, SESSION_EGRESS="open") as gw,
    ):
        alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        try:
            session = await ready_session(alice)
            tag = marker()
            fake_api.on(tag, text(f"open {tag}"))
            reply = await alice.chat(session["id"], f"hello {tag}")
            assert reply["result"]["result"] == f"open {tag}"
            # The same stand-ins the test above finds closed: they are really there.
            reached = probe(
                docker_client,
                session["container_id"],
                {
                    "model API (bound to the test network's address only)": [
                        api.hostname,
                        api.port,
                    ],
                    "host service on 0.0.0.0": ["ccd-host", service_port],
                    "internet": [internet, internet_port],
                },
            )
            assert {name: reached[name] for name in reached if name != EXTERNAL_NAME} == {
                "model API (bound to the test network's address only)": "open",
                "host service on 0.0.0.0": "open",
                "internet": "open",
            }, reached
            bridge, _ = session_network(docker_client, session["container_id"])
            assert host_rules(docker_client, bridge) == []
            await alice.stop(session["id"])
        finally:
            await alice.aclose()


async def test_rules_are_applied_again_without_duplicates_and_follow_the_policy(
    infra, docker_client
) -> None:
    """What a gateway start does (``setup``), repeated: after a reboot lost the rules, with
    other ports, and switching to open; then the network goes and its rules with it."""
    instance = f"test-{infra.run_id}-egress-{secrets.token_hex(2)}"
    runtime = DockerRuntime(instance, helper_image=SESSION_IMAGE, host_alias="ccd-host")
    bridge = ""
    try:
        await runtime.setup(EgressPolicy.only_host_ports(8000, 6379))
        network = docker_client.networks.get(f"ccd-{instance}-sessions")
        bridge = f"br-{network.id[:12]}"
        first = host_rules(docker_client, bridge)
        assert len([rule for rule in first if "--dport" in rule]) == 2, first
        await runtime.setup(EgressPolicy.only_host_ports(8000, 6379))
        assert host_rules(docker_client, bridge) == first  # replaced, not added to
        await runtime.setup(OPEN_EGRESS)
        assert host_rules(docker_client, bridge) == []  # as after a reboot
        await runtime.setup(EgressPolicy.only_host_ports(8000, 6379))
        assert host_rules(docker_client, bridge) == first  # back at the next start
        await runtime.setup(EgressPolicy.only_host_ports(8000))
        assert len([r for r in host_rules(docker_client, bridge) if "--dport" in r]) == 1
    finally:
        await runtime.close()
        remove_instance_containers(instance)
    assert bridge and host_rules(docker_client, bridge) == []


@pytest.fixture
def image_without_iptables(docker_client: Any) -> Iterator[str]:
    """The session image with iptables taken out (as a custom image might lack it)."""
    tag = f"cc-docker/session-no-iptables:{secrets.token_hex(4)}"
    dockerfile = (
        f"FROM {SESSION_IMAGE}\nUSER root\n"
        "RUN rm -f /usr/sbin/iptables* /usr/sbin/ip6tables* /usr/sbin/xtables*\nUSER claude\n"
    )
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    try:
        yield tag
    finally:
        docker_client.images.remove(tag, force=True)


def test_a_gateway_that_cannot_enforce_none_refuses_to_start(
    infra, fake_api, s3_endpoint, tmp_path, image_without_iptables
) -> None:
    started = time.monotonic()
    with (
        pytest.raises(RuntimeError, match=r"(?s)gateway exited early.*the image has no iptables"),
        run_gateway(
            infra,
            fake_api.base_url,
            s3_endpoint,
            tmp_path,
            SESSION_EGRESS="none",
            SESSION_IMAGE=image_without_iptables,
        ),
    ):
        pass
    assert time.monotonic() - started < 30
    # Open egress is the operator's explicit choice: that gateway starts.
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path,
        SESSION_EGRESS="open",
        SESSION_IMAGE=image_without_iptables,
    ) as gw:
        assert "could not be checked or removed" in gw.log_tail()
