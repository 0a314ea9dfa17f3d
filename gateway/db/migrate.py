"""Apply Alembic migrations from code (``python -m gateway migrate`` and start-up).

Any number of gateways may start together against one database: each applies the migrations
under one PostgreSQL advisory lock (``MIGRATION_LOCK``), taken by ``migrations/env.py`` inside
the migration transaction before Alembic reads its version table. The first to get it migrates
and commits (which releases the lock); the others then find the schema at head and do nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# The two-int4 key of the migration lock: a key space apart from the one-bigint owner locks
# (services/limits.py), so no owner name can collide with it; the class names what it guards.
MIGRATION_LOCK = (0x4343444D, 1)  # "CCDM", the schema


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_head(database_url: str) -> None:
    """Idempotent and safe to run concurrently: a database already at head is left as it is,
    and concurrent runs wait for each other (``MIGRATION_LOCK``) instead of racing."""
    command.upgrade(alembic_config(database_url), "head")
