"""The HTTP side of the SDK: one pooled ``httpx.AsyncClient``, the gateway's errors turned into
``ApiError``, transport failures into ``ConnectionFailed``, and server-sent event streams."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
from httpx_sse import aconnect_sse
from pydantic import BaseModel

from ccd.errors import ConnectionFailed, api_error, stream_error
from ccd.models import Event

ENV_URL = "CCD_URL"
ENV_TOKEN = "CCD_TOKEN"
DEFAULT_URL = "http://localhost:8000"
API_PREFIX = "/api/v1"

Model = TypeVar("Model", bound=BaseModel)

# httpx's failures of the connection itself (as opposed to an answer): the gateway is down or
# unreachable, or the connection broke mid-answer.
_TRANSPORT_ERRORS = (httpx.TransportError,)


def resolve(base_url: str | None, token: str | None) -> tuple[str, str | None]:
    """The gateway's URL and the token: the arguments, else ``CCD_URL`` / ``CCD_TOKEN``."""
    url = base_url or os.environ.get(ENV_URL) or DEFAULT_URL
    return url.rstrip("/"), token or os.environ.get(ENV_TOKEN) or None


def path_of(*segments: str) -> str:
    """A URL path from segments; a file path keeps its slashes, everything else is quoted."""
    return "/".join(quote(segment, safe="/") for segment in segments)


class Transport:
    """Requests under ``<base_url>/api/v1`` with the bearer token."""

    def __init__(self, base_url: str, token: str | None, timeout: float) -> None:
        self.base_url = base_url
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(
            base_url=base_url + API_PREFIX, headers=headers, timeout=timeout
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def _unreachable(self, exc: Exception) -> ConnectionFailed:
        detail = str(exc) or type(exc).__name__
        return ConnectionFailed(f"cannot reach the gateway at {self.base_url}: {detail}")

    async def request(
        self, method: str, path: str, *, read_timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """The answer to one request, read in full; ``ApiError`` when it is an error.
        ``read_timeout``: for requests the gateway answers late on purpose (chat, wait)."""
        if read_timeout is not None:
            kwargs["timeout"] = httpx.Timeout(self.http.timeout.connect, read=read_timeout)
        try:
            response = await self.http.request(method, path, **kwargs)
        except _TRANSPORT_ERRORS as exc:
            raise self._unreachable(exc) from exc
        if response.is_error:
            raise api_error(response.status_code, response.content, response.headers)
        return response

    async def get_model(self, model: type[Model], path: str, **kwargs: Any) -> Model:
        return model.model_validate_json((await self.request("GET", path, **kwargs)).content)

    async def send_model(self, model: type[Model], method: str, path: str, **kwargs: Any) -> Model:
        return model.model_validate_json((await self.request(method, path, **kwargs)).content)

    @contextlib.asynccontextmanager
    async def download(self, path: str, **kwargs: Any) -> AsyncIterator[AsyncIterator[bytes]]:
        """The body of a successful GET, as chunks while they arrive."""
        try:
            async with self.http.stream("GET", path, **kwargs) as response:
                if response.is_error:
                    await response.aread()
                    raise api_error(response.status_code, response.content, response.headers)
                yield self._chunks(response)
        except _TRANSPORT_ERRORS as exc:
            raise self._unreachable(exc) from exc

    async def _chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        async for chunk in response.aiter_bytes():
            yield chunk

    async def events(
        self, path: str, body: Mapping[str, Any], read_timeout: float | None
    ) -> AsyncIterator[Event]:
        """POST ``body`` and yield the server-sent events of the answer, each an envelope;
        an ``event: error`` raises its ``ApiError`` (after every event before it)."""
        timeout = httpx.Timeout(self.http.timeout.connect, read=read_timeout)
        try:
            async with aconnect_sse(
                self.http, "POST", path, json=dict(body), timeout=timeout
            ) as source:
                response = source.response
                if response.is_error:
                    await response.aread()
                    raise api_error(response.status_code, response.content, response.headers)
                async for message in source.aiter_sse():
                    if message.event == "error":
                        raise stream_error(message.data)
                    if message.data:
                        yield Event.model_validate_json(message.data)
        except _TRANSPORT_ERRORS as exc:
            raise self._unreachable(exc) from exc

    def websocket_url(self, path: str, params: Mapping[str, str]) -> str:
        url = self.base_url + API_PREFIX + path
        url = "ws" + url.removeprefix("http")  # http -> ws, https -> wss
        return f"{url}?{urlencode(params)}" if params else url
