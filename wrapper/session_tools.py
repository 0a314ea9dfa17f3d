"""The operations the agent may run on its own session tree, as tools for a model.

Each tool has an argument model (validation and the JSON schema the model reads, from one
definition), a description written for the model, and a coroutine that calls the gateway and
turns the answer into text plus a small structured result. Nothing here knows MCP:
``mcp_sessions`` serves these tools over the CLI's control channel.

What the model reads: when a tool result has ``structuredContent``, Claude Code (2.1.197) sends
the model that JSON instead of the text blocks; so a success's ``structured`` dict is written to
be self-explanatory, and errors carry text only (the code, the message and a hint).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from wrapper.gateway_client import GatewayError
from wrapper.gateway_replies import SessionInfo, TurnInfo, WaitOutcome

MAX_WAIT_SECONDS = 3600.0


class SessionsApi(Protocol):
    """What the tools need from the gateway; ``GatewayClient`` implements it. Every method
    raises ``GatewayError`` on failure."""

    async def spawn(
        self, prompt: str, *, model: str | None = None, system_prompt: str | None = None
    ) -> SessionInfo: ...

    async def send(self, session_id: str, prompt: str) -> TurnInfo: ...

    async def wait(self, session_id: str, timeout: float) -> WaitOutcome: ...

    async def get(self, session_id: str) -> SessionInfo: ...

    async def children(self, session_id: str | None = None) -> list[SessionInfo]: ...

    async def stop(self, session_id: str) -> SessionInfo: ...


@dataclass(frozen=True)
class ToolOutput:
    """What a tool returns: ``text`` for the model, ``structured`` for programs."""

    text: str
    structured: dict[str, Any] | None = None
    is_error: bool = False


def error_output(error: GatewayError) -> ToolOutput:
    """A gateway refusal as the model should see it: the code, the message, what to do."""
    text = f"error: {error.code}: {error.message}"
    hint = _HINTS.get(error.code)
    if hint:
        text += f"\n{hint}"
    return ToolOutput(text, is_error=True)


_HINTS = {
    "wait_timeout": "The session is still working; call wait_for_session again to keep waiting.",
    "session_busy": "The session is still working on a turn; wait_for_session first.",
    "session_not_found": "No such session in your subtree; list_children shows your children.",
}


# -- arguments -----------------------------------------------------------------------------


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _session_id() -> Any:
    return Field(min_length=1, max_length=200, description="The session's id.")


class SpawnArgs(_Args):
    prompt: str = Field(min_length=1, description="The child's first task, as a full prompt.")
    model: str | SkipJsonSchema[None] = Field(
        None, min_length=1, description="Model for the child (default: the gateway's)."
    )
    system_prompt: str | SkipJsonSchema[None] = Field(
        None, description="Replaces the child's system prompt (default: Claude Code's own)."
    )


class SendArgs(_Args):
    session_id: str = _session_id()
    prompt: str = Field(min_length=1, description="The next prompt for that session.")


class WaitArgs(_Args):
    session_id: str = _session_id()
    timeout_s: float = Field(
        300.0,
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="Seconds to wait before giving up with a wait_timeout error.",
    )


class SessionArgs(_Args):
    session_id: str = _session_id()


class NoArgs(_Args):
    pass


# -- tools ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionTool:
    name: str
    description: str
    args: type[_Args]
    run: Callable[[SessionsApi, Any], Awaitable[ToolOutput]]
    read_only: bool = False
    schema: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", _clean_schema(self.args.model_json_schema()))


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's generated titles and ``default: null``: noise for the model."""
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
        if "default" in prop and prop["default"] is None:
            del prop["default"]
    return schema


async def _spawn(api: SessionsApi, args: SpawnArgs) -> ToolOutput:
    child = await api.spawn(args.prompt, model=args.model, system_prompt=args.system_prompt)
    return ToolOutput(
        f"spawned session {child.id} (depth {child.depth}, status {child.status}); "
        "call wait_for_session with this id for its result",
        {"session_id": child.id, "depth": child.depth, "status": child.status},
    )


async def _send(api: SessionsApi, args: SendArgs) -> ToolOutput:
    turn = await api.send(args.session_id, args.prompt)
    return ToolOutput(
        f"sent to session {args.session_id} as turn {turn.id} (status {turn.status}); "
        "call wait_for_session for the reply",
        {"session_id": args.session_id, "turn_id": turn.id, "seq": turn.seq, "status": turn.status},
    )


