"""The ``sessions`` MCP server's JSON-RPC dispatch, against a behavioural fake of the gateway."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest

from wrapper.claude_process import RefuseControl
from wrapper.gateway_client import GatewayError
from wrapper.gateway_replies import SessionInfo, TurnInfo, WaitOutcome
from wrapper.mcp_sessions import (
    HANDSHAKE_VERSIONS,
    INSTRUCTIONS,
    SERVER_VERSION,
    TOOL_LISTING_FILE,
    SessionsServer,
)
from wrapper.session_tools import TOOLS, tool_listing

pytestmark = pytest.mark.timeout(10)

Json = dict[str, Any]


class FakeSessions:
    """A tiny in-memory session tree that implements ``SessionsApi``: children get ids
    ``child-1``, ``child-2``...; ``refuse`` makes the next call fail like the gateway."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionInfo] = {}
        self.results: dict[str, str] = {}
        self.refuse: GatewayError | None = None
        self.wait_forever = False
        self.waiting = asyncio.Event()
        self.cancelled = False
        self._ids = itertools.count(1)

    def _check(self, session_id: str | None = None) -> None:
        error, self.refuse = self.refuse, None
        if error is not None:
            raise error
        if session_id is not None and session_id not in self.sessions:
            raise GatewayError(404, "session_not_found", f"no session {session_id}")

    async def spawn(
        self, prompt: str, *, model: str | None = None, system_prompt: str | None = None
    ) -> SessionInfo:
        self._check()
        child = SessionInfo(id=f"child-{next(self._ids)}", status="starting", depth=1)
        self.sessions[child.id] = child
        self.results[child.id] = f"did: {prompt} (model {model})"
        return child

    async def send(self, session_id: str, prompt: str) -> TurnInfo:
        self._check(session_id)
        self.results[session_id] = f"did: {prompt}"
        return TurnInfo(id="turn-9", seq=2, status="running")

    async def wait(self, session_id: str, timeout: float) -> WaitOutcome:
        self._check(session_id)
        if self.wait_forever:
            self.waiting.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        ready = self.sessions[session_id].model_copy(update={"status": "ready"})
        return WaitOutcome(
            session=ready,
            turn=TurnInfo(id="turn-1", status="completed"),
            result=self.results[session_id],
        )

    async def get(self, session_id: str) -> SessionInfo:
        self._check(session_id)
        return self.sessions[session_id]

    async def children(self, session_id: str | None = None) -> list[SessionInfo]:
        self._check()
        return list(self.sessions.values())

    async def stop(self, session_id: str) -> SessionInfo:
        self._check(session_id)
        self.sessions[session_id] = self.sessions[session_id].model_copy(
            update={"status": "stopped"}
        )
        return self.sessions[session_id]


@pytest.fixture
def api() -> FakeSessions:
    return FakeSessions()


@pytest.fixture
def server(api: FakeSessions) -> SessionsServer:
    return SessionsServer(api)


_ids = itertools.count(100)


async def rpc(server: SessionsServer, method: str, params: Json | None = None) -> Json:
    message: Json = {"jsonrpc": "2.0", "id": next(_ids), "method": method}
    if params is not None:
        message["params"] = params
    answer = await server.handle_message(message)
    assert answer is not None and answer["id"] == message["id"]
    return answer


async def call(server: SessionsServer, name: str, **arguments: Any) -> Json:
    answer = await rpc(server, "tools/call", {"name": name, "arguments": arguments})
    result: Json = answer["result"]
    return result


def text_of(result: Json) -> str:
    return "\n".join(block["text"] for block in result["content"])


INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "claude-code", "version": "2.1.197"},
}


async def test_initialize_echoes_a_known_version_and_offers_tools(server: SessionsServer) -> None:
    result = (await rpc(server, "initialize", INIT))["result"]
    assert result["protocolVersion"] == "2025-11-25"
    assert result["serverInfo"]["name"] == "sessions"
    assert result["capabilities"] == {"tools": {"listChanged": False}}

    old = (await rpc(server, "initialize", {**INIT, "protocolVersion": "2024-11-05"}))["result"]
    assert old["protocolVersion"] == "2024-11-05"
    future = {**INIT, "protocolVersion": "2999-01-01"}
    newest = (await rpc(server, "initialize", future))["result"]["protocolVersion"]
    assert newest != "2999-01-01" and newest >= "2025-11-25"


