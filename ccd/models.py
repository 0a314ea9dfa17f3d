"""The API's request and response bodies: one module, used by the gateway and by the SDK.

The gateway declares its routes with these classes (``gateway/schemas.py`` adds only the
constructors from database rows), so the OpenAPI schema it serves and what the SDK parses are
the same code. Names are the OpenAPI schema's component names. Dependencies: pydantic, and the
session config of the container contract (``wrapper/protocol.py``, pydantic only), which is
what a session's CLI is started with.

Response models ignore fields they do not know (a newer gateway may add some); request models
refuse unknown fields, as the gateway does.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wrapper.protocol import NO_NUL, PermissionMode
from wrapper.session_config import Budget, SessionConfig

__all__ = [
    "MAX_PROMPT_CHARS",
    "NO_NUL",
    "RESERVED_WORKSPACE_PREFIX",
    "WORKSPACE_NAME",
    "Budget",
    "ChatAccepted",
    "ChatRequest",
    "ChatResponse",
    "ChildWorkspace",
    "CreateSessionRequest",
    "EphemeralWorkspace",
    "ErrorBody",
    "ErrorResponse",
    "Event",
    "ExecuteRequest",
    "FileEntry",
    "FileList",
    "Health",
    "InheritWorkspace",
    "InterruptResponse",
    "OwnerUsage",
    "PermissionMode",
    "PersistentWorkspace",
    "Readiness",
    "RootWorkspace",
    "SaveOut",
    "SessionConfig",
    "SessionList",
    "SessionOut",
    "SessionStatus",
    "SessionToken",
    "SessionTree",
    "SessionUsage",
    "SessionWorkspace",
    "SpawnRequest",
    "TreeBudget",
    "TurnList",
    "TurnOut",
    "TurnStatus",
    "UsageFigures",
    "UsageTotals",
    "WaitRequest",
    "WaitResponse",
    "WorkspaceList",
    "WorkspaceOut",
]

MAX_PROMPT_CHARS = 1_000_000
WORKSPACE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
RESERVED_WORKSPACE_PREFIX = "session-"  # sessions' own workspaces are named session-<id>


class SessionStatus(StrEnum):
    STARTING = "starting"  # container started, CLI not yet past its handshake
    READY = "ready"  # idle, accepts a turn
    BUSY = "busy"  # a turn runs
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class TurnStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"  # the CLI's result says success
    FAILED = "failed"  # an error result, or no result (CLI crash, session failure)
    INTERRUPTED = "interrupted"  # aborted by an interrupt or a stop


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests --------------------------------------------------------------------------------


class _OwnWorkspace(_Strict):
    # `id` and `read_only` are only for persistent workspaces; their empty values are taken
    # here too (as they always were), and keep a request's idempotency hash as it was.
    id: None = Field(default=None, description="Only for persistent workspaces.")
    read_only: Literal[False] = Field(default=False, description="Only for persistent ones.")


class EphemeralWorkspace(_OwnWorkspace):
    """The session's own files (the default), kept until the session is deleted."""

    type: Literal["ephemeral"] = "ephemeral"


class PersistentWorkspace(_Strict):
    """A named workspace of the caller's, created on first use and outliving sessions."""

    type: Literal["persistent"]
    id: str = Field(
        pattern=WORKSPACE_NAME,
        description="The workspace's name (names starting "
        f'"{RESERVED_WORKSPACE_PREFIX}" are sessions\' own).',
        # The schema says both rules in one pattern; pydantic's regex engine has no lookahead,
        # so the validator below checks the prefix.
        json_schema_extra={"pattern": f"^(?!{RESERVED_WORKSPACE_PREFIX}){WORKSPACE_NAME[1:]}"},
    )
    read_only: bool = Field(
        default=False,
        description="A copy that is never saved back (may run beside a session that writes the "
        "workspace).",
    )

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith(RESERVED_WORKSPACE_PREFIX):
            raise ValueError(f'workspace ids starting "{RESERVED_WORKSPACE_PREFIX}" are reserved')
        return value


