"""What counts as "the database is unavailable", from errors a real PostgreSQL and a real
connection attempt raise, and how the recorder treats each kind: it retries an outage in order
and skips a bug. (The outage itself, end to end: tests/e2e/test_nothing_lost.py.)"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.db.outage import database_unavailable
from gateway.events.bus import Event
from gateway.services.recorder import Recorder
from tests.stack import free_port

pytestmark = pytest.mark.docker


async def raised(action: Callable[[], Awaitable[Any]]) -> BaseException:
    try:
        await action()
    except Exception as exc:
        return exc
    raise AssertionError("no error was raised")


@pytest.fixture
async def engine(infra: Any) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(infra.database_url, pool_pre_ping=True)
    yield engine
    await engine.dispose()


async def test_a_refused_connection_is_an_outage() -> None:
    nowhere = create_async_engine(f"postgresql+asyncpg://u:p@127.0.0.1:{free_port()}/x")

    async def query() -> None:
        async with nowhere.connect() as conn:
            await conn.execute(text("select 1"))

    try:
        exc = await raised(query)
    finally:
        await nowhere.dispose()
    assert isinstance(exc, OSError)  # asyncpg lets it out unwrapped
    assert database_unavailable(exc)


async def test_a_dropped_connection_is_an_outage(engine: AsyncEngine) -> None:
    async with engine.connect() as victim:
        pid = (await victim.execute(text("select pg_backend_pid()"))).scalar_one()
        async with engine.connect() as admin:
            await admin.execute(text(f"select pg_terminate_backend({pid})"))
        exc = await raised(lambda: victim.execute(text("select 1")))
    assert isinstance(exc, DBAPIError)
    assert database_unavailable(exc)


async def test_refused_statements_and_other_errors_are_not(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        syntax = await raised(lambda: conn.execute(text("selec 1")))
        await conn.rollback()
        await conn.execute(text("create temporary table t (id int primary key)"))
        await conn.execute(text("insert into t values (1)"))
        duplicate = await raised(lambda: conn.execute(text("insert into t values (1)")))
    assert isinstance(syntax, ProgrammingError)
    assert isinstance(duplicate, IntegrityError)
    missing_file = await raised(lambda: asyncio.to_thread(open, "/nonexistent/file"))
    for exc in (syntax, duplicate, missing_file, ValueError("a bug")):
        assert not database_unavailable(exc), exc


class ScriptedRecorder(Recorder):
    """The real recorder loop; ``apply`` fails as scripted per event id, then records."""

    def __init__(self, failures: dict[str, list[BaseException]]) -> None:
        # The hub is only asked to deliver events; they are queued by hand here.
        hub: Any = type("Hub", (), {"add_listener": lambda self, listener: None})()
        super().__init__(None, None, None, hub, retry_first=0.01, retry_max=0.05)  # type: ignore[arg-type]
        self.failures = failures
        self.applied: list[str] = []

    async def apply(self, event: Event) -> None:
        script = self.failures.get(event.id)
        if script:
            raise script.pop(0)
        self.applied.append(event.id)


def event(entry_id: str) -> Event:
    return Event(entry_id, str(uuid.uuid4()), "claude", "result", str(uuid.uuid4()), "{}")


async def test_the_recorder_waits_out_an_outage_in_order_and_skips_a_bug(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = create_async_engine(f"postgresql+asyncpg://u:p@127.0.0.1:{free_port()}/x")
    try:
        outage = await raised(lambda: nowhere.connect().__aenter__())
    finally:
        await nowhere.dispose()
    recorder = ScriptedRecorder({"1-0": [outage] * 4, "2-0": [ValueError("a bug")]})
    for entry_id in ("1-0", "2-0", "3-0"):
        recorder._on_event(event(entry_id))
    with caplog.at_level(logging.INFO, logger="gateway.services.recorder"):
        task = asyncio.create_task(recorder.run())
        try:
            async with asyncio.timeout(10):
                while recorder.applied != ["1-0", "3-0"]:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("database unavailable, event 1-0" in m for m in messages) == 1
    assert any("recorded event 1-0" in m and "after 5 attempts" in m for m in messages)
    (bug,) = [r for r in caplog.records if r.exc_info]
    assert "could not record event 2-0" in bug.getMessage()


async def test_the_proxy_statements_outlive_dropped_connections(infra: Any) -> None:
    """The model proxy's statement pool does not ping its connections (a round trip on every
    call): when the server dropped them all (a restart), the next statement is still answered,
    on a fresh connection, instead of failing the model call."""
    from gateway.db.statements import Statements

    statements = Statements(infra.database_url, 2)
    backend = statements.prepare(text("select pg_backend_pid() as pid"))
    try:
        pids = {(await statements.one_or_none(backend, {}))["pid"]}
        admin = create_async_engine(infra.database_url)
        async with admin.connect() as conn:
            for pid in pids:
                await conn.execute(text(f"select pg_terminate_backend({pid})"))
        await admin.dispose()
        row = await statements.one_or_none(backend, {})
        assert row is not None and row["pid"] not in pids
    finally:
        await statements.close()
