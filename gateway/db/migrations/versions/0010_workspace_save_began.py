"""workspace save began: when the files of a workspace's committed manifest began to be read

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 17:00:00

Mtimes are whole seconds. A file the last save read in the second it was written can be
written again within that second, keeping its size and mtime: a save that trusted size and mtime
would keep the old bytes. The next save therefore reads every file whose manifest mtime is not
before the second the last save began (git's "racily clean" rule); a workspace with no such
time recorded (saved before this revision) has all its same-size files read once.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "workspaces",
        sa.Column(
            "last_save_began_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the committed manifest's files began to be read (a save's or an "
            "upload's start): a file whose mtime is not before it is read again by the next "
            "save, however its size and mtime look.",
        ),
    )


def downgrade() -> None:
    op.drop_column("workspaces", "last_save_began_at")
