"""Single statements for the hot path (the model proxy): one round trip each, little CPU.

The main pool pings every connection it hands out and wraps each use in a transaction: four
round trips (ping, BEGIN, the statement, COMMIT or ROLLBACK) for one SELECT, and SQLAlchemy's
execution machinery costs more CPU than the round trip itself takes. A statement that is atomic
on its own needs none of that. Here a statement is built with SQLAlchemy (so it is written
against the models), compiled once, and sent straight to asyncpg (which prepares it once per
connection) on a pool of its own: no transaction around it, no ping before it. A statement
whose connection the server dropped (PostgreSQL restarted) is sent once more on a fresh one, so
every statement given here must be safe to send twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import Executable
from sqlalchemy.dialects import postgresql

from gateway.db.engine import asyncpg_dsn
from gateway.db.outage import database_unavailable


@dataclass(frozen=True)
class Prepared:
    """A statement compiled for asyncpg: its SQL and the order of its named parameters."""

    sql: str
    parameters: tuple[str, ...]


class Statements:
    """A small asyncpg pool of its own, made on first use (so the gateway starts while
    PostgreSQL is down)."""

    def __init__(self, database_url: str, size: int) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._size = size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._dialect = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def prepare(self, statement: Executable) -> Prepared:
        """Compile ``statement`` (its parameters bound by name, its constants written into
        it) once, at start-up."""
        compiled = statement.compile(dialect=self._dialect)  # type: ignore[attr-defined]
        return Prepared(str(compiled), tuple(compiled.positiontup or ()))

    async def one_or_none(self, prepared: Prepared, parameters: Mapping[str, Any]) -> Any:
        """Its first row (an ``asyncpg.Record``: read it by column name), or ``None``."""
        arguments = [parameters[name] for name in prepared.parameters]
        return await self._send(lambda conn: conn.fetchrow(prepared.sql, *arguments))

    async def many(self, prepared: Prepared, parameter_sets: Sequence[Mapping[str, Any]]) -> None:
        """The statement once for each set of parameters, in one round trip and one
        transaction (asyncpg's ``executemany``: all are written, or none)."""
        arguments = [[each[name] for name in prepared.parameters] for each in parameter_sets]
        await self._send(lambda conn: conn.executemany(prepared.sql, arguments))

    async def _send(self, use: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        pool = await self._opened()
        for attempt in (1, 2):
            async with pool.acquire() as conn:
                try:
                    return await use(conn)
                except Exception as exc:
                    if attempt == 2 or not (conn.is_closed() or database_unavailable(exc)):
                        raise
                    # a dropped connection: the pool replaces it; send it once more
        raise AssertionError("unreachable")

    async def _opened(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn, min_size=0, max_size=self._size, reset=_nothing_to_reset
                    )
        return self._pool


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """asyncpg resets a connection given back to its pool with one more round trip (RESET ALL,
    UNLISTEN *, advisory locks): these statements change no session state, so there is
    nothing to reset and that round trip is saved."""
