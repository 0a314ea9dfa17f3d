"""Who may call the model, what each call used, and what a tree may still spend.

Every proxied call is a row in ``model_calls``: inserted when it is admitted (``reserved``),
settled to what the upstream reported when it ends, or ``abandoned`` by the reconciler when
its gateway died mid-call. Settling adds the call's usage to its session's and its tree's
running totals in the same transaction.

Budgets (``config.budget`` of a root, for its whole tree): a call is admitted only while the
tree's spent plus reserved usage is below the budget, and it reserves an upper bound of what it
may use (its request body's size in bytes as input tokens, at most one token per byte, plus its
``max_tokens`` as output, priced at its model's rates). So concurrent calls of one tree overshoot
the budget by at most one call. A call that finds the remaining budget held by calls in flight
waits (``BUDGET_WAIT``) for them to settle rather than being refused early.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    BindParameter,
    ColumnClause,
    Executable,
    Integer,
    String,
    Uuid,
    bindparam,
    exists,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from gateway.db import queries
from gateway.db.models import (
    ACTIVE_STATUSES,
    CallState,
    ModelCallRow,
    SessionRow,
    TreeUsageRow,
)
from gateway.db.outage import database_unavailable
from gateway.db.statements import Prepared, Statements
from gateway.events.bus import EventBus
from gateway.metrics import Metrics
from gateway.model.callers import Caller, CallerCache
from gateway.model.meter import USAGE_FIELDS, Usage
from gateway.model.prices import PriceTable
from gateway.security import Principal, run_stamp
from wrapper.protocol import GatewayEvent

log = logging.getLogger(__name__)

_RETRY_ADMISSION = 0.25  # seconds between looks at a tree whose budget is held in flight


class NotRunning(Exception):
    """The calling session has ended (or never was): its token no longer counts."""


class BudgetSpent(Exception):
    """The tree may not spend more. ``figures`` say how much it spent of what."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


@dataclass(frozen=True)
class Ticket:
    """An admitted call: what it reserved, to be settled exactly once."""

    call_id: uuid.UUID
    caller: Caller
    model: str
    endpoint: str
    reserved_tokens: int
    reserved_cost: Decimal


# Constants written into statements that are built once: an anonymous bound value would have
# to be sent with every execution of a prebuilt statement.
_ZERO: ColumnClause[int] = literal_column("0")
_ONE: ColumnClause[int] = literal_column("1")


def _caller_statement(key: InstrumentedAttribute[Any]) -> Executable:
    """A session (found by ``key`` = the ``key`` parameter) with its tree's budget."""
    return (
        select(
            SessionRow.id,
            SessionRow.status,
            SessionRow.root_id,
            SessionRow.owner,
            TreeUsageRow.max_tokens,
            TreeUsageRow.max_cost_usd,
            SessionRow.path,
            SessionRow.started_at,
        )
        .outerjoin(TreeUsageRow, TreeUsageRow.root_id == SessionRow.root_id)
        .where(key == bindparam("key"))
    )


def _settled_param(name: str, type_: Any = None) -> BindParameter[Any]:
    """A parameter of the settle statement. Its name is not a column's: SQLAlchemy would take
    a parameter named like a column of the table an INSERT writes for that column's value."""
    return bindparam(f"settled_{name}", type_=type_)


