"""Request and response bodies of the REST API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.db.models import SessionRow, SessionStatus, TurnRow, TurnStatus
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


class ChatRequest(_Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    stream: bool = Field(
        default=False, description="Answer text/event-stream, one event per line of the turn."
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Seconds to wait for the turn's result (default CHAT_TIMEOUT_DEFAULT).",
    )


class SessionOut(BaseModel):
    id: uuid.UUID
    owner: str
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
