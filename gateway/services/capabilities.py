"""What a session's capability token may ask for beyond the routes' own checks.

The routes confine a session token to its own session and its descendants. Spawning is the one
operation where the body asks for more: a workspace. A session may give a child only what its
tree already has: its own files (``ephemeral``, ``inherit``), or a read-only copy of a
persistent workspace that a session of its tree holds now. Anything else (writing a persistent
workspace, reading another one of the owner's, creating one) is 403 ``workspace_not_allowed``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import SessionRow, WorkspaceKind, WorkspaceRow
from gateway.error_codes import ErrorCode
from gateway.errors import Forbidden
from gateway.services.workspaces import IN_USE_STATUSES, WorkspaceChoice


class WorkspaceNotAllowed(Forbidden):
    code = ErrorCode.WORKSPACE_NOT_ALLOWED


async def check_session_workspace(
    db: AsyncSession, parent: SessionRow, choice: WorkspaceChoice
) -> None:
    """Raise ``WorkspaceNotAllowed`` unless a session token spawning under ``parent`` may give
    its child ``choice``. ``parent`` is in the caller's tree (the route checked it), so the
    caller's tree is ``parent.root_id``."""
    if choice.type in ("ephemeral", "inherit"):
        return
    if choice.type == "persistent" and choice.read_only and choice.name is not None:
        held = await db.scalar(
            select(SessionRow.id)
            .join(WorkspaceRow, WorkspaceRow.id == SessionRow.workspace_id)
            .where(
                SessionRow.root_id == parent.root_id,
                SessionRow.status.in_(IN_USE_STATUSES),
                WorkspaceRow.owner == parent.owner,
                WorkspaceRow.name == choice.name,
                WorkspaceRow.kind == WorkspaceKind.PERSISTENT,
            )
            .limit(1)
        )
        if held is not None:
            return
    raise WorkspaceNotAllowed(
        "a session token may give a child only an ephemeral or inherited workspace, or a "
        "read-only copy of a persistent workspace its own tree holds; "
        f"{_describe(choice)} is not one"
    )


def _describe(choice: WorkspaceChoice) -> str:
    if choice.type != "persistent":
        return f"workspace type {choice.type!r}"
    mode = "read-only" if choice.read_only else "writable"
    return f"a {mode} persistent workspace {choice.name!r}"