class InheritWorkspace(_OwnWorkspace):
    """Spawn only: the child's own, starting as a copy of the parent's current files."""

    type: Literal["inherit"]


# Not a discriminated union: ``{}`` (no ``type``) means ephemeral.
RootWorkspace = EphemeralWorkspace | PersistentWorkspace
ChildWorkspace = EphemeralWorkspace | PersistentWorkspace | InheritWorkspace


class CreateSessionRequest(_Strict):
    config: SessionConfig = Field(default_factory=SessionConfig)
    workspace: RootWorkspace = Field(default_factory=EphemeralWorkspace)
    prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        pattern=NO_NUL,
        description="Optional first turn, queued until the CLI is ready.",
    )


class SpawnRequest(_Strict):
    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        pattern=NO_NUL,
        description="The child's first turn.",
    )
    config: SessionConfig = Field(
        default_factory=SessionConfig,
        description="Overrides of the parent's config; unset fields are inherited.",
    )
    workspace: ChildWorkspace = Field(default_factory=EphemeralWorkspace)


class ChatRequest(_Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NO_NUL)
    stream: bool = Field(
        default=False, description="Answer text/event-stream, one event per line of the turn."
    )
    wait: bool = Field(
        default=True,
        description="false: answer 202 with the accepted turn at once, without waiting.",
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Seconds to wait for the turn's result (default CHAT_TIMEOUT_DEFAULT).",
    )


