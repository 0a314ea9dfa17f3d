"""Recursion and quota limits, checked in the transaction that inserts a session.

The check takes a transaction-scoped advisory lock on the owner first. Every session an owner
creates (a root or a spawned child) takes the same lock, so two concurrent requests cannot both
count the same free slot: the second one counts after the first has inserted and committed.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import Settings
from gateway.db.models import ACTIVE_STATUSES, SessionRow
from gateway.errors import LimitExceeded


async def lock_owner(db: AsyncSession, owner: str) -> None:
    """Serialise session creation per owner until the transaction ends."""
    await db.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(owner, 0))))


async def check_limits(
    db: AsyncSession, settings: Settings, owner: str, parent: SessionRow | None
) -> None:
    """Raise ``LimitExceeded`` (403) naming the limit and its value if one more session for
    ``owner`` (under ``parent``, if spawned) would break one. Call with ``lock_owner`` held."""
    running = await _count(db, SessionRow.owner == owner, SessionRow.status.in_(ACTIVE_STATUSES))
    if running >= settings.max_sessions_per_owner:
        raise LimitExceeded(
            f"MAX_SESSIONS_PER_OWNER is {settings.max_sessions_per_owner}: {owner!r} already has "
            f"{running} running sessions",
            code="owner_limit_reached",
            limit=settings.max_sessions_per_owner,
        )
    if parent is None:
        return
    depth = parent.depth + 1
    if depth > settings.max_spawn_depth:
        raise LimitExceeded(
            f"MAX_SPAWN_DEPTH is {settings.max_spawn_depth}: a child of session {parent.id} "
            f"(depth {parent.depth}) would be at depth {depth}",
            code="spawn_depth_exceeded",
            limit=settings.max_spawn_depth,
        )
    children = await _count(db, SessionRow.parent_id == parent.id)
    if children >= settings.max_children_per_session:
        raise LimitExceeded(
            f"MAX_CHILDREN_PER_SESSION is {settings.max_children_per_session}: session "
            f"{parent.id} has already spawned {children}",
            code="children_limit_reached",
            limit=settings.max_children_per_session,
        )
    tree = await _count(db, SessionRow.root_id == parent.root_id)
    if tree >= settings.max_sessions_per_tree:
        raise LimitExceeded(
            f"MAX_SESSIONS_PER_TREE is {settings.max_sessions_per_tree}: the tree of root "
            f"{parent.root_id} already has {tree} sessions",
            code="tree_limit_reached",
            limit=settings.max_sessions_per_tree,
        )


async def _count(db: AsyncSession, *conditions: ColumnElement[bool]) -> int:
    return int(
        await db.scalar(select(func.count()).select_from(SessionRow).where(*conditions)) or 0
    )
