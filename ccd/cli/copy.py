"""``ccd cp`` and ``ccd files``: where a file is (here, a running session, a stored
workspace) and moving its bytes. ``ID:PATH`` is a session's file, ``ws:NAME/PATH`` a
workspace's, ``ws:NAME`` a whole workspace (as a tar.gz), ``-`` stdin or stdout."""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccd.aio import AsyncClient
from ccd.errors import InvalidArgument
from ccd.models import FileEntry

WORKSPACE_PREFIX = "ws:"


@dataclass(frozen=True)
class Remote:
    """A session's file (``session``) or a workspace's (``workspace``); ``path`` empty: the
    whole workspace."""

    session: str | None
    workspace: str | None
    path: str


def parse(spec: str) -> Remote | None:
    """The remote place ``spec`` names, or ``None`` for a local path."""
    if spec.startswith(WORKSPACE_PREFIX):
        name, _, path = spec.removeprefix(WORKSPACE_PREFIX).partition("/")
        if not name:
            raise InvalidArgument(f"{spec}: expected ws:NAME or ws:NAME/PATH")
        return Remote(None, name, path.lstrip("/"))
    head, colon, path = spec.partition(":")
    if colon and _is_session_id(head):
        if not path:
            raise InvalidArgument(f"{spec}: expected ID:PATH")
        return Remote(head, None, path)
    return None


def _is_session_id(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


async def list_files(client: AsyncClient, target: str, prefix: str) -> list[FileEntry]:
    remote = parse(target if ":" in target else f"{target}:.")
    if remote is None:
        raise InvalidArgument(f"{target}: expected a session id or ws:NAME")
    if remote.workspace is not None:
        return await client.workspace(remote.workspace).list_files(prefix or remote.path)
    session = await client.get_session(str(remote.session))
    return await session.list_files(prefix)


async def copy(client: AsyncClient, source: str, destination: str) -> dict[str, Any]:
    """Copy ``source`` to ``destination`` (one of them remote); answers what was done."""
    remote_source, remote_destination = parse(source), parse(destination)
    if (remote_source is None) == (remote_destination is None):
        raise InvalidArgument("one of the two must be remote (ID:PATH or ws:NAME/PATH)")
    if remote_source is not None:
        written = await _download(client, remote_source, destination)
        return {"source": source, "destination": destination, "bytes": written}
    assert remote_destination is not None
    data = await asyncio.to_thread(_local_source, source)
    size = len(data) if isinstance(data, bytes) else data.stat().st_size
    await _upload(client, remote_destination, data, source)
    return {"source": source, "destination": destination, "bytes": size}


def _local_source(source: str) -> bytes | Path:
    """stdin's bytes (``-``), or the local file, which must exist."""
    if source == "-":
        return sys.stdin.buffer.read()
    path = Path(source)
    if not path.is_file():
        raise InvalidArgument(f"{source}: no such file")
    return path


async def _download(client: AsyncClient, remote: Remote, local: str) -> int:
    name = remote.path.rsplit("/", 1)[-1] or f"{remote.workspace}.tar.gz"
    target = Path(local)
    if local != "-" and await asyncio.to_thread(target.is_dir):
        target = target / name
    if local == "-":
        data = await _read(client, remote)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return len(data)
    if remote.workspace is not None:
        workspace = client.workspace(remote.workspace)
        if not remote.path:
            return await workspace.download_archive(target)
        return await workspace.download_to(remote.path, target)
    session = await client.get_session(str(remote.session))
    return await session.download_to(remote.path, target)


async def _read(client: AsyncClient, remote: Remote) -> bytes:
    if remote.workspace is not None:
        if not remote.path:
            raise InvalidArgument("a whole workspace is a .tar.gz: give a file to write it to")
        return await client.workspace(remote.workspace).download(remote.path)
    return await (await client.get_session(str(remote.session))).download(remote.path)


async def _upload(client: AsyncClient, remote: Remote, data: bytes | Path, source: str) -> None:
    if remote.workspace is not None:
        workspace = client.workspace(remote.workspace)
        if not remote.path:
            await workspace.upload_archive(data)
        else:
            await workspace.upload(_into(remote.path, source), data)
        return
    session = await client.get_session(str(remote.session))
    await session.upload(_into(remote.path, source), data)


def _into(path: str, source: str) -> str:
    """``dir/`` means into that directory, under the source's name."""
    if path.endswith("/") and source != "-":
        return path + Path(source).name
    return path