def _settle_unbudgeted_statement() -> Executable:
    """A settled call of a tree without a budget: its row, and (only if that row is new) its
    session's and its tree's totals, in one statement. Built once: on the proxy's hot path,
    building and keying a statement of this size costs about a millisecond of CPU."""
    counts = {name: _settled_param(name, BigInteger()) for name in USAGE_FIELDS}
    cost = _settled_param("cost_usd", ModelCallRow.cost_usd.type)
    root = _settled_param("root_id", Uuid())
    owner = _settled_param("owner", String())
    call = (
        pg_insert(ModelCallRow)
        .values(
            id=_settled_param("call_id", Uuid()),
            session_id=_settled_param("session_id", Uuid()),
            root_id=root,
            ancestors=_settled_param("ancestors", ARRAY(Uuid())),
            owner=owner,
            model=_settled_param("model", String()),
            endpoint=_settled_param("endpoint", String()),
            state=literal_column(f"'{CallState.SETTLED.value}'"),
            http_status=_settled_param("http_status", Integer()),
            reserved_tokens=_ZERO,
            reserved_cost_usd=_ZERO,
            cost_usd=cost,
            finished_at=func.now(),
            **counts,
        )
        .on_conflict_do_nothing()
        .returning(ModelCallRow.id)
        .cte("settled_call")
    )
    written = exists(select(call.c.id))
    session = (
        update(SessionRow)
        .where(SessionRow.id == _settled_param("session_id"), written)
        .values(**_added(SessionRow, cost, counts))
        .cte("session_counted")
    )
    tree_row = select(root, owner, _ONE, cost, *counts.values()).where(written)
    return (
        pg_insert(TreeUsageRow)
        .from_select(
            ["root_id", "owner", "requests", "cost_usd", *counts],
            tree_row,
            include_defaults=False,  # the rest: the server's defaults
        )
        .on_conflict_do_update(
            index_elements=[TreeUsageRow.root_id], set_=_added(TreeUsageRow, cost, counts)
        )
        .returning(TreeUsageRow.root_id)
        .add_cte(call)
        .add_cte(session)
    )


def budget_figures(tree: TreeUsageRow) -> dict[str, Any]:
    spent = sum(getattr(tree, name) for name in USAGE_FIELDS)
    return {
        "root_id": str(tree.root_id),
        "spent_tokens": spent,
        "max_tokens": tree.max_tokens,
        "spent_cost_usd": float(tree.cost_usd),
        "max_cost_usd": float(tree.max_cost_usd) if tree.max_cost_usd is not None else None,
    }


def _exhausted(tree: TreeUsageRow, extra_tokens: int, extra_cost: Decimal) -> bool:
    spent = sum(getattr(tree, name) for name in USAGE_FIELDS)
    if tree.max_tokens is not None and spent + extra_tokens >= tree.max_tokens:
        return True
    return tree.max_cost_usd is not None and tree.cost_usd + extra_cost >= tree.max_cost_usd


