"""Step 3 of a save: once the new manifest is committed, move the store to match it.

A save is (1) stage (``tarstream.stage_*``: changed bytes go to staging keys), (2) the caller
commits the new manifest, (3) ``promote``. Until (2) the previous state is intact; after (2)
the manifest is the truth and ``promote`` only brings the objects in line with it, so it can
be run again after a crash, as often as needed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from gateway.error_codes import ErrorCode
from gateway.store.objects import ObjectMissing, ObjectStore, StoreError
from gateway.workspaces.manifest import Entry, SaveResult

SHA256_METADATA = "sha256"


class StagedObjectLost(StoreError):
    """A file's staged bytes are gone and its final key does not hold them either."""

    code = ErrorCode.STAGED_OBJECT_LOST


def empty_dirs(entries: Mapping[str, Entry]) -> set[str]:
    """Directories with no entry below them: the ones that need a marker object."""
    parents = {posixpath.dirname(path) for path in entries}
    return {path for path, entry in entries.items() if entry.kind == "dir" and path not in parents}


def promote(
    store: ObjectStore,
    result: SaveResult | Mapping[str, Entry],
    previous: Mapping[str, Entry] | None,
    final_key_for: Callable[[str], str],
    *,
    sweep_prefix: str | None = None,
    workers: int = 8,
) -> dict[str, Entry]:
    """Make the store match the committed manifest; returns it with final ``object_key``s.

    ``result`` is what staging returned, or (recovering after a crash) the committed manifest
    itself, whose entries may still point at staging keys. ``final_key_for(path)`` is the file
    key of a path (``layout.file_key``); a directory's marker is that key plus ``/``.

    In order:
      1. delete objects of the previous manifest that the new one does not have (files gone,
         markers of directories no longer empty) - first, because MinIO refuses ``a/b`` while
         an object ``a`` exists (a file that became a directory);
      2. copy (server-side) every file whose ``object_key`` is not its final key into place,
         with its sha256 as user metadata; a staged key or another file's key (a hard link);
      3. write markers for directories that became empty;
      4. delete the staged objects.

    Idempotent: when a file's source is gone but its final object already carries the entry's
    sha256 (an earlier run got that far), the copy is taken as done; otherwise
    ``StagedObjectLost``. ``previous`` says what to delete; after a crash, when it is no longer
    known, pass ``None`` and ``sweep_prefix`` (``layout.workspace_prefix``): then every object
    under the prefix that the manifest does not account for is deleted. Both may be given.
    """
    if previous is None and sweep_prefix is None:
        raise ValueError("promote needs previous, sweep_prefix or both to know what to delete")
    if isinstance(result, SaveResult):
        entries, staged = result.entries, list(result.staged_keys)
    else:
        entries, staged = dict(result), []
    finals = {path: final_key_for(path) for path, entry in entries.items() if entry.kind == "file"}
    new_empty = empty_dirs(entries)
    expected = set(finals.values()) | {final_key_for(path) + "/" for path in new_empty}
    sources = {
        entry.object_key
        for path, entry in entries.items()
        if entry.kind == "file" and entry.object_key and entry.object_key != finals[path]
    }

    obsolete: set[str] = set()
    old_empty: set[str] = set()
    if previous is not None:
        old_empty = empty_dirs(previous)
        obsolete |= {final_key_for(p) for p, e in previous.items() if e.kind == "file"}
        obsolete |= {final_key_for(path) + "/" for path in old_empty}
    if sweep_prefix is not None:
        obsolete |= {info.key for info in store.list(sweep_prefix)}
    obsolete -= expected
    store.delete_many(sorted(obsolete - sources))

    moves = [
        (entries[path], key)
        for path, key in sorted(finals.items())
        if entries[path].object_key != key
    ]
    markers = sorted(
        final_key_for(path) + "/" for path in new_empty if previous is None or path not in old_empty
    )
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="promote") as pool:
        # list() re-raises the first failure; later copies are not needed for it to be safe.
        list(pool.map(lambda move: _place(store, *move), moves))
        list(pool.map(lambda key: store.put_bytes(key, b""), markers))

    store.delete_many(sorted((sources | set(staged)) - expected))
    return {path: replace(entry, object_key=finals.get(path)) for path, entry in entries.items()}


def _place(store: ObjectStore, entry: Entry, key: str) -> None:
    if entry.object_key is None:
        raise StagedObjectLost(f"{entry.path!r} has no object to copy from")
    metadata = {SHA256_METADATA: entry.sha256} if entry.sha256 else None
    try:
        store.copy(entry.object_key, key, metadata=metadata)
        return
    except ObjectMissing:
        pass
    # The source is gone: fine only if an earlier run already put these bytes in place.
    try:
        info = store.stat(key)
    except ObjectMissing:
        info = None
    if (
        info is None
        or info.size != entry.size
        or (entry.sha256 and info.metadata.get(SHA256_METADATA) != entry.sha256)
    ):
        raise StagedObjectLost(
            f"{entry.object_key} is gone and {key} does not hold the bytes of {entry.path!r}"
        )