async def _wait(api: SessionsApi, args: WaitArgs) -> ToolOutput:
    outcome = await api.wait(args.session_id, args.timeout_s)
    session, turn = outcome.session, outcome.turn
    turn_status = turn.status if turn is not None else None
    text = f"session {session.id} is {session.status}"
    if turn_status not in (None, "completed"):
        text += f"; its last turn {turn_status}"
    if outcome.result is not None:
        text += f"; result:\n{outcome.result}"
    else:
        text += "; no result text" if turn is not None else "; it has no finished turn yet"
    return ToolOutput(
        text,
        {
            "session_id": session.id,
            "status": session.status,
            "result": outcome.result,
            "turn_status": turn_status,
        },
    )


async def _get(api: SessionsApi, args: SessionArgs) -> ToolOutput:
    session = await api.get(args.session_id)
    return ToolOutput(
        f"session {session.id}: status {session.status}, depth {session.depth}, "
        f"parent {session.parent_id}",
        session.model_dump(mode="json"),
    )


async def _children(api: SessionsApi, _args: NoArgs) -> ToolOutput:
    sessions = await api.children()
    rows = [{"session_id": s.id, "status": s.status, "depth": s.depth} for s in sessions]
    if not rows:
        return ToolOutput("you have no child sessions", {"sessions": []})
    lines = [f"{r['session_id']}  status {r['status']}  depth {r['depth']}" for r in rows]
    return ToolOutput(f"{len(rows)} child session(s):\n" + "\n".join(lines), {"sessions": rows})


async def _stop(api: SessionsApi, args: SessionArgs) -> ToolOutput:
    session = await api.stop(args.session_id)
    return ToolOutput(
        f"session {session.id} stopped (status {session.status})",
        {"session_id": session.id, "status": session.status},
    )


TOOLS: tuple[SessionTool, ...] = (
    SessionTool(
        "spawn_session",
        "Start a child session: another Claude Code agent in its own container and workspace, "
        "working on `prompt` as its first task. Returns at once with the child's session id "
        "while the child works in the background. Then use wait_for_session for its result, "
        "send_message for follow-up work and stop_session when it is no longer needed. The "
        "gateway limits the depth of the tree, the children per session and the sessions per "
        "tree; a refused spawn names the limit.",
        SpawnArgs,
        _spawn,
    ),
    SessionTool(
        "send_message",
        "Send a follow-up prompt to a session in your subtree (usually a child you spawned) as "
        "its next turn. Returns the turn id without waiting; call wait_for_session for the "
        "reply. Refused with session_busy while that session is still working on a turn.",
        SendArgs,
        _send,
    ),
    SessionTool(
        "wait_for_session",
        "Wait until a session in your subtree has finished its current turn (or has ended), "
        "then return its status and the final text of its last turn. If it is still working "
        "after timeout_s seconds you get a wait_timeout error; it keeps working and you may "
        "wait again.",
        WaitArgs,
        _wait,
        read_only=True,
    ),
    SessionTool(
        "get_session",
        "The current status of a session in your subtree (status, depth, parent), without waiting.",
        SessionArgs,
        _get,
        read_only=True,
    ),
    SessionTool(
        "list_children",
        "List the sessions you spawned (your direct children): id, status and depth of each.",
        NoArgs,
        _children,
        read_only=True,
    ),
    SessionTool(
        "stop_session",
        "Stop a session in your subtree and its container, ending its work. Use it when a "
        "child's work is done or no longer wanted.",
        SessionArgs,
        _stop,
    ),
)


def tool_listing(tools: tuple[SessionTool, ...]) -> list[dict[str, Any]]:
    """The tools as MCP's tools/list shows them (the same in every protocol version)."""
    return [
        {
            "name": tool.name,
            "description": tool.description,
            "inputSchema": tool.schema,
            "annotations": {"readOnlyHint": tool.read_only, "openWorldHint": False},
        }
        for tool in tools
    ]


if __name__ == "__main__":  # writes what mcp_sessions.TOOL_LISTING_FILE holds
    print(json.dumps(tool_listing(TOOLS), indent=2, ensure_ascii=False))
