"""Read-side views of spawn trees: a session's children and its whole subtree."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db import queries
from gateway.db.models import SessionRow, TurnRow, TurnStatus


@dataclass
class TreeNode:
    session: SessionRow
    last_turn: TurnRow | None
    children: list[TreeNode] = field(default_factory=list)


class TreeService:
    def __init__(self, db: async_sessionmaker[AsyncSession]) -> None:
        self._db = db

    async def children(self, session_id: uuid.UUID) -> Sequence[SessionRow]:
        """Direct children, oldest first."""
        async with self._db() as db:
            statement = (
                select(SessionRow)
                .where(SessionRow.parent_id == session_id)
                .order_by(SessionRow.created_at, SessionRow.id)
            )
            return (await db.scalars(statement)).all()

    async def subtree(self, root: SessionRow) -> TreeNode:
        """``root`` and all its descendants, each with its last finished turn."""
        async with self._db() as db:
            rows = (
                await db.scalars(
                    select(SessionRow)
                    .where(queries.in_subtree(root.id, include_root=False))
                    .order_by(SessionRow.depth, SessionRow.created_at, SessionRow.id)
                )
            ).all()
            turns = await _last_finished_turns(db, [root.id, *(row.id for row in rows)])
        nodes = {root.id: TreeNode(root, turns.get(root.id))}
        for row in rows:  # parents come before children: ordered by depth
            node = TreeNode(row, turns.get(row.id))
            nodes[row.id] = node
            if row.parent_id in nodes:
                nodes[row.parent_id].children.append(node)
        return nodes[root.id]


async def last_finished_turn(db: AsyncSession, session_id: uuid.UUID) -> TurnRow | None:
    return (await _last_finished_turns(db, [session_id])).get(session_id)


async def _last_finished_turns(
    db: AsyncSession, session_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, TurnRow]:
    statement = (
        select(TurnRow)
        .where(TurnRow.session_id.in_(session_ids), TurnRow.status != TurnStatus.RUNNING)
        .order_by(TurnRow.session_id, TurnRow.seq.desc())
        .distinct(TurnRow.session_id)
    )
    return {turn.session_id: turn for turn in (await db.scalars(statement)).all()}
