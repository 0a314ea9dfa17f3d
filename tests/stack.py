"""The real services the integration tests run against, started once per test run.

- PostgreSQL and Redis run as containers (from images built locally: ``scripts/build-standins.sh``
  makes stand-ins from Debian's packages where no registry can be reached; set
  ``TEST_POSTGRES_IMAGE``/``TEST_REDIS_IMAGE`` to use the official images instead) on a docker
  network of their own. Redis requires authentication, as in production: the default user is
  off and the gateway has a user of its own.
- Each gateway makes its own session network (``ccd-<instance>-sessions``, on which containers
  cannot reach each other) with its own egress rules, removed with it when the gateway ends;
  sessions reach Redis (its published port) and the gateway through the host, as ``ccd-host``.
- The scripted fake of the Anthropic API and the gateway itself run on the host and listen on
  that network's gateway address, so session containers reach them and so do the tests.
- The gateway is the real ``python -m gateway`` in a subprocess, configured only by environment.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import docker
import httpx

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # Ryuk's image needs a registry

from testcontainers.community.postgres import PostgresContainer
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from gateway.runtime import RuntimeFailure
from gateway.runtime.docker_egress import sweep_egress_rules

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_IMAGE = os.environ.get("TEST_POSTGRES_IMAGE", "cc-docker/standin-postgres:15")
REDIS_IMAGE = os.environ.get("TEST_REDIS_IMAGE", "cc-docker/standin-redis:7")
SESSION_IMAGE = os.environ.get("SESSION_IMAGE", "cc-docker/session:latest")
TEST_LABEL = "cc-docker.test-run"
REDIS_GATEWAY_USER = "ccd-gateway"


def free_port(host: str = "0.0.0.0") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def require_image(client: docker.DockerClient, image: str, hint: str) -> None:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise RuntimeError(f"image {image} is missing; {hint}") from None


@dataclass
class Infra:
    """PostgreSQL, Redis and a network, shared by every gateway of a test run."""

    run_id: str
    network: Network
    gateway_ip: str
    postgres: PostgresContainer
    redis: DockerContainer
    database_url: str
    redis_url: str  # with the gateway user's credentials
    session_redis_url: str  # as a session container reaches it, no credentials

    @property
    def network_name(self) -> str:
        return str(self.network.name)


def sweep_stale_runs(client: docker.DockerClient, max_age: float = 3600) -> None:
    """Remove what killed test runs left behind (Ryuk, which would, cannot run here). Only
    things older than ``max_age``, so a concurrent run on the same engine is left alone."""
    cutoff = time.time() - max_age

    def created(attrs: dict[str, Any]) -> float:
        stamp = str(attrs.get("Created", ""))[:19]
        try:
            return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) - time.timezone
        except ValueError:
            return time.time()

    stale_filters = [{"label": TEST_LABEL}, {"label": "cc-docker.instance"}]
    for filters in stale_filters:
        for container in client.containers.list(all=True, filters=filters):
            instance = container.labels.get("cc-docker.instance", "test-")
            if instance.startswith("test-") and created(container.attrs) < cutoff:
                with contextlib.suppress(docker.errors.APIError):
                    container.remove(force=True, v=True)
    networks = client.networks.list(filters={"label": TEST_LABEL})
    networks += [
        network
        for network in client.networks.list(filters={"label": "cc-docker.instance"})
        if network.attrs.get("Labels", {}).get("cc-docker.instance", "").startswith("test-")
    ]
    removed = 0
    for network in networks:
        if created(network.attrs) < cutoff:
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
                removed += 1
    if removed:  # and the egress rules of their bridges
        with contextlib.suppress(RuntimeFailure):
            sweep_egress_rules(client, SESSION_IMAGE)


def at_address(url: str, host: str, port: int | str) -> str:
    """``url`` with its host and port replaced (its credentials, path and query kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    credentials = f"{userinfo}@" if userinfo else ""
    return urlunsplit(parts._replace(netloc=f"{credentials}{host}:{port}"))


def address_on(client: docker.DockerClient, container_id: str, network: str) -> str:
    """A container's IP address on ``network`` (reachable from this host: a bridge)."""
    networks = client.api.inspect_container(container_id)["NetworkSettings"]["Networks"]
    return str(networks[network]["IPAddress"])


@contextlib.contextmanager
def start_infra(client: docker.DockerClient) -> Iterator[Infra]:
    sweep_stale_runs(client)
    require_image(client, POSTGRES_IMAGE, "run scripts/build-standins.sh")
    require_image(client, REDIS_IMAGE, "run scripts/build-standins.sh")
    run_id = secrets.token_hex(4)
    labels = {TEST_LABEL: run_id}
    redis_password = secrets.token_urlsafe(24)
    with Network(docker_network_kw={"labels": labels}) as network:
        attrs = client.networks.get(network.name).attrs
        gateway_ip = attrs["IPAM"]["Config"][0]["Gateway"]
        postgres = (
            PostgresContainer(
                POSTGRES_IMAGE, username="ccd", password="ccd-test", dbname="ccd", driver=None
            )
            .with_network(network)
            .with_network_aliases("postgres")
            .with_kwargs(labels=labels)
        )
        redis = (
            DockerContainer(REDIS_IMAGE)
            .with_command(redis_command(redis_password))
            .with_exposed_ports(6379)
            .with_network(network)
            .with_network_aliases("redis")
            .with_kwargs(labels=labels)
            .waiting_for(LogMessageWaitStrategy("Ready to accept connections"))
        )
        with postgres, redis:
            # The gateway and the tests, on this host, reach both at their addresses on the
            # network, as a gateway in the compose stack does, not at the published ports:
            # through those, every round trip would also pass the engine's userland proxy
            # (docker-proxy), a hop a deployment does not have (at 1,000 relayed events/s it
            # took a sixth of a core here and 0.17 ms of each event's median latency). Sessions
            # reach Redis at its published port on ccd-host, as in the compose stack.
            pg_host = address_on(client, postgres.get_wrapped_container().id, network.name)
            redis_host = address_on(client, redis.get_wrapped_container().id, network.name)
            redis_port = redis.get_exposed_port(6379)
            yield Infra(
                run_id=run_id,
                network=network,
                gateway_ip=gateway_ip,
                postgres=postgres,
                redis=redis,
                database_url=f"postgresql+asyncpg://ccd:ccd-test@{pg_host}:5432/ccd",
                redis_url=f"redis://{REDIS_GATEWAY_USER}:{redis_password}@{redis_host}:6379/0",
                session_redis_url=f"redis://ccd-host:{redis_port}/0",
            )


def redis_command(password: str) -> list[str]:
    """redis-server with the default user off and the gateway's own user (as the compose
    stack's ACL file does)."""
    return [
        "redis-server",
        "--bind", "0.0.0.0",
        "--protected-mode", "no",
        "--user", "default", "off",
        "--user", REDIS_GATEWAY_USER, "on", f">{password}", "~*", "&*", "+@all",
    ]  # fmt: skip


@dataclass
class Postgres:
    """A PostgreSQL container of one test's own, published on a fixed host port so that it can
    be stopped and started again under the same address (the fault a test injects)."""

    container: Any  # docker.models.containers.Container
    database_url: str

    def stop(self) -> None:
        self.container.stop(timeout=10)

    def start(self, timeout: float = 60) -> None:
        self.container.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the server accepts TCP connections (the entrypoint's first-start server
        listens on its socket only, so this waits for the real one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status == "running":
                code, _ = self.container.exec_run(["pg_isready", "-q", "-h", "127.0.0.1"])
                if code == 0:
                    return
            time.sleep(0.2)
        logs = self.container.logs(tail=30).decode(errors="replace")
        raise RuntimeError(f"PostgreSQL not ready after {timeout} s:\n{logs}")


@contextlib.contextmanager
def start_postgres(client: docker.DockerClient, infra: Infra) -> Iterator[Postgres]:
    """A dedicated PostgreSQL (same image and credentials as ``start_infra``'s)."""
    port = free_port("127.0.0.1")
    container = client.containers.run(
        POSTGRES_IMAGE,
        detach=True,
        environment={"POSTGRES_USER": "ccd", "POSTGRES_PASSWORD": "ccd-test", "POSTGRES_DB": "ccd"},
        ports={"5432/tcp": ("127.0.0.1", port)},
        labels={TEST_LABEL: infra.run_id},
    )
    try:
        postgres = Postgres(container, f"postgresql+asyncpg://ccd:ccd-test@127.0.0.1:{port}/ccd")
        postgres.wait_ready()
        yield postgres
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True, v=True)


@dataclass
class Redis:
    """A Redis container of one test's own, with its data on disk (an append-only file, as in
    the compose stack) and a fixed host port, so that it can be restarted under the same
    address (the fault a test injects)."""

    container: Any  # docker.models.containers.Container
    url: str  # with the gateway user's credentials
    session_url: str  # as session containers reach it

    def restart(self) -> None:
        self.container.restart(timeout=5)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status == "running" and b"Ready to accept" in self.container.logs(
                tail=5
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("Redis did not come back")


@contextlib.contextmanager
def start_redis(client: docker.DockerClient, infra: Infra) -> Iterator[Redis]:
    """A dedicated Redis (same image and gateway user as ``start_infra``'s), persisting every
    write (appendfsync always) so a restart keeps what was acknowledged."""
    port = free_port()
    password = secrets.token_urlsafe(24)
    command = [*redis_command(password), "--appendonly", "yes", "--appendfsync", "always"]
    container = client.containers.run(
        REDIS_IMAGE,
        command,
        detach=True,
        ports={"6379/tcp": ("0.0.0.0", port)},
        labels={TEST_LABEL: infra.run_id},
    )
    try:
        deadline = time.monotonic() + 30
        while b"Ready to accept" not in container.logs():
            if time.monotonic() > deadline:
                raise RuntimeError("Redis did not start")
            time.sleep(0.1)
        yield Redis(
            container,
            f"redis://{REDIS_GATEWAY_USER}:{password}@127.0.0.1:{port}/0",
            f"redis://ccd-host:{port}/0",
        )
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True, v=True)


S3_ACCESS_KEY = "test-access"
S3_SECRET_KEY = "test-secret-key"


@contextlib.contextmanager
def start_s3(log_dir: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """An S3 server (moto's server mode, from PyPI) in a subprocess: ``host:port``. No MinIO
    server can be installed here; the gateway speaks only the S3 API, which moto serves."""
    port = free_port(host)
    log_path = log_dir / "s3.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://{host}:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"S3 server did not start:\n{tail}") from None
                time.sleep(0.1)
        yield f"{host}:{port}"
    finally:
        _terminate(process)


@dataclass
class Gateway:
    """A running ``python -m gateway`` process."""

    url: str
    jwt_secret: str
    instance: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, lines: int = 80) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def gateway_env(
    infra: Infra,
    *,
    api_base_url: str,
    s3_endpoint: str,
    port: int,
    instance: str,
    jwt_secret: str,
    **overrides: str,
) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "DOCKER_HOST", "PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(
        HOST="0.0.0.0",
        PORT=str(port),
        DATABASE_URL=infra.database_url,
        REDIS_URL=infra.redis_url,
        JWT_SECRET=jwt_secret,
        INSTANCE_NAME=instance,
        SESSION_IMAGE=SESSION_IMAGE,
        # No SESSION_NETWORK: each gateway makes its own (ccd-<instance>-sessions), since its
        # egress rules name its own ports.
        SESSION_REDIS_URL=infra.session_redis_url,
        # Tests that are not about start admission create a few sessions at once and use their
        # containers at once; tests/e2e/test_fleet.py sets a small value to test admission.
        SESSION_START_CONCURRENCY="16",
        S3_ENDPOINT=s3_endpoint,
        S3_ACCESS_KEY=S3_ACCESS_KEY,
        S3_SECRET_KEY=S3_SECRET_KEY,
        S3_BUCKET=f"ccd-{instance}".lower(),
        S3_REGION="us-east-1",
        ANTHROPIC_BASE_URL=api_base_url,
        ANTHROPIC_API_KEY="sk-test-not-a-real-key",
        CLAUDE_CODE_MAX_RETRIES="0",
        SESSION_STOP_GRACE="3",
        SESSION_INTERRUPT_GRACE="3",
        RECONCILE_INTERVAL="2",
        # No load balancer watches a test gateway's /ready: stopping it need not wait for one
        # (tests of the drain set their own).
        SHUTDOWN_DRAIN_DELAY="0",
        LOG_LEVEL="INFO",
        LOG_JSON="false",
    )
    env.update(overrides)
    return env


