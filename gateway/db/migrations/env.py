"""Alembic environment: runs migrations over the gateway's async engine."""

from __future__ import annotations

import asyncio
import logging

from alembic import context
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.db.migrate import MIGRATION_LOCK
from gateway.db.models import Base

target_metadata = Base.metadata
log = logging.getLogger("gateway.db.migrations")


def _database_url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    if url:
        return url
    # Plain `alembic upgrade head`: take the URL from the gateway's settings.
    from gateway.config import Settings

    return Settings().database_url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        # Replicas starting together migrate one at a time: the lock is taken in the migration
        # transaction before Alembic reads (or creates) its version table, and released by the
        # commit, so the next holder finds the schema at head. PostgreSQL runs DDL in
        # transactions, so all migrations of a run commit together or not at all.
        if not connection.execute(select(func.pg_try_advisory_xact_lock(*MIGRATION_LOCK))).scalar():
            log.info("another process is applying the migrations; waiting for it to finish")
            connection.execute(select(func.pg_advisory_xact_lock(*MIGRATION_LOCK)))
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
