"""A small test client for the gateway's REST and WebSocket API."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
from websockets.asyncio.client import ClientConnection, connect


def marker(prefix: str = "m") -> str:
    """A unique word for a prompt: the fake API picks its script by it, so tests sharing one
    fake never answer each other's turns."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def mint_token(secret: str, sub: str, ttl: int = 3600, **claims: Any) -> str:
    """Tokens are minted here with pyjwt directly, as any third party could."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + ttl, **claims}, secret, "HS256")


class Api:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(120.0),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def create(self, expect: int = 201, **body: Any) -> dict[str, Any]:
        response = await self.http.post("/api/v1/sessions", json=body)
        assert response.status_code == expect, response.text
        return dict(response.json())

    async def get(self, session_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/sessions/{session_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_status(
        self, session_id: str, *statuses: str, timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        session: dict[str, Any] = {}
        while time.monotonic() < deadline:
            session = await self.get(session_id)
            if session["status"] in statuses:
                return session
            await asyncio.sleep(0.1)
        raise AssertionError(f"session {session_id} never reached {statuses}: {session}")

    async def chat(
        self, session_id: str, prompt: str, expect: int = 200, **body: Any
    ) -> dict[str, Any]:
        response = await self.http.post(
            f"/api/v1/sessions/{session_id}/chat", json={"prompt": prompt, **body}
        )
        assert response.status_code == expect, response.text
        return dict(response.json())

    async def stop(self, session_id: str) -> dict[str, Any]:
        response = await self.http.post(f"/api/v1/sessions/{session_id}/stop")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def ws_url(self, session_id: str, after: str | None = None, token: bool = False) -> str:
        url = self.base_url.replace("http://", "ws://") + f"/api/v1/sessions/{session_id}/stream"
        params = []
        if after is not None:
            params.append(f"after={after}")
        if token:
            params.append(f"token={self.token}")
        return url + ("?" + "&".join(params) if params else "")

    def stream(self, session_id: str, after: str | None = None) -> Any:
        return self.connect(
            self.ws_url(session_id, after), {"Authorization": f"Bearer {self.token}"}
        )

    @staticmethod
    def connect(url: str, headers: dict[str, str]) -> Any:
        return connect(url, additional_headers=headers, max_size=64 * 1024 * 1024)


async def read_until(
    ws: ClientConnection,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> list[dict[str, Any]]:
    """Envelopes received until (and including) the first that matches ``predicate``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            envelope = json.loads(await ws.recv())
            seen.append(envelope)
            if predicate(envelope):
                return seen


def is_claude(kind: str, subtype: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(envelope: dict[str, Any]) -> bool:
        event = envelope["event"]
        return (
            envelope["source"] == "claude"
            and event.get("type") == kind
            and (subtype is None or event.get("subtype") == subtype)
        )

    return check


def is_status(status: str) -> Callable[[dict[str, Any]], bool]:
    def check(envelope: dict[str, Any]) -> bool:
        event = envelope["event"]
        return (
            envelope["source"] == "gateway"
            and event.get("type") == "status"
            and event.get("status") == status
        )

    return check
