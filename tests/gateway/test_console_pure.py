"""The web console's files: shipped in the package, served with a strict policy, and needing
nothing from another origin."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.api.console import CONSOLE_DIR
from gateway.config import Settings
from gateway.main import create_app

ASSETS = sorted(p for p in CONSOLE_DIR.rglob("*") if p.is_file())


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # The app without its lifespan (databases, Docker): static files need none of it.
    app = create_app(Settings(_env_file=None, jwt_secret="x" * 32))  # type: ignore[call-arg]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        yield client


async def test_the_console_is_served_under_console_with_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    bare = await client.get("/console")
    assert bare.status_code == 308
    assert bare.headers["location"] == "/console/"
    page = await client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ASSETS:
        path = asset.relative_to(CONSOLE_DIR).as_posix()
        response = await client.get(f"/console/{path}")
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == policy
    assert (await client.get("/console/nothing-here.js")).status_code == 404


def test_every_asset_the_page_names_exists_and_is_local() -> None:
    html = (CONSOLE_DIR / "index.html").read_text()
    referenced = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    assert referenced
    for ref in referenced:
        assert not re.match(r"^[a-z]+:", ref), f"index.html loads {ref} from elsewhere"
        assert (CONSOLE_DIR / ref).is_file(), ref
    for script in CONSOLE_DIR.glob("js/*.js"):
        for module in re.findall(r'from "\./([^"]+)"', script.read_text()):
            assert (CONSOLE_DIR / "js" / module).is_file(), f"{script.name} imports {module}"


def test_nothing_is_fetched_from_another_origin() -> None:
    """No CDN, font service or analytics: the only absolute URL is the SVG namespace."""
    for asset in ASSETS:
        for url in re.findall(r"https?://[^\s\"')]+", asset.read_text()):
            assert url == "http://www.w3.org/2000/svg", f"{asset.name} names {url}"
        assert "innerHTML" not in asset.read_text(), f"{asset.name}: text must stay text"


async def test_metrics_and_console_stay_out_of_the_api_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if path.startswith(("/metrics", "/console"))]
