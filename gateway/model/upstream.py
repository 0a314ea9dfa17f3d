"""The upstream Anthropic API, reached with the operator's credential.

One pooled ``httpx.AsyncClient`` for the gateway's life. Headers the CLI sends that describe
the request (version, betas, content type, client identity) pass through; its own credential
(the session's token) never does. The operator's credential is added here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from gateway.config import Settings

# Request headers passed to the upstream as the CLI sent them.
_FORWARDED = frozenset(
    {
        "anthropic-version",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
        "content-type",
        "accept",
        "user-agent",
        "x-app",
        "x-claude-code-session-id",
    }
)
_FORWARDED_PREFIXES = ("x-stainless-",)
# Response headers that describe one hop or that the server re-computes.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "upgrade",
        "proxy-authenticate",
        "trailer",
        "te",
    }
)
OAUTH_BETA = "oauth-2025-04-20"


class NoCredential(Exception):
    """The operator gave the gateway no model credential."""


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self._credential = _credential_headers(settings)
        self._client = httpx.AsyncClient(
            base_url=settings.anthropic_base_url.rstrip("/"),
            timeout=httpx.Timeout(settings.model_upstream_timeout, connect=10.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            # Bytes pass through as they are: no decompression here, none at the client.
            headers={"accept-encoding": "identity"},
        )

    async def close(self) -> None:
        await self._client.aclose()

    def request_headers(self, incoming: Mapping[str, str]) -> dict[str, str]:
        """What the upstream gets: the CLI's descriptive headers and the operator's
        credential. Raises ``NoCredential``."""
        if not self._credential:
            raise NoCredential("the gateway has no model credential (ANTHROPIC_API_KEY, ...)")
        headers = {
            name: value
            for name, value in incoming.items()
            if name in _FORWARDED or name.startswith(_FORWARDED_PREFIXES)
        }
        credential = dict(self._credential)
        beta = credential.pop("anthropic-beta", None)
        if beta:
            betas = [b for b in headers.get("anthropic-beta", "").split(",") if b]
            if beta not in betas:
                headers["anthropic-beta"] = ",".join([*betas, beta])
        headers.update(credential)
        return headers

    async def send(
        self, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> httpx.Response:
        """POST to the upstream; the response's body is not read yet (stream it, then close
        the response). Raises ``httpx.HTTPError`` when it cannot be reached."""
        request = self._client.build_request(
            "POST", path, params=httpx.QueryParams(query), headers=dict(headers), content=body
        )
        return await self._client.send(request, stream=True)


def response_headers(upstream: httpx.Response) -> dict[str, str]:
    return {
        name: value for name, value in upstream.headers.items() if name.lower() not in _HOP_BY_HOP
    }


def _credential_headers(settings: Settings) -> dict[str, str]:
    if settings.anthropic_api_key and settings.anthropic_api_key.get_secret_value():
        return {"x-api-key": settings.anthropic_api_key.get_secret_value()}
    if settings.anthropic_auth_token and settings.anthropic_auth_token.get_secret_value():
        return {"authorization": f"Bearer {settings.anthropic_auth_token.get_secret_value()}"}
    oauth = settings.claude_code_oauth_token
    if oauth and oauth.get_secret_value():
        # As the CLI itself sends an OAuth token: as a bearer, with the OAuth beta.
        return {"authorization": f"Bearer {oauth.get_secret_value()}", "anthropic-beta": OAUTH_BETA}
    return {}
