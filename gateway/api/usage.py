"""Model usage: a session's and its subtree's (with the tree's budget), and an owner's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from gateway.db.models import TreeUsageRow
from gateway.deps import CurrentUser, OwnedSession, ServicesDep
from gateway.error_codes import ErrorCode
from gateway.errors import InvalidRequest
from gateway.model.meter import USAGE_FIELDS
from gateway.model.usage import Totals
from gateway.schemas import ErrorResponse, UsageFigures

router = APIRouter(tags=["usage"], responses={401: {"model": ErrorResponse}})


class UsageTotals(UsageFigures):
    models: dict[str, UsageFigures] = Field(description="The same figures per model.")

    @classmethod
    def of_totals(cls, totals: Totals) -> UsageTotals:
        base = UsageFigures.of(totals)
        models = {name: UsageFigures.of(figures) for name, figures in totals.models.items()}
        return cls(models=models, **base.model_dump())


class Budget(BaseModel):
    root_id: str
    max_tokens: int | None
    max_cost_usd: float | None
    spent_tokens: int = Field(description="All tokens the tree used (every kind).")
    spent_cost_usd: float
    reserved_tokens: int = Field(description="Held by the tree's calls in flight.")
    exceeded: bool

    @classmethod
    def of(cls, tree: TreeUsageRow) -> Budget:
        return cls(
            root_id=str(tree.root_id),
            max_tokens=tree.max_tokens,
            max_cost_usd=float(tree.max_cost_usd) if tree.max_cost_usd is not None else None,
            spent_tokens=sum(getattr(tree, name) for name in USAGE_FIELDS),
            spent_cost_usd=float(tree.cost_usd),
            reserved_tokens=tree.reserved_tokens,
            exceeded=tree.exceeded_at is not None,
        )


class SessionUsage(BaseModel):
    session: UsageTotals = Field(description="This session's own calls.")
    tree: UsageTotals = Field(description="This session and all its descendants.")
    budget: Budget | None = Field(description="Its spawn tree's budget, when the root set one.")


class OwnerUsage(BaseModel):
    since: datetime | None
    until: datetime | None
    usage: UsageTotals


@router.get(
    "/sessions/{session_id}/usage",
    response_model=SessionUsage,
    responses={404: {"model": ErrorResponse}},
)
async def session_usage(session: OwnedSession, services: ServicesDep) -> SessionUsage:
    """What the session and its subtree spent on the model, per model, and its tree's budget."""
    tree = await services.usage.tree(session.root_id)
    return SessionUsage(
        session=UsageTotals.of_totals(await services.usage.of_session(session.id)),
        tree=UsageTotals.of_totals(await services.usage.of_subtree(session.id)),
        budget=Budget.of(tree) if tree is not None and _has_budget(tree) else None,
    )


@router.get("/usage", response_model=OwnerUsage)
async def owner_usage(
    principal: CurrentUser,
    services: ServicesDep,
    since: Annotated[datetime | None, Query(description="From (inclusive), ISO 8601.")] = None,
    until: Annotated[datetime | None, Query(description="To (exclusive), ISO 8601.")] = None,
) -> OwnerUsage:
    """The caller's model usage (sessions deleted since included), per model."""
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("since must be before until", code=ErrorCode.INVALID_RANGE)
    totals = await services.usage.of_owner(principal.owner, since, until)
    return OwnerUsage(since=since, until=until, usage=UsageTotals.of_totals(totals))


def _has_budget(tree: TreeUsageRow) -> bool:
    return tree.max_tokens is not None or tree.max_cost_usd is not None
