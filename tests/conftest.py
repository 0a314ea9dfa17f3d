"""Shared pytest setup: the real services (see tests/stack.py) and clients for them."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

# pytest puts only test directories on sys.path; `from tests.x import ...` needs the root too.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.client import Api, mint_token  # noqa: E402


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    import docker

    client = docker.from_env()
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def infra(docker_client: object) -> Iterator[object]:
    from tests.stack import SESSION_IMAGE, require_image, start_infra

    require_image(docker_client, SESSION_IMAGE, "run scripts/build-container.sh")  # type: ignore[arg-type]
    with start_infra(docker_client) as running:  # type: ignore[arg-type]
        yield running


@pytest.fixture(scope="session")
def fake_api(infra: object) -> Iterator[object]:
    from tests.fake_anthropic import FakeAnthropic

    with FakeAnthropic(host=infra.gateway_ip) as fake:  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of an S3 server (moto) for the whole run."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (the test extra)")
    from tests.stack import start_s3

    with start_s3(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def gateway(
    infra: object, fake_api: object, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    from tests.stack import run_gateway

    logs = tmp_path_factory.mktemp("gateway-logs")
    with run_gateway(infra, fake_api.base_url, s3_endpoint, logs) as running:  # type: ignore[arg-type, attr-defined]
        yield running


@pytest.fixture
async def api_for(gateway: object) -> AsyncIterator[Callable[[str], Api]]:
    """``api_for("alice")``: a client authenticated as alice."""
    clients: list[Api] = []

    def make(owner: str) -> Api:
        client = Api(gateway.url, mint_token(gateway.jwt_secret, owner))  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test proves nothing: a run with skips fails, unless CCD_ALLOW_SKIPS=1 (for a
    quick local run without Docker). CI never sets it."""
    import os

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0 and os.environ.get("CCD_ALLOW_SKIPS") != "1":
        if reporter:
            reporter.write_line(
                f"{skipped} test(s) were skipped: failing the run (CCD_ALLOW_SKIPS=1 allows it)",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
