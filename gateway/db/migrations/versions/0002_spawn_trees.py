"""spawn trees: parent, root, depth and ancestor path of every session

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 07:04:15.029867
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column("parent_id", sa.Uuid(), nullable=True, comment="The session that spawned it."),
    )
    # Existing sessions are roots: their own root, at depth 0, with no ancestors.
    op.add_column(
        "sessions",
        sa.Column(
            "root_id", sa.Uuid(), nullable=True, comment="The root of its spawn tree (itself)."
        ),
    )
    op.execute("UPDATE sessions SET root_id = id")
    op.alter_column("sessions", "root_id", nullable=False)
    op.add_column(
        "sessions",
        sa.Column(
            "depth",
            sa.Integer(),
            nullable=False,
            server_default="0",
            comment="0 for a root session.",
        ),
    )
    op.add_column(
        "sessions",
        sa.Column(
            "path",
            postgresql.ARRAY(sa.Uuid()),
            nullable=False,
            server_default="{}",
            comment="Ancestors, root first: descendant checks.",
        ),
    )
    op.alter_column("sessions", "depth", server_default=None)
    op.alter_column("sessions", "path", server_default=None)
    op.create_index("ix_sessions_parent_id", "sessions", ["parent_id"], unique=False)
    op.create_index("ix_sessions_path", "sessions", ["path"], unique=False, postgresql_using="gin")
    op.create_index("ix_sessions_root_id", "sessions", ["root_id"], unique=False)
    op.create_foreign_key(
        op.f("fk_sessions_parent_id_sessions"),
        "sessions",
        "sessions",
        ["parent_id"],
        ["id"],
        ondelete="CASCADE",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_sessions_parent_id_sessions"), "sessions", type_="foreignkey")
    op.drop_index("ix_sessions_root_id", table_name="sessions")
    op.drop_index("ix_sessions_path", table_name="sessions", postgresql_using="gin")
    op.drop_index("ix_sessions_parent_id", table_name="sessions")
    op.drop_column("sessions", "path")
    op.drop_column("sessions", "depth")
    op.drop_column("sessions", "root_id")
    op.drop_column("sessions", "parent_id")
