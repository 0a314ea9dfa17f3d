"""tenancy and durability: restore state of a session's workspace, idempotency keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column(
            "workspace_restored",
            sa.Boolean(),
            server_default=sa.false(),
            nullable=False,
            comment="Its current container holds the restored workspace; only then is it "
            "saved back.",
        ),
    )
    # Sessions that exist already had their files restored by the code of the time.
    op.execute("UPDATE sessions SET workspace_restored = true WHERE container_id IS NOT NULL")
    op.create_table(
        "idempotency_keys",
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column(
            "scope",
            sa.String(length=64),
            nullable=False,
            comment="What the key was used for: create, or spawn:<parent id>.",
        ),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column(
            "request_hash",
            sa.String(length=64),
            nullable=False,
            comment="sha256 of the canonical request body: a reuse must match it.",
        ),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_idempotency_keys_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("owner", "scope", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_column("sessions", "workspace_restored")
