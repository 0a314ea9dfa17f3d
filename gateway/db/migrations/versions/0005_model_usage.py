"""model usage: every proxied model call, running totals per session and per tree, budgets

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 03:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNTERS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def _counters() -> list[sa.Column[Any]]:
    columns: list[sa.Column[Any]] = [
        sa.Column(name, sa.BigInteger(), server_default="0", nullable=False) for name in _COUNTERS
    ]
    columns.append(sa.Column("cost_usd", sa.Numeric(18, 8), server_default="0", nullable=False))
    return columns


def upgrade() -> None:
    for column in _counters():
        op.add_column("sessions", column)
    op.create_table(
        "tree_usage",
        sa.Column("root_id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        *_counters(),
        sa.Column(
            "reserved_tokens",
            sa.BigInteger(),
            server_default="0",
            nullable=False,
            comment="Upper bound of what admitted calls still in flight may use.",
        ),
        sa.Column("reserved_cost_usd", sa.Numeric(18, 8), server_default="0", nullable=False),
        sa.Column("max_tokens", sa.BigInteger(), nullable=True, comment="The tree's budget."),
        sa.Column("max_cost_usd", sa.Numeric(18, 8), nullable=True),
        sa.Column(
            "exceeded_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the budget was found spent (budget_exceeded sent once).",
        ),
        sa.ForeignKeyConstraint(
            ["root_id"],
            ["sessions.id"],
            name=op.f("fk_tree_usage_root_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("root_id", name=op.f("pk_tree_usage")),
    )
    op.create_table(
        "model_calls",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "session_id",
            sa.Uuid(),
            nullable=False,
            comment="No foreign key: what was spent stays counted after a session is deleted.",
        ),
        sa.Column("root_id", sa.Uuid(), nullable=False),
        sa.Column(
            "ancestors",
            postgresql.ARRAY(sa.Uuid()),
            nullable=False,
            comment="The session's ancestors: a subtree's usage counts deleted sessions too.",
        ),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column(
            "state",
            sa.String(length=16),
            nullable=False,
            comment="reserved (in flight), settled, or abandoned (its gateway died).",
        ),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("reserved_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reserved_cost_usd", sa.Numeric(18, 8), server_default="0", nullable=False),
        *[c for c in _counters() if c.name != "requests"],
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('reserved', 'settled', 'abandoned')", name=op.f("ck_model_calls_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_calls")),
    )
    op.create_index(op.f("ix_model_calls_session_id"), "model_calls", ["session_id"])
    op.create_index(op.f("ix_model_calls_root_id"), "model_calls", ["root_id"])
    op.create_index(
        "ix_model_calls_ancestors", "model_calls", ["ancestors"], postgresql_using="gin"
    )
    op.create_index("ix_model_calls_owner_started", "model_calls", ["owner", "started_at"])
    op.create_index(
        "ix_model_calls_in_flight",
        "model_calls",
        ["started_at"],
        postgresql_where=sa.text("state = 'reserved'"),
    )


def downgrade() -> None:
    op.drop_table("model_calls")
    op.drop_table("tree_usage")
    for name in (*_COUNTERS, "cost_usd"):
        op.drop_column("sessions", name)
