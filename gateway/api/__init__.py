"""HTTP and WebSocket routes."""

from fastapi import APIRouter

from gateway.api import health, session_files, sessions, stream, tree, workspaces

API_PREFIX = "/api/v1"


def build_router() -> APIRouter:
    router = APIRouter()
    router.include_router(health.router)
    router.include_router(sessions.router, prefix=API_PREFIX)
    router.include_router(tree.router, prefix=API_PREFIX)
    router.include_router(session_files.router, prefix=API_PREFIX)
    router.include_router(workspaces.router, prefix=API_PREFIX)
    router.include_router(stream.router, prefix=API_PREFIX)
    return router
