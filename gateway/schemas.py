"""Request and response bodies of the REST API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.db.models import SessionRow, SessionStatus, TurnRow, TurnStatus
from gateway.services.trees import TreeNode
from wrapper.protocol import SessionConfig

MAX_PROMPT_CHARS = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateSessionRequest(_Strict):
    config: SessionConfig = Field(default_factory=SessionConfig)
    prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="Optional first turn, queued until the CLI is ready.",
    )


class SpawnRequest(_Strict):
    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, description="The child's first turn."
    )
    config: SessionConfig = Field(
        default_factory=SessionConfig,
        description="Overrides of the parent's config; unset fields are inherited.",
    )


class ChatRequest(_Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
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


class SessionOut(BaseModel):
    id: uuid.UUID
    owner: str
    parent_id: uuid.UUID | None
    root_id: uuid.UUID
    depth: int
    status: SessionStatus
    image: str
    config: dict[str, Any]
    container_id: str | None
    current_turn_id: uuid.UUID | None
    exit_code: int | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    stopped_at: datetime | None

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
            container_id=row.container_id,
            current_turn_id=row.current_turn_id,
            exit_code=row.exit_code,
            failure_reason=row.failure_reason,
            created_at=row.created_at,
            updated_at=row.updated_at,
            last_activity_at=row.last_activity_at,
            stopped_at=row.stopped_at,
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
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="Each dependency: 'ok' or what failed.")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
