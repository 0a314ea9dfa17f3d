"""notifications: session revocations and start slots, sent by triggers when changes commit

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:00:00

Replicas keep no state of their own about shared rows without being told when it changes. Two
triggers on ``sessions`` send ``NOTIFY``s, delivered when (and only if) the change commits,
whichever code made it (a path written later cannot forget to):

- ``ccd_session_revoked, '<id>'``: an active session (starting, ready, busy) left the active
  statuses, was started again (``started_at``) or was deleted. A session's tokens and model
  keys are good while it is active, a model key only for its run; every replica forgets what it
  kept about the session's model access (gateway/model/callers.py).
- ``ccd_start_slots, '<instance>'``: a session of that engine now waits for a start slot, or
  an admitted start ended (ready, failed, stopped, deleted) and freed one. Every replica's
  starter looks for a queued start to claim (gateway/services/admission.py).
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
    _start_slots_upgrade()


def _start_slots_upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION ccd_start_slots_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('ccd_start_slots', OLD.instance);
            ELSE
                PERFORM pg_notify('ccd_start_slots', NEW.instance);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER start_queued_on_insert
        AFTER INSERT ON sessions
        FOR EACH ROW
        WHEN (NEW.status = 'starting' AND NEW.admitted_at IS NULL)
        EXECUTE FUNCTION ccd_start_slots_changed()
        """
    )
    op.execute(
        """
        CREATE TRIGGER start_slots_on_change
        AFTER UPDATE OF status, admitted_at ON sessions
        FOR EACH ROW
        WHEN (
            (
                NEW.status = 'starting' AND NEW.admitted_at IS NULL
                AND (OLD.status <> 'starting' OR OLD.admitted_at IS NOT NULL)
            )
            OR (
                OLD.status = 'starting' AND OLD.admitted_at IS NOT NULL
                AND (NEW.status <> 'starting' OR NEW.admitted_at IS NULL)
            )
        )
        EXECUTE FUNCTION ccd_start_slots_changed()
        """
    )
    op.execute(
        """
        CREATE TRIGGER start_slot_freed_on_delete
        AFTER DELETE ON sessions
        FOR EACH ROW
        WHEN (OLD.status = 'starting' AND OLD.admitted_at IS NOT NULL)
        EXECUTE FUNCTION ccd_start_slots_changed()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER start_slot_freed_on_delete ON sessions")
    op.execute("DROP TRIGGER start_slots_on_change ON sessions")
    op.execute("DROP TRIGGER start_queued_on_insert ON sessions")
    op.execute("DROP FUNCTION ccd_start_slots_changed()")
    op.execute("DROP TRIGGER session_revoked_on_delete ON sessions")
    op.execute("DROP TRIGGER session_revoked_on_change ON sessions")
    op.execute("DROP FUNCTION ccd_session_revoked()")
