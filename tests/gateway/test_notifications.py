"""The notifications replicas act on, sent by triggers (migration 0008) and heard by each
replica's ``Listener``: against the real PostgreSQL the test gateway migrated."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.db.notifications import Listener
from gateway.model.callers import REVOKED_CHANNEL
from gateway.services.admission import START_SLOTS_CHANNEL

pytestmark = pytest.mark.docker


class Heard:
    def __init__(self) -> None:
        self.notes: list[tuple[str, str]] = []
        self.hearing = asyncio.Event()
        self.deaf = asyncio.Event()
        self.changed = asyncio.Event()

    def channel(self, name: str) -> Callable[[str], None]:
        def note(payload: str) -> None:
            self.notes.append((name, payload))
            self.changed.set()

        return note

    async def until(self, count: int, about: tuple[str, ...]) -> list[tuple[str, str]]:
        """The first ``count`` notes whose payload is one of ``about``, once heard."""
        async with asyncio.timeout(10):
            while len(mine := [n for n in self.notes if n[1] in about]) < count:
                self.changed.clear()
                await self.changed.wait()
        return mine


@contextlib.asynccontextmanager
async def listening(database_url: str) -> AsyncIterator[tuple[Heard, Listener]]:
    heard = Heard()
    listener = Listener(
        database_url,
        {name: heard.channel(name) for name in (REVOKED_CHANNEL, START_SLOTS_CHANNEL)},
        on_hearing=heard.hearing.set,
        on_deaf=heard.deaf.set,
        heartbeat=1.0,
    )
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(10):
            await heard.hearing.wait()
        yield heard, listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def insert_session(engine: AsyncEngine, instance: str, **values: object) -> uuid.UUID:
    session_id = uuid.uuid4()
    columns = {"status": "starting", "admitted_at": None, **values}
    async with engine.begin() as db:
        await db.execute(
            sql(
                "INSERT INTO sessions (id, owner, instance, root_id, depth, path, status, "
                "image, config, claude_session_id, admitted_at) VALUES (:id, 'alice', "
                ":instance, :id, 0, '{}', :status, 'img', '{}', :id, :admitted_at)"
            ),
            {"id": session_id, "instance": instance, **columns},
        )
    return session_id


async def test_every_end_of_an_active_session_and_every_start_slot_change_is_heard(
    gateway, infra
) -> None:
    """``gateway``: its start-up migrated the database. A replica that misses one of these
    would admit model calls of an ended session or leave a queued start waiting."""
    instance = f"test-notes-{uuid.uuid4().hex[:6]}"
    engine = create_async_engine(infra.database_url)
    try:
        async with listening(infra.database_url) as (heard, _):
            queued = await insert_session(engine, instance)  # waits for a slot
            admitted = await insert_session(engine, instance, admitted_at=None)
            async with engine.begin() as db:
                await db.execute(
                    sql("UPDATE sessions SET admitted_at = now() WHERE id = :id"), {"id": admitted}
                )
                await db.execute(  # its start ends: the slot frees, and it is no longer active
                    sql("UPDATE sessions SET status = 'failed' WHERE id = :id"), {"id": admitted}
                )
                await db.execute(  # a change that frees nothing and ends nothing: not sent
                    sql("UPDATE sessions SET updated_at = now() WHERE id = :id"), {"id": queued}
                )
                await db.execute(sql("DELETE FROM sessions WHERE id = :id"), {"id": queued})
            ours = (instance, str(queued), str(admitted))
            await heard.until(5, ours)
            await asyncio.sleep(0.5)  # and nothing more: the plain update sent nothing
            mine = [note for note in heard.notes if note[1] in ours]
            assert sorted(mine) == sorted(
                [
                    (START_SLOTS_CHANNEL, instance),  # queued on insert
                    (START_SLOTS_CHANNEL, instance),  # the second one queued too
                    (START_SLOTS_CHANNEL, instance),  # an admitted start ended
                    (REVOKED_CHANNEL, str(admitted)),  # it left the active statuses
                    (REVOKED_CHANNEL, str(queued)),  # deleted while active
                ]
            )
    finally:
        await engine.dispose()


async def test_a_listener_whose_connection_is_cut_says_so_and_listens_again(gateway, infra) -> None:
    engine = create_async_engine(infra.database_url)
    try:
        async with listening(infra.database_url) as (heard, listener):
            heard.hearing.clear()
            async with engine.begin() as db:
                cut = await db.scalar(
                    sql(
                        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 5000) FROM "
                        "pg_stat_activity WHERE application_name = 'ccd-listener') AS cut"
                    )
                )
            assert cut >= 1
            async with asyncio.timeout(10):
                await heard.deaf.wait()
                await heard.hearing.wait()
            assert listener.hearing
            instance = f"test-notes-{uuid.uuid4().hex[:6]}"
            session_id = await insert_session(engine, instance)
            async with engine.begin() as db:
                await db.execute(sql("DELETE FROM sessions WHERE id = :id"), {"id": session_id})
            # heard again, on the new connection
            assert sorted(await heard.until(2, (instance, str(session_id)))) == [
                (REVOKED_CHANNEL, str(session_id)),
                (START_SLOTS_CHANNEL, instance),
            ]
    finally:
        await engine.dispose()
