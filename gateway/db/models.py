"""Tables: one row per session, one per chat turn. The schema changes only through Alembic."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The statuses are the API's (one definition, shared with the SDK's models).
from ccd.models import SessionStatus as SessionStatus
from ccd.models import TurnStatus as TurnStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONB, datetime: DateTime(timezone=True)}


ACTIVE_STATUSES = (SessionStatus.STARTING, SessionStatus.READY, SessionStatus.BUSY)
RUNNING_STATUSES = (SessionStatus.READY, SessionStatus.BUSY)  # its CLI is up
FINAL_STATUSES = (SessionStatus.STOPPED, SessionStatus.FAILED)

# The status machine, all of it: every change a session's status may make (SPEC.md section 6 is
# checked against this table). Each change is a conditional UPDATE whose WHERE names the
# statuses it may leave (gateway/db/queries.py), so racing actors cannot both win.
TRANSITIONS: dict[SessionStatus, frozenset[SessionStatus]] = {
    # CLI ready; a queued prompt makes it busy at once; stop; start failure.
    SessionStatus.STARTING: frozenset(
        {SessionStatus.READY, SessionStatus.BUSY, SessionStatus.STOPPING, SessionStatus.FAILED}
    ),
    SessionStatus.READY: frozenset(
        {SessionStatus.BUSY, SessionStatus.STOPPING, SessionStatus.FAILED}
    ),
    SessionStatus.BUSY: frozenset(
        {SessionStatus.READY, SessionStatus.STOPPING, SessionStatus.FAILED}
    ),
    SessionStatus.STOPPING: frozenset({SessionStatus.STOPPED}),
    # Resume starts an ended session again, in a new container.
    SessionStatus.STOPPED: frozenset({SessionStatus.STARTING}),
    SessionStatus.FAILED: frozenset({SessionStatus.STARTING}),
}


def may_become(from_status: str, to_status: str) -> bool:
    return SessionStatus(to_status) in TRANSITIONS[SessionStatus(from_status)]


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class UsageCounters:
    """Model usage running totals (sessions, trees): what the upstream reported, summed."""

    requests: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cache_creation_input_tokens: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0"
    )
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(
        Numeric(18, 8), default=Decimal(0), server_default="0"
    )


class SessionRow(UsageCounters, Base):
    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(200))
    instance: Mapped[str] = mapped_column(
        String(63), comment="The gateway instance (INSTANCE_NAME) that runs its container."
    )
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), comment="The session that spawned it."
    )
    root_id: Mapped[uuid.UUID] = mapped_column(comment="The root of its spawn tree (itself).")
    depth: Mapped[int] = mapped_column(Integer, default=0, comment="0 for a root session.")
    path: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(Uuid()), default=list, comment="Ancestors, root first: descendant checks."
    )
    workspace_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("workspaces.id", ondelete="SET NULL"), index=True
    )
    workspace_name: Mapped[str | None] = mapped_column(
        String(100), comment="Its workspace's id as users see it (session-<id>: its own)."
    )
    workspace_mode: Mapped[str] = mapped_column(
        String(8),
        default="rw",
        server_default="rw",
        comment="rw: saved back; ro: a read-only copy, never saved.",
    )
    workspace_dirty: Mapped[bool] = mapped_column(
        Boolean,
        default=False,
        server_default=false(),
        comment="A save at stop or failure did not succeed: the container is kept for a retry.",
    )
    workspace_restored: Mapped[bool] = mapped_column(
        Boolean,
        default=False,
        server_default=false(),
        comment="Its current container holds the restored workspace; only then is it saved back.",
    )
    workspace_digest: Mapped[str | None] = mapped_column(
        String(64),
        comment="Its container's workspace digest read before the last periodic save that "
        "succeeded: a periodic save that reads the same one has nothing to save.",
    )
    status: Mapped[str] = mapped_column(String(16), default=SessionStatus.STARTING)
    image: Mapped[str] = mapped_column(String(500))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    container_id: Mapped[str | None] = mapped_column(String(128))
    claude_session_id: Mapped[uuid.UUID] = mapped_column(default=uuid.uuid4)
    current_turn_id: Mapped[uuid.UUID | None]
    event_cursor: Mapped[str | None] = mapped_column(
        String(64), comment="Last output stream id whose effects are recorded here."
    )
    exit_code: Mapped[int | None] = mapped_column(Integer)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    last_activity_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime] = mapped_column(
        server_default=func.now(), comment="When its current container was asked for."
    )
    admitted_at: Mapped[datetime | None] = mapped_column(
        comment="When its start was admitted (SESSION_START_CONCURRENCY per engine); the "
        "start timeout counts from it."
    )
    resumed_at: Mapped[datetime | None] = mapped_column(
        comment="When it was last resumed: its next start restores its conversation."
    )
    workspace_source: Mapped[uuid.UUID | None] = mapped_column(
        comment="inherit: the session whose live files its container starts with."
    )
    pool_id: Mapped[uuid.UUID | None] = mapped_column(
        comment="The pooled container it was claimed from (its CLI's first model key names it)."
    )
    stopped_at: Mapped[datetime | None]

    # Server-side defaults (created_at, ...) come back with the INSERT (RETURNING), so a row
    # is complete after its transaction without another round trip.
    __mapper_args__ = {"eager_defaults": True}

    __table_args__ = (
        CheckConstraint(_in("status", SessionStatus), name="status"),
        Index(
            "ix_sessions_pool_id",
            "pool_id",
            unique=True,
            postgresql_where="pool_id IS NOT NULL",
        ),
        Index("ix_sessions_owner_created", "owner", created_at.desc(), id.desc()),
        Index("ix_sessions_parent_id", "parent_id"),
        Index("ix_sessions_root_id", "root_id"),
        Index("ix_sessions_path", "path", postgresql_using="gin"),
        Index(
            "ix_sessions_starting",
            "instance",
            "created_at",
            postgresql_where="status = 'starting'",
        ),
        Index(
            "ix_sessions_active",
            "instance",
            "status",
            postgresql_where="status IN ('starting', 'ready', 'busy', 'stopping')",
        ),
    )


class LeaseRow(Base):
    """Who does a piece of background work now: one gateway process, until ``expires_at``."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), comment="The gateway process.")
    expires_at: Mapped[datetime]