class Ledger:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        statements: Statements,
        prices: PriceTable,
        bus: EventBus,
        budget_wait: float,
        metrics: Metrics | None = None,
        callers: CallerCache | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._callers = callers or CallerCache(ttl=0)  # none given: nothing kept
        self._db = db
        # One round trip each, compiled once: the caller check and most settlements.
        self._statements = statements
        self._caller_by_session = statements.prepare(_caller_statement(SessionRow.id))
        self._caller_by_pool = statements.prepare(_caller_statement(SessionRow.pool_id))
        self._settle_unbudgeted_statement = statements.prepare(_settle_unbudgeted_statement())
        self._prices = prices
        self._bus = bus
        self._budget_wait = budget_wait

    # -- admission ---------------------------------------------------------------------------

    def kept_caller(self, principal: Principal) -> Caller | None:
        """What ``caller`` would answer, if this replica kept it (``None``: ask ``caller``)."""
        assert principal.session_id is not None
        return self._callers.get(principal.session_id, principal.run)

    async def caller(self, principal: Principal) -> Caller:
        """The running session a session token (or model key) names, with its tree's budget;
        raises ``NotRunning``, also for a model key of one of the session's earlier runs.
        Kept between calls (``CallerCache``) while this replica hears of sessions that end.
        While PostgreSQL cannot be reached, a session whose tree has no budget (the token says
        so) goes on with what its token says, unchecked for revocation (or run), so running
        sessions keep working through an outage; a budgeted one cannot be admitted (the
        database error propagates)."""
        assert principal.session_id is not None and principal.root_id is not None
        kept = self.kept_caller(principal)
        if kept is not None:
            return kept
        mark = self._callers.lookup_begins()
        try:
            caller, run = await self._running_caller(
                self._caller_by_session,
                principal.session_id,
                f"session {principal.session_id}",
                principal.run,
            )
            self._callers.keep(mark, caller, run)
            return caller
        except NotRunning:
            raise
        except Exception as exc:
            if principal.budgeted or not database_unavailable(exc):
                raise
            log.warning(
                "database unreachable: model call of %s admitted on its token alone",
                principal.session_id,
            )
            return Caller(principal.session_id, principal.root_id, principal.owner, None, None)

    async def caller_of_pool(self, pool_id: uuid.UUID) -> Caller:
        """The running session that claimed pooled container ``pool_id`` (whose CLI still
        uses the key it booted with); raises ``NotRunning`` before a claim or after its end."""
        caller, _ = await self._running_caller(self._caller_by_pool, pool_id, f"pool key {pool_id}")
        return caller

    async def _running_caller(
        self, statement: Prepared, key: uuid.UUID, name: str, run: int | None = None
    ) -> tuple[Caller, int]:
        """The caller, and the run it is in."""
        row = await self._statements.one_or_none(statement, {"key": key})
        if row is None or row["status"] not in ACTIVE_STATUSES:
            who = f"session {row['id']}" if row is not None else name
            raise NotRunning(f"{who} is {row['status'] if row else 'gone'}")
        current = run_stamp(row["started_at"])
        if run is not None and run != current:
            raise NotRunning(f"session {row['id']} was started again since this key was made")
        caller = Caller(
            row["id"],
            row["root_id"],
            row["owner"],
            row["max_tokens"],
            row["max_cost_usd"],
            tuple(row["path"] or ()),
        )
        return caller, current

    async def admit(
        self, caller: Caller, model: str, endpoint: str, body_bytes: int, max_tokens: int
    ) -> Ticket:
        """Admit one call; raises ``BudgetSpent`` when its tree may not spend more. A call of
        a tree without a budget writes nothing before it goes upstream (its row is written
        when it is settled): the proxy adds no database write to the time to first byte."""
        ticket = Ticket(uuid.uuid4(), caller, model, endpoint, 0, Decimal(0))
        if caller.has_budget and endpoint == "messages":
            bound = Usage(input_tokens=body_bytes, output_tokens=max_tokens)
            ticket = Ticket(
                ticket.call_id,
                caller,
                model,
                endpoint,
                bound.total_tokens,
                self._prices.cost(model, bound),
            )
            await self._reserve(ticket)
        return ticket

    async def _reserve(self, ticket: Ticket) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget_wait
        while True:
            async with self._db() as db, db.begin():
                tree = await self._tree_for_update(db, ticket.caller)
                if _exhausted(tree, 0, Decimal(0)):
                    raise BudgetSpent(
                        f"the budget of session tree {tree.root_id} is spent",
                        budget_figures(tree),
                    )
                if not _exhausted(tree, tree.reserved_tokens, tree.reserved_cost_usd):
                    tree.reserved_tokens += ticket.reserved_tokens
                    tree.reserved_cost_usd += ticket.reserved_cost
                    ancestors = await self._ancestors(db, ticket.caller)
                    await db.execute(
                        insert(ModelCallRow).values(**self._call_values(ticket, ancestors))
                    )
                    return
                figures = budget_figures(tree)
            if loop.time() >= deadline:
                raise BudgetSpent(
                    f"the rest of the budget of session tree {ticket.caller.root_id} is held by "
                    f"its calls in flight after {self._budget_wait:g} s",
                    figures,
                )
            await asyncio.sleep(_RETRY_ADMISSION)

    async def _tree_for_update(self, db: AsyncSession, caller: Caller) -> TreeUsageRow:
        tree = await db.get(TreeUsageRow, caller.root_id, with_for_update=True)
        if tree is None:  # a tree from before budgets existed: its row appears on first use
            await db.execute(
                pg_insert(TreeUsageRow)
                .values(root_id=caller.root_id, owner=caller.owner)
                .on_conflict_do_nothing()
            )
            tree = await db.get(TreeUsageRow, caller.root_id, with_for_update=True)
        assert tree is not None
        return tree

    @staticmethod
    def _call_values(ticket: Ticket, ancestors: list[uuid.UUID]) -> dict[str, Any]:
        return {
            "id": ticket.call_id,
            "session_id": ticket.caller.session_id,
            "root_id": ticket.caller.root_id,
            "ancestors": ancestors,
            "owner": ticket.caller.owner,
            "model": ticket.model[:200],
            "endpoint": ticket.endpoint,
            "state": CallState.RESERVED,
            "reserved_tokens": ticket.reserved_tokens,
            "reserved_cost_usd": ticket.reserved_cost,
        }

    async def _ancestors(self, db: AsyncSession, caller: Caller) -> list[uuid.UUID]:
        if caller.ancestors is not None:
            return list(caller.ancestors)
        path = await db.scalar(select(SessionRow.path).where(SessionRow.id == caller.session_id))
        return list(path or [])

    # -- settling ----------------------------------------------------------------------------

    async def settle(
        self, ticket: Ticket, model: str, usage: Usage, status: int | NoAnswer
    ) -> None:
        """Count what the call used (exactly what the upstream reported) for its session, its
        tree and its owner, and release its reservation. Idempotent per call. Sends
        ``budget_exceeded`` to the tree's running sessions once, when this call spent the
        last of the budget."""
        cost = self._prices.cost(model, usage)
        counted = _counted(usage)
        if _unbudgeted(ticket):
            await self._settle_unbudgeted(ticket, model, _http_status(status), cost, counted)
            self._metrics.model_call(self._prices.family(model), usage, cost, status)
            return
        settled = _settled_values(model, _http_status(status), cost, counted)
        async with self._db() as db, db.begin():
            prior = await db.scalar(
                select(ModelCallRow.state)
                .where(ModelCallRow.id == ticket.call_id)
                .with_for_update()
            )
            if prior == CallState.SETTLED:
                return  # settled already
            if prior is None:  # it reserved nothing (count_tokens of a budgeted tree): written now
                ancestors = await self._ancestors(db, ticket.caller)
                await db.execute(
                    insert(ModelCallRow).values(**self._call_values(ticket, ancestors))
                )
            # An abandoned call (its reservation already released) still counts what it used.
            release = prior == CallState.RESERVED
            await db.execute(
                update(ModelCallRow).where(ModelCallRow.id == ticket.call_id).values(**settled)
            )
            await _count_for_session(db, ticket.caller.session_id, cost, counted)
            tree = await self._tree_for_update(db, ticket.caller)
            tree.requests += 1
            tree.cost_usd += cost
            for name, value in counted.items():
                setattr(tree, name, getattr(tree, name) + value)
            if release:
                tree.reserved_tokens = max(0, tree.reserved_tokens - ticket.reserved_tokens)
                tree.reserved_cost_usd = max(
                    Decimal(0), tree.reserved_cost_usd - ticket.reserved_cost
                )
            crossed = (
                (tree.max_tokens is not None or tree.max_cost_usd is not None)
                and tree.exceeded_at is None
                and _exhausted(tree, 0, Decimal(0))
            )
            if crossed:
                tree.exceeded_at = queries.utcnow()
            figures = budget_figures(tree)
            running = (
                (
                    await db.scalars(
                        select(SessionRow.id).where(
                            SessionRow.root_id == ticket.caller.root_id,
                            SessionRow.status.in_(ACTIVE_STATUSES),
                        )
                    )
                ).all()
                if crossed
                else []
            )
        self._metrics.model_call(self._prices.family(model), usage, cost, status)
        for session_id in running:
            await self._bus.publish(str(session_id), GatewayEvent.BUDGET_EXCEEDED, **figures)

    @staticmethod
    def settles_together(ticket: Ticket) -> bool:
        """Whether the call can be settled in a batch (``settle_together``): a call of a tree
        without a budget, which reserved nothing, whose session's ancestors are known."""
        return _unbudgeted(ticket) and ticket.caller.ancestors is not None

    async def settle_together(self, calls: Sequence[Ended]) -> None:
        """Settle calls that ``settles_together`` in one round trip and one transaction: each
        counted as ``settle`` counts it, all of them or none. Idempotent per call."""
        costs = [self._prices.cost(call.model, call.usage) for call in calls]
        parameter_sets = [
            _unbudgeted_parameters(
                call.ticket,
                call.model,
                _http_status(call.status),
                cost,
                _counted(call.usage),
                list(call.ticket.caller.ancestors or ()),
            )
            for call, cost in zip(calls, costs, strict=True)
        ]
        await self._statements.many(self._settle_unbudgeted_statement, parameter_sets)
        for call, cost in zip(calls, costs, strict=True):
            self._metrics.model_call(self._prices.family(call.model), call.usage, cost, call.status)

    async def _settle_unbudgeted(
        self,
        ticket: Ticket,
        model: str,
        http_status: int | None,
        cost: Decimal,
        counted: dict[str, int],
    ) -> None:
        """A call of a tree without a budget reserved nothing and has no row yet. One statement
        counts it: its row, its session's totals, its tree's totals, each only if the row was
        new, so a second settlement of the same call (a retry) changes nothing."""
        caller = ticket.caller
        if caller.ancestors is None:  # admitted while the database was down: look them up
            async with self._db() as db:
                ancestors = await self._ancestors(db, caller)
        else:
            ancestors = list(caller.ancestors)
        await self._statements.one_or_none(
            self._settle_unbudgeted_statement,
            _unbudgeted_parameters(ticket, model, http_status, cost, counted, ancestors),
        )

    async def abandon_stale(self, older_than: timedelta) -> int:
        """Release the reservations of calls whose gateway died mid-call (older than any call
        can last); returns how many."""
        cutoff = queries.utcnow() - older_than
        async with self._db() as db, db.begin():
            stale = (
                await db.execute(
                    update(ModelCallRow)
                    .where(
                        ModelCallRow.state == CallState.RESERVED,
                        ModelCallRow.started_at < cutoff,
                    )
                    .values(state=CallState.ABANDONED, finished_at=func.now())
                    .returning(
                        ModelCallRow.root_id,
                        ModelCallRow.reserved_tokens,
                        ModelCallRow.reserved_cost_usd,
                    )
                )
            ).all()
            for root_id, tokens, cost in stale:
                await db.execute(
                    update(TreeUsageRow)
                    .where(TreeUsageRow.root_id == root_id)
                    .values(
                        reserved_tokens=func.greatest(TreeUsageRow.reserved_tokens - tokens, 0),
                        reserved_cost_usd=func.greatest(TreeUsageRow.reserved_cost_usd - cost, 0),
                    )
                )
        return len(stale)


