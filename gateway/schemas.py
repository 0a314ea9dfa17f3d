"""Request and response bodies of the REST API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.db.models import (
    SessionRow,
    SessionStatus,
    TurnRow,
    TurnStatus,
    WorkspaceKind,
    WorkspaceRow,
)
from gateway.services.trees import TreeNode
from gateway.services.workspaces import MODE_RO, WorkspaceChoice
from wrapper.protocol import NO_NUL, SessionConfig

MAX_PROMPT_CHARS = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


WORKSPACE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
RESERVED_WORKSPACE_PREFIX = "session-"  # sessions' own workspaces are named session-<id>


class _OwnWorkspace(_Strict):
    # `id` and `read_only` are only for persistent workspaces; their empty values are taken
    # here too (as they always were), and keep a request's idempotency hash as it was.
    id: None = Field(default=None, description="Only for persistent workspaces.")
    read_only: Literal[False] = Field(default=False, description="Only for persistent ones.")


class EphemeralWorkspace(_OwnWorkspace):
    """The session's own files (the default), kept until the session is deleted."""

    type: Literal["ephemeral"] = "ephemeral"

    def choice(self) -> WorkspaceChoice:
        return WorkspaceChoice(type="ephemeral")


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

    def choice(self) -> WorkspaceChoice:
        return WorkspaceChoice(type="persistent", name=self.id, read_only=self.read_only)


class InheritWorkspace(_OwnWorkspace):
    """Spawn only: the child's own, starting as a copy of the parent's current files."""

    type: Literal["inherit"]

    def choice(self) -> WorkspaceChoice:
        return WorkspaceChoice(type="inherit")


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


class WaitRequest(_Strict):
    timeout: float = Field(
        default=300, gt=0, le=3600, description="Seconds to wait for the session to be idle."
    )


class SessionWorkspace(BaseModel):
    id: str
    type: Literal["ephemeral", "persistent"]
    read_only: bool
    unsaved: bool = Field(
        description="A save at stop or failure failed; its container is kept and retried."
    )

    @classmethod
    def of(cls, row: SessionRow) -> SessionWorkspace | None:
        if row.workspace_name is None:
            return None
        own = row.workspace_name.startswith("session-")
        return cls(
            id=row.workspace_name,
            type="ephemeral" if own else "persistent",
            read_only=row.workspace_mode == MODE_RO,
            unsaved=row.workspace_dirty,
        )


class UsageFigures(BaseModel):
    """Model usage: what the upstream reported, summed, and its price (MODEL_PRICES)."""

    requests: int = Field(description="Model calls that ended.")
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float

    @classmethod
    def of(cls, figures: Any) -> UsageFigures:
        """From anything with those attributes (a session row, a tree's totals, a sum)."""
        return cls(
            requests=figures.requests,
            input_tokens=figures.input_tokens,
            output_tokens=figures.output_tokens,
            cache_creation_input_tokens=figures.cache_creation_input_tokens,
            cache_read_input_tokens=figures.cache_read_input_tokens,
            cost_usd=float(figures.cost_usd),
        )


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

    @classmethod
    def of(cls, row: SessionRow) -> SessionOut:
        return cls(
            id=row.id,
            owner=row.owner,
            parent_id=row.parent_id,
            root_id=row.root_id,
            depth=row.depth,
            status=SessionStatus(row.status),
            image=row.image,
            config=row.config,
            workspace=SessionWorkspace.of(row),
            container_id=row.container_id,
            current_turn_id=row.current_turn_id,
            exit_code=row.exit_code,
            failure_reason=row.failure_reason,
            created_at=row.created_at,
            updated_at=row.updated_at,
            last_activity_at=row.last_activity_at,
            stopped_at=row.stopped_at,
            usage=UsageFigures.of(row),
        )


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

    @classmethod
    def of(cls, row: TurnRow) -> TurnOut:
        return cls(
            id=row.id,
            session_id=row.session_id,
            seq=row.seq,
            prompt=row.prompt,
            status=TurnStatus(row.status),
            result_text=row.result_text,
            is_error=row.is_error,
            error=row.error,
            cost_usd=row.cost_usd,
            usage=row.usage,
            duration_ms=row.duration_ms,
            num_turns=row.num_turns,
            created_at=row.created_at,
            finished_at=row.finished_at,
        )


class TurnList(BaseModel):
    turns: list[TurnOut]


class SessionTree(SessionOut):
    last_turn: TurnOut | None = Field(description="The last finished turn.")
    children: list[SessionTree]

    @classmethod
    def of_node(cls, node: TreeNode) -> SessionTree:
        return cls(
            **SessionOut.of(node.session).model_dump(),
            last_turn=TurnOut.of(node.last_turn) if node.last_turn else None,
            children=[cls.of_node(child) for child in node.children],
        )


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

    @classmethod
    def of(cls, row: WorkspaceRow, sessions: list[uuid.UUID]) -> WorkspaceOut:
        return cls(
            id=row.name,
            type="ephemeral" if row.kind == WorkspaceKind.EPHEMERAL else "persistent",
            size_bytes=row.size_bytes,
            file_count=row.file_count,
            save_count=row.save_count,
            last_saved_at=row.last_saved_at,
            created_at=row.created_at,
            sessions=sessions,
        )


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
