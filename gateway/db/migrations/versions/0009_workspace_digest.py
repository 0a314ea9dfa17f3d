"""workspace digest: what a session's workspace looked like when a periodic save last read it

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 16:00:00

A periodic save first asks the container for a digest of its workspace (gateway/services/
snapshots.py); one equal to the digest recorded at the last periodic save means nothing there
changed, and the workspace is not archived again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column(
            "workspace_digest",
            sa.String(length=64),
            nullable=True,
            comment="Its container's workspace digest read before the last periodic save that "
            "succeeded: a periodic save that reads the same one has nothing to save.",
        ),
    )


def downgrade() -> None:
    op.drop_column("sessions", "workspace_digest")
