"""What the SDK makes of a turn's end, and the request bodies it builds (validated by the same
models the gateway validates with, so a bad request fails before it is sent)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ccd.errors import InvalidArgument
from ccd.models import (
    ChatResponse,
    EphemeralWorkspace,
    Event,
    InheritWorkspace,
    PersistentWorkspace,
    SessionConfig,
    TurnOut,
)

ConfigArg = SessionConfig | dict[str, Any] | None
# A string names a persistent workspace; otherwise a model or its dict ({"type": "inherit"}).
WorkspaceArg = (
    str | EphemeralWorkspace | PersistentWorkspace | InheritWorkspace | dict[str, Any] | None
)


@dataclass(frozen=True)
class TurnResult:
    """How a turn ended: ``text`` (the CLI's final answer), ``is_error``, ``cost_usd`` (this
    turn's own cost, when the gateway recorded it), ``raw`` (the CLI's ``result`` object,
    unchanged), ``turn`` (the recorded turn, when known)."""

    text: str
    is_error: bool
    cost_usd: float | None
    raw: dict[str, Any] = field(repr=False)
    turn: TurnOut | None = field(default=None, repr=False)

    @property
    def subtype(self) -> str | None:
        value = self.raw.get("subtype")
        return value if isinstance(value, str) else None

    @classmethod
    def of_chat(cls, response: ChatResponse) -> TurnResult:
        result = response.result
        return cls(
            text=_text(result),
            is_error=bool(result.get("is_error")),
            cost_usd=response.turn.cost_usd,
            raw=result,
            turn=response.turn,
        )

    @classmethod
    def of_event(cls, event: Event, cost_usd: float | None = None) -> TurnResult:
        """From a stream's ``result`` event. Its ``total_cost_usd`` is the CLI process's running
        total, so the turn's own cost is given separately when known (a one-shot run: the
        process ran one turn, and the two are the same)."""
        return cls(
            text=_text(event.data),
            is_error=bool(event.data.get("is_error")),
            cost_usd=cost_usd,
            raw=dict(event.data),
        )


def _text(result: dict[str, Any]) -> str:
    value = result.get("result")
    return value if isinstance(value, str) else ""


def checked(model: type[BaseModel], body: dict[str, Any]) -> dict[str, Any]:
    """``body`` if ``model`` (the gateway's own) takes it, else ``InvalidArgument``."""
    try:
        model.model_validate(body)
    except ValidationError as exc:
        first = _relevant(exc.errors())
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidArgument(f"{where}: {first['msg']}") from None
    return body


def _relevant(errors: list[Any]) -> Any:
    """The error to show: not one of a union's branches whose ``type`` did not match (a
    persistent workspace's bad name, not "ephemeral workspaces take no id")."""
    wrong_branches = {
        tuple(error["loc"][:-1])
        for error in errors
        if error["type"] == "literal_error" and error["loc"][-1:] == ("type",)
    }
    for error in errors:
        if not any(tuple(error["loc"][: len(b)]) == b for b in wrong_branches):
            return error
    return errors[0]


def config_body(config: ConfigArg) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, SessionConfig):
        return config.model_dump(mode="json", exclude_none=True)
    return dict(config)


def workspace_body(workspace: WorkspaceArg) -> dict[str, Any] | None:
    if workspace is None:
        return None
    if isinstance(workspace, str):
        return {"type": "persistent", "id": workspace}
    if isinstance(workspace, dict):
        return dict(workspace)
    return workspace.model_dump(mode="json", exclude_none=True)


def session_body(
    prompt: str | None, config: ConfigArg, workspace: WorkspaceArg, **more: Any
) -> dict[str, Any]:
    """The body of a create, spawn or execute: only what was given."""
    body: dict[str, Any] = {k: v for k, v in more.items() if v is not None}
    if prompt is not None:
        body["prompt"] = prompt
    if config is not None:
        body["config"] = config_body(config)
    chosen = workspace_body(workspace)
    if chosen is not None:
        body["workspace"] = chosen
    return body
