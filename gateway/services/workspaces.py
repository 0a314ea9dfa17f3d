"""Stored workspaces: attach one to each session, restore it into the container before the CLI
starts, save it back (on stop, on failure, on request, periodically), keep transcripts.

A save is atomic at the manifest level: changed files are staged, the new manifest is committed
in PostgreSQL, then the store is brought in line (``promote``). Until the commit the previous
saved state is untouched; after it, ``promote`` can be repeated until it succeeds. Every
blocking step (tar, hashing, S3, Docker archives) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar, cast

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.db import manifests
from gateway.db.models import SessionRow, SessionStatus, WorkspaceKind, WorkspaceRow
from gateway.error_codes import ErrorCode
from gateway.errors import Conflict, InvalidRequest
from gateway.events.bus import EventBus
from gateway.runtime import PathMissing, SessionRuntime
from gateway.services.container_files import open_entry, write_entries
from gateway.services.transcripts import TranscriptKeeper
from gateway.store import layout
from gateway.store.objects import ObjectStore
from gateway.workspaces import tarstream
from gateway.workspaces.manifest import Entry, Limits, SaveResult
from gateway.workspaces.promote import promote
from gateway.workspaces.streams import IteratorReader
from wrapper.protocol import WORKSPACE_DIR, GatewayEvent

log = logging.getLogger(__name__)

T = TypeVar("T")

# A workspace is "in use" while a session that may still write it back holds it.
IN_USE_STATUSES = (
    SessionStatus.STARTING,
    SessionStatus.READY,
    SessionStatus.BUSY,
    SessionStatus.STOPPING,
)
MODE_RW, MODE_RO = "rw", "ro"


# How far the engine host's clock may lag the gateway's (the second a save began is the
# gateway's; a file's mtime is the engine host's).
_CLOCK_ALLOWANCE_S = 2


def trust_mtimes_before(began: datetime | None) -> float:
    """Manifest mtimes before this (seconds since the epoch) may be trusted by a save: a file
    whose mtime is in or after the second its bytes were read may have been written again within
    that second without its size or mtime moving. Nothing is trusted when that time is unknown."""
    if began is None:
        return -math.inf
    return math.floor(began.timestamp()) - _CLOCK_ALLOWANCE_S


class WorkspaceInUse(Conflict):
    code = ErrorCode.WORKSPACE_IN_USE


@dataclass(frozen=True)
class WorkspaceChoice:
    """What a new session asked for: ``ephemeral`` (its own), ``persistent`` (named, shared
    over time), or ``inherit`` (its own, starting as a copy of its parent's files)."""

    type: str = "ephemeral"
    name: str | None = None
    read_only: bool = False


@dataclass(frozen=True)
class SaveStats:
    workspace: str
    uploaded: int
    unchanged: int
    deleted: int
    skipped: int
    bytes_uploaded: int
    files: int
    bytes: int

    @classmethod
    def of(cls, name: str, result: SaveResult) -> SaveStats:
        return cls(
            workspace=name,
            uploaded=len(result.uploaded),
            unchanged=result.unchanged,
            deleted=len(result.deleted),
            skipped=len(result.skipped),
            bytes_uploaded=result.bytes_uploaded,
            files=result.file_count,
            bytes=result.total_bytes,
        )


def own_workspace_name(session_id: uuid.UUID) -> str:
    """The name of a session's own (ephemeral) workspace."""
    return f"session-{session_id}"


class WorkspaceService:
    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[AsyncSession],
        runtime: SessionRuntime,
        store: ObjectStore,
        bus: EventBus,
    ) -> None:
        self._settings = settings
        self._db = db
        self._runtime = runtime
        self._store = store
        self._bus = bus
        self._limits = Limits(settings.workspace_max_bytes, settings.workspace_max_files)
        self._transcripts = TranscriptKeeper(runtime, store)

    @property
    def store(self) -> ObjectStore:
        return self._store

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # S3, tar and hashing block: keep them off the event loop.
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    @property
    def transcripts(self) -> TranscriptKeeper:
        return self._transcripts

    async def close(self) -> None:
        await self._transcripts.close()

    # -- attaching (inside the transaction that inserts the session) -----------------------------

    async def attach(
        self,
        db: AsyncSession,
        session: SessionRow,
        choice: WorkspaceChoice,
        parent: SessionRow | None,
    ) -> None:
        """Give ``session`` its workspace. Runs under the owner's lock, so the in-use check
        and the claim are atomic. Raises ``WorkspaceInUse`` or ``InvalidRequest``."""
        if choice.type == "persistent":
            assert choice.name is not None
            workspace = await self._named(db, session.owner, choice.name)
            if not choice.read_only:
                holders = await self.holders(db, workspace.id, writers_only=True)
                if holders:
                    raise WorkspaceInUse(
                        f"workspace {choice.name!r} is in use by session {holders[0]}; ask for "
                        '"read_only": true to get a copy that is never saved back',
                        sessions=[str(holder) for holder in holders],
                    )
            session.workspace_id = workspace.id
            session.workspace_name = workspace.name
            session.workspace_mode = MODE_RO if choice.read_only else MODE_RW
            return
        if choice.type == "inherit":
            if parent is None:
                raise InvalidRequest(
                    'workspace "inherit" is only for spawned sessions',
                    code=ErrorCode.INVALID_WORKSPACE,
                )
            if not parent.container_id:
                raise Conflict(
                    f"parent session {parent.id} has no container to copy files from yet",
                    code=ErrorCode.PARENT_NOT_READY,
                )
            session.workspace_source = parent.id  # copied when its container is prepared
        workspace = WorkspaceRow(
            id=uuid.uuid4(),
            owner=session.owner,
            name=own_workspace_name(session.id),
            kind=WorkspaceKind.EPHEMERAL,
            session_id=session.id,
        )
        db.add(workspace)
        await db.flush()
        session.workspace_id = workspace.id
        session.workspace_name = workspace.name
        session.workspace_mode = MODE_RW

    async def _named(self, db: AsyncSession, owner: str, name: str) -> WorkspaceRow:
        existing = await db.scalar(
            select(WorkspaceRow).where(WorkspaceRow.owner == owner, WorkspaceRow.name == name)
        )
        if existing is not None:
            if existing.kind != WorkspaceKind.PERSISTENT:
                raise InvalidRequest(
                    f"{name!r} is a session's own workspace", code=ErrorCode.INVALID_WORKSPACE
                )
            return existing
        workspace = WorkspaceRow(
            id=uuid.uuid4(), owner=owner, name=name, kind=WorkspaceKind.PERSISTENT
        )
        db.add(workspace)
        await db.flush()
        return workspace

    @staticmethod
    async def holders(
        db: AsyncSession, workspace_id: uuid.UUID, *, writers_only: bool = False
    ) -> list[uuid.UUID]:
        """Sessions that hold the workspace now (running or stopping)."""
        statement = select(SessionRow.id).where(
            SessionRow.workspace_id == workspace_id, SessionRow.status.in_(IN_USE_STATUSES)
        )
        if writers_only:
            statement = statement.where(SessionRow.workspace_mode == MODE_RW)
        return list((await db.scalars(statement.order_by(SessionRow.created_at))).all())

    # -- restoring (a ContainerPreparer: between create and start) -------------------------------

    async def prepare(self, session: SessionRow, container_id: str, resumed: bool) -> None:
        """Copy the session's files (and its transcript, when resuming) into its created
        container, so the CLI's first turn sees them."""
        parent_container = None if resumed else await self._source_container(session)
        if parent_container is not None:
            await self._copy_between(parent_container, container_id)
        elif session.workspace_id is not None:
            async with self._db() as db:
                manifest = await manifests.load(db, session.workspace_id)
                workspace = await db.get(WorkspaceRow, session.workspace_id)
            if manifest and workspace is not None:
                manifest = await self._finish_promotion(workspace, manifest)
                await write_entries(
                    self._runtime, self._store, container_id, manifest, path=WORKSPACE_DIR
                )
        if resumed:  # a new session has no conversation to restore
            await self._transcripts.restore(session, container_id)

    async def _source_container(self, session: SessionRow) -> str | None:
        """The parent's container an ``inherit`` workspace is copied from (kept in the row, so
        whichever replica starts the session finds it)."""
        if session.workspace_source is None:
            return None
        async with self._db() as db:
            container = await db.scalar(
                select(SessionRow.container_id).where(SessionRow.id == session.workspace_source)
            )
        if container is None:
            raise Conflict(
                f"parent session {session.workspace_source} has no container to copy files from",
                code=ErrorCode.PARENT_NOT_READY,
            )
        return container

    async def _copy_between(self, source_container: str, target_container: str) -> None:
        # "dir/." archives the contents, extracted into the target's workspace volume (the
        # root filesystem is read-only, so nothing can be extracted at "/").
        archive = await self._runtime.get_archive(source_container, f"{WORKSPACE_DIR}/.")
        with archive:
            await self._runtime.put_archive(
                target_container, WORKSPACE_DIR, cast(BinaryIO, IteratorReader(archive.chunks))
            )

    def open_entry(self, entry: Entry) -> contextlib.AbstractContextManager[Any]:
        return open_entry(self._store, entry)

    # -- saving ----------------------------------------------------------------------------------

    async def save(self, session: SessionRow, reason: str) -> SaveStats | None:
        """Save the session's workspace from its container (running or stopped). ``None`` when
        it has nothing to save (no container, a read-only copy). Raises ``WorkspaceTooLarge``,
        ``StoreError``, ``RuntimeFailure`` (``ContainerMissing``: its files are lost); the
        previous saved state is then intact."""
        if session.workspace_id is None or session.workspace_mode != MODE_RW:
            return None
        if not session.container_id or not session.workspace_restored:
            return None  # a container whose restore did not finish never overwrites the store
        async with self._lock(session.workspace_id):
            async with self._db() as db:
                workspace = await db.get(WorkspaceRow, session.workspace_id)
                previous = await manifests.load(db, session.workspace_id)
            if workspace is None:
                return None
            previous = await self._finish_promotion(workspace, previous)
            staging = layout.staging_prefix(workspace.owner, workspace.name, uuid.uuid4().hex)
            began = datetime.now(UTC)  # before a single file is read
            try:
                archive = await self._runtime.get_archive(session.container_id, WORKSPACE_DIR)
            except PathMissing:
                return None
            with archive:
                result = await self._blocking(
                    tarstream.stage_from_container,
                    archive.chunks,
                    previous,
                    self._store,
                    staging,
                    self._limits,
                    trust_mtimes_before=trust_mtimes_before(workspace.last_save_began_at),
                )
            await self._commit(workspace, result.entries, previous, read=began, merged=False)
            await self._promote(workspace, result, previous)
        stats = SaveStats.of(workspace.name, result)
        log.info(
            "saved workspace %s of session %s (%s): %s", workspace.name, session.id, reason, stats
        )
        await self._bus.publish(
            str(session.id), GatewayEvent.WORKSPACE_SAVED, reason=reason, **vars(stats)
        )
        return stats

    async def commit_staged(
        self,
        workspace: WorkspaceRow,
        result: SaveResult,
        previous: Mapping[str, Entry],
        *,
        read: datetime | None,
        merged: bool,
    ) -> None:
        """Commit a manifest staged elsewhere (an upload, a deletion) over ``previous``, then
        promote. ``read``: when its new files began to be staged (``None``: it has none);
        ``merged``: it keeps entries of ``previous``. The caller holds ``lock(workspace.id)``."""
        await self._commit(workspace, result.entries, previous, read=read, merged=merged)
        await self._promote(workspace, result, previous)

    def lock(self, workspace_id: uuid.UUID) -> contextlib.AbstractAsyncContextManager[None]:
        return self._lock(workspace_id)

    @contextlib.asynccontextmanager
    async def _lock(self, workspace_id: uuid.UUID) -> AsyncIterator[None]:
        """One writer of a workspace at a time, across every replica: a PostgreSQL advisory
        lock held on a connection of its own for as long as the save or upload lasts (the
        database drops it if this process dies)."""
        async with self._db() as db:
            # Autocommit: no transaction stays open (holding back vacuum) while files move.
            await db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            key = func.hashtextextended(f"workspace:{workspace_id}", 0)
            await db.execute(select(func.pg_advisory_lock(key)))
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # a lost connection released it anyway
                    await asyncio.shield(db.execute(select(func.pg_advisory_unlock(key))))

    async def _commit(
        self,
        workspace: WorkspaceRow,
        entries: Mapping[str, Entry],
        previous: Mapping[str, Entry],
        *,
        read: datetime | None,
        merged: bool,
    ) -> None:
        """Write ``entries`` over ``previous``. ``last_save_began_at`` becomes the earliest time
        any entry's bytes were read: ``read`` for a whole new manifest; for one that keeps
        entries of ``previous`` (``merged``), the earlier of ``read`` and the time kept (none
        kept: none); unchanged when nothing was read."""
        began: Any = WorkspaceRow.last_save_began_at
        if read is not None and not merged:
            began = read
        elif read is not None:
            kept = WorkspaceRow.last_save_began_at
            began = case((kept.is_(None), None), else_=func.least(kept, read))
        async with self._db() as db, db.begin():
            await manifests.write_changes(db, workspace.id, entries, previous)
            values: dict[str, Any] = {
                "size_bytes": sum(e.size for e in entries.values() if e.kind == "file"),
                "file_count": len(entries),
                "updated_at": func.now(),
                "last_saved_at": func.now(),
                "save_count": WorkspaceRow.save_count + 1,
                "last_save_began_at": began,
            }
            await db.execute(
                update(WorkspaceRow).where(WorkspaceRow.id == workspace.id).values(**values)
            )

    async def _promote(
        self, workspace: WorkspaceRow, result: SaveResult, previous: Mapping[str, Entry]
    ) -> None:
        final_key = functools.partial(layout.file_key, workspace.owner, workspace.name)
        promoted = await self._blocking(promote, self._store, result, previous, final_key)
        async with self._db() as db, db.begin():
            await manifests.write_changes(db, workspace.id, promoted, result.entries)

    async def _finish_promotion(
        self, workspace: WorkspaceRow, manifest: dict[str, Entry]
    ) -> dict[str, Entry]:
        """A committed manifest may still point at staging keys (a save stopped between commit
        and promote): bring the store in line first."""
        staging_root = layout.staging_root(workspace.owner, workspace.name)
        if not any((e.object_key or "").startswith(staging_root) for e in manifest.values()):
            return manifest
        final_key = functools.partial(layout.file_key, workspace.owner, workspace.name)
        promoted = await self._blocking(
            promote,
            self._store,
            manifest,
            None,
            final_key,
            sweep_prefix=layout.workspace_prefix(workspace.owner, workspace.name),
        )
        async with self._db() as db, db.begin():
            await manifests.write_changes(db, workspace.id, promoted, manifest)
        return promoted

    # -- ending ----------------------------------------------------------------------------------

    async def deleted_with(self, session: SessionRow, deleted_root: uuid.UUID) -> bool:
        """Whether deleting the subtree of ``deleted_root`` deletes ``session``'s workspace
        too: it is the ephemeral workspace of a session in that subtree."""
        if session.workspace_id is None:
            return False
        statement = (
            select(WorkspaceRow.kind, SessionRow.id, SessionRow.path)
            .join(SessionRow, SessionRow.id == WorkspaceRow.session_id)
            .where(WorkspaceRow.id == session.workspace_id)
        )
        async with self._db() as db:
            found = (await db.execute(statement)).one_or_none()
        if found is None or found.kind != WorkspaceKind.EPHEMERAL:
            return False
        return found.id == deleted_root or deleted_root in (found.path or ())

    async def forget_session(self, session_id: uuid.UUID, owner: str) -> None:
        """A deleted session: its own workspace and its transcripts go too."""
        async with self._db() as db, db.begin():
            own = (
                await db.scalars(
                    select(WorkspaceRow).where(
                        WorkspaceRow.session_id == session_id,
                        WorkspaceRow.kind == WorkspaceKind.EPHEMERAL,
                    )
                )
            ).all()
            for workspace in own:
                await db.delete(workspace)
        for workspace in own:
            await self._blocking(
                self._store.delete_prefix, layout.workspace_prefix(owner, workspace.name) + "/"
            )
            await self._blocking(
                self._store.delete_prefix, layout.staging_root(owner, workspace.name) + "/"
            )
        await self._blocking(
            self._store.delete_prefix,
            layout.join(layout.sessions_prefix(owner), str(session_id)) + "/",
        )

    async def delete_workspace(self, workspace: WorkspaceRow) -> None:
        """Remove a workspace's rows and objects; the caller checked it is not in use."""
        async with self._lock(workspace.id), self._db() as db, db.begin():
            await db.execute(delete(WorkspaceRow).where(WorkspaceRow.id == workspace.id))
        for prefix in (
            layout.workspace_prefix(workspace.owner, workspace.name),
            layout.staging_root(workspace.owner, workspace.name),
        ):
            await self._blocking(self._store.delete_prefix, prefix + "/")