async def test_list_tools_describes_every_operation(server: SessionsServer) -> None:
    await rpc(server, "initialize", INIT)
    tools = {tool["name"]: tool for tool in (await rpc(server, "tools/list"))["result"]["tools"]}
    assert set(tools) == {
        "spawn_session",
        "send_message",
        "wait_for_session",
        "get_session",
        "list_children",
        "stop_session",
    }
    spawn = tools["spawn_session"]["inputSchema"]
    assert spawn["type"] == "object" and spawn["required"] == ["prompt"]
    assert set(spawn["properties"]) == {"prompt", "model", "system_prompt"}
    assert spawn["properties"]["model"] == {
        "type": "string",
        "minLength": 1,
        "description": spawn["properties"]["model"]["description"],
    }
    wait = tools["wait_for_session"]["inputSchema"]["properties"]["timeout_s"]
    assert wait["type"] == "number" and wait["default"] == 300
    assert tools["list_children"]["inputSchema"]["properties"] == {}
    assert all(len(tool["description"]) > 40 for tool in tools.values())
    assert tools["wait_for_session"]["annotations"]["readOnlyHint"] is True


async def test_tools_drive_the_gateway(server: SessionsServer, api: FakeSessions) -> None:
    spawned = await call(server, "spawn_session", prompt="count to 3", model="m1")
    assert spawned["isError"] is False
    assert spawned["structuredContent"] == {
        "session_id": "child-1",
        "depth": 1,
        "status": "starting",
    }
    assert "child-1" in text_of(spawned)

    waited = await call(server, "wait_for_session", session_id="child-1", timeout_s=5)
    assert text_of(waited) == "session child-1 is ready; result:\ndid: count to 3 (model m1)"
    assert waited["structuredContent"] == {
        "session_id": "child-1",
        "status": "ready",
        "result": "did: count to 3 (model m1)",
        "turn_status": "completed",
    }

    sent = await call(server, "send_message", session_id="child-1", prompt="and to 4")
    assert sent["structuredContent"]["turn_id"] == "turn-9" and "turn-9" in text_of(sent)
    got = await call(server, "get_session", session_id="child-1")
    assert got["structuredContent"]["id"] == "child-1" and "status starting" in text_of(got)
    children = await call(server, "list_children")
    assert children["structuredContent"] == {
        "sessions": [{"session_id": "child-1", "status": "starting", "depth": 1}]
    }
    stopped = await call(server, "stop_session", session_id="child-1")
    assert "stopped" in text_of(stopped) and api.sessions["child-1"].status == "stopped"


async def test_gateway_refusals_are_tool_errors(server: SessionsServer, api: FakeSessions) -> None:
    api.refuse = GatewayError(403, "spawn_depth_exceeded", "depth 3 exceeds MAX_SPAWN_DEPTH=2")
    refused = await call(server, "spawn_session", prompt="go deeper")
    assert refused["isError"] is True and "structuredContent" not in refused
    assert text_of(refused) == "error: spawn_depth_exceeded: depth 3 exceeds MAX_SPAWN_DEPTH=2"

    unknown = await call(server, "get_session", session_id="nope")
    assert unknown["isError"] is True and "session_not_found" in text_of(unknown)

    api.sessions["c"] = SessionInfo(id="c", status="busy")
    api.refuse = GatewayError(504, "wait_timeout", "still busy after 1 s")
    timed_out = await call(server, "wait_for_session", session_id="c", timeout_s=1)
    assert timed_out["isError"] is True
    assert "wait_timeout: still busy after 1 s" in text_of(timed_out)
    assert "call wait_for_session again" in text_of(timed_out)


async def test_bad_arguments_are_tool_errors(server: SessionsServer) -> None:
    missing = await call(server, "spawn_session")
    assert missing["isError"] is True
    assert text_of(missing) == "error: invalid arguments for spawn_session: prompt: Field required"
    extra = await call(server, "send_message", session_id="c", prompt="x", urgent=True)
    assert extra["isError"] is True and "urgent: Extra inputs are not permitted" in text_of(extra)
    negative = await call(server, "wait_for_session", session_id="c", timeout_s=-1)
    assert negative["isError"] is True and "timeout_s" in text_of(negative)


async def test_a_tool_bug_is_a_tool_error_too(server: SessionsServer, api: FakeSessions) -> None:
    async def broken(session_id: str | None = None) -> list[SessionInfo]:
        raise RuntimeError("boom")

    api.children = broken  # type: ignore[method-assign]
    result = await call(server, "list_children")
    assert result["isError"] is True and "internal_error: RuntimeError: boom" in text_of(result)


