"""Telling "PostgreSQL cannot be reached right now" apart from every other database error.

The first kind passes: the server restarts, the network comes back, and the same statement then
succeeds, so callers retry it (the recorder) or answer 503 (the API). Anything else (a refused
statement, a bug) would fail the same way again.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType

import asyncpg.exceptions as pg
from sqlalchemy import exc as sa

# What asyncpg raises (under SQLAlchemy's wrappers) when the server is unreachable, shutting
# down, starting up, or dropped the connection.
_SERVER_GONE = (
    pg.PostgresConnectionError,  # class 08, and ConnectionDoesNotExistError
    pg.CannotConnectNowError,  # 57P03: starting up or shutting down
    pg.AdminShutdownError,  # 57P01: terminating connection due to administrator command
    pg.CrashShutdownError,  # 57P02
    pg.TooManyConnectionsError,  # 53300
)
_UNREACHABLE = (sa.OperationalError, sa.InterfaceError, sa.TimeoutError)  # TimeoutError: pool
_DRIVERS = ("sqlalchemy.", "asyncpg.")


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached or the connection broke.

    A bare ``OSError`` counts only when it was raised inside SQLAlchemy or asyncpg: asyncpg
    lets a refused or reset connection out unwrapped when the pool opens a connection, while an
    ``OSError`` from elsewhere (Docker, a file) says nothing about the database.
    """
    for current in _chain(exc):
        if isinstance(current, sa.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, _UNREACHABLE + _SERVER_GONE):
            return True
        if isinstance(current, OSError) and _raised_in_driver(current.__traceback__):
            return True
    return False


def _raised_in_driver(tb: TracebackType | None) -> bool:
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.startswith(_DRIVERS):
            return True
        tb = tb.tb_next
    return False


def transaction_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL ending a transaction for a conflict with another one (a
    deadlock, a serialization failure): sent again, the same statements succeed."""
    return any(isinstance(current, pg.TransactionRollbackError) for current in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps, through the drivers' wrappers (``orig``) and causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
