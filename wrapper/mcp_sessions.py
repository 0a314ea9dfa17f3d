"""The ``sessions`` MCP server, answered inside the wrapper over the CLI's control channel.

The CLI is started with ``--mcp-config`` declaring ``{"type": "sdk", "name": "sessions"}``, so
it sends every MCP message for that server as a ``control_request`` of subtype ``mcp_message``
on stdout; ``SessionsServer.handle_control`` answers it (``{"mcp_response": <JSON-RPC>}``, or
``{}`` for a notification). The model sees the tools as ``mcp__sessions__<tool>``.

Wire messages are built and checked with ``mcp_types``, except the three every CLI sends at
start-up: ``initialize``, ``tools/list`` and ``ping``. Importing mcp_types costs 0.2-0.3 s of
CPU, and the CLI sends ``initialize`` about 90 ms before it answers its own handshake and
``tools/list`` before its first turn: in a one-CPU session container, importing it then slowed
both (measured: the handshake's tail took twice as long). So those three are answered by hand
(tests keep them equal to mcp_types' answers in every protocol version), the tool listing from
``session_tools.json`` (generated from the tools' argument models; a test keeps it equal), and
mcp_types and the tools themselves (pydantic models, about 0.1 s more) are imported, in a
background thread, by the first message that needs them: in practice the model's first call of
a ``sessions`` tool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wrapper.claude_process import RefuseControl
from wrapper.cli import MCP_SERVER_NAME
from wrapper.gateway_client import GatewayError

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

    from wrapper.session_tools import SessionsApi, SessionTool, ToolOutput

log = logging.getLogger(__name__)

SERVER_NAME = MCP_SERVER_NAME
SERVER_VERSION = "1"
INSTRUCTIONS = (
    "Tools to delegate work to child sessions: other Claude Code agents, each in its own "
    "container. Spawn a child with a complete task, wait for its result, stop it when done."
)


# What tools/list answers for the default tools: ``python -m wrapper.session_tools`` writes it.
TOOL_LISTING_FILE = Path(__file__).with_name("session_tools.json")

# MCP versions with an ``initialize`` handshake, newest first (a test checks this against
# mcp_types.version.HANDSHAKE_PROTOCOL_VERSIONS).
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")


class _InvalidParams(Exception):
    pass


class _WireTypes:
    """``mcp_types`` and the tools imported once in a daemon thread. Handlers ``await
    ready()`` and then import them locally, which is only a ``sys.modules`` lookup by then."""

    # mcp_types.methods pulls in mcp_types itself and the per-version shapes.
    _MODULES = ("mcp_types.methods", "wrapper.session_tools")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        """Begin the import unless it has begun; returns at once."""
        with self._lock:
            if self._future is not None:
                return
            future: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._future = future
        threading.Thread(target=self._load, args=(future,), name="mcp-types", daemon=True).start()

    @classmethod
    def _load(cls, future: concurrent.futures.Future[None]) -> None:
        try:
            for module in cls._MODULES:
                importlib.import_module(module)
        except BaseException as exc:  # re-raised to whoever awaits ``ready``
            future.set_exception(exc)
        else:
            future.set_result(None)

    async def ready(self) -> None:
        self.start()
        assert self._future is not None
        await asyncio.wrap_future(self._future)


class SessionsServer:
    """One MCP server for the wrapper's lifetime; it outlives CLI restarts (a new CLI simply
    initializes again). Stateless but for the negotiated protocol version."""

    def __init__(self, api: SessionsApi, tools: tuple[SessionTool, ...] | None = None) -> None:
        """``tools``: ``session_tools.TOOLS`` unless given, loaded with mcp_types."""
        self._api = api
        self._given_tools = tools
        self._tool_listing: list[dict[str, Any]] | None = None
        self._wire = _WireTypes()
        self._version: str | None = None
        # Requests being answered, by JSON-RPC id, for ``notifications/cancelled``. The CLI
        # may open more than one MCP connection, each numbering from 0; ids of tool calls, the
        # only requests worth cancelling, did not collide in practice (one connection runs them).
        self._inflight: dict[str | int, asyncio.Task[Any]] = {}

    async def handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        """The supervisor's handler for ``mcp_message`` control requests."""
        server = request.get("server_name")
        if server != SERVER_NAME:
            raise RefuseControl(f"no in-process MCP server named {server!r}")
        answer = await self.handle_message(request.get("message"))
        return {} if answer is None else {"mcp_response": answer}

    async def handle_message(self, message: Any) -> dict[str, Any] | None:
        """Answer one JSON-RPC message; ``None`` for notifications, which get no answer.

        A later ``notifications/cancelled`` for a request cancels the task that is awaiting
        this call (in the wrapper, the supervisor's task answering that control request).

        Protocol errors (unknown method, malformed params, unknown tool) are JSON-RPC errors;
        anything that goes wrong inside a tool is a tool result with ``isError`` instead, so
        the model can read it and adapt.
        """
        if isinstance(message, dict) and "method" in message and "id" not in message:
            if message["method"] == "notifications/cancelled":
                await self._cancel(message.get("params"))
            return None  # no answer to any notification, known or not
        quick = self._quick_answer(message)
        if quick is not None:
            return quick
        await self._wire.ready()
        import mcp_types as mt
        from pydantic import ValidationError

        try:
            request = mt.JSONRPCRequest.model_validate(message)
        except ValidationError as exc:
            if isinstance(message, dict) and "method" not in message and "id" in message:
                return None  # a response to a request we never send: nothing to answer
            return _error(_request_id(message), mt.INVALID_REQUEST, f"invalid: {_brief(exc)}")
        if request.method != "tools/call":  # the only method not answered by hand
            return _error(request.id, mt.METHOD_NOT_FOUND, f"method not found: {request.method}")
        task = asyncio.current_task()
        if task is not None:
            self._inflight[request.id] = task
        try:
            result = await self._call_tool(request.params or {})
        except _InvalidParams as exc:
            return _error(request.id, mt.INVALID_PARAMS, str(exc))
        finally:
            if task is not None and self._inflight.get(request.id) is task:
                del self._inflight[request.id]
        response = mt.JSONRPCResponse(jsonrpc="2.0", id=request.id, result=result)
        return response.model_dump(mode="json")

    async def _cancel(self, params: Any) -> None:
        """``notifications/cancelled`` (the CLI sends it when a turn is interrupted during a
        tool call): cancel that request's task, so it stops and sends nothing, as MCP asks."""
        await self._wire.ready()
        import mcp_types as mt
        from pydantic import ValidationError

        try:
            request_id = mt.CancelledNotificationParams.model_validate(params or {}).request_id
        except ValidationError:
            return
        task = self._inflight.pop(request_id, None) if request_id is not None else None
        if task is not None:
            log.info("MCP request %s cancelled by the CLI", request_id)
            task.cancel()

    # -- answered by hand: the start-up messages ------------------------------------------

    def _quick_answer(self, message: Any) -> dict[str, Any] | None:
        """The answer to a well-formed ``initialize``, ``tools/list`` or ``ping``; ``None``
        for anything else, which goes through mcp_types."""
        if not (isinstance(message, dict) and message.get("jsonrpc") == "2.0"):
            return None
        ident = _request_id(message)
        if ident is None:
            return None
        method = message.get("method")
        if method == "initialize":
            return self._quick_initialize(ident, message.get("params"))
        if method == "tools/list":
            return {"jsonrpc": "2.0", "id": ident, "result": {"tools": self._listing()}}
        if method == "ping":
            return {"jsonrpc": "2.0", "id": ident, "result": {}}
        return None

    def _quick_initialize(self, ident: str | int, params: Any) -> dict[str, Any]:
        """``initialize``: the same checks and answer as mcp_types'. Echo the version the
        client asked for if we know it, else our newest (only versions with an ``initialize``
        handshake qualify: the newer stateless ones have none)."""
        client = params.get("clientInfo") if isinstance(params, dict) else None
        if not (
            isinstance(params, dict)
            and isinstance(params.get("protocolVersion"), str)
            and isinstance(params.get("capabilities"), dict)
            and isinstance(client, dict)
            and isinstance(client.get("name"), str)
            and isinstance(client.get("version"), str)
        ):
            return {
                "jsonrpc": "2.0",
                "id": ident,
                "error": {
                    "code": -32602,
                    "message": "invalid initialize params: protocolVersion, capabilities and "
                    "clientInfo (name, version) are required",
                },
            }
        asked = params["protocolVersion"]
        self._version = asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
        return {
            "jsonrpc": "2.0",
            "id": ident,
            "result": {
                "protocolVersion": self._version,
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": SERVER_NAME, "version": SERVER_VERSION},
                "instructions": INSTRUCTIONS,
            },
        }

    def _listing(self) -> list[dict[str, Any]]:
        """``tools/list``'s tools (one page: there are six), the same in every version."""
        if self._tool_listing is None:
            if self._given_tools is not None:
                from wrapper.session_tools import tool_listing

                self._tool_listing = tool_listing(self._given_tools)
            else:
                self._tool_listing = json.loads(TOOL_LISTING_FILE.read_text(encoding="utf-8"))
        return self._tool_listing

    def _tools(self) -> dict[str, SessionTool]:
        """By name; once ``ready``."""
        from wrapper.session_tools import TOOLS

        return {tool.name: tool for tool in self._given_tools or TOOLS}

    # -- through mcp_types (called after ``ready``) ------------------------------------------

    def _serialize(self, method: str, result: BaseModel) -> dict[str, Any]:
        """``result`` in the exact wire shape of the negotiated version (fields that version
        does not know are dropped)."""
        from mcp_types import DEFAULT_NEGOTIATED_VERSION
        from mcp_types.methods import serialize_server_result

        data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return serialize_server_result(method, self._version or DEFAULT_NEGOTIATED_VERSION, data)

    async def _call_tool(self, params: dict[str, Any]) -> dict[str, Any]:
        import mcp_types as mt
        from pydantic import ValidationError

        try:
            call = mt.CallToolRequestParams.model_validate(params)
        except ValidationError as exc:
            raise _InvalidParams(f"invalid tools/call params: {_brief(exc)}") from exc
        tool = self._tools().get(call.name)
        if tool is None:
            raise _InvalidParams(f"unknown tool: {call.name}")
        output = await self._run_tool(tool, call.arguments or {})
        result = mt.CallToolResult(
            content=[mt.TextContent(text=output.text)],
            structured_content=output.structured,
            is_error=output.is_error,
        )
        return self._serialize("tools/call", result)

    async def _run_tool(self, tool: SessionTool, arguments: dict[str, Any]) -> ToolOutput:
        """Run a tool; every failure becomes an error result the model can read."""
        from pydantic import ValidationError

        from wrapper.session_tools import ToolOutput, error_output

        try:
            args = tool.args.model_validate(arguments)
        except ValidationError as exc:
            return ToolOutput(
                f"error: invalid arguments for {tool.name}: {_brief(exc)}", None, True
            )
        try:
            return await tool.run(self._api, args)
        except GatewayError as exc:
            log.info("tool %s: gateway refused: %s", tool.name, exc)
            return error_output(exc)
        except Exception as exc:  # a bug here must cost one tool call, not the session
            log.exception("tool %s failed", tool.name)
            return ToolOutput(f"error: internal_error: {type(exc).__name__}: {exc}", None, True)


def _error(ident: str | int | None, code: int, message: str) -> dict[str, Any]:
    import mcp_types as mt

    error = mt.JSONRPCError(jsonrpc="2.0", id=ident, error=mt.ErrorData(code=code, message=message))
    return error.model_dump(mode="json", exclude_unset=True)


def _request_id(message: Any) -> str | int | None:
    """A request's id if it has a usable one (a malformed request's answer has ``null`` else)."""
    ident = message.get("id") if isinstance(message, dict) else None
    return ident if isinstance(ident, str | int) and not isinstance(ident, bool) else None


def _brief(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``field: problem; ...``."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "arguments"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
