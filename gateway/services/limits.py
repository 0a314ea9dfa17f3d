"""Recursion limits and capacity limits, checked in the transaction that inserts a session.

The check takes a transaction-scoped advisory lock on the owner first. Every session an owner
creates (a root or a spawned child) takes the same lock, so two concurrent requests cannot both
count the same free slot: the second one counts after the first has inserted and committed.

Recursion limits (depth, children, tree) are policy: a retry cannot clear them, so they answer
403 and are checked first. Capacity limits (the owner's running sessions, this engine's running
sessions) clear as sessions end: 429 with ``Retry-After`` (``CAPACITY_RETRY_AFTER``).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import Settings
from gateway.db.models import ACTIVE_STATUSES, SessionRow
from gateway.error_codes import ErrorCode
from gateway.errors import CapacityReached, LimitExceeded

# Advisory locks on two int4 keys live in a key space apart from the one-bigint keys of the
# owner locks, so no owner name can collide with an engine's lock.
_ENGINE_LOCK_CLASS = 0x43434445  # "CCDE"


async def lock_owner(db: AsyncSession, owner: str) -> None:
    """Serialise session creation per owner until the transaction ends."""
    await db.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(owner, 0))))


async def check_limits(
    db: AsyncSession, settings: Settings, owner: str, parent: SessionRow | None
) -> None:
    """Raise if one more session for ``owner`` (under ``parent``, if spawned) would break a
    limit: ``LimitExceeded`` (403) for a recursion limit, ``CapacityReached`` (429) for a
    capacity limit; each names the limit and its value. Call with ``lock_owner`` held."""
    if parent is not None:
        await _check_tree(db, settings, parent)
    running = await _count(db, SessionRow.owner == owner, SessionRow.status.in_(ACTIVE_STATUSES))
    if running >= settings.max_sessions_per_owner:
        raise CapacityReached(
            f"MAX_SESSIONS_PER_OWNER is {settings.max_sessions_per_owner}: {owner!r} already has "
            f"{running} running sessions; retry when one has ended",
            code=ErrorCode.OWNER_LIMIT_REACHED,
            retry_after=settings.capacity_retry_after,
            limit=settings.max_sessions_per_owner,
        )
    # The owner lock does not serialise two owners, so without a lock of its own two owners
    # could both take this engine's last slot. The engine limit guards a real resource (the
    # engine's memory and processes), so it gets an exact count: a lock per instance, held to
    # commit like the owner's. Its cost is small: the transaction it serialises is a handful
    # of indexed queries and one insert; the container starts after the commit, unlocked.
    # Always taken after the owner lock, so the two cannot deadlock.
    await db.execute(
        select(
            func.pg_advisory_xact_lock(_ENGINE_LOCK_CLASS, func.hashtext(settings.instance_name))
        )
    )
    on_engine = await _count(
        db,
        SessionRow.instance == settings.instance_name,
        SessionRow.status.in_(ACTIVE_STATUSES),
    )
    if on_engine >= settings.max_sessions_per_engine:
        raise CapacityReached(
            f"MAX_SESSIONS_PER_ENGINE is {settings.max_sessions_per_engine}: this gateway "
            f"({settings.instance_name}) already runs {on_engine} sessions; retry later",
            code=ErrorCode.ENGINE_AT_CAPACITY,
            retry_after=settings.capacity_retry_after,
            limit=settings.max_sessions_per_engine,
        )


async def _check_tree(db: AsyncSession, settings: Settings, parent: SessionRow) -> None:
    depth = parent.depth + 1
    if depth > settings.max_spawn_depth:
        raise LimitExceeded(
            f"MAX_SPAWN_DEPTH is {settings.max_spawn_depth}: a child of session {parent.id} "
            f"(depth {parent.depth}) would be at depth {depth}",
            code=ErrorCode.SPAWN_DEPTH_EXCEEDED,
            limit=settings.max_spawn_depth,
        )
    children = await _count(db, SessionRow.parent_id == parent.id)
    if children >= settings.max_children_per_session:
        raise LimitExceeded(
            f"MAX_CHILDREN_PER_SESSION is {settings.max_children_per_session}: session "
            f"{parent.id} has already spawned {children}",
            code=ErrorCode.CHILDREN_LIMIT_REACHED,
            limit=settings.max_children_per_session,
        )
    tree = await _count(db, SessionRow.root_id == parent.root_id)
    if tree >= settings.max_sessions_per_tree:
        raise LimitExceeded(
            f"MAX_SESSIONS_PER_TREE is {settings.max_sessions_per_tree}: the tree of root "
            f"{parent.root_id} already has {tree} sessions",
            code=ErrorCode.TREE_LIMIT_REACHED,
            limit=settings.max_sessions_per_tree,
        )


async def _count(db: AsyncSession, *conditions: ColumnElement[bool]) -> int:
    return int(
        await db.scalar(select(func.count()).select_from(SessionRow).where(*conditions)) or 0
    )
