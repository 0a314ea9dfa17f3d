"""Session lifecycle policy, beginnings: create, spawn, start the container, start timeout,
readiness. Endings (stop, fail, delete) are in ``termination``. Together they are the status
machine; the runtime only starts and stops containers:

    starting -> ready <-> busy -> stopping -> stopped
        \\________\\_______\\______________-> failed (with a reason)

Every status change is a conditional database update, then a ``status`` event on the session's
stream, so clients see the same history the database records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NoReturn

from redis.exceptions import RedisError
from sqlalchemy import func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.cursors import decode_session_cursor, encode_session_cursor
from gateway.db import queries
from gateway.db.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    SessionRow,
    SessionStatus,
    TreeUsageRow,
    TurnRow,
)
from gateway.db.outage import database_unavailable
from gateway.error_codes import ErrorCode
from gateway.errors import (
    Conflict,
    GatewayError,
    ImageNotFound,
    InvalidRequest,
    RuntimeUnavailable,
    SessionNotFound,
    SessionNotRunning,
    Unauthorized,
    Unavailable,
)
from gateway.events.access import SessionAccess
from gateway.events.bus import EventBus
from gateway.events.hub import EventHub
from gateway.metrics import Metrics
from gateway.runtime import ImageMissing, RuntimeFailure, SessionRuntime
from gateway.security import mint_model_key, mint_session_token
from gateway.services import capabilities, limits
from gateway.services import idempotency as idempotency_keys
from gateway.services.admission import StartAdmission
from gateway.services.background import TaskSet
from gateway.services.container_spec import build_container_spec
from gateway.services.idempotency import IdempotencyKey
from gateway.services.pool import Claimed, WarmPool
from gateway.services.termination import Terminator
from gateway.services.turns import TurnService
from gateway.services.workspaces import MODE_RW, WorkspaceChoice, WorkspaceInUse, WorkspaceService
from gateway.store.objects import StoreError
from wrapper.protocol import GatewayEvent, PoolClaim
from wrapper.session_config import SessionConfig

log = logging.getLogger(__name__)

# Seconds between looks for queued starts when nothing woke the starter: a backstop. Starters
# are woken by their own process's queued starts and readiness, and by every replica's through
# the ccd_start_slots notification (migration 0008), also when a listener hears again.
STARTER_POLL = 5.0

EPHEMERAL = WorkspaceChoice()


@dataclass(frozen=True)
class Created:
    """A session that create or spawn answers; ``replayed``: an earlier request with the same
    ``Idempotency-Key`` made it, and this one changed nothing."""

    session: SessionRow
    replayed: bool = False
    warm: Claimed | None = None  # it took a pooled container in its insert


class SessionService:
    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[AsyncSession],
        runtime: SessionRuntime,
        bus: EventBus,
        hub: EventHub,
        turns: TurnService,
        terminator: Terminator,
        access: SessionAccess,
        admission: StartAdmission,
        workspaces: WorkspaceService | None = None,
        metrics: Metrics | None = None,
        pool: WarmPool | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._pool = pool
        self._settings = settings
        self._access = access
        self._db = db
        self._runtime = runtime
        self._bus = bus
        self._hub = hub
        self._turns = turns
        self._terminator = terminator
        self._workspaces = workspaces
        self._admission = admission
        self._background = TaskSet()
        self._queued = asyncio.Event()  # a start may be waiting for a slot
        self._start_watches: dict[uuid.UUID, asyncio.Task[None]] = {}

    async def close(self) -> None:
        await self._background.close()

    # -- reading -------------------------------------------------------------------------------

    async def get(self, session_id: uuid.UUID, owner: str | None = None) -> SessionRow:
        """The session, if it exists and (when given) belongs to ``owner``; else 404."""
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
        if row is None or (owner is not None and row.owner != owner):
            raise SessionNotFound(session_id)
        return row

    async def tree_budgeted(self, root_id: uuid.UUID) -> bool:
        """Whether the tree has a model budget (set once, when its root was created)."""
        async with self._db() as db:
            tree = await db.get(TreeUsageRow, root_id)
        return tree is not None and (tree.max_tokens is not None or tree.max_cost_usd is not None)

    async def require_running(self, session_id: uuid.UUID) -> None:
        """A session token is good only while its session runs (it dies with the session)."""
        async with self._db() as db:
            status = await db.scalar(select(SessionRow.status).where(SessionRow.id == session_id))
        if status not in ACTIVE_STATUSES:
            raise Unauthorized(
                f"session {session_id} is {status or 'gone'}: its token is no longer valid",
                code=ErrorCode.TOKEN_REVOKED,
            )

    async def list(
        self, owner: str, limit: int, cursor: str | None, status: SessionStatus | None
    ) -> tuple[Sequence[SessionRow], str | None]:
        """Newest first; ``cursor`` is the opaque ``next_cursor`` of the previous page."""
        statement = select(SessionRow).where(SessionRow.owner == owner)
        if status is not None:
            statement = statement.where(SessionRow.status == status)
        if cursor is not None:
            created_at, last_id = decode_session_cursor(cursor)
            statement = statement.where(
                tuple_(SessionRow.created_at, SessionRow.id) < tuple_(created_at, last_id)
            )
        statement = statement.order_by(SessionRow.created_at.desc(), SessionRow.id.desc())
        async with self._db() as db:
            rows = list((await db.scalars(statement.limit(limit + 1))).all())
        last = rows[limit - 1] if len(rows) > limit else None
        next_cursor = encode_session_cursor(last.created_at, last.id) if last else None
        return rows[:limit], next_cursor

    async def turns(self, session_id: uuid.UUID) -> Sequence[TurnRow]:
        async with self._db() as db:
            statement = select(TurnRow).where(TurnRow.session_id == session_id)
            return (await db.scalars(statement.order_by(TurnRow.seq))).all()

    # -- creating ------------------------------------------------------------------------------

    async def create(
        self,
        owner: str,
        config: SessionConfig,
        prompt: str | None = None,
        workspace: WorkspaceChoice = EPHEMERAL,
        idempotency: IdempotencyKey | None = None,
    ) -> Created:
        """Insert a root session, queue its first prompt if any, start its container. The
        session is ``starting`` until its CLI answers the handshake; prompts sent meanwhile are
        queued, not refused. Raises ``LimitExceeded`` or ``CapacityReached`` (nothing is
        created), or ``ImageNotFound``/``RuntimeUnavailable`` (the session is then recorded as
        failed). With ``idempotency``, a key already used with the same request answers that
        session as it is now (``replayed``), and nothing else happens."""
        begun = time.perf_counter()
        created = await self._insert(
            owner,
            config.model_dump(exclude_none=True),
            parent_id=None,
            workspace=workspace,
            idempotency=idempotency,
        )
        if created.replayed:
            return created
        if created.warm is None:  # the steps are a cold start's
            self._metrics.start_step("database", time.perf_counter() - begun)
        return Created(await self._launch(created, prompt))

    async def spawn(
        self,
        parent_id: uuid.UUID,
        prompt: str,
        overrides: SessionConfig,
        workspace: WorkspaceChoice = EPHEMERAL,
        *,
        idempotency: IdempotencyKey | None = None,
        by_session: bool = False,
    ) -> Created:
        """Start a child of ``parent_id``: same owner, the parent's config with ``overrides``
        applied, one level deeper. The limits are checked atomically with the insert; the
        parent's stream gets ``child_spawned``. ``by_session``: a session token asks, so the
        workspace must be one its tree may give (``capabilities``). ``idempotency`` as for
        ``create``."""
        if overrides.budget is not None:
            raise InvalidRequest(
                "a child counts toward its root's budget and cannot set its own; set "
                "config.budget when creating the root",
                code=ErrorCode.BUDGET_NOT_ALLOWED,
            )
        parent = await self.get(parent_id)
        inherited = {name: value for name, value in parent.config.items() if name != "budget"}
        config = {**inherited, **overrides.model_dump(exclude_none=True)}
        created = await self._insert(
            parent.owner,
            config,
            parent_id=parent_id,
            workspace=workspace,
            idempotency=idempotency,
            by_session=by_session,
        )
        if created.replayed:
            return created
        row = created.session
        await self._bus.publish(
            str(parent_id),
            GatewayEvent.CHILD_SPAWNED,
            child_id=str(row.id),
            depth=row.depth,
            prompt=prompt,
        )
        return Created(await self._launch(created, prompt))

    async def _insert(
        self,
        owner: str,
        config: dict[str, Any],
        parent_id: uuid.UUID | None,
        workspace: WorkspaceChoice,
        idempotency: IdempotencyKey | None = None,
        by_session: bool = False,
    ) -> Created:
        session_id = uuid.uuid4()
        async with self._db() as db, db.begin():
            await limits.lock_owner(db, owner)
            parent = None
            if parent_id is not None:
                parent = await db.get(SessionRow, parent_id, with_for_update=True)
                if parent is None:
                    raise SessionNotFound(parent_id)
                if by_session:
                    await capabilities.check_session_workspace(db, parent, workspace)
            if idempotency is not None:
                # Before the status and limit checks: a replay answers even when the parent has
                # ended or the owner is at capacity since (this session may be why).
                earlier = await idempotency_keys.lookup(
                    db, owner, idempotency, self._settings.idempotency_ttl
                )
                if earlier is not None:
                    existing = await db.get(SessionRow, earlier)
                    if existing is not None:  # the key's row dies with its session
                        return Created(existing, replayed=True)
            if parent is not None and parent.status not in ACTIVE_STATUSES:
                raise SessionNotRunning(
                    f"session {parent_id} is {parent.status}; only a running session can spawn"
                )
            await limits.check_limits(db, self._settings, owner, parent)
            row = SessionRow(
                id=session_id,
                owner=owner,
                instance=self._settings.instance_name,
                status=SessionStatus.STARTING,
                image=self._settings.session_image,
                config=config,
                claude_session_id=uuid.uuid4(),
                started_at=queries.utcnow(),
                parent_id=parent_id,
                root_id=parent.root_id if parent else session_id,
                depth=parent.depth + 1 if parent else 0,
                path=[*parent.path, parent.id] if parent else [],
            )
            if self._workspaces is not None:
                await self._workspaces.attach(db, row, workspace, parent)
            # A pooled container needs no start slot (it is started): taken in this same
            # transaction, so a warm create costs no more round trips than a cold one, and
            # waits for no other create's start lock.
            warm = None
            if self._pool is not None and (pool := self._pool.pool_for(row)) is not None:
                warm = await self._pool.take(db, row, pool)
            # Otherwise admitted to start with its insert when a start slot is free: a queued
            # session is only ever one that found none.
            if warm is None and await self._admission.slot_free(db):
                row.admitted_at = queries.utcnow()
            db.add(row)
            if parent is None:  # a new tree: its running totals and its budget
                await db.flush()
                budget = config.get("budget") or {}
                db.add(
                    TreeUsageRow(
                        root_id=session_id,
                        owner=owner,
                        max_tokens=budget.get("max_tokens"),
                        max_cost_usd=_decimal(budget.get("max_cost_usd")),
                    )
                )
            if idempotency is not None:
                await db.flush()  # the key refers to the session
                await idempotency_keys.remember(db, owner, idempotency, session_id)
        # Its stream exists before the hub follows it (a tracked stream that does not exist
        # counts as lost).
        await self._bus.publish(str(session_id), GatewayEvent.STATUS, status=SessionStatus.STARTING)
        await self._hub.track(str(session_id), after="0-0")
        return Created(row, warm=warm)

    async def resume(self, session_id: uuid.UUID) -> SessionRow:
        """Start a stopped or failed session again, in a fresh container with its workspace
        and conversation transcript restored: the CLI continues the same conversation
        (``--resume``) and the stream's cursor continues. Raises ``Conflict`` unless the
        session has ended, ``WorkspaceInUse``, ``LimitExceeded``."""
        row = await self.get(session_id)
        if row.status not in FINAL_STATUSES:
            raise Conflict(
                f"session {session_id} is {row.status}; only a stopped or failed session "
                "can be resumed",
                code=ErrorCode.SESSION_NOT_RESUMABLE,
            )
        if row.workspace_dirty and not await self._terminator.retry_unsaved(row):
            raise Unavailable(
                f"the files of session {session_id} could not be saved yet from its last "
                "container; try again when the store is reachable",
                code=ErrorCode.WORKSPACE_UNSAVED,
            )
        async with self._db() as db, db.begin():
            await limits.lock_owner(db, row.owner)
            await limits.check_limits(db, self._settings, row.owner, parent=None)
            if (
                self._workspaces is not None
                and row.workspace_id is not None
                and row.workspace_mode == MODE_RW
            ):
                holders = await self._workspaces.holders(db, row.workspace_id, writers_only=True)
                if holders:
                    raise WorkspaceInUse(
                        f"its workspace is in use by session {holders[0]}",
                        sessions=[str(h) for h in holders],
                    )
            again = await queries.transition(
                db,
                session_id,
                FINAL_STATUSES,
                SessionStatus.STARTING,
                container_id=None,
                exit_code=None,
                failure_reason=None,
                stopped_at=None,
                current_turn_id=None,
                workspace_restored=False,
                admitted_at=func.now() if await self._admission.slot_free(db) else None,
                resumed_at=func.now(),
                started_at=func.now(),
                last_activity_at=func.now(),
            )
            if again is None:
                raise Conflict(f"session {session_id} changed meanwhile", code=ErrorCode.CONFLICT)
        await self._hub.track(str(session_id))
        await self._bus.publish(
            str(session_id), GatewayEvent.STATUS, status=SessionStatus.STARTING, reason="resumed"
        )
        return await self._admit_and_start(again, resumed=True)

    async def _launch(self, created: Created, prompt: str | None) -> SessionRow:
        row = created.session
        if prompt is not None:
            await self._turns.begin(row.id, prompt)
        if created.warm is not None:
            return await self._start_warm(row, created.warm)
        return await self._admit_and_start(row)

    async def _admit_and_start(self, row: SessionRow, resumed: bool = False) -> SessionRow:
        """Start now when its start was admitted with its row; else the session waits in
        ``starting`` (no container yet) for a starter to claim it (``run_starter``)."""
        if row.admitted_at is not None:
            return await self._start_container(row, resumed)
        self._queued.set()
        log.info("session %s waits for a start slot (SESSION_START_CONCURRENCY)", row.id)
        return row

    async def run_starter(self) -> None:
        """Every replica: start queued sessions of this engine as start slots free up (a
        slot frees when a session becomes ready or ends, on any replica)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STARTER_POLL):
                    await self._queued.wait()
            self._queued.clear()
            try:
                while (session_id := await self._admission.claim_next()) is not None:
                    self._background.spawn(
                        self._start_claimed(session_id), name=f"start-{session_id}"
                    )
            except Exception as exc:
                if not database_unavailable(exc):
                    log.exception("the starter failed; trying again")

    async def _start_claimed(self, session_id: uuid.UUID) -> None:
        try:
            row = await self.get(session_id)
            await self._start_container(row, resumed=row.resumed_at is not None)
        except GatewayError as exc:  # the session is failed with the reason already
            log.info("queued session %s could not start: %s", session_id, exc.message)

    def slot_freed(self) -> None:
        """A start slot may be free, or a start queued: look for a queued start to claim."""
        self._queued.set()

    def start_slots_changed(self, instance: str) -> None:
        """A ``ccd_start_slots`` notification: an engine's slot freed or a start queued."""
        if instance == self._settings.instance_name:
            self._queued.set()

    async def _start_container(self, row: SessionRow, resumed: bool = False) -> SessionRow:
        """Start the session's container. On failure the session is failed and the error says
        why: 503 ``image_not_found``, ``runtime_unavailable`` or ``events_unavailable``."""
        step_began = time.perf_counter()

        def step_done(step: str) -> None:
            nonlocal step_began
            now = time.perf_counter()
            self._metrics.start_step(step, now - step_began)
            step_began = now

        token, redis_url, budgeted = await self._credentials(row)
        # The CLI's model key, in its environment: an apiKeyHelper would cost its boot 0.1 s.
        model_key = mint_model_key(
            self._settings, row.id, row.root_id, row.owner, row.started_at, budgeted=budgeted
        )
        step_done("credentials")
        spec = build_container_spec(self._settings, row, token, redis_url, model_key)
        try:
            state = await self._runtime.create(spec)
        except ImageMissing as exc:
            reason = f"session image {row.image!r} is not present on the Docker engine"
            await self._terminator.fail(row.id, reason)
            raise ImageNotFound(
                f"{reason}; build it with scripts/build-container.sh", session_id=str(row.id)
            ) from exc
        except RuntimeFailure as exc:
            reason = f"the container runtime refused to create the container: {exc}"
            await self._terminator.fail(row.id, reason)
            raise RuntimeUnavailable(reason, session_id=str(row.id)) from exc
        step_done("engine_create")
        async with self._db() as db, db.begin():
            updated = await queries.set_container(db, row.id, state.id)
        if updated is None:  # stopped or failed meanwhile: do not leak the container
            await self._runtime.remove(state.id)
            return await self.get(row.id)
        step = "restore its workspace"
        try:
            # Files go in before the CLI starts, so its first turn already sees them. Only a
            # container whose restore finished may ever be saved back: a half-restored one
            # would overwrite the stored workspace with fewer files.
            if self._workspaces is not None:
                await self._workspaces.prepare(updated, state.id, resumed)
            await self._mark_restored(row.id, state.id)
            step_done("restore")
            step = "start its container"
            await self._runtime.start(state.id)
            step_done("engine_start")
        except Exception as exc:
            await self._start_failed(row, step, exc)
        self._watch_start(row)
        return updated

    async def _start_warm(self, row: SessionRow, claimed: Claimed) -> SessionRow:
        """A session that took a pooled container (running, its CLI booted): its workspace
        goes in (unless it is the session's own, new and empty), then the claim hands the
        wrapper the session's identity and credentials. Failures as for
        ``_start_container``."""
        token, redis_url, _ = await self._credentials(row)
        step = "restore its workspace"
        try:
            if not row.workspace_restored:
                if self._workspaces is not None:
                    await self._workspaces.prepare(row, claimed.container_id, False)
                await self._mark_restored(row.id, claimed.container_id)
            step = "hand its pooled container the claim"
            claim = PoolClaim(session_id=str(row.id), redis_url=redis_url, session_token=token)
            await self._access.send_claim(
                claimed.pool_id, claim, self._settings.session_start_timeout
            )
        except Exception as exc:
            await self._start_failed(row, step, exc)
        self._watch_start(row)
        return row

    async def _credentials(self, row: SessionRow) -> tuple[str, str, bool]:
        """The session's capability token, the URL of its own Redis user (created now: it
        exists before its container runs as the session), and whether its tree has a model
        budget."""
        if row.id == row.root_id:  # a root's budget is in its own config
            budgeted = bool(row.config.get("budget"))
        else:
            budgeted = await self.tree_budgeted(row.root_id)
        token = mint_session_token(
            self._settings, row.id, row.root_id, row.owner, budgeted=budgeted
        )
        try:
            redis_url = await self._access.grant(row.id, row.started_at)
        except RedisError as exc:
            reason = f"could not create the session's Redis user: {exc}"
            await self._terminator.fail(row.id, reason)
            raise Unavailable(
                reason, code=ErrorCode.EVENTS_UNAVAILABLE, session_id=str(row.id)
            ) from exc
        return token.token, redis_url, budgeted

    async def _start_failed(self, row: SessionRow, step: str, exc: Exception) -> NoReturn:
        """Fail the session with what went wrong, and raise the error its caller answers."""
        reason = f"could not {step}: {exc}"
        await self._terminator.fail(row.id, reason)
        if isinstance(exc, GatewayError):
            raise exc
        if isinstance(exc, StoreError):  # the stored workspace is left as it was
            code = exc.code if exc.code.status >= 500 else ErrorCode.STORE_ERROR
            raise GatewayError(reason, code=code, session_id=str(row.id)) from exc
        if isinstance(exc, RedisError):
            raise Unavailable(
                reason, code=ErrorCode.EVENTS_UNAVAILABLE, session_id=str(row.id)
            ) from exc
        raise RuntimeUnavailable(reason, session_id=str(row.id)) from exc

    async def _mark_restored(self, session_id: uuid.UUID, container_id: str) -> None:
        async with self._db() as db, db.begin():
            await db.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id, SessionRow.container_id == container_id)
                .values(workspace_restored=True)
            )

    def _watch_start(self, row: SessionRow) -> None:
        """Fail this start if it is still ``starting`` after the start timeout. The watch
        ends early when this process records the session ready (one query less per start,
        and none of them in a burst a minute after a burst of creates); a session made ready
        elsewhere is looked up when its watch ends."""
        session_id = row.id
        watch = self._background.spawn(
            self._fail_if_still_starting(session_id, row.started_at),
            name=f"start-watch-{session_id}",
        )
        self._start_watches[session_id] = watch
        watch.add_done_callback(lambda _: self._end_watch(session_id, watch))

    def _end_watch(self, session_id: uuid.UUID, watch: asyncio.Task[None]) -> None:
        if self._start_watches.get(session_id) is watch:  # not a later start's watch
            del self._start_watches[session_id]

    async def _fail_if_still_starting(self, session_id: uuid.UUID, started_at: datetime) -> None:
        await asyncio.sleep(self._settings.session_start_timeout)
        row = await self.get(session_id)
        # A session that failed and was resumed is starting again: that start has a watch
        # (and a timeout) of its own.
        if row.status == SessionStatus.STARTING and row.started_at == started_at:
            await self._terminator.fail(
                session_id,
                f"start timeout: the CLI was not ready after "
                f"{self._settings.session_start_timeout:.0f} s",
            )

    # -- readiness (from the recorder) ---------------------------------------------------------

    async def mark_ready(
        self, session_id: uuid.UUID, cursor: str, timings: dict[str, Any] | None = None
    ) -> None:
        """The CLI answered its handshake. Idempotent: only a ``starting`` session changes.
        ``timings``: the ``cli_ready`` event's own figures of the start."""
        async with self._db() as db, db.begin():
            row = await queries.become_ready(db, session_id, cursor)
        if row is None:
            return
        watch = self._start_watches.pop(session_id, None)
        if watch is not None:
            watch.cancel()
        status = row.status
        self.slot_freed()
        timings = timings or {}
        warm = timings.get("warm") is True
        self._metrics.session_ready(row.started_at, warm=warm)
        for step in () if warm else ("wrapper_boot", "cli_handshake"):  # a cold start's steps
            value = timings.get(f"{step}_seconds")
            if isinstance(value, int | float):
                self._metrics.start_step(step, float(value))
        await self._bus.publish(str(session_id), GatewayEvent.STATUS, status=status)
        if warm and row.pool_id is not None and self._pool is not None:
            await self._pool.claimed_and_ready(row.pool_id)


def _decimal(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))
