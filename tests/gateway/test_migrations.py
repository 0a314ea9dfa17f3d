"""The schema changes only through Alembic: the migrations, applied to an empty PostgreSQL,
give exactly the tables the models describe (and step back down cleanly); replicas starting
together apply them once, one after the other."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.db.migrate import alembic_config
from gateway.db.models import Base

pytestmark = pytest.mark.docker


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """The URL of a new, empty database on the test PostgreSQL, dropped afterwards."""
    name = f"ccd_migrations_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def test_migrations_match_the_models(infra) -> None:
    async with fresh_database(infra.database_url) as url:
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


async def test_replicas_starting_together_migrate_once(infra, tmp_path: Path) -> None:
    """Five `python -m gateway migrate` at once on an empty database: every one succeeds
    with nothing on its error output, and the schema is exactly at head. Without the
    migration lock they race to create the version table and the same tables, and fail."""
    async with fresh_database(infra.database_url) as url:
        env = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "PYTHONPATH")
        }
        env.update(DATABASE_URL=url, JWT_SECRET=secrets.token_urlsafe(32), LOG_JSON="false")
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "migrate",
                cwd=tmp_path,  # no .env of a developer's
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(5)
        ]
        outputs = await asyncio.wait_for(
            asyncio.gather(*(process.communicate() for process in processes)), 120
        )
        for process, (stdout, stderr) in zip(processes, outputs, strict=True):
            report = (stdout + stderr).decode(errors="replace")
            assert process.returncode == 0, report
            assert not any(word in report for word in ("ERROR", "Traceback", "Error:")), report
        # Alembic logs each step it applies: one process applied them all, the others none.
        script = ScriptDirectory.from_config(alembic_config(url))
        steps = len(list(script.walk_revisions()))
        applied = sorted(stderr.decode().count("Running upgrade") for _, stderr in outputs)
        assert applied == [0, 0, 0, 0, steps], outputs

        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                versions = (
                    (await connection.execute(text("SELECT version_num FROM alembic_version")))
                    .scalars()
                    .all()
                )

                def diff(sync_connection: Any) -> list[Any]:
                    context = MigrationContext.configure(
                        sync_connection, opts={"compare_type": True}
                    )
                    return list(compare_metadata(context, Base.metadata))

                differences = await connection.run_sync(diff)
        finally:
            await engine.dispose()
        assert versions == [script.get_current_head()]
        assert differences == []
