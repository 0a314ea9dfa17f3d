"""fleet: leases for background work, start admission, a spawn's inherited files in the row

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False, comment="The gateway process."),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.add_column(
        "sessions",
        sa.Column(
            "admitted_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When its start was admitted (SESSION_START_CONCURRENCY per engine); the "
            "start timeout counts from it.",
        ),
    )
    op.add_column(
        "sessions",
        sa.Column(
            "workspace_source",
            sa.Uuid(),
            nullable=True,
            comment="inherit: the session whose live files its container starts with.",
        ),
    )
    op.add_column(
        "sessions",
        sa.Column(
            "resumed_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When it was last resumed: its next start restores its conversation.",
        ),
    )
    # Sessions started before admission existed were admitted when they started.
    op.execute("UPDATE sessions SET admitted_at = started_at WHERE container_id IS NOT NULL")
    op.create_index(
        "ix_sessions_starting",
        "sessions",
        ["instance", "created_at"],
        postgresql_where=sa.text("status = 'starting'"),
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_starting", table_name="sessions")
    op.drop_column("sessions", "resumed_at")
    op.drop_column("sessions", "workspace_source")
    op.drop_column("sessions", "admitted_at")
    op.drop_table("leases")
