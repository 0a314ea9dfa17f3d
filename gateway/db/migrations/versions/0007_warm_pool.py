"""warm pool: containers started ahead of demand, and where a session's container came from

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pool_containers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "instance",
            sa.String(length=63),
            nullable=False,
            comment="The gateway instance whose engine runs it.",
        ),
        sa.Column(
            "image", sa.String(length=500), nullable=False, comment="Pooled for this image only."
        ),
        sa.Column(
            "template",
            sa.String(length=40),
            nullable=False,
            comment="Its pool: '' for SESSION_POOL_SIZE's, else a SESSION_POOL_TEMPLATES name.",
        ),
        sa.Column(
            "spec_hash",
            sa.String(length=64),
            nullable=False,
            comment="What its container was made with (image, limits, environment): claimed "
            "only while the gateway's settings still make the same.",
        ),
        sa.Column(
            "container_id",
            sa.String(length=128),
            nullable=True,
            comment="Set once the engine created it.",
        ),
        sa.Column(
            "claude_session_id",
            sa.Uuid(),
            nullable=False,
            comment="Its CLI's --session-id: the claiming session's from then on.",
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "status IN ('starting', 'ready')", name=op.f("ck_pool_containers_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_containers")),
    )
    op.create_index(
        "ix_pool_containers_ready",
        "pool_containers",
        ["instance", "spec_hash", "created_at"],
        postgresql_where=sa.text("status = 'ready'"),
    )
    op.add_column(
        "sessions",
        sa.Column(
            "pool_id",
            sa.Uuid(),
            nullable=True,
            comment="The pooled container it was claimed from (its CLI's first model key "
            "names it).",
        ),
    )
    op.create_index(
        "ix_sessions_pool_id",
        "sessions",
        ["pool_id"],
        unique=True,
        postgresql_where=sa.text("pool_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_pool_id", table_name="sessions")
    op.drop_column("sessions", "pool_id")
    op.drop_index("ix_pool_containers_ready", table_name="pool_containers")
    op.drop_table("pool_containers")
