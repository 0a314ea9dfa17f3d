"""The Anthropic Messages API for the gateway's sessions (their CLI's ANTHROPIC_BASE_URL).

Not part of CC-Docker's own API (not under /api, not in its OpenAPI schema): it speaks
Anthropic's protocol, answers Anthropic-shaped errors, and only a session's own capability
token is accepted. SPEC.md section 14 describes it.

Served by an ASGI middleware in front of FastAPI's routing rather than as a route: every model
call of every session passes here, and FastAPI's routing, dependency injection and exception
layers cost about 1.5 ms before the first byte on this path. The request guard is skipped too:
the proxy authenticates its own callers and bounds its bodies by MODEL_MAX_REQUEST_BYTES.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from wrapper.protocol import MODEL_PROXY_PREFIX

_ENDPOINTS = {
    f"{MODEL_PROXY_PREFIX}/v1/messages": "messages",
    f"{MODEL_PROXY_PREFIX}/v1/messages/count_tokens": "count_tokens",
}


class ModelRoutes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = _ENDPOINTS.get(scope["path"]) if scope["type"] == "http" else None
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if endpoint is None or scope["method"] != "POST" or services is None:
            await self.app(scope, receive, send)  # no route serves /model/: 404 there
            return
        response = await services.model_proxy.forward(endpoint, Request(scope, receive))
        await response(scope, receive, send)
