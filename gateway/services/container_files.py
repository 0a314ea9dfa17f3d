"""Moving stored files into a container: a tar streamed from the store into Docker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, BinaryIO, cast

from gateway.runtime import SessionRuntime
from gateway.store.objects import ObjectMissing, ObjectStore
from gateway.workspaces import tarstream
from gateway.workspaces.manifest import Entry
from gateway.workspaces.streams import pipe


def open_entry(store: ObjectStore, entry: Entry) -> contextlib.AbstractContextManager[Any]:
    """The stored bytes of a file entry, streamed (call from a worker thread)."""
    if entry.object_key is None:
        raise ObjectMissing(f"{entry.path} has no stored object")
    return store.open(entry.object_key)


async def write_entries(
    runtime: SessionRuntime,
    store: ObjectStore,
    container_id: str,
    entries: Mapping[str, Entry],
    *,
    path: str,
) -> None:
    """Extract ``entries`` (paths relative to ``path``, a persistent path of the container)
    owned by the session user: a producer thread writes the tar into a bounded pipe while the
    engine reads the other end, so memory stays small whatever the size."""
    reader, writer = pipe()

    def produce() -> None:
        with writer:
            tarstream.write_tar(entries, lambda entry: open_entry(store, entry), writer)

    producer = asyncio.create_task(asyncio.to_thread(produce))
    try:
        await runtime.put_archive(container_id, path, cast(BinaryIO, reader))
    finally:
        reader.close()
        await producer