class NoAnswer(StrEnum):
    """Why a call that ended has no HTTP status from the upstream."""

    UNREACHABLE = "unreachable"  # the upstream could not be reached, or did not answer in time
    CALLER_GONE = "caller_gone"  # the caller hung up before its request was all sent on


@dataclass(frozen=True)
class Ended:
    """A call whose answer ended: what the upstream reported it used, to be settled."""

    ticket: Ticket
    model: str
    usage: Usage
    status: int | NoAnswer


def _http_status(status: int | NoAnswer) -> int | None:
    """What a call's row records: the upstream's HTTP status, none when it gave no answer."""
    return None if isinstance(status, NoAnswer) else status


def _unbudgeted(ticket: Ticket) -> bool:
    """A call of a tree without a budget, which reserved nothing: it has no row before it is
    settled, and one statement settles it."""
    return not ticket.caller.has_budget and ticket.reserved_tokens == 0


def _counted(usage: Usage) -> dict[str, int]:
    return {name: getattr(usage, name) for name in USAGE_FIELDS}


def _unbudgeted_parameters(
    ticket: Ticket,
    model: str,
    http_status: int | None,
    cost: Decimal,
    counted: dict[str, int],
    ancestors: list[uuid.UUID],
) -> dict[str, Any]:
    """The parameters of the statement that settles a call of a tree without a budget."""
    caller = ticket.caller
    values = {
        "call_id": ticket.call_id,
        "session_id": caller.session_id,
        "root_id": caller.root_id,
        "ancestors": ancestors,
        "owner": caller.owner,
        "model": model[:200],
        "endpoint": ticket.endpoint,
        "http_status": http_status,
        "cost_usd": cost,
        **counted,
    }
    return {f"settled_{name}": value for name, value in values.items()}


def _settled_values(
    model: str, http_status: int | None, cost: Decimal, counted: dict[str, int]
) -> dict[str, Any]:
    """A call row's columns once it is settled."""
    return {
        "state": CallState.SETTLED,
        "model": model[:200],
        "http_status": http_status,
        "cost_usd": cost,
        "finished_at": func.now(),
        **counted,
    }


def _added(
    table: type[SessionRow] | type[TreeUsageRow], cost: Any, counted: Mapping[str, Any]
) -> dict[str, Any]:
    """A session's or a tree's running totals with one more call."""
    return {
        "requests": table.requests + _ONE,
        "cost_usd": table.cost_usd + cost,
        **{name: getattr(table, name) + value for name, value in counted.items()},
    }


async def _count_for_session(
    db: AsyncSession, session_id: uuid.UUID, cost: Decimal, counted: dict[str, int]
) -> None:
    """Add one settled call to its session's running totals."""
    await db.execute(
        update(SessionRow)
        .where(SessionRow.id == session_id)
        .values(**_added(SessionRow, cost, counted))
    )
