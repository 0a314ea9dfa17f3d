"""session revocations: a notification whenever a session's credentials stop being good

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:00:00

A session's tokens and model keys are good while it is active (starting, ready, busy) and, for
a model key, only for its run (``started_at``). Every replica keeps what it looked up about a
caller (gateway/model/callers.py) and must forget it as soon as that stops holding: a trigger
sends ``NOTIFY ccd_session_revoked, '<id>'`` when an active session leaves the active statuses,
is started again, or is deleted. A trigger, not the code that changes a status: it cannot be
forgotten by a path written later, and the notification is sent when (and only if) the change
commits.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration describes the schema as it was when it was written.
_ACTIVE = "('starting', 'ready', 'busy')"


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION ccd_session_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('ccd_session_revoked', OLD.id::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER session_revoked_on_change
        AFTER UPDATE OF status, started_at ON sessions
        FOR EACH ROW
        WHEN (
            OLD.status IN {_ACTIVE}
            AND (NEW.status NOT IN {_ACTIVE} OR NEW.started_at IS DISTINCT FROM OLD.started_at)
        )
        EXECUTE FUNCTION ccd_session_revoked()
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER session_revoked_on_delete
        AFTER DELETE ON sessions
        FOR EACH ROW
        WHEN (OLD.status IN {_ACTIVE})
        EXECUTE FUNCTION ccd_session_revoked()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER session_revoked_on_delete ON sessions")
    op.execute("DROP TRIGGER session_revoked_on_change ON sessions")
    op.execute("DROP FUNCTION ccd_session_revoked()")
