"""Model usage: a session's and its subtree's (with the tree's budget), and an owner's."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from ccd.models import OwnerUsage, SessionUsage, TreeBudget, UsageTotals
from gateway.db.models import TreeUsageRow
from gateway.deps import CurrentUser, OwnedSession, ServicesDep
from gateway.model.meter import USAGE_FIELDS
from gateway.model.usage import Totals
from gateway.schemas import ErrorResponse, usage_figures

router = APIRouter(tags=["usage"], responses={401: {"model": ErrorResponse}})

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339_only(value: object) -> object:
    """What the schema says (``format: date-time``): an RFC 3339 timestamp with its offset,
    not a bare date or a number of seconds (which the parser would otherwise take)."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("expected an RFC 3339 date-time such as 2026-12-01T00:00:00Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339_only)]


def usage_totals(totals: Totals) -> UsageTotals:
    base = usage_figures(totals)
    models = {name: usage_figures(figures) for name, figures in totals.models.items()}
    return UsageTotals(models=models, **base.model_dump())


def tree_budget(tree: TreeUsageRow) -> TreeBudget:
    return TreeBudget(
        root_id=str(tree.root_id),
        max_tokens=tree.max_tokens,
        max_cost_usd=float(tree.max_cost_usd) if tree.max_cost_usd is not None else None,
        spent_tokens=sum(getattr(tree, name) for name in USAGE_FIELDS),
        spent_cost_usd=float(tree.cost_usd),
        reserved_tokens=tree.reserved_tokens,
        exceeded=tree.exceeded_at is not None,
    )


@router.get(
    "/sessions/{session_id}/usage",
    response_model=SessionUsage,
    responses={404: {"model": ErrorResponse}},
)
async def session_usage(session: OwnedSession, services: ServicesDep) -> SessionUsage:
    """What the session and its subtree spent on the model, per model, and its tree's budget."""
    tree = await services.usage.tree(session.root_id)
    return SessionUsage(
        session=usage_totals(await services.usage.of_session(session.id)),
        tree=usage_totals(await services.usage.of_subtree(session.id)),
        budget=tree_budget(tree) if tree is not None and _has_budget(tree) else None,
    )


@router.get("/usage", response_model=OwnerUsage)
async def owner_usage(
    principal: CurrentUser,
    services: ServicesDep,
    since: Annotated[Timestamp | None, Query(description="From (inclusive), RFC 3339.")] = None,
    until: Annotated[Timestamp | None, Query(description="To (exclusive), RFC 3339.")] = None,
) -> OwnerUsage:
    """The caller's model usage (sessions deleted since included), per model. An empty range
    (``until`` not after ``since``) has no usage."""
    totals = await services.usage.of_owner(principal.owner, since, until)
    return OwnerUsage(since=since, until=until, usage=usage_totals(totals))


def _has_budget(tree: TreeUsageRow) -> bool:
    return tree.max_tokens is not None or tree.max_cost_usd is not None
