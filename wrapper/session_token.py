"""The session's capability token: kept in memory, mirrored to a file, refreshed before it expires.

The gateway mints a short-lived JWT for the container. The wrapper holds the current one (the
MCP tools read it on every call) and writes it to ``$HOME/.ccd/session-token`` so that
``ccd-agent``, run by the model through Bash, finds a valid token too. The wrapper never
verifies the token; it only reads its ``exp`` claim to know when to ask for the next one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from wrapper.gateway_client import GatewayError
from wrapper.token_file import write_token_file

if TYPE_CHECKING:
    from wrapper.gateway_replies import TokenGrant

log = logging.getLogger(__name__)

# When the token's lifetime is unknown (no readable ``exp``, no ``expires_in``).
UNKNOWN_LIFETIME_REFRESH = 300.0


class TokenIssuer(Protocol):
    async def refresh_token(self) -> TokenGrant: ...


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verification; ``None`` when the
    token is not a JWT or has no numeric ``exp``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class SessionToken:
    """The current token. ``get`` is what ``GatewayClient`` calls before each request."""

    def __init__(self, token: str | None, path: Path) -> None:
        self._token = token
        self.path = path

    def get(self) -> str | None:
        return self._token

    def replace(self, token: str) -> None:
        """Take a token given from outside (a pooled container's claim)."""
        self._token = token

    def save(self) -> None:
        """Write the current token to the file for ``ccd-agent`` (nothing without a token)."""
        if self._token:
            write_token_file(self.path, self._token)

    async def refresh_forever(
        self,
        issuer: TokenIssuer,
        *,
        min_delay: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        """Swap the token for a fresh one at about half its remaining lifetime, forever.

        A failed refresh is logged and retried with exponential backoff (up to
        ``max_backoff`` seconds); nothing here raises, so the wrapper never dies of it. Without
        a token this returns at once: there is nothing to refresh.
        """
        if not self._token:
            return
        delay = self._next_delay(None, min_delay)
        failures = 0
        while True:
            await asyncio.sleep(delay)
            try:
                grant = await issuer.refresh_token()
                # The file first (off the event loop), then memory: whoever sees the new token
                # in memory finds it in the file too, even if this is cancelled in between.
                await asyncio.to_thread(write_token_file, self.path, grant.token)
                self._token = grant.token
            except GatewayError as exc:
                failures += 1
                delay = min(max_backoff, min_delay * 2 ** (failures - 1))
                log.warning(
                    "token refresh failed (%s, attempt %d); retrying in %.0f s",
                    exc,
                    failures,
                    delay,
                )
                continue
            except Exception:
                failures += 1
                delay = min(max_backoff, min_delay * 2 ** (failures - 1))
                log.exception("token refresh failed unexpectedly; retrying in %.0f s", delay)
                continue
            failures = 0
            delay = self._next_delay(grant.expires_in, min_delay)
            log.info("session token refreshed; next refresh in %.0f s", delay)

    def _next_delay(self, expires_in: int | None, min_delay: float) -> float:
        assert self._token is not None
        exp = token_expiry(self._token)
        if exp is not None:
            remaining = exp - time.time()
        elif expires_in is not None:
            remaining = float(expires_in)
        else:
            remaining = 2 * UNKNOWN_LIFETIME_REFRESH
        return max(min_delay, remaining / 2)
