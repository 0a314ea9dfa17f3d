"""The warm pool: containers started ahead of demand, claimed by new sessions.

``SESSION_POOL_SIZE`` containers per engine run the session image with the default CLI options,
their wrapper up and their CLI booted, holding nothing of any session: no session id, no
capability token, no Redis user of a session, no owner. Their own credentials are worth nothing
to a thief: a Redis user that may only pop the container's claim list, and a model key that the
model proxy accepts only once a claim bound the container to a running session.

A claim is part of the transaction that inserts the session: it takes the oldest ready
container made under the gateway's current settings (``FOR UPDATE SKIP LOCKED``, so two creates
on any replicas never get the same one), deletes its pool row and writes its container, CLI
session id and pool id into the session's row; from then on the session's row is what maps the
container to its session (the engine cannot relabel a container). The session service then
restores the workspace into it if there is one to restore and pushes the claim (the session's
id, Redis URL and token) on the container's list; the wrapper takes it and writes the handshake
it already did into the session's stream, which makes the session ready.

The filler runs on the holder of the ``pool`` lease (one per engine across replicas): it starts
containers while the pool is short, within the engine's session capacity and only while a start
slot is free (cold starts first), and replaces containers that aged past
``SESSION_POOL_MAX_AGE``, were made under other settings (``spec_hash``) or of an image since
rebuilt under the same tag, or died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.db import queries
from gateway.db.models import (
    ACTIVE_STATUSES,
    PoolContainerRow,
    PoolStatus,
    SessionRow,
    SessionStatus,
)
from gateway.db.outage import database_unavailable
from gateway.events.access import SessionAccess
from gateway.metrics import Metrics
from gateway.runtime import RuntimeFailure, SessionRuntime
from gateway.security import mint_pool_key
from gateway.services.admission import StartAdmission
from gateway.services.container_spec import build_pool_spec, cli_options, pool_spec_hash
from gateway.services.workspaces import own_workspace_name
from wrapper.session_config import SessionConfig

log = logging.getLogger(__name__)

FILL_INTERVAL = 1.0  # seconds between passes of the filler (sooner when woken)
RETIRE_INTERVAL = 5.0  # seconds between looks at every pooled container (an inspect each)
FAILURE_BACKOFF = 10.0  # seconds the filler rests after the engine refused a pooled container
CLAIM_QUIET = 0.5  # seconds at most the refill waits for a claimed session to become ready


DEFAULT_POOL = ""  # SESSION_POOL_SIZE's pool: the default CLI options


@dataclass(frozen=True)
class Pool:
    """One pool: ``size`` containers whose CLI runs with ``config``'s options."""

    name: str
    size: int
    config: SessionConfig
    spec_hash: str


def pools_of(settings: Settings) -> dict[tuple[str, ...], Pool]:
    """Every configured pool, by the CLI command line its containers run (two templates that
    give the same one are one pool: the first named wins)."""
    wanted = [(DEFAULT_POOL, settings.session_pool_size, SessionConfig())]
    wanted += [(name, t.size, t.config) for name, t in settings.session_pool_templates.items()]
    pools: dict[tuple[str, ...], Pool] = {}
    for name, size, config in wanted:
        key = cli_options(config, settings.session_permission_mode)
        if size > 0 and key not in pools:
            pools[key] = Pool(name, size, config, pool_spec_hash(settings, config))
    return pools


@dataclass(frozen=True)
class Claimed:
    """A pooled container now a session's."""

    pool_id: uuid.UUID
    container_id: str


