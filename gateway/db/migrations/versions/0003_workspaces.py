"""workspaces: stored session files, their manifest, and each session's workspace

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 07:36:55.299038
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column(
            "name", sa.String(length=100), nullable=False, comment="The id users see: my-project."
        ),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column(
            "session_id",
            sa.Uuid(),
            nullable=True,
            comment="The session an ephemeral workspace belongs to.",
        ),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("save_count", sa.Integer(), nullable=False),
        sa.Column("last_saved_at", sa.DateTime(timezone=True), nullable=True),
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
        sa.CheckConstraint("kind IN ('persistent', 'ephemeral')", name=op.f("ck_workspaces_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
        sa.UniqueConstraint("owner", "name", name=op.f("uq_workspaces_owner")),
    )
    op.create_table(
        "workspace_entries",
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.Integer(), nullable=False),
        sa.Column("mtime", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("link_target", sa.Text(), nullable=True),
        sa.Column(
            "object_key",
            sa.Text(),
            nullable=True,
            comment="Where the bytes are: the final key, or a staging key until promoted.",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_workspace_entries_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workspace_id", "path", name=op.f("pk_workspace_entries")),
    )
    op.add_column("sessions", sa.Column("workspace_id", sa.Uuid(), nullable=True))
    # Sessions from before workspaces have none (workspace_id NULL): nothing to save.
    op.add_column(
        "sessions",
        sa.Column(
            "workspace_mode",
            sa.String(length=8),
            nullable=False,
            server_default="rw",
            comment="rw: saved back; ro: a read-only copy, never saved.",
        ),
    )
    op.add_column(
        "sessions",
        sa.Column(
            "workspace_dirty",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
            comment="A save at stop or failure did not succeed: the container is kept for a retry.",
        ),
    )
    op.add_column(
        "sessions",
        sa.Column(
            "workspace_name",
            sa.String(length=100),
            nullable=True,
            comment="Its workspace's id as users see it (session-<id>: its own).",
        ),
    )
    op.add_column(
        "sessions",
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When its current container was asked for.",
        ),
    )
    op.execute("UPDATE sessions SET started_at = created_at")
    op.create_index(op.f("ix_sessions_workspace_id"), "sessions", ["workspace_id"], unique=False)
    op.create_foreign_key(
        op.f("fk_sessions_workspace_id_workspaces"),
        "sessions",
        "workspaces",
        ["workspace_id"],
        ["id"],
        ondelete="SET NULL",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_sessions_workspace_id_workspaces"), "sessions", type_="foreignkey")
    op.drop_index(op.f("ix_sessions_workspace_id"), table_name="sessions")
    op.drop_column("sessions", "started_at")
    op.drop_column("sessions", "workspace_name")
    op.drop_column("sessions", "workspace_dirty")
    op.drop_column("sessions", "workspace_mode")
    op.drop_column("sessions", "workspace_id")
    op.drop_table("workspace_entries")
    op.drop_table("workspaces")