@contextlib.contextmanager
def run_gateway(
    infra: Infra,
    api_base_url: str,
    s3_endpoint: str,
    log_dir: Path,
    *,
    port: int | None = None,
    **overrides: str,
) -> Iterator[Gateway]:
    """``port``: listen there (a restarted gateway comes back where its sessions look for it);
    default a free one."""
    port = port or free_port()
    instance = f"test-{infra.run_id}-{secrets.token_hex(2)}"
    secret = secrets.token_urlsafe(32)
    env = gateway_env(
        infra,
        api_base_url=api_base_url,
        s3_endpoint=s3_endpoint,
        port=port,
        instance=instance,
        jwt_secret=secret,
        **overrides,
    )
    log_path = log_dir / f"gateway-{instance}.log"
    gateway = Gateway(
        url=f"http://{infra.gateway_ip}:{port}",
        jwt_secret=secret,
        instance=instance,
        env=env,
        log_path=log_path,
    )
    with log_path.open("wb") as log_file:
        gateway.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_healthy(gateway)
            yield gateway
        finally:
            _terminate(gateway.process)
            remove_instance_containers(instance)


def run_replica(
    of: Gateway, infra: Infra, *args: Any, **kwargs: Any
) -> contextlib.AbstractContextManager[Gateway]:
    """Another gateway of ``of``'s instance, with its secret: a replica of the same fleet,
    sharing its database, Redis and engine (the rest of the arguments: ``run_gateway``'s)."""
    return run_gateway(infra, *args, INSTANCE_NAME=of.instance, JWT_SECRET=of.jwt_secret, **kwargs)


def remove_instance_containers(instance: str) -> None:
    """Everything a test gateway instance made on the engine: containers, then the session
    network it made itself (when SESSION_NETWORK was left empty) and that network's egress
    rules on the engine's host."""
    client = docker.from_env()
    try:
        for container in client.containers.list(
            all=True, filters={"label": f"cc-docker.instance={instance}"}
        ):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True, v=True)
        networks = client.networks.list(filters={"label": f"cc-docker.instance={instance}"})
        for network in networks:
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
        if networks:
            sweep_egress_rules(client, SESSION_IMAGE)
    finally:
        client.close()


def _wait_healthy(gateway: Gateway, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    assert gateway.process is not None
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{gateway.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{gateway.url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"gateway not ready after {timeout} s:\n{gateway.log_tail()}")


def _terminate(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