class WarmPool:
    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[AsyncSession],
        runtime: SessionRuntime,
        access: SessionAccess,
        admission: StartAdmission,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._runtime = runtime
        self._access = access
        self._admission = admission
        self._metrics = metrics or Metrics()
        self.wake = asyncio.Event()  # a claim took one: refill now
        self._next_retire = 0.0
        self._pools = pools_of(settings)
        self._current = {pool.spec_hash for pool in self._pools.values()}

    # -- claiming ----------------------------------------------------------------------------

    def pool_for(self, row: SessionRow) -> Pool | None:
        """The pool whose containers run the CLI exactly as new session ``row`` would."""
        if not self._pools or row.image != self._settings.session_image:
            return None
        return self._pools.get(cli_options(row.config, self._settings.session_permission_mode))

    async def take(self, db: AsyncSession, row: SessionRow, pool: Pool) -> Claimed | None:
        """Give new session ``row`` (being inserted in ``db``'s transaction) the oldest ready
        container of ``pool``; ``None`` when there is none (it then starts cold). Its pool row
        is deleted in the same transaction: the session's row maps the container from then
        on."""
        pooled = await db.scalar(
            select(PoolContainerRow)
            .where(
                PoolContainerRow.instance == self._settings.instance_name,
                PoolContainerRow.spec_hash == pool.spec_hash,
                PoolContainerRow.status == PoolStatus.READY,
            )
            .order_by(PoolContainerRow.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if pooled is None or pooled.container_id is None:
            self._metrics.pool_claim("empty")
            return None
        await db.delete(pooled)
        row.container_id = pooled.container_id
        row.claude_session_id = pooled.claude_session_id
        row.pool_id = pooled.id
        row.admitted_at = row.admitted_at or queries.utcnow()
        # Its own workspace, made in this same transaction, has nothing to restore yet.
        row.workspace_restored = (
            row.workspace_source is None and row.workspace_name == own_workspace_name(row.id)
        )
        self._metrics.pool_claim("claimed")
        self.wake.set()
        return Claimed(pooled.id, pooled.container_id)

    async def claimed_and_ready(self, pool_id: uuid.UUID) -> None:
        """Its wrapper took the claim and the session is ready: the pool's own Redis user
        goes (not earlier: dropping its connection could lose the claim's delivery)."""
        try:
            await self._access.revoke_pool(pool_id)
        except RedisError as exc:
            log.warning("could not remove the Redis user of pooled container %s: %s", pool_id, exc)

    # -- filling -----------------------------------------------------------------------------

    async def run(self, is_mine: Callable[[], bool]) -> None:
        """The filler: every ``FILL_INTERVAL`` (or when a claim woke it) while this replica
        holds the pool lease."""
        while True:
            # With no pool configured only leftovers (of an earlier configuration) are retired.
            rest = FILL_INTERVAL if self._pools else RETIRE_INTERVAL
            if is_mine():
                try:
                    await self.fill_once()
                except RuntimeFailure as exc:
                    log.warning("the warm pool could not start a container: %s", exc)
                    rest = FAILURE_BACKOFF
                except Exception as exc:
                    if database_unavailable(exc) or isinstance(exc, RedisError):
                        log.warning("the warm pool waits for its stores: %s", exc)
                    else:
                        log.exception("the warm pool filler failed; trying again")
                    rest = FAILURE_BACKOFF
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rest):
                    await self.wake.wait()
            self.wake.clear()

    async def fill_once(self) -> None:
        """Retire what must go, then start one container for the first pool that is short."""
        rows = await self._rows()
        loop = asyncio.get_running_loop()
        alive = list(rows)
        if loop.time() >= self._next_retire:
            alive = await self._retire(rows)
            self._next_retire = loop.time() + RETIRE_INTERVAL
        held = Counter(row.spec_hash for row in alive)
        short = [pool for pool in self._pools.values() if held[pool.spec_hash] < pool.size]
        if not short:
            return
        pool = short[0]
        async with self._db() as db, db.begin():
            if await self._claim_settling(db):
                return
            # Cold starts go first: a pooled container is started only while a start slot is
            # free, and never past the engine's capacity.
            if not await self._admission.slot_free(db):
                return
            running = await db.scalar(
                select(func.count())
                .select_from(SessionRow)
                .where(
                    SessionRow.instance == self._settings.instance_name,
                    SessionRow.status.in_(ACTIVE_STATUSES),
                )
            )
            if int(running or 0) + len(alive) >= self._settings.max_sessions_per_engine:
                return
            pooled = PoolContainerRow(
                instance=self._settings.instance_name,
                image=self._settings.session_image,
                template=pool.name,
                spec_hash=pool.spec_hash,
                claude_session_id=uuid.uuid4(),
                status=PoolStatus.STARTING,
            )
            db.add(pooled)
        await self._start(pooled, pool)
        self.wake.set()  # short by more than one: go on at once

    async def _claim_settling(self, db: AsyncSession) -> bool:
        """Whether a session of this engine that claimed a pooled container is still becoming
        ready, claimed less than ``CLAIM_QUIET`` ago. A container started then competes with
        it for the machine (the engine's work, the new CLI's boot: on 2 cores, warm create ->
        ready p50 57.6 ms against 44.2 ms when the refill waits), so the refill waits; the
        bound keeps a stream of claims from holding it back for long."""
        settling = await db.scalar(
            select(SessionRow.id)
            .where(
                SessionRow.instance == self._settings.instance_name,
                SessionRow.pool_id.is_not(None),
                SessionRow.status == SessionStatus.STARTING,
                SessionRow.started_at > func.now() - timedelta(seconds=CLAIM_QUIET),
            )
            .limit(1)
        )
        return settling is not None

    async def _rows(self) -> Sequence[PoolContainerRow]:
        async with self._db() as db:
            statement = select(PoolContainerRow).where(
                PoolContainerRow.instance == self._settings.instance_name
            )
            return (await db.scalars(statement)).all()

    async def _retire(self, rows: Sequence[PoolContainerRow]) -> list[PoolContainerRow]:
        """Remove pooled containers that are too old, of another image (a tag rebuilt in
        place included), dead, or stuck in their start; the rest, still pooled."""
        await self._drop_stale_users({row.id for row in rows})
        image_id = await self._runtime.image_id(self._settings.session_image)
        now = queries.utcnow()
        max_age = timedelta(seconds=self._settings.session_pool_max_age)
        start_timeout = timedelta(seconds=self._settings.session_start_timeout)
        alive = []
        for row in rows:
            why = None
            if row.status == PoolStatus.STARTING:  # its filler may have died with its replica
                why = "its start was lost" if now - row.created_at > start_timeout else None
            elif row.spec_hash not in self._current:
                why = "no pool is made so now (the image, limits, environment or options changed)"
            elif now - row.created_at > max_age:
                why = "it aged out (SESSION_POOL_MAX_AGE)"
            else:
                state = await self._runtime.inspect(row.container_id or "")
                if state is None or not state.running:
                    why = "its container is gone"
                elif state.image_id != image_id:
                    why = f"{row.image} was rebuilt"
            if why is None:
                alive.append(row)
            else:
                await self._discard(row.id, why)
        return alive

    async def _drop_stale_users(self, pooled: set[uuid.UUID]) -> None:
        """Pool Redis users left behind (a replica died between a claim and its session's
        readiness, or while retiring): kept only while pooled or while a claim is being
        taken (its session still starting)."""
        others = await self._access.pools_with_users() - pooled
        if not others:
            return
        async with self._db() as db:
            taking = set(
                await db.scalars(
                    select(SessionRow.pool_id).where(
                        SessionRow.pool_id.in_(others),
                        SessionRow.status == SessionStatus.STARTING,
                    )
                )
            )
        for pool_id in others - taking:
            await self._access.revoke_pool(pool_id)

    async def _start(self, pooled: PoolContainerRow, pool: Pool) -> None:
        container_id = None
        try:
            redis_url = await self._access.grant_pool(pooled.id)
            spec = build_pool_spec(
                self._settings,
                pooled.id,
                pooled.claude_session_id,
                redis_url,
                mint_pool_key(self._settings, pooled.id),
                pool.config,
            )
            state = await self._runtime.create(spec)
            container_id = state.id
            await self._set(pooled.id, container_id=container_id)
            await self._runtime.start(container_id)
            if not await self._set(pooled.id, status=PoolStatus.READY):
                raise RuntimeFailure("retired while it started")
        except BaseException:
            await self._discard(pooled.id, "its start failed", container_id)
            raise
        log.info("pooled container %s started (%s)", pooled.id, container_id)

    async def _set(self, pool_id: uuid.UUID, **values: object) -> bool:
        async with self._db() as db, db.begin():
            changed = await db.scalar(
                update(PoolContainerRow)
                .where(PoolContainerRow.id == pool_id)
                .values(**values)
                .returning(PoolContainerRow.id)
            )
        return changed is not None

    async def _discard(self, pool_id: uuid.UUID, why: str, container_id: str | None = None) -> None:
        """Remove a pooled container unless a claim took it meanwhile (the row is deleted
        first, conditionally: whoever deletes it owns what is left)."""
        async with self._db() as db, db.begin():
            deleted = await db.scalar(
                delete(PoolContainerRow)
                .where(PoolContainerRow.id == pool_id)
                .returning(PoolContainerRow.container_id)
            )
        container_id = deleted or container_id
        log.info("retiring pooled container %s: %s", pool_id, why)
        with contextlib.suppress(RuntimeFailure, RedisError):
            await self._access.revoke_pool(pool_id)
        if container_id is not None:
            with contextlib.suppress(RuntimeFailure):
                await self._runtime.remove(container_id)
