"""The file API of a running session: its container's ``/workspace``, live.

Reads and writes go through the Docker archive API; listing, path resolution and deletion run
fixed commands in the container (argv lists, never a shell line built from input). Every path
is normalised and then resolved inside the container, so ``..`` and symlinks cannot lead out of
the workspace.
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO, cast

from starlette.concurrency import iterate_in_threadpool

from gateway.error_codes import ErrorCode
from gateway.errors import Conflict, NotFound
from gateway.runtime import PathMissing, SessionRuntime
from gateway.workspaces import paths, tarstream
from gateway.workspaces.manifest import NotAFile, WorkspaceTooLarge
from gateway.workspaces.paths import UnsafePath
from wrapper.protocol import CONTAINER_GID, CONTAINER_UID, WORKSPACE_DIR

_CHUNK = 64 * 1024
_SPOOL_IN_MEMORY = 1024 * 1024
_GO_MODE_DIR = 1 << 31  # Docker's path stat uses Go's os.FileMode bits
_FIND_FORMAT = "%y\t%s\t%m\t%T@\t%p\n"
_KINDS = {"f": "file", "d": "dir", "l": "symlink"}


class LiveFileNotFound(NotFound):
    code = ErrorCode.FILE_NOT_FOUND


@dataclass(frozen=True)
class LiveEntry:
    path: str
    kind: str
    size: int
    mode: int
    mtime: int


class LiveFiles:
    def __init__(self, runtime: SessionRuntime, max_bytes: int) -> None:
        self._runtime = runtime
        self._max_bytes = max_bytes

    async def _resolve(self, container_id: str, path: str, *, follow: bool = True) -> str:
        """The absolute path ``path`` (workspace-relative) leads to inside the container.
        ``follow=False`` keeps the last component itself (to replace or delete a link)."""
        clean = paths.normalize(path, allow_root=True) if path else ""
        if follow or not clean:
            target = posixpath.join(WORKSPACE_DIR, clean) if clean else WORKSPACE_DIR
            resolved = await self._realpath(container_id, target)
        else:
            parent, name = posixpath.split(clean)
            base = posixpath.join(WORKSPACE_DIR, parent) if parent else WORKSPACE_DIR
            resolved = posixpath.join(await self._realpath(container_id, base), name)
        if resolved != WORKSPACE_DIR and not resolved.startswith(WORKSPACE_DIR + "/"):
            raise UnsafePath(path, "it leads outside the workspace (through a symlink)")
        return resolved

    async def _realpath(self, container_id: str, target: str) -> str:
        result = await self._runtime.exec(container_id, ["realpath", "-m", "--", target])
        if result.exit_code != 0:
            raise UnsafePath(target, result.stderr.decode(errors="replace").strip()[:200])
        return result.stdout.decode().strip()

    async def list(
        self, container_id: str, prefix: str, limit: int
    ) -> tuple[list[LiveEntry], bool]:
        """Entries below ``prefix`` (or the file it names), at most ``limit``; the flag says
        whether there were more."""
        start = await self._resolve(container_id, prefix)
        result = await self._runtime.exec(
            container_id,
            [
                "sh",
                "-c",
                'find "$1" -mindepth 1 -printf "$2" | head -n "$3"',
                "sh",
                start,
                _FIND_FORMAT,
                str(limit + 1),
            ],
        )
        lines = [line for line in result.stdout.decode(errors="replace").split("\n") if line]
        if not lines:
            single = await self._runtime.exec(
                container_id, ["find", start, "-maxdepth", "0", "-printf", _FIND_FORMAT]
            )
            lines = [line for line in single.stdout.decode(errors="replace").split("\n") if line]
            if not lines and prefix:
                raise LiveFileNotFound(f"{prefix!r} does not exist in the session's workspace")
            lines = [line for line in lines if not line.endswith("\t" + WORKSPACE_DIR)]
        entries = [_parse_find(line) for line in lines[:limit]]
        return [entry for entry in entries if entry is not None], len(lines) > limit

    async def download(self, container_id: str, path: str) -> tuple[int, AsyncIterator[bytes]]:
        """A regular file's size and its bytes, streamed out of the container."""
        resolved = await self._resolve(container_id, path)
        try:
            archive = await self._runtime.get_archive(container_id, resolved)
        except PathMissing:
            raise LiveFileNotFound(f"{path!r} does not exist in the session's workspace") from None
        mode = int(archive.stat.get("mode", 0) or 0)  # type: ignore[call-overload]
        if mode & _GO_MODE_DIR:
            archive.close()
            raise NotAFile(f"{path!r} is a directory, not a regular file")
        size = int(archive.stat.get("size", 0) or 0)  # type: ignore[call-overload]

        def chunks() -> Iterator[bytes]:
            with archive, tarstream.extract_single(archive.chunks) as (_member, data):
                while chunk := data.read(_CHUNK):
                    yield chunk

        return size, iterate_in_threadpool(chunks())

    async def upload(
        self, container_id: str, path: str, body: AsyncIterator[bytes], mode: int = 0o644
    ) -> LiveEntry:
        """Write one file (creating its directories) as the container's user."""
        target = await self._resolve(container_id, path, follow=False)
        if target == WORKSPACE_DIR:
            raise Conflict("the workspace root is a directory", code=ErrorCode.PATH_CONFLICT)
        parent, name = posixpath.split(target)
        spool = await asyncio.to_thread(tempfile.SpooledTemporaryFile, _SPOOL_IN_MEMORY)
        try:
            size = 0
            async for chunk in body:
                size += len(chunk)
                if size > self._max_bytes:
                    raise WorkspaceTooLarge("max_bytes", self._max_bytes, size)
                await asyncio.to_thread(spool.write, chunk)
            made = await self._runtime.exec(container_id, ["mkdir", "-p", "--", parent])
            if made.exit_code != 0:
                raise Conflict(
                    made.stderr.decode(errors="replace").strip()[:300], code=ErrorCode.PATH_CONFLICT
                )
            archive = await asyncio.to_thread(_one_file_tar, spool, name, size, mode)
            await self._runtime.put_archive(container_id, parent, cast(BinaryIO, archive))
        finally:
            await asyncio.to_thread(spool.close)
        relative = posixpath.relpath(target, WORKSPACE_DIR)
        return LiveEntry(relative, "file", size, mode, int(time.time()))

    async def remove(self, container_id: str, path: str) -> None:
        """Delete a file, a link (not what it points to) or a directory tree."""
        target = await self._resolve(container_id, path, follow=False)
        if target == WORKSPACE_DIR:
            raise Conflict("the workspace root cannot be deleted", code=ErrorCode.PATH_CONFLICT)
        exists = await self._runtime.exec(container_id, ["test", "-e", target, "-o", "-L", target])
        if exists.exit_code != 0:
            raise LiveFileNotFound(f"{path!r} does not exist in the session's workspace")
        removed = await self._runtime.exec(container_id, ["rm", "-rf", "--", target])
        if removed.exit_code != 0:
            raise Conflict(
                removed.stderr.decode(errors="replace").strip()[:300], code=ErrorCode.DELETE_FAILED
            )


def _one_file_tar(spool: IO[bytes], name: str, size: int, mode: int) -> io.BufferedReader:
    """A tar of one file, on disk or in memory as the spool is, ready to be read."""
    spool.seek(0)
    out = tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY)  # noqa: SIM115 - returned, read later
    header = tarfile.TarInfo(name)
    header.size, header.mode, header.mtime = size, mode, int(time.time())
    header.uid, header.gid = CONTAINER_UID, CONTAINER_GID
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.addfile(header, spool)
    out.seek(0)
    return cast(io.BufferedReader, out)


def _parse_find(line: str) -> LiveEntry | None:
    try:
        kind, size, mode, mtime, full = line.split("\t", 4)
    except ValueError:
        return None
    return LiveEntry(
        path=posixpath.relpath(full, WORKSPACE_DIR),
        kind=_KINDS.get(kind, "other"),
        size=int(size),
        mode=int(mode, 8),
        mtime=int(float(mtime)),
    )
