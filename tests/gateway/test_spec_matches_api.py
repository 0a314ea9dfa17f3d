"""SPEC.md documents every route the gateway serves (the OpenAPI schema at /docs)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import Settings
from gateway.main import create_app

SPEC = Path(__file__).resolve().parents[2] / "SPEC.md"
_DOCUMENTED = re.compile(
    r"`((?:GET|POST|PUT|DELETE|PATCH)(?:/(?:GET|POST|PUT|DELETE|PATCH))*) (/[^`\s?]*)"
)


def _normal(path: str) -> str:
    path = path.removeprefix("/api/v1")
    return re.sub(r"\{[^}]*\}", "{}", path)


def documented_routes() -> set[tuple[str, str]]:
    routes = set()
    for methods, path in _DOCUMENTED.findall(SPEC.read_text()):
        for method in methods.split("/"):
            routes.add((method, _normal(path)))
    return routes


def test_every_route_in_the_openapi_schema_is_in_spec() -> None:
    app = create_app(Settings(_env_file=None, jwt_secret="x" * 32))  # type: ignore[call-arg]
    served = {
        (method.upper(), _normal(path))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert served, "the schema lists no routes"
    missing = sorted(served - documented_routes())
    assert missing == [], f"routes missing from SPEC.md: {missing}"


def test_spec_documents_no_route_that_is_not_served() -> None:
    app = create_app(Settings(_env_file=None, jwt_secret="x" * 32))  # type: ignore[call-arg]
    served = {
        (method.upper(), _normal(path))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    websocket = {("GET", "/sessions/{}/stream")}
    assert sorted(documented_routes() - served - websocket) == []
