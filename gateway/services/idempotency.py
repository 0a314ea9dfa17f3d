"""``Idempotency-Key`` on create and spawn: a retried request answers the session the first
one made instead of starting another.

A key is remembered per owner and scope (``create``, or ``spawn:<parent id>``) together with
the sha256 of the canonical validated request body and the session it made, for
``IDEMPOTENCY_TTL`` seconds. ``lookup`` and ``remember`` run in the transaction that inserts the
session, under the owner's advisory lock (``limits.lock_owner``), so of N concurrent requests
with one key exactly one inserts and the others find its row once it commits. A request that
failed before its session was inserted (a limit, a validation error) left no key: a retry runs
afresh. Deleting the session deletes its key (foreign key, cascade).

Expired keys are ignored by ``lookup`` and overwritten by ``remember``; ``purge_expired`` (run
periodically by the lifespan) removes them. That is the only place rows are deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.models import IdempotencyKeyRow
from gateway.error_codes import ErrorCode
from gateway.errors import InvalidRequest

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Printable ASCII, 1 to 255 characters; no space at either end (HTTP would strip it).
KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$"
_KEY = re.compile(KEY_PATTERN)
CREATE_SCOPE = "create"
PURGE_INTERVAL = 600.0


def spawn_scope(parent_id: uuid.UUID) -> str:
    return f"spawn:{parent_id}"


@dataclass(frozen=True)
class IdempotencyKey:
    """A request's key, where it applies, and what the request asked for."""

    key: str
    scope: str
    request_hash: str


def parse(raw: str | None, scope: str, body: BaseModel) -> IdempotencyKey | None:
    """The request's key (``None`` without the header), or 422 ``invalid_idempotency_key``
    for an empty, too long or non-printable-ASCII one."""
    if raw is None:
        return None
    if not _KEY.fullmatch(raw):
        raise InvalidRequest(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            code=ErrorCode.INVALID_IDEMPOTENCY_KEY,
        )
    return IdempotencyKey(key=raw, scope=scope, request_hash=request_hash(body))


def request_hash(body: BaseModel) -> str:
    """sha256 of the validated body as canonical JSON (defaults filled in, keys sorted), so
    two spellings of the same request hash alike."""
    canonical = json.dumps(
        body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def lookup(db: AsyncSession, owner: str, key: IdempotencyKey, ttl: int) -> uuid.UUID | None:
    """The session an unexpired use of ``key`` made, or ``None``. Raises 422
    ``idempotency_key_reused`` when the key was used with another body."""
    row = await db.scalar(
        select(IdempotencyKeyRow).where(
            IdempotencyKeyRow.owner == owner,
            IdempotencyKeyRow.scope == key.scope,
            IdempotencyKeyRow.key == key.key,
            IdempotencyKeyRow.created_at > func.now() - timedelta(seconds=ttl),
        )
    )
    if row is None:
        return None
    if row.request_hash != key.request_hash:
        raise InvalidRequest(
            f"this {HEADER} was used with a different request (for session {row.session_id}); "
            "use a new key for a new request",
            code=ErrorCode.IDEMPOTENCY_KEY_REUSED,
        )
    return row.session_id


async def remember(
    db: AsyncSession, owner: str, key: IdempotencyKey, session_id: uuid.UUID
) -> None:
    """Record that ``key`` made ``session_id``. A row still there for the key has expired
    (``lookup`` found none under the same lock), so it is overwritten."""
    values = {
        "owner": owner,
        "scope": key.scope,
        "key": key.key,
        "request_hash": key.request_hash,
        "session_id": session_id,
        "created_at": func.now(),
    }
    statement = insert(IdempotencyKeyRow).values(**values)
    await db.execute(
        statement.on_conflict_do_update(
            index_elements=["owner", "scope", "key"],
            set_={name: statement.excluded[name] for name in values if name != "owner"},
        )
    )


async def purge_expired(db: AsyncSession, ttl: int) -> int:
    """Delete every key older than ``ttl`` seconds (indexed on ``created_at``)."""
    result = await db.execute(
        delete(IdempotencyKeyRow).where(
            IdempotencyKeyRow.created_at <= func.now() - timedelta(seconds=ttl)
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def run_purge(
    db: async_sessionmaker[AsyncSession],
    ttl: int,
    is_mine: Callable[[], bool],
    interval: float = PURGE_INTERVAL,
) -> None:
    """Purge expired keys every ``interval`` seconds while this replica holds the lease (were
    two to purge at once, deleting an expired row twice would be harmless)."""
    while True:
        if not is_mine():
            await asyncio.sleep(interval)
            continue
        try:
            async with db() as session, session.begin():
                purged = await purge_expired(session, ttl)
            if purged:
                log.info("removed %d expired idempotency keys", purged)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not remove expired idempotency keys: %s", exc)
        await asyncio.sleep(interval)
