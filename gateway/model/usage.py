"""Reading model usage: a session's, a subtree's (deleted sessions included), an owner's.

Every figure is a sum over ``model_calls``, the rows the proxy settled with exactly what the
upstream reported, so the API's figures and the upstream's agree token for token.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.models import CallState, ModelCallRow, TreeUsageRow
from gateway.model.meter import USAGE_FIELDS


@dataclass
class Figures:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        self.cost_usd += other.cost_usd
        for name in USAGE_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Totals(Figures):
    models: dict[str, Figures] = field(default_factory=dict)


class UsageService:
    def __init__(self, db: async_sessionmaker[AsyncSession]) -> None:
        self._db = db

    async def of_session(self, session_id: uuid.UUID) -> Totals:
        return await self._totals(ModelCallRow.session_id == session_id)

    async def of_subtree(self, session_id: uuid.UUID) -> Totals:
        """The session and all its descendants, those deleted since included."""
        return await self._totals(
            or_(
                ModelCallRow.session_id == session_id,
                ModelCallRow.ancestors.contains([session_id]),
            )
        )

    async def of_owner(self, owner: str, since: datetime | None, until: datetime | None) -> Totals:
        conditions: list[ColumnElement[bool]] = [ModelCallRow.owner == owner]
        if since is not None:
            conditions.append(ModelCallRow.started_at >= since)
        if until is not None:
            conditions.append(ModelCallRow.started_at < until)
        return await self._totals(*conditions)

    async def tree(self, root_id: uuid.UUID) -> TreeUsageRow | None:
        """A tree's running totals and budget."""
        async with self._db() as db:
            return await db.get(TreeUsageRow, root_id)

    async def _totals(self, *conditions: ColumnElement[bool]) -> Totals:
        columns: list[Any] = [func.sum(getattr(ModelCallRow, name)) for name in USAGE_FIELDS]
        statement = (
            select(ModelCallRow.model, func.count(), func.sum(ModelCallRow.cost_usd), *columns)
            .where(ModelCallRow.state != CallState.RESERVED, *conditions)  # calls that ended
            .group_by(ModelCallRow.model)
        )
        async with self._db() as db:
            rows = (await db.execute(statement)).all()
        totals = Totals()
        for model, count, cost, *tokens in rows:
            counted = {
                name: int(value or 0) for name, value in zip(USAGE_FIELDS, tokens, strict=True)
            }
            figures = Figures(requests=int(count), cost_usd=Decimal(cost or 0), **counted)
            totals.models[model] = figures
            totals.add(figures)
        return totals
