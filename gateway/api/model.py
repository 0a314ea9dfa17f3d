"""The Anthropic Messages API for the gateway's sessions (their CLI's ANTHROPIC_BASE_URL).

Not part of CC-Docker's own API (not under /api, not in its OpenAPI schema): it speaks
Anthropic's protocol, answers Anthropic-shaped errors, and only a session's own capability
token is accepted. SPEC.md section 14 describes it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import ServicesDep
from wrapper.protocol import MODEL_PROXY_PREFIX

router = APIRouter(prefix=MODEL_PROXY_PREFIX, include_in_schema=False)


@router.post("/v1/messages")
async def messages(request: Request, services: ServicesDep) -> Response:
    return await services.model_proxy.forward("messages", request)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request, services: ServicesDep) -> Response:
    return await services.model_proxy.forward("count_tokens", request)