async def test_protocol_errors(server: SessionsServer) -> None:
    unknown = await rpc(server, "resources/list")
    assert unknown["error"]["code"] == -32601 and "resources/list" in unknown["error"]["message"]

    no_name = await rpc(server, "tools/call", {"arguments": {}})
    assert no_name["error"]["code"] == -32602
    no_tool = await rpc(server, "tools/call", {"name": "rm_rf", "arguments": {}})
    assert no_tool["error"] == {"code": -32602, "message": "unknown tool: rm_rf"}
    bad_init = await rpc(server, "initialize", {"protocolVersion": "2025-11-25"})
    assert bad_init["error"]["code"] == -32602

    garbage = await server.handle_message({"id": 7, "method": 3})
    assert garbage is not None and garbage["error"]["code"] == -32600 and garbage["id"] == 7
    not_rpc = await server.handle_message("not json-rpc")
    assert not_rpc is not None and not_rpc["id"] is None and not_rpc["error"]["code"] == -32600
    assert (await rpc(server, "ping"))["result"] == {}


async def test_notifications_and_stray_responses_get_no_answer(server: SessionsServer) -> None:
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert await server.handle_message(initialized) is None
    assert await server.handle_message({"jsonrpc": "2.0", "method": "notifications/x"}) is None
    assert await server.handle_message({"jsonrpc": "2.0", "id": 1, "result": {}}) is None


async def test_control_channel_wrapping(server: SessionsServer) -> None:
    request = {"subtype": "mcp_message", "server_name": "sessions"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    answer = await server.handle_control({**request, "message": ping})
    assert answer == {"mcp_response": {"jsonrpc": "2.0", "id": 1, "result": {}}}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert await server.handle_control({**request, "message": note}) == {}
    with pytest.raises(RefuseControl, match="other"):
        await server.handle_control({**request, "server_name": "other", "message": ping})


async def test_cancelled_notification_stops_the_tool_call(
    server: SessionsServer, api: FakeSessions
) -> None:
    api.sessions["c"] = SessionInfo(id="c", status="busy")
    api.wait_forever = True
    waiting = {
        "jsonrpc": "2.0",
        "id": 41,
        "method": "tools/call",
        "params": {"name": "wait_for_session", "arguments": {"session_id": "c"}},
    }
    task = asyncio.create_task(server.handle_message(waiting))
    await asyncio.wait_for(api.waiting.wait(), 5)
    cancel = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": 41, "reason": "AbortError"},
    }
    assert await server.handle_message(cancel) is None
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert api.cancelled
    # A late or unknown cancellation is harmless.
    assert await server.handle_message(cancel) is None


async def test_the_start_up_messages_do_not_import_mcp_types(server: SessionsServer) -> None:
    """The CLI's start-up messages are answered by hand: importing mcp_types (0.2-0.3 s of
    CPU) then would slow the CLI's own start in a one-CPU container. The first tool call
    imports it (in a thread) and waits for it."""
    for method, params in [("initialize", INIT), ("tools/list", None), ("ping", None)]:
        assert "result" in await rpc(server, method, params)
    assert server._wire._future is None
    result = await asyncio.wait_for(call(server, "list_children"), 5)
    assert result["isError"] is False and server._wire._future is not None


@pytest.mark.parametrize("version", HANDSHAKE_VERSIONS)
async def test_the_start_up_answers_equal_those_of_mcp_types(
    server: SessionsServer, version: str
) -> None:
    import mcp_types as mt

    initialized = await rpc(server, "initialize", {**INIT, "protocolVersion": version})
    result = mt.InitializeResult(
        protocol_version=version,
        capabilities=mt.ServerCapabilities(tools=mt.ToolsCapability(list_changed=False)),
        server_info=mt.Implementation(name="sessions", version=SERVER_VERSION),
        instructions=INSTRUCTIONS,
    )
    assert initialized["result"] == server._serialize("initialize", result)

    tools = [
        mt.Tool(
            name=tool.name,
            description=tool.description,
            input_schema=tool.schema,
            annotations=mt.ToolAnnotations(read_only_hint=tool.read_only, open_world_hint=False),
        )
        for tool in TOOLS
    ]
    listed = await rpc(server, "tools/list")
    assert listed["result"] == server._serialize("tools/list", mt.ListToolsResult(tools=tools))
    pinged = await rpc(server, "ping")
    assert pinged["result"] == server._serialize("ping", mt.EmptyResult())


def test_quick_initialize_knows_the_handshake_versions_of_mcp_types() -> None:
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

    assert set(HANDSHAKE_VERSIONS) == set(HANDSHAKE_PROTOCOL_VERSIONS)
    assert HANDSHAKE_VERSIONS[0] == LATEST_HANDSHAKE_VERSION


def test_the_tool_listing_file_is_what_the_tool_models_generate() -> None:
    assert json.loads(TOOL_LISTING_FILE.read_text(encoding="utf-8")) == tool_listing(TOOLS), (
        "regenerate it: python -m wrapper.session_tools > wrapper/session_tools.json"
    )
