"""The MinIO stand-in image (tests/standins/s3) keeps the official image's contract: the
command line and environment of a compose file written for minio/minio, the health checks,
``mc ready local``, a console page, a quick ``docker stop``, and S3 for the project's own
ObjectStore. Needs the image: ``scripts/build-standins.sh``."""

from __future__ import annotations

import html
import io
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.store.objects import ObjectStore

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

IMAGE = os.environ.get("STANDIN_S3_IMAGE", "cc-docker/standin-minio:latest")
# tests/stack.py sweeps containers with this label that a killed run left behind.
LABELS = {"cc-docker.test-run": "standin-s3"}


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    docker = pytest.importorskip("docker", reason="the docker SDK is not installed")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"the Docker engine does not answer: {exc}")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        client.close()
        pytest.fail(f"image {IMAGE} is missing: run scripts/build-standins.sh")
    yield client
    client.close()


def run(client: Any, command: list[str], ports: list[int], **kwargs: Any) -> Any:
    return client.containers.run(
        IMAGE,
        command,
        detach=True,
        labels=LABELS,
        ports={f"{port}/tcp": ("127.0.0.1", None) for port in ports},
        **kwargs,
    )


def host_port(container: Any, port: int) -> int:
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])


def get(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def wait_live(container: Any, api: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(f"http://127.0.0.1:{api}/minio/health/live")[0] == 200:
                return
        except OSError:
            pass
        container.reload()
        if container.status != "running" or time.monotonic() > deadline:
            logs = container.logs().decode(errors="replace")
            pytest.fail(f"the stand-in did not become live ({container.status}):\n{logs}")
        time.sleep(0.1)


def remove(container: Any) -> None:
    container.remove(force=True, v=True)  # v: the anonymous /data volume too


def test_compose_contract_and_object_store(client: Any) -> None:
    container = run(
        client,
        ["server", "/data", "--console-address", ":9001"],
        [9000, 9001],
        environment={"MINIO_ROOT_USER": "minioadmin", "MINIO_ROOT_PASSWORD": "minioadmin"},
    )
    try:
        api, console = host_port(container, 9000), host_port(container, 9001)
        wait_live(container, api)
        assert get(f"http://127.0.0.1:{api}/minio/health/ready")[0] == 200
        assert get(f"http://127.0.0.1:{api}/minio/health/ready", method="HEAD")[0] == 200

        # The compose health check of the official image.
        code, output = container.exec_run(["mc", "ready", "local"])
        assert code == 0, output
        assert b"ready" in output

        # Runs as a non-root user, the server itself as PID 1.
        code, output = container.exec_run(["sh", "-c", "id -u; tr '\\0' ' ' </proc/1/cmdline"])
        uid, cmdline = output.decode().split("\n", 1)
        assert code == 0 and uid != "0"
        assert "/usr/bin/minio server /data" in cmdline

        store = ObjectStore(
            f"127.0.0.1:{api}",
            "minioadmin",
            "minioadmin",
            "workspaces",
            secure=False,
            region="us-east-1",
        )
        try:
            store.ensure_bucket()
            store.ensure_bucket()  # idempotent
            store.ping()
            odd_key = "notes/<b>tom & jerry</b>.txt"
            store.put_bytes("notes/hello.txt", b"hello stand-in")
            store.put_bytes(odd_key, b"escaped")
            big = os.urandom(6 * 1024 * 1024)  # over one 5 MiB part: a multipart upload
            store.put_stream("archives/big.tar", io.BytesIO(big), len(big))

            with store.open("notes/hello.txt") as reader:
                assert reader.read() == b"hello stand-in"
            with store.open("archives/big.tar") as reader:
                assert reader.read() == big
            listed = {info.key: info.size for info in store.list("notes/")}
            assert listed == {"notes/hello.txt": 14, odd_key: 7}

            store.copy("notes/hello.txt", "notes/copy.txt", metadata={"origin": "test"})
            assert store.stat("notes/copy.txt").metadata == {"origin": "test"}
            assert store.delete_many(["notes/hello.txt", "notes/missing.txt"]) == 2
            assert not store.exists("notes/hello.txt")
            assert [info.key for info in store.list("")] == [
                "archives/big.tar",
                "notes/<b>tom & jerry</b>.txt",
                "notes/copy.txt",
            ]
        finally:
            store.close()

        # The console: a page naming the stand-in that lists buckets and keys, escaped.
        status, body = get(f"http://127.0.0.1:{console}/")
        page = body.decode()
        assert status == 200
        assert "CC-Docker MinIO stand-in" in page
        assert "workspaces" in page and "notes/copy.txt" in page
        assert html.escape(odd_key) in page and odd_key not in page
        status, body = get(f"http://127.0.0.1:{console}/browser/workspaces")
        assert status == 200 and "archives/big.tar" in body.decode()
        query = urllib.parse.urlencode({"bucket": "workspaces", "key": "notes/copy.txt"})
        assert get(f"http://127.0.0.1:{console}/download?{query}") == (200, b"hello stand-in")

        started = time.monotonic()
        container.stop(timeout=10)
        assert time.monotonic() - started < 3.0, "docker stop waited for its timeout"
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0
    finally:
        remove(container)


def test_minio_command_flags_and_mc_limits(client: Any) -> None:
    """`minio server` spelled out, another --address, unknown flags ignored with a note,
    MC_HOST_local honoured, MinIO's admin API and other mc commands refused clearly."""
    container = run(
        client,
        [
            "minio",
            "server",
            "--address",
            ":9100",
            "--console-address=:9101",
            "--quiet",
            "--some-future-flag",
            "/data",
        ],
        [9100, 9101],
        environment={"MC_HOST_local": "http://minioadmin:minioadmin@localhost:9100"},
    )
    try:
        api = host_port(container, 9100)
        wait_live(container, api)
        assert get(f"http://127.0.0.1:{host_port(container, 9101)}/")[0] == 200
        status, body = get(f"http://127.0.0.1:{api}/minio/admin/v3/info")
        assert status == 501 and b"NotImplemented" in body

        code, output = container.exec_run(["mc", "ready", "local"])
        assert code == 0, output
        code, output = container.exec_run(["mc", "ls", "local"])
        assert code == 1 and b"not supported" in output

        logs = container.logs(stdout=False, stderr=True).decode()
        assert "--some-future-flag" in logs and "ignored" in logs
        assert "not used" in logs  # the data directory
    finally:
        remove(container)


def test_short_password_is_refused_like_minio(client: Any) -> None:
    container = run(
        client,
        ["server", "/data"],
        [],
        environment={"MINIO_ROOT_USER": "admin", "MINIO_ROOT_PASSWORD": "short"},
    )
    try:
        result = container.wait(timeout=20)
        assert result["StatusCode"] == 1
        assert b"MINIO_ROOT_PASSWORD" in container.logs()
    finally:
        remove(container)