class PoolStatus(StrEnum):
    STARTING = "starting"  # being created and started
    READY = "ready"  # running, waiting for a claim


class PoolContainerRow(Base):
    """A container started ahead of demand, with no session yet (``SESSION_POOL_SIZE``). A
    claim deletes its row in the transaction that gives its container to a session."""

    __tablename__ = "pool_containers"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    instance: Mapped[str] = mapped_column(
        String(63), comment="The gateway instance whose engine runs it."
    )
    image: Mapped[str] = mapped_column(String(500), comment="Pooled for this image only.")
    template: Mapped[str] = mapped_column(
        String(40),
        comment="Its pool: '' for SESSION_POOL_SIZE's, else a SESSION_POOL_TEMPLATES name.",
    )
    spec_hash: Mapped[str] = mapped_column(
        String(64),
        comment="What its container was made with (image, limits, environment): claimed only "
        "while the gateway's settings still make the same.",
    )
    container_id: Mapped[str | None] = mapped_column(
        String(128), comment="Set once the engine created it."
    )
    claude_session_id: Mapped[uuid.UUID] = mapped_column(
        comment="Its CLI's --session-id: the claiming session's from then on."
    )
    status: Mapped[str] = mapped_column(String(16), default=PoolStatus.STARTING)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(_in("status", PoolStatus), name="status"),
        Index(
            "ix_pool_containers_ready",
            "instance",
            "spec_hash",
            "created_at",
            postgresql_where="status = 'ready'",
        ),
    )


class WorkspaceKind(StrEnum):
    PERSISTENT = "persistent"  # named by its owner, outlives sessions
    EPHEMERAL = "ephemeral"  # one session's own, deleted with it


