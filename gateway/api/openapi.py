"""What the OpenAPI schema says beyond the routes' own declarations: the bearer scheme every
route under ``/api/`` requires (the request guard enforces it before routing), and the links
from the operations that make a session or a workspace to the operations that use it (what a
client, or a stateful fuzzer, may call next)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from gateway.api import API_PREFIX

BEARER = "bearer"
_SESSIONS = f"{API_PREFIX}/sessions"
_WORKSPACES = f"{API_PREFIX}/workspaces"
# (method, path, status) of each operation that answers a session, and where its id is.
_SESSION_MAKERS = [
    ("post", _SESSIONS, "201"),
    ("post", f"{_SESSIONS}/{{session_id}}/spawn", "201"),
]
_WORKSPACE_FILE = f"{_WORKSPACES}/{{workspace_id}}/files/{{path}}"
_SESSION_FILE = f"{_SESSIONS}/{{session_id}}/files/{{path}}"

Schema = dict[str, Any]


def install_openapi(app: FastAPI) -> None:
    """Serve the schema with the bearer scheme and the links (built once, then cached)."""

    generate = app.openapi

    def openapi() -> Schema:
        if app.openapi_schema is None:
            schema = generate()  # FastAPI's, which it also caches in app.openapi_schema
            add_security(schema)
            add_links(schema)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(schema: Schema) -> list[tuple[str, str, Schema]]:
    return [
        (method, path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]


def add_security(schema: Schema) -> None:
    schema.setdefault("components", {})["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A user token (`sub` is the owner) or a session's capability token.",
        }
    }
    for _, path, operation in _operations(schema):
        if path.startswith(f"{API_PREFIX}/"):
            operation["security"] = [{BEARER: []}]


def _link(
    schema: Schema, source: tuple[str, str, str], target: Schema, parameters: dict[str, str]
) -> None:
    method, path, status = source
    response = schema["paths"][path][method]["responses"][status]
    name = target["operationId"]
    response.setdefault("links", {})[name] = {
        "operationId": name,
        "parameters": parameters,
    }


def _path_parameters(operation: Schema) -> set[str]:
    return {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}


def add_links(schema: Schema) -> None:
    """Session makers link to every operation on a session (by the answer's ``id``) and on its
    workspace; workspace uploads link to the operations on that workspace and file."""
    operations = _operations(schema)
    for method, path, operation in operations:
        params = _path_parameters(operation)
        if path.startswith(f"{_SESSIONS}/{{session_id}}") and params == {"session_id"}:
            for maker in _SESSION_MAKERS:
                _link(schema, maker, operation, {"session_id": "$response.body#/id"})
        if path.startswith(_WORKSPACES) and params == {"workspace_id"}:
            for maker in _SESSION_MAKERS:
                _link(schema, maker, operation, {"workspace_id": "$response.body#/workspace/id"})
            _link(
                schema,
                ("put", _WORKSPACE_FILE, "201"),
                operation,
                {"workspace_id": "$request.path.workspace_id"},
            )
            _link(
                schema,
                ("post", f"{_WORKSPACES}/{{workspace_id}}/archive", "200"),
                operation,
                {"workspace_id": "$response.body#/id"},
            )
        if path == _WORKSPACE_FILE and method != "put":
            same_file = {"workspace_id": "$request.path.workspace_id", "path": "$request.path.path"}
            _link(schema, ("put", _WORKSPACE_FILE, "201"), operation, same_file)
        if path == _SESSION_FILE and method != "put":
            same_file = {"session_id": "$request.path.session_id", "path": "$request.path.path"}
            _link(schema, ("put", _SESSION_FILE, "201"), operation, same_file)