class ExecuteRequest(_Strict):
    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NO_NUL, description="The one turn."
    )
    config: SessionConfig = Field(default_factory=SessionConfig)
    workspace: RootWorkspace = Field(
        default_factory=EphemeralWorkspace,
        description="A persistent workspace is saved before the session is deleted.",
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Seconds the run may take, container start included (default "
        "CHAT_TIMEOUT_DEFAULT); then it is interrupted and cleaned up.",
    )


class WaitRequest(_Strict):
    timeout: float = Field(
        default=300, gt=0, le=3600, description="Seconds to wait for the session to be idle."
    )


# -- responses -------------------------------------------------------------------------------


class SessionWorkspace(BaseModel):
    id: str
    type: Literal["ephemeral", "persistent"]
    read_only: bool
    unsaved: bool = Field(
        description="A save at stop or failure failed; its container is kept and retried."
    )


class UsageFigures(BaseModel):
    """Model usage: what the upstream reported, summed, and its price (MODEL_PRICES)."""

    requests: int = Field(description="Model calls that ended.")
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float


class SessionOut(BaseModel):
    id: uuid.UUID
    owner: str
    parent_id: uuid.UUID | None
    root_id: uuid.UUID
    depth: int
    status: SessionStatus
    image: str
    config: dict[str, Any]
    workspace: SessionWorkspace | None
    container_id: str | None
    current_turn_id: uuid.UUID | None
    exit_code: int | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    stopped_at: datetime | None
    usage: UsageFigures = Field(description="Its own model usage, running totals.")


class SessionList(BaseModel):
    sessions: list[SessionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class TurnOut(BaseModel):
    id: uuid.UUID
    session_id: uuid.UUID
    seq: int
    prompt: str
    status: TurnStatus
    result_text: str | None
    is_error: bool | None
    error: str | None
    cost_usd: float | None
    usage: dict[str, Any] | None
    duration_ms: int | None
    num_turns: int | None
    created_at: datetime
    finished_at: datetime | None


class TurnList(BaseModel):
    turns: list[TurnOut]


class SessionTree(SessionOut):
    last_turn: TurnOut | None = Field(description="The last finished turn.")
    children: list[SessionTree]


class WaitResponse(BaseModel):
    session: SessionOut
    turn: TurnOut | None = Field(description="The last finished turn.")
    result: str | None = Field(description="Its result text.")


class ChatAccepted(BaseModel):
    turn: TurnOut


class SessionToken(BaseModel):
    token: str
    expires_at: datetime
    expires_in: int


class ChatResponse(BaseModel):
    result: dict[str, Any] = Field(description="The CLI's result object, unchanged.")
    turn: TurnOut


class InterruptResponse(BaseModel):
    turn_id: uuid.UUID


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable", "draining"] = Field(
        description="`draining`: the gateway is shutting down (no dependency is checked)."
    )
    checks: dict[str, str] = Field(description="Each dependency: 'ok' or what failed.")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class WorkspaceOut(BaseModel):
    id: str = Field(description="The workspace's name.")
    type: Literal["ephemeral", "persistent"]
    size_bytes: int
    file_count: int = Field(description="Entries: files, directories and links.")
    save_count: int
    last_saved_at: datetime | None
    created_at: datetime
    sessions: list[uuid.UUID] = Field(description="Sessions using it now.")


class WorkspaceList(BaseModel):
    workspaces: list[WorkspaceOut]


class FileEntry(BaseModel):
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: str = Field(description="Permission bits in octal, e.g. 0644.")
    mtime: int = Field(description="Seconds since the epoch.")
    link_target: str | None = None
    sha256: str | None = None


class FileList(BaseModel):
    files: list[FileEntry]
    next_after: str | None = Field(
        default=None, description="More entries follow: pass as `after` (stored workspaces)."
    )
    truncated: bool = Field(default=False, description="More entries than `limit` (live).")


class SaveOut(BaseModel):
    workspace: str
    uploaded: int = Field(description="Files whose bytes were uploaded by this save.")
    unchanged: int
    deleted: int
    skipped: int = Field(description="Entries left out: links leading outside, devices, ...")
    bytes_uploaded: int
    files: int
    bytes: int


class UsageTotals(UsageFigures):
    models: dict[str, UsageFigures] = Field(description="The same figures per model.")


class TreeBudget(BaseModel):
    """A spawn tree's model budget and what it has spent (section 14 of SPEC.md)."""

    root_id: str
    max_tokens: int | None
    max_cost_usd: float | None
    spent_tokens: int = Field(description="All tokens the tree used (every kind).")
    spent_cost_usd: float
    reserved_tokens: int = Field(description="Held by the tree's calls in flight.")
    exceeded: bool


class SessionUsage(BaseModel):
    session: UsageTotals = Field(description="This session's own calls.")
    tree: UsageTotals = Field(description="This session and all its descendants.")
    budget: TreeBudget | None = Field(description="Its spawn tree's budget, when the root set one.")


class OwnerUsage(BaseModel):
    since: datetime | None
    until: datetime | None
    usage: UsageTotals


# -- the stream --------------------------------------------------------------------------------


class Event(BaseModel):
    """One message of a session's stream (WebSocket, chat and execute server-sent events):
    SPEC.md sections 4 and 5. ``id`` is the cursor (``?after=``); it is null for a notice meant
    for one reader (``prompt_accepted``, ``gap``, ...), which is not part of the stream.
    ``data`` is the event: for ``source == "claude"`` the CLI's stream-json line unchanged,
    for ``"gateway"`` CC-Docker's own (``status``, ``turn_started``, ...)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    id: str | None
    session_id: str
    source: str
    turn_id: str | None = None
    data: dict[str, Any] = Field(alias="event")

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))

    @property
    def is_notice(self) -> bool:
        return self.id is None

    @property
    def is_result(self) -> bool:
        """The CLI's ``result``: the end of a turn that ran."""
        return self.source == "claude" and self.type == "result"

    def ends_turn(self, turn_id: str | None) -> bool:
        """Whether this event ends turn ``turn_id`` (its result or its ``turn_failed``) or the
        session it runs in (a final ``status``)."""
        failed = self.source == "gateway" and self.type == "turn_failed"
        if turn_id is not None and self.turn_id == turn_id and (self.is_result or failed):
            return True
        return (
            self.source == "gateway"
            and self.type == "status"
            and self.data.get("status") in (SessionStatus.STOPPED, SessionStatus.FAILED)
        )

    def to_json(self) -> str:
        """The envelope as the gateway sent it (``event`` holds ``data``)."""
        return self.model_dump_json(by_alias=True)
