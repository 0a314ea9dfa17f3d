"""sessions and turns

Revision ID: 0001
Revises:
Create Date: 2026-11-23 06:33:32.336720
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column(
            "instance",
            sa.String(length=63),
            nullable=False,
            comment="The gateway instance (INSTANCE_NAME) that runs its container.",
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("image", sa.String(length=500), nullable=False),
        sa.Column("config", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("container_id", sa.String(length=128), nullable=True),
        sa.Column("claude_session_id", sa.Uuid(), nullable=False),
        sa.Column("current_turn_id", sa.Uuid(), nullable=True),
        sa.Column(
            "event_cursor",
            sa.String(length=64),
            nullable=True,
            comment="Last output stream id whose effects are recorded here.",
        ),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "last_activity_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('starting', 'ready', 'busy', 'stopping', 'stopped', 'failed')",
            name=op.f("ck_sessions_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index(
        "ix_sessions_active",
        "sessions",
        ["instance", "status"],
        unique=False,
        postgresql_where="status IN ('starting', 'ready', 'busy', 'stopping')",
    )
    op.create_index(
        "ix_sessions_owner_created",
        "sessions",
        ["owner", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
        unique=False,
    )
    op.create_table(
        "turns",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "result",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=True,
            comment="The CLI's result object.",
        ),
        sa.Column("result_text", sa.Text(), nullable=True),
        sa.Column("is_error", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True, comment="Why a turn ended without a result."),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("usage", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("num_turns", sa.Integer(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'failed', 'interrupted')",
            name=op.f("ck_turns_status"),
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_turns_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_turns")),
        sa.UniqueConstraint("session_id", "seq", name=op.f("uq_turns_session_id")),
    )
    op.create_index(op.f("ix_turns_session_id"), "turns", ["session_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_turns_session_id"), table_name="turns")
    op.drop_table("turns")
    op.drop_index("ix_sessions_owner_created", table_name="sessions")
    op.drop_index(
        "ix_sessions_active",
        table_name="sessions",
        postgresql_where="status IN ('starting', 'ready', 'busy', 'stopping')",
    )
    op.drop_table("sessions")
