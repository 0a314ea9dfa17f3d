"""Stored workspaces: their files one by one and as a tar.gz archive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ccd.models import FileEntry, FileList, WorkspaceOut
from ccd.transport import Transport, path_of

Uploadable = bytes | str | Path  # bytes, or the path of a local file
_CHUNK = 1 << 20


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A local file's bytes, read off the event loop."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            yield chunk
    finally:
        handle.close()


def upload_content(data: Uploadable) -> Any:
    """A request body: bytes as they are, a file streamed."""
    return data if isinstance(data, bytes) else _file_chunks(Path(data))


async def save_download(transport: Transport, path: str, destination: Path) -> int:
    """Stream a download into a local file (written off the event loop); answers its size."""
    written = 0
    async with transport.download(path) as chunks:
        out = await asyncio.to_thread(destination.open, "wb")
        try:
            async for chunk in chunks:
                written += await asyncio.to_thread(out.write, chunk)
        finally:
            out.close()
    return written


class AsyncWorkspace:
    """A workspace of the caller's, by name (uploads create it on first use)."""

    def __init__(self, transport: Transport, name: str) -> None:
        self._transport = transport
        self.name = name

    def __repr__(self) -> str:
        return f"<AsyncWorkspace {self.name}>"

    def _path(self, *more: str) -> str:
        return path_of("/workspaces", self.name, *more)

    async def info(self) -> WorkspaceOut:
        return await self._transport.get_model(WorkspaceOut, self._path())

    async def list_files(self, prefix: str = "") -> list[FileEntry]:
        """Every entry at or below ``prefix``, in path order (all pages)."""
        entries: list[FileEntry] = []
        after: str | None = None
        while True:
            params = {"prefix": prefix, "limit": 10_000}
            if after is not None:
                params["after"] = after
            page = await self._transport.get_model(FileList, self._path("files"), params=params)
            entries.extend(page.files)
            after = page.next_after
            if after is None:
                return entries

    async def download(self, path: str) -> bytes:
        return (await self._transport.request("GET", self._path("files", path))).content

    async def download_to(self, path: str, destination: str | Path) -> int:
        """Stream the stored file into ``destination``; answers the bytes written."""
        return await save_download(self._transport, self._path("files", path), Path(destination))

    async def upload(self, path: str, data: Uploadable, mode: str = "0644") -> FileEntry:
        """Store ``data`` (bytes, or a local file's path) as the file ``path``."""
        return await self._transport.send_model(
            FileEntry,
            "PUT",
            self._path("files", path),
            content=upload_content(data),
            params={"mode": mode},
        )

    async def delete_file(self, path: str) -> None:
        await self._transport.request("DELETE", self._path("files", path))

    async def download_archive(self, destination: str | Path) -> int:
        """The whole workspace as a tar.gz, streamed into ``destination``."""
        return await save_download(self._transport, self._path("archive"), Path(destination))

    async def upload_archive(self, source: Uploadable) -> WorkspaceOut:
        """Replace the workspace's contents with a tar.gz (bytes or a local file's path)."""
        return await self._transport.send_model(
            WorkspaceOut,
            "POST",
            self._path("archive"),
            content=upload_content(source),
            headers={"Content-Type": "application/gzip"},
        )

    async def delete(self) -> None:
        await self._transport.request("DELETE", self._path())
