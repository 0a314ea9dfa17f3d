"""Shared state across replicas lives in PostgreSQL, tested against a real one: leases have
one holder at a time and pass on when it dies; a workspace has one writer across processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from gateway.services.leases import Leases
from gateway.services.workspaces import WorkspaceService

pytestmark = pytest.mark.docker

TTL = 3.0


@pytest.fixture
async def engines(infra, gateway) -> AsyncIterator[list[AsyncEngine]]:
    """Two engines: as two gateway processes would have (the gateway fixture migrated the
    database)."""
    made = [create_async_engine(infra.database_url) for _ in range(2)]
    yield made
    for engine in made:
        await engine.dispose()


async def test_a_lease_has_one_holder_and_passes_on_when_it_dies(engines) -> None:
    name = f"test:{uuid.uuid4().hex[:8]}"
    first, second = (Leases(async_sessionmaker(e), [name], TTL) for e in engines)
    await first.renew_once()
    await second.renew_once()
    assert first.holds(name) and not second.holds(name)
    # The holder dies (no release, no more renewals): the other takes over after the TTL,
    # and not before.
    await asyncio.sleep(TTL / 2)
    await second.renew_once()
    assert not second.holds(name)
    loop = asyncio.get_running_loop()
    died = loop.time() - TTL / 2
    while not second.holds(name):
        await asyncio.sleep(0.2)
        await second.renew_once()
    assert loop.time() - died <= TTL + 1.0
    assert not first.holds(name) or loop.time() - died >= TTL * 2 / 3  # its own deadline ran out
    # A graceful stop gives it back at once.
    await second.release()
    await first.renew_once()
    assert first.holds(name)
    await first.release()


async def test_a_lease_held_by_a_running_loop_is_renewed_and_released(engines) -> None:
    name = f"test:{uuid.uuid4().hex[:8]}"
    keeper = Leases(async_sessionmaker(engines[0]), [name], TTL)
    task = asyncio.create_task(keeper.run())
    await asyncio.wait_for(keeper.wait_for(name), 5)
    await asyncio.sleep(TTL * 1.5)  # renewed meanwhile
    assert keeper.holds(name)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    other = Leases(async_sessionmaker(engines[1]), [name], TTL)
    await other.renew_once()
    assert other.holds(name)  # released on the way out, not left to expire
    await other.release()


async def test_replicas_renewing_all_their_leases_together_each_keep_only_their_own(
    engines,
) -> None:
    """Every lease of a replica is taken or renewed in one statement: one that another
    replica holds is left to it and the free ones are taken, also while both renew at the
    same moment, their names listed in other orders."""
    names = [f"test:{uuid.uuid4().hex[:8]}:{duty}" for duty in ("c", "a", "b")]
    first = Leases(async_sessionmaker(engines[0]), names[:2], TTL)
    second = Leases(async_sessionmaker(engines[1]), names[::-1], TTL)  # another order
    await first.renew_once()
    for _ in range(20):
        await asyncio.gather(first.renew_once(), second.renew_once())
        assert first.holds(names[0]) and first.holds(names[1])
        assert not second.holds(names[0]) and not second.holds(names[1])
        assert second.holds(names[2])
    await first.release()
    await second.renew_once()
    assert all(second.holds(name) for name in names)
    await second.release()


async def test_a_workspace_has_one_writer_across_processes(engines) -> None:
    workspace = uuid.uuid4()
    services = [
        WorkspaceService.__new__(WorkspaceService) for _ in engines
    ]  # only the lock is exercised: it needs nothing but the database
    for service, engine in zip(services, engines, strict=True):
        service._db = async_sessionmaker(engine)
    order: list[str] = []

    async def write(index: int, hold: float) -> None:
        async with services[index].lock(workspace):
            order.append(f"start {index}")
            await asyncio.sleep(hold)
            order.append(f"end {index}")

    first = asyncio.create_task(write(0, 1.0))
    await asyncio.sleep(0.2)
    await write(1, 0.1)
    await first
    assert order == ["start 0", "end 0", "start 1", "end 1"]