class WorkspaceRow(Base):
    __tablename__ = "workspaces"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(100), comment="The id users see: my-project.")
    kind: Mapped[str] = mapped_column(String(16))
    session_id: Mapped[uuid.UUID | None] = mapped_column(
        comment="The session an ephemeral workspace belongs to."
    )
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    save_count: Mapped[int] = mapped_column(Integer, default=0)
    last_saved_at: Mapped[datetime | None]
    last_save_began_at: Mapped[datetime | None] = mapped_column(
        comment="When the committed manifest's files began to be read (a save's or an "
        "upload's start): a file whose mtime is not before it is read again by the next "
        "save, however its size and mtime look."
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        UniqueConstraint("owner", "name"),
        CheckConstraint(_in("kind", WorkspaceKind), name="kind"),
    )


class WorkspaceEntryRow(Base):
    """One path of a workspace's saved state: the manifest a save diffs against."""

    __tablename__ = "workspace_entries"

    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    mode: Mapped[int] = mapped_column(Integer)
    mtime: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    link_target: Mapped[str | None] = mapped_column(Text)
    object_key: Mapped[str | None] = mapped_column(
        Text, comment="Where the bytes are: the final key, or a staging key until promoted."
    )


class IdempotencyKeyRow(Base):
    """A create or spawn request made with an ``Idempotency-Key``: the same key and body answer
    the same session."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    scope: Mapped[str] = mapped_column(
        String(64),
        primary_key=True,
        comment="What the key was used for: create, or spawn:<parent id>.",
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(
        String(64), comment="sha256 of the canonical request body: a reuse must match it."
    )
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)


class TreeUsageRow(UsageCounters, Base):
    """Running totals and the budget of one spawn tree (keyed by its root)."""

    __tablename__ = "tree_usage"

    root_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    owner: Mapped[str] = mapped_column(String(200))
    reserved_tokens: Mapped[int] = mapped_column(
        BigInteger,
        default=0,
        server_default="0",
        comment="Upper bound of what admitted calls still in flight may use.",
    )
    reserved_cost_usd: Mapped[Decimal] = mapped_column(
        Numeric(18, 8), default=Decimal(0), server_default="0"
    )
    max_tokens: Mapped[int | None] = mapped_column(BigInteger, comment="The tree's budget.")
    max_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(18, 8))
    exceeded_at: Mapped[datetime | None] = mapped_column(
        comment="When the budget was found spent (budget_exceeded sent once)."
    )


class CallState(StrEnum):
    RESERVED = "reserved"  # admitted, in flight
    SETTLED = "settled"  # its actual usage is counted
    ABANDONED = "abandoned"  # its gateway died mid-call: the reservation was released


class ModelCallRow(Base):
    """One proxied model call. No foreign key to sessions: what was spent stays counted after
    a session is deleted."""

    __tablename__ = "model_calls"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    session_id: Mapped[uuid.UUID] = mapped_column(
        index=True,
        comment="No foreign key: what was spent stays counted after a session is deleted.",
    )
    root_id: Mapped[uuid.UUID] = mapped_column(index=True)
    ancestors: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(Uuid()),
        comment="The session's ancestors: a subtree's usage counts deleted sessions too.",
    )
    owner: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(
        String(16),
        default=CallState.RESERVED,
        comment="reserved (in flight), settled, or abandoned (its gateway died).",
    )
    http_status: Mapped[int | None] = mapped_column(Integer)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reserved_cost_usd: Mapped[Decimal] = mapped_column(
        Numeric(18, 8), default=Decimal(0), server_default="0"
    )
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cache_creation_input_tokens: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0"
    )
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(
        Numeric(18, 8), default=Decimal(0), server_default="0"
    )
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_in("state", CallState), name="state"),
        Index("ix_model_calls_owner_started", "owner", "started_at"),
        Index("ix_model_calls_ancestors", "ancestors", postgresql_using="gin"),
        Index("ix_model_calls_in_flight", "started_at", postgresql_where="state = 'reserved'"),
    )


class TurnRow(Base):
    __tablename__ = "turns"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=TurnStatus.RUNNING)
    result: Mapped[dict[str, Any] | None] = mapped_column(comment="The CLI's result object.")
    result_text: Mapped[str | None] = mapped_column(Text)
    is_error: Mapped[bool | None] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text, comment="Why a turn ended without a result.")
    cost_usd: Mapped[float | None] = mapped_column(Float)
    usage: Mapped[dict[str, Any] | None]
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    num_turns: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("session_id", "seq"),
        CheckConstraint(_in("status", TurnStatus), name="status"),
    )
