"""The Anthropic Messages API for the gateway's sessions (their CLI's ANTHROPIC_BASE_URL).

Not part of CC-Docker's own API (not under /api, not in its OpenAPI schema): it speaks
Anthropic's protocol, answers Anthropic-shaped errors, and only a session's own capability
token is accepted. SPEC.md section 14 describes it.

Served before FastAPI's own layers (``GatewayApp``) rather than as a route or a middleware:
every model call of every session passes here, and FastAPI's routing, dependency injection,
exception, telemetry and body-limit layers cost about 1.5 ms before the first byte on this
path. The request guard is skipped too: the proxy authenticates its own callers and bounds its
bodies by MODEL_MAX_REQUEST_BYTES. Its own errors are Anthropic-shaped 500s.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from gateway.model.proxy import anthropic_error
from wrapper.protocol import MODEL_PROXY_PREFIX

log = logging.getLogger(__name__)

_ENDPOINTS = {
    f"{MODEL_PROXY_PREFIX}/v1/messages": "messages",
    f"{MODEL_PROXY_PREFIX}/v1/messages/count_tokens": "count_tokens",
}


class GatewayApp(FastAPI):
    """The gateway's FastAPI app, serving the model proxy's calls before anything else."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = _ENDPOINTS.get(scope["path"]) if scope["type"] == "http" else None
        services = getattr(self.state, "services", None)
        if endpoint is None or scope["method"] != "POST" or services is None:
            await super().__call__(scope, receive, send)  # no route serves /model/: 404 there
            return
        scope["app"] = self
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            response = await services.model_proxy.forward(endpoint, Request(scope, receive))
            await response(scope, receive, sending)
        except Exception:
            log.exception("model call failed in the gateway")
            if started:
                raise  # the server ends the connection: the client sees a cut answer
            failed = anthropic_error(500, "api_error", "the gateway failed; see its log")
            await failed(scope, receive, send)
