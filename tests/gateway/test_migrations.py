"""The schema changes only through Alembic: the migrations, applied to an empty PostgreSQL,
give exactly the tables the models describe (and step back down cleanly)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.db.migrate import alembic_config
from gateway.db.models import Base

pytestmark = pytest.mark.docker


async def test_migrations_match_the_models(infra) -> None:
    name = f"ccd_migrations_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(infra.database_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = infra.database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        config = alembic_config(url)
        await asyncio.to_thread(command.upgrade, config, "head")
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:

                def diff(sync_connection: Any) -> list[Any]:
                    context = MigrationContext.configure(
                        sync_connection, opts={"compare_type": True}
                    )
                    return list(compare_metadata(context, Base.metadata))

                differences = await connection.run_sync(diff)
        finally:
            await engine.dispose()
        assert differences == []
        await asyncio.to_thread(command.downgrade, config, "base")
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
