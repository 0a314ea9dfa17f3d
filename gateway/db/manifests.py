"""Workspace manifests in PostgreSQL: load one, write what changed."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TypeVar

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import WorkspaceEntryRow
from gateway.workspaces.manifest import Entry

_BATCH = 1000
T = TypeVar("T")


def _entry(row: WorkspaceEntryRow) -> Entry:
    return Entry(
        path=row.path,
        kind=row.kind,  # type: ignore[arg-type]
        size=row.size,
        mode=row.mode,
        mtime=row.mtime,
        sha256=row.sha256,
        link_target=row.link_target,
        object_key=row.object_key,
    )


async def load(db: AsyncSession, workspace_id: uuid.UUID) -> dict[str, Entry]:
    rows = await db.scalars(
        select(WorkspaceEntryRow).where(WorkspaceEntryRow.workspace_id == workspace_id)
    )
    return {row.path: _entry(row) for row in rows}


async def get(db: AsyncSession, workspace_id: uuid.UUID, path: str) -> Entry | None:
    row = await db.get(WorkspaceEntryRow, (workspace_id, path))
    return None if row is None else _entry(row)


async def page(
    db: AsyncSession, workspace_id: uuid.UUID, prefix: str, after: str | None, limit: int
) -> list[Entry]:
    """Up to ``limit`` entries at or below ``prefix`` ("" for all), in byte order of path,
    strictly after ``after``: one page read from the database, not the whole manifest."""
    path = WorkspaceEntryRow.path.collate("C")
    statement = select(WorkspaceEntryRow).where(WorkspaceEntryRow.workspace_id == workspace_id)
    if prefix:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(
            or_(WorkspaceEntryRow.path == prefix, path.like(escaped + "/%", escape="\\"))
        )
    if after is not None:
        statement = statement.where(path > after)
    rows = await db.scalars(statement.order_by(path).limit(limit))
    return [_entry(row) for row in rows]


async def write_changes(
    db: AsyncSession,
    workspace_id: uuid.UUID,
    entries: Mapping[str, Entry],
    previous: Mapping[str, Entry],
) -> None:
    """Make the stored manifest equal ``entries``, touching only rows that differ from
    ``previous`` (the manifest as loaded): one changed file in a big workspace is one row."""
    changed = [entry for path, entry in entries.items() if previous.get(path) != entry]
    removed = [path for path in previous if path not in entries]
    for batch in _batches(changed):
        statement = insert(WorkspaceEntryRow).values(
            [
                {
                    "workspace_id": workspace_id,
                    "path": entry.path,
                    "kind": entry.kind,
                    "size": entry.size,
                    "mode": entry.mode,
                    "mtime": entry.mtime,
                    "sha256": entry.sha256,
                    "link_target": entry.link_target,
                    "object_key": entry.object_key,
                }
                for entry in batch
            ]
        )
        await db.execute(
            statement.on_conflict_do_update(
                index_elements=["workspace_id", "path"],
                set_={
                    column: statement.excluded[column]
                    for column in (
                        "kind",
                        "size",
                        "mode",
                        "mtime",
                        "sha256",
                        "link_target",
                        "object_key",
                    )
                },
            )
        )
    for paths in _batches(removed):
        await db.execute(
            delete(WorkspaceEntryRow).where(
                WorkspaceEntryRow.workspace_id == workspace_id,
                WorkspaceEntryRow.path.in_(paths),
            )
        )


def _batches(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[start : start + _BATCH] for start in range(0, len(items), _BATCH)]
