"""Small, reusable statements over the session and turn tables.

Status changes are conditional updates (``WHERE status IN (...)``), so two actors racing on the
same session (a stop request, a dying container, the recorder) never both win.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import (
    ACTIVE_STATUSES,
    RUNNING_STATUSES,
    PoolContainerRow,
    SessionRow,
    SessionStatus,
    TurnRow,
    TurnStatus,
    may_become,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def transition(
    db: AsyncSession,
    session_id: uuid.UUID,
    from_statuses: Iterable[SessionStatus],
    to_status: SessionStatus,
    **values: Any,
) -> SessionRow | None:
    """Move a session to ``to_status`` if it is in one of ``from_statuses``; ``None`` if not.
    Every pair must be a change the status machine allows (``TRANSITIONS``)."""
    from_statuses = list(from_statuses)
    illegal = [status for status in from_statuses if not may_become(status, to_status)]
    if illegal:
        raise ValueError(f"the status machine has no change {illegal} -> {to_status}")
    statement = (
        update(SessionRow)
        .where(SessionRow.id == session_id, SessionRow.status.in_(from_statuses))
        .values(status=to_status, updated_at=func.now(), **values)
        .returning(SessionRow)
        .execution_options(synchronize_session=False)
    )
    return (await db.execute(statement)).scalar_one_or_none()


async def become_ready(db: AsyncSession, session_id: uuid.UUID, cursor: str) -> SessionRow | None:
    """A ``starting`` session's CLI answered: ``ready``, or ``busy`` when a prompt already
    waits (one statement). ``None`` when it was not ``starting``."""
    assert may_become(SessionStatus.STARTING, SessionStatus.READY)
    assert may_become(SessionStatus.STARTING, SessionStatus.BUSY)
    statement = (
        update(SessionRow)
        .where(SessionRow.id == session_id, SessionRow.status == SessionStatus.STARTING)
        .values(
            status=case(
                (SessionRow.current_turn_id.is_(None), SessionStatus.READY.value),
                else_=SessionStatus.BUSY.value,
            ),
            event_cursor=cursor,
            updated_at=func.now(),
        )
        .returning(SessionRow)
        .execution_options(synchronize_session=False)
    )
    return (await db.execute(statement)).scalar_one_or_none()


async def set_container(
    db: AsyncSession, session_id: uuid.UUID, container_id: str
) -> SessionRow | None:
    """Record the session's container; ``None`` if the session ended meanwhile."""
    statement = (
        update(SessionRow)
        .where(SessionRow.id == session_id, SessionRow.status.in_(list(ACTIVE_STATUSES)))
        .values(container_id=container_id, updated_at=func.now())
        .returning(SessionRow)
        .execution_options(synchronize_session=False)
    )
    return (await db.execute(statement)).scalar_one_or_none()


async def running_containers(
    db: AsyncSession, instance: str, *where: Any
) -> list[tuple[uuid.UUID, str]]:
    """(session id, container id) of the engine's ready and busy sessions that match
    ``where``, in id order: the sessions a background round visits (disk checks, periodic
    saves)."""
    rows = await db.execute(
        select(SessionRow.id, SessionRow.container_id)
        .where(
            SessionRow.instance == instance,
            SessionRow.status.in_(RUNNING_STATUSES),
            SessionRow.container_id.is_not(None),
            *where,
        )
        .order_by(SessionRow.id)
    )
    return [(row.id, row.container_id) for row in rows]


def in_subtree(session_id: uuid.UUID, include_root: bool = True) -> Any:
    """Rows of the session's subtree: its descendants (and itself)."""
    descendants = SessionRow.path.contains([session_id])  # path @> ARRAY[id]: GIN-indexed
    return or_(SessionRow.id == session_id, descendants) if include_root else descendants


async def begin_stopping_subtree(
    db: AsyncSession, session_id: uuid.UUID, include_root: bool
) -> Sequence[SessionRow]:
    """Mark every active session of the subtree ``stopping``; returns the ones this call
    marked (a session another actor is already stopping is not returned)."""
    statement = (
        update(SessionRow)
        .where(in_subtree(session_id, include_root), SessionRow.status.in_(list(ACTIVE_STATUSES)))
        .values(status=SessionStatus.STOPPING, updated_at=func.now())
        .returning(SessionRow)
        .execution_options(synchronize_session=False)
    )
    return list((await db.execute(statement)).scalars())


async def delete_subtree(db: AsyncSession, session_id: uuid.UUID) -> Sequence[SessionRow]:
    """Delete the session and its descendants; returns what they were."""
    statement = delete(SessionRow).where(in_subtree(session_id)).returning(SessionRow)
    return list((await db.execute(statement)).scalars())


async def end_running_turns(
    db: AsyncSession, session_id: uuid.UUID, status: TurnStatus, reason: str
) -> Sequence[uuid.UUID]:
    """Close every turn of the session still marked running; returns their ids."""
    statement = (
        update(TurnRow)
        .where(TurnRow.session_id == session_id, TurnRow.status == TurnStatus.RUNNING)
        .values(status=status, error=reason, finished_at=func.now())
        .returning(TurnRow.id)
    )
    return list((await db.execute(statement)).scalars())


async def next_turn_seq(db: AsyncSession, session_id: uuid.UUID) -> int:
    current = await db.scalar(
        select(func.coalesce(func.max(TurnRow.seq), 0)).where(TurnRow.session_id == session_id)
    )
    return int(current or 0) + 1


async def release_turn(
    db: AsyncSession, session_id: uuid.UUID, turn_id: uuid.UUID, cursor: str | None
) -> SessionRow | None:
    """After ``turn_id`` ended: a busy session becomes ready again. ``None`` if the session had
    already moved on (another actor released it, or it stopped)."""
    values: dict[str, Any] = {
        "current_turn_id": None,
        "last_activity_at": func.now(),
        "updated_at": func.now(),
        "status": _case_busy_to_ready(),
    }
    if cursor is not None:
        values["event_cursor"] = cursor
    statement = (
        update(SessionRow)
        .where(SessionRow.id == session_id, SessionRow.current_turn_id == turn_id)
        .values(**values)
        .returning(SessionRow)
        .execution_options(synchronize_session=False)
    )
    return (await db.execute(statement)).scalar_one_or_none()


def _case_busy_to_ready() -> Any:
    return case(
        (SessionRow.status == SessionStatus.BUSY, SessionStatus.READY.value),
        else_=SessionRow.status,
    )


async def requeue_start(db: AsyncSession, session_id: uuid.UUID) -> bool:
    """Put a session whose admitted start never created its container back in the queue."""
    statement = (
        update(SessionRow)
        .where(
            SessionRow.id == session_id,
            SessionRow.status == SessionStatus.STARTING,
            SessionRow.container_id.is_(None),
        )
        .values(admitted_at=None, updated_at=func.now())
        .returning(SessionRow.id)
    )
    return (await db.execute(statement)).one_or_none() is not None


async def pool_by_status(db: AsyncSession) -> dict[str, int]:
    """How many pooled containers each status has, every instance's."""
    statement = select(PoolContainerRow.status, func.count()).group_by(PoolContainerRow.status)
    return {status: int(count) for status, count in (await db.execute(statement)).all()}


async def sessions_by_status(db: AsyncSession) -> dict[str, int]:
    """How many sessions each status has, every owner's and instance's (one GROUP BY)."""
    statement = select(SessionRow.status, func.count()).group_by(SessionRow.status)
    return {status: int(count) for status, count in (await db.execute(statement)).all()}
