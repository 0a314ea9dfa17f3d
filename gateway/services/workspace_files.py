"""The file API of stored workspaces: list, download, upload, delete, tar.gz in and out.

Every write goes through the same staged, committed, promoted path as a save, so a failed
upload leaves the workspace as it was. Writes are refused while a session that saves the
workspace back holds it (its next save would silently undo them).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import tarfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import IO, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.concurrency import iterate_in_threadpool

from gateway.config import Settings
from gateway.db import manifests
from gateway.db.models import WorkspaceKind, WorkspaceRow
from gateway.error_codes import ErrorCode
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.services.workspaces import WorkspaceInUse, WorkspaceService
from gateway.store import layout
from gateway.workspaces import paths, tarstream
from gateway.workspaces.manifest import Entry, Limits, NotAFile, SaveResult, WorkspaceTooLarge
from gateway.workspaces.streams import PipeReader, pipe

_CHUNK = 64 * 1024


class WorkspaceNotFound(NotFound):
    code = ErrorCode.WORKSPACE_NOT_FOUND

    def __init__(self, name: str) -> None:
        super().__init__(f"workspace {name!r} not found")


class FileNotFoundInWorkspace(NotFound):
    code = ErrorCode.FILE_NOT_FOUND


class StoredFiles:
    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[AsyncSession],
        workspaces: WorkspaceService,
    ) -> None:
        self._settings = settings
        self._db = db
        self._workspaces = workspaces
        self._store = workspaces.store
        self._limits = Limits(settings.workspace_max_bytes, settings.workspace_max_files)

    # -- workspaces ------------------------------------------------------------------------------

    async def all_of(self, owner: str) -> list[tuple[WorkspaceRow, list[uuid.UUID]]]:
        async with self._db() as db:
            rows = (
                await db.scalars(
                    select(WorkspaceRow)
                    .where(WorkspaceRow.owner == owner)
                    .order_by(WorkspaceRow.name)
                )
            ).all()
            return [(row, await self._workspaces.holders(db, row.id)) for row in rows]

    async def get(self, owner: str, name: str) -> WorkspaceRow:
        async with self._db() as db:
            row = await db.scalar(
                select(WorkspaceRow).where(WorkspaceRow.owner == owner, WorkspaceRow.name == name)
            )
        if row is None:
            raise WorkspaceNotFound(name)
        return row

    async def holders(self, workspace: WorkspaceRow) -> list[uuid.UUID]:
        async with self._db() as db:
            return await self._workspaces.holders(db, workspace.id)

    async def get_or_create(self, owner: str, name: str) -> WorkspaceRow:
        """For uploads: a persistent workspace is created on first use."""
        if name.startswith("session-"):  # sessions' own workspaces are never created here
            await self.get(owner, name)
        layout.check_workspace_name(name)
        async with self._db() as db, db.begin():
            row = await db.scalar(
                select(WorkspaceRow).where(WorkspaceRow.owner == owner, WorkspaceRow.name == name)
            )
            if row is None:
                row = WorkspaceRow(
                    id=uuid.uuid4(), owner=owner, name=name, kind=WorkspaceKind.PERSISTENT
                )
                db.add(row)
        return row

    async def delete(self, workspace: WorkspaceRow) -> None:
        if workspace.kind == WorkspaceKind.EPHEMERAL:
            raise Conflict(
                f"workspace {workspace.name!r} belongs to its session; delete the session",
                code=ErrorCode.WORKSPACE_OWNED_BY_SESSION,
            )
        holders = await self.holders(workspace)
        if holders:
            raise WorkspaceInUse(
                f"workspace {workspace.name!r} is in use by session {holders[0]}",
                sessions=[str(h) for h in holders],
            )
        await self._workspaces.delete_workspace(workspace)

    async def _refuse_if_written_by_a_session(self, workspace: WorkspaceRow) -> None:
        async with self._db() as db:
            writers = await self._workspaces.holders(db, workspace.id, writers_only=True)
        if writers:
            raise WorkspaceInUse(
                f"workspace {workspace.name!r} is saved back by running session {writers[0]}; "
                "change its files there (/api/v1/sessions/{id}/files) or stop it first",
                sessions=[str(w) for w in writers],
            )

    async def _manifest(self, workspace: WorkspaceRow) -> dict[str, Entry]:
        async with self._db() as db:
            return await manifests.load(db, workspace.id)

    # -- files -----------------------------------------------------------------------------------

    async def entries(
        self, workspace: WorkspaceRow, prefix: str, after: str | None, limit: int
    ) -> tuple[list[Entry], str | None]:
        """Entries below ``prefix`` in path order, ``limit`` at a time (``after`` the last)."""
        base = paths.normalize(prefix, allow_root=True) if prefix else ""
        async with self._db() as db:
            chosen = await manifests.page(db, workspace.id, base, after, limit + 1)
        page = chosen[:limit]
        return page, page[-1].path if len(chosen) > limit else None

    async def download(
        self, workspace: WorkspaceRow, path: str
    ) -> tuple[Entry, AsyncIterator[bytes]]:
        """A regular file's entry and its bytes, streamed from the store."""
        clean = paths.normalize(path)
        async with self._db() as db:
            entry = await manifests.get(db, workspace.id, clean)
        if entry is None:
            raise FileNotFoundInWorkspace(f"{clean!r} is not in workspace {workspace.name!r}")
        if entry.kind != "file" or entry.object_key is None:
            raise NotAFile(f"{clean!r} is a {entry.kind}, not a regular file")
        key = entry.object_key

        def chunks() -> Iterator[bytes]:
            with self._store.open(key) as source:
                while chunk := source.read(_CHUNK):
                    yield chunk

        return entry, iterate_in_threadpool(chunks())

    async def upload(
        self, workspace: WorkspaceRow, path: str, body: AsyncIterator[bytes], mode: int = 0o644
    ) -> Entry:
        """Store one file (streamed, never whole in memory); missing parent directories are
        created. Nothing changes unless the whole upload arrives and is stored."""
        clean = paths.normalize(path)
        await self._refuse_if_written_by_a_session(workspace)
        async with self._workspaces.lock(workspace.id):
            previous = await self._manifest(workspace)
            blocked = _blocked_by(previous, clean)
            if blocked:
                raise Conflict(
                    f"{blocked!r} is a file: {clean!r} cannot go below it",
                    code=ErrorCode.PATH_CONFLICT,
                )
            if clean in previous and previous[clean].kind == "dir":
                raise Conflict(f"{clean!r} is a directory", code=ErrorCode.PATH_CONFLICT)
            staging = layout.staging_key(workspace.owner, workspace.name, uuid.uuid4().hex, clean)
            began = datetime.now(UTC)
            size, digest = await self._stream_to(staging, body, previous, clean)
            entries = dict(previous)
            now = int(time.time())
            for parent in _parents(clean):
                entries.setdefault(parent, Entry(parent, "dir", mode=0o755, mtime=now))
            entries[clean] = Entry(
                clean, "file", size=size, mode=mode, mtime=now, sha256=digest, object_key=staging
            )
            result = SaveResult(
                entries=entries, uploaded=[clean], bytes_uploaded=size, staged_keys=[staging]
            )
            await self._workspaces.commit_staged(
                workspace, result, previous, read=began, merged=True
            )
        return replace(
            entries[clean], object_key=layout.file_key(workspace.owner, workspace.name, clean)
        )

    async def _stream_to(
        self, key: str, body: AsyncIterator[bytes], previous: dict[str, Entry], path: str
    ) -> tuple[int, str]:
        """Feed the request body through a bounded pipe into a streaming S3 upload, checking
        the workspace size limit as bytes arrive."""
        budget = self._limits.max_bytes
        if budget is not None:
            budget -= sum(e.size for p, e in previous.items() if e.kind == "file" and p != path)
        reader, writer = pipe()
        digest = hashlib.sha256()
        upload = asyncio.create_task(asyncio.to_thread(self._store.put_stream, key, reader, -1))
        size = 0
        try:
            async for chunk in body:
                size += len(chunk)
                if budget is not None and size > budget:
                    raise WorkspaceTooLarge("max_bytes", self._limits.max_bytes or 0, size)
                digest.update(chunk)
                await asyncio.to_thread(writer.write, chunk)
        except BaseException as exc:
            writer.abort(exc)
            await asyncio.gather(upload, return_exceptions=True)
            await asyncio.to_thread(self._store.delete_many, [key])
            raise
        await asyncio.to_thread(writer.close)
        await upload
        return size, digest.hexdigest()

    async def remove(self, workspace: WorkspaceRow, path: str) -> None:
        """Delete a file, a symlink or a directory with everything below it."""
        clean = paths.normalize(path)
        await self._refuse_if_written_by_a_session(workspace)
        async with self._workspaces.lock(workspace.id):
            previous = await self._manifest(workspace)
            if clean not in previous:
                raise FileNotFoundInWorkspace(f"{clean!r} is not in workspace {workspace.name!r}")
            entries = {
                p: e for p, e in previous.items() if p != clean and not p.startswith(clean + "/")
            }
            result = SaveResult(entries=entries, deleted=sorted(set(previous) - set(entries)))
            await self._workspaces.commit_staged(
                workspace, result, previous, read=None, merged=True
            )

    # -- archives --------------------------------------------------------------------------------

    async def archive(self, workspace: WorkspaceRow) -> AsyncIterator[bytes]:
        """The whole workspace as a tar.gz, streamed as it is written."""
        manifest = await self._manifest(workspace)
        reader, writer = pipe()

        def produce() -> None:
            with writer:
                tarstream.write_tar(manifest, self._workspaces.open_entry, writer, gzip=True)

        return _drain(reader, produce)

    async def replace_from_archive(
        self, workspace: WorkspaceRow, body: AsyncIterator[bytes]
    ) -> SaveResult:
        """Replace the workspace's contents with a tar.gz upload. Members that would escape
        the workspace (``..``, absolute names, links out) refuse the whole upload."""
        await self._refuse_if_written_by_a_session(workspace)
        async with self._workspaces.lock(workspace.id):
            previous = await self._manifest(workspace)
            staging = layout.staging_prefix(workspace.owner, workspace.name, uuid.uuid4().hex)
            began = datetime.now(UTC)
            reader, writer = pipe()
            stage = asyncio.create_task(
                asyncio.to_thread(
                    tarstream.stage_from_upload,
                    cast(IO[bytes], reader),
                    self._store,
                    staging,
                    self._limits,
                )
            )
            try:
                async for chunk in body:
                    await asyncio.to_thread(writer.write, chunk)
            except BaseException as exc:
                writer.abort(exc)
                await asyncio.gather(stage, return_exceptions=True)
                raise
            await asyncio.to_thread(writer.close)
            try:
                result = await stage
            except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as exc:
                raise InvalidRequest(
                    f"the body is not a valid tar.gz archive: {exc}", code=ErrorCode.INVALID_ARCHIVE
                ) from None
            finally:
                reader.close()
            result.deleted = sorted(set(previous) - set(result.entries))
            await self._workspaces.commit_staged(
                workspace, result, previous, read=began, merged=False
            )
            return result


def _drain(reader: PipeReader, produce: Callable[[], None]) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        producer = asyncio.create_task(asyncio.to_thread(produce))
        try:
            async for chunk in iterate_in_threadpool(iter(lambda: reader.read(_CHUNK), b"")):
                yield chunk
            await producer
        finally:
            reader.close()  # a client that went away stops the producer (BrokenPipeError)
            await asyncio.gather(producer, return_exceptions=True)

    return chunks()


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _blocked_by(entries: dict[str, Entry], path: str) -> str | None:
    for parent in _parents(path):
        entry = entries.get(parent)
        if entry is not None and entry.kind != "dir":
            return parent
    return None
