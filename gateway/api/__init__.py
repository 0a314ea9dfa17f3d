"""HTTP and WebSocket routes."""

from typing import Any

from fastapi import APIRouter

from gateway.api import (
    execute,
    health,
    metrics,
    session_files,
    sessions,
    stream,
    tree,
    usage,
    workspaces,
)
from gateway.schemas import ErrorResponse

API_PREFIX = "/api/v1"

# What the request guard (gateway/guard.py) may answer for any route under /api/, before the
# route runs; routes that say more about one of these codes override the entry.
GUARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "missing_token, invalid_token, token_expired (or token_revoked)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    413: {"model": ErrorResponse, "description": "request_too_large: over MAX_REQUEST_BYTES"},
    429: {
        "model": ErrorResponse,
        "description": "rate_limited: the owner's request rate; retry after `Retry-After` s",
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    },
}


def build_router() -> APIRouter:
    router = APIRouter()
    router.include_router(health.router)
    router.include_router(metrics.router)
    for api in (sessions, tree, session_files, workspaces, usage, execute):
        router.include_router(api.router, prefix=API_PREFIX, responses=GUARD_RESPONSES)
    router.include_router(stream.router, prefix=API_PREFIX)
    return router
