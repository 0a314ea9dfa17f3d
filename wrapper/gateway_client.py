"""The session's own client of the gateway's REST API, shared by the MCP tools and ``ccd-agent``.

Every call authenticates with the session's current capability token, so the gateway limits it
to this session and its descendants. Failures of any kind (an HTTP error, an unreachable
gateway, a missing token) raise ``GatewayError``; callers never see an ``httpx`` exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    # Imported on first use: httpx costs a session's start about 40 ms of CPU, and the reply
    # models bring pydantic (about 0.1 s).
    import httpx
    from pydantic import BaseModel

    from wrapper.gateway_replies import SessionInfo, TokenGrant, TurnInfo, WaitOutcome

API_PREFIX = "/api/v1"
# Seconds for every call but wait; wait gets its own timeout plus this margin, so the gateway's
# 504 arrives before our client gives up.
DEFAULT_TIMEOUT = 30.0
WAIT_MARGIN = 30.0

_M = TypeVar("_M", bound="BaseModel")


class GatewayError(Exception):
    """A refused or failed gateway call: HTTP ``status`` (``None`` without a response), the
    gateway's error ``code`` and its human ``message``."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def from_response(cls, response: httpx.Response) -> GatewayError:
        """Read ``{"error": {"code", "message"}}``; anything else falls back to the reason."""
        code, message = f"http_{response.status_code}", response.reason_phrase or "error"
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            code = error["code"]
            message = str(error.get("message") or message)
        return cls(response.status_code, code, message)


class GatewayClient:
    """Async client for one session's operations. ``token`` is asked before every request, so
    a refreshed token is used at once. Use as an async context manager or call ``aclose``."""

    def __init__(
        self,
        base_url: str,
        session_id: str,
        token: Callable[[], str | None],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.session_id = session_id
        self._token = token
        self._timeout = timeout
        self._base_url = base_url.rstrip("/") + API_PREFIX
        self._transport = transport
        # Made on first use: building one loads the CA bundle (about 30 ms), which would
        # otherwise delay the CLI's start for a tool the model may call much later.
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(
                base_url=self._base_url, timeout=self._timeout, transport=self._transport
            )
        return self._http

    # -- operations ------------------------------------------------------------------------

    async def spawn(
        self, prompt: str, *, model: str | None = None, system_prompt: str | None = None
    ) -> SessionInfo:
        """Start a child of this session with ``prompt`` as its first turn."""
        config = {
            key: value
            for key, value in (("model", model), ("system_prompt", system_prompt))
            if value is not None
        }
        body = {"prompt": prompt, "config": config}
        data = await self._call("POST", f"/sessions/{self.session_id}/spawn", body)
        from wrapper.gateway_replies import SessionInfo

        return _parse(SessionInfo, data)

    async def send(self, session_id: str, prompt: str) -> TurnInfo:
        """Queue ``prompt`` as a turn of ``session_id`` without waiting for it."""
        data = await self._call(
            "POST", f"/sessions/{session_id}/chat", {"prompt": prompt, "wait": False}
        )
        from wrapper.gateway_replies import TurnInfo

        return _parse(TurnInfo, _field(data, "turn"))

    async def wait(self, session_id: str, timeout: float) -> WaitOutcome:
        """Wait until ``session_id`` has no turn running; the gateway answers 504
        ``wait_timeout`` after ``timeout`` seconds."""
        data = await self._call(
            "POST",
            f"/sessions/{session_id}/wait",
            {"timeout": timeout},
            timeout=timeout + WAIT_MARGIN,
        )
        from wrapper.gateway_replies import WaitOutcome

        return _parse(WaitOutcome, data)

    async def get(self, session_id: str) -> SessionInfo:
        from wrapper.gateway_replies import SessionInfo

        return _parse(SessionInfo, await self._call("GET", f"/sessions/{session_id}"))

    async def children(self, session_id: str | None = None) -> list[SessionInfo]:
        """The direct children of ``session_id`` (default: this session)."""
        data = await self._call("GET", f"/sessions/{session_id or self.session_id}/children")
        sessions = _field(data, "sessions")
        if not isinstance(sessions, list):
            raise GatewayError(None, "invalid_response", "children: 'sessions' is not a list")
        from wrapper.gateway_replies import SessionInfo

        return [_parse(SessionInfo, item) for item in sessions]

    async def stop(self, session_id: str) -> SessionInfo:
        from wrapper.gateway_replies import SessionInfo

        return _parse(SessionInfo, await self._call("POST", f"/sessions/{session_id}/stop"))

    async def refresh_token(self) -> TokenGrant:
        """A fresh token for this session, minted with the current one."""
        data = await self._call("POST", f"/sessions/{self.session_id}/token")
        from wrapper.gateway_replies import TokenGrant

        return _parse(TokenGrant, data)

    # -- transport -------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        token = self._token()
        if not token:
            raise GatewayError(
                None,
                "no_session_token",
                "this session has no capability token, so it cannot call the gateway",
            )
        import httpx

        try:
            response = await self._client().request(
                method,
                path,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=timeout if timeout is not None else self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise GatewayError(
                None, "gateway_timeout", f"{method} {path}: no answer in time ({exc!r})"
            ) from exc
        except httpx.TransportError as exc:
            raise GatewayError(
                None, "gateway_unreachable", f"{method} {path}: {type(exc).__name__}: {exc}"
            ) from exc
        if response.is_error:
            raise GatewayError.from_response(response)
        try:
            return response.json()
        except ValueError as exc:
            raise GatewayError(
                response.status_code, "invalid_response", f"{method} {path}: not JSON"
            ) from exc


def _field(data: Any, name: str) -> Any:
    if not isinstance(data, dict) or name not in data:
        raise GatewayError(None, "invalid_response", f"the gateway's reply has no {name!r}")
    return data[name]


def _parse(model: type[_M], data: Any) -> _M:
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise GatewayError(
            None, "invalid_response", f"unexpected {model.__name__} from the gateway: {exc}"
        ) from exc
