"""The warm pool's refill against a real PostgreSQL and Redis (the engine is a recording
stand-in: what is checked is whether the filler asks it for a container).

The fault: a container started while a claimed session becomes ready competes with that
session for the machine (the engine's work, the new CLI's boot), and the claim, which should
take tens of milliseconds, takes longer. So the refill waits for the claimed session, but never
longer than ``CLAIM_QUIET``: a stream of claims must not keep the pool empty.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio as aioredis
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from gateway.config import Settings
from gateway.db import queries
from gateway.db.engine import create_session_factory
from gateway.db.models import PoolContainerRow, SessionRow, SessionStatus
from gateway.events.access import SessionAccess
from gateway.runtime import ContainerSpec, ContainerState
from gateway.runtime.base import ContainerPhase
from gateway.services.admission import StartAdmission
from gateway.services.pool import CLAIM_QUIET, WarmPool
from tests.gateway.test_observability_pure import ScriptedRuntime

pytestmark = pytest.mark.docker


class CountingRuntime(ScriptedRuntime):
    """Starts nothing; counts the containers it was asked for."""

    def __init__(self) -> None:
        super().__init__({})
        self.created = 0

    async def create(self, spec: ContainerSpec) -> ContainerState:
        self.created += 1
        return ContainerState(id=f"pooled-{self.created}", name=spec.name)

    async def inspect(self, container_id: str) -> ContainerState | None:
        return ContainerState(
            id=container_id, name=container_id, phase=ContainerPhase.RUNNING, image_id="sha256:0"
        )


@pytest.fixture
async def db(infra, gateway) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The test database (the gateway fixture migrated it)."""
    engine = create_async_engine(infra.database_url)
    yield create_session_factory(engine)
    await engine.dispose()


async def test_the_refill_waits_while_a_claimed_session_becomes_ready(db, infra) -> None:
    instance = f"refill-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        jwt_secret="x" * 40,
        instance_name=instance,
        session_pool_size=1,
        redis_url=infra.redis_url,
    )
    redis = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    access = SessionAccess(
        redis, settings.redis_user_key, settings.effective_session_redis_url, instance
    )
    runtime = CountingRuntime()
    pool = WarmPool(settings, db, runtime, access, StartAdmission(db, instance, 4))
    claimed = uuid.uuid4()
    async with db() as session, session.begin():
        session.add(
            SessionRow(
                id=claimed,
                owner="refill",
                instance=instance,
                status=SessionStatus.STARTING,
                image=settings.session_image,
                config={},
                claude_session_id=uuid.uuid4(),
                started_at=queries.utcnow(),
                root_id=claimed,
                depth=0,
                path=[],
                pool_id=uuid.uuid4(),  # it took a pooled container: its claim is under way
                container_id="claimed",
            )
        )
    try:
        await pool.fill_once()
        assert runtime.created == 0, "a container was started while a claim was under way"

        async with db() as session, session.begin():  # a claim slower than CLAIM_QUIET
            await session.execute(
                update(SessionRow)
                .where(SessionRow.id == claimed)
                .values(started_at=queries.utcnow() - timedelta(seconds=CLAIM_QUIET + 0.5))
            )
        await pool.fill_once()
        assert runtime.created == 1, "a slow claim held the refill back past CLAIM_QUIET"

        async with db() as session, session.begin():  # ready: nothing holds the refill
            await session.execute(
                update(SessionRow)
                .where(SessionRow.id == claimed)
                .values(status=SessionStatus.READY, started_at=queries.utcnow())
            )
        async with db() as session, session.begin():  # the pool is short again
            await session.execute(
                delete(PoolContainerRow).where(PoolContainerRow.instance == instance)
            )
        await pool.fill_once()
        assert runtime.created == 2
    finally:
        for pool_id in await access.pools_with_users():
            await access.revoke_pool(pool_id)
        async with db() as session, session.begin():
            await session.execute(
                delete(PoolContainerRow).where(PoolContainerRow.instance == instance)
            )
            await session.execute(delete(SessionRow).where(SessionRow.id == claimed))
        await redis.aclose()
