"""Portable conversations: the CLI's transcript of each session, kept in the store.

The CLI can ``--resume`` a conversation only from its transcript file, which lives in the
container's home. It is copied out after every turn (and at stop) to
``<owner>/.ccd-sessions/<session>/<claude session>.jsonl``, beside the workspaces, and copied
back into a new container when the session is resumed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import PurePosixPath

from gateway.db.models import SessionRow
from gateway.runtime import PathMissing, SessionRuntime
from gateway.services.container_files import write_entries
from gateway.store import layout
from gateway.store.objects import ObjectMissing, ObjectStore
from gateway.workspaces import tarstream
from gateway.workspaces.manifest import Entry
from wrapper.aio import cancel_and_wait
from wrapper.cli import transcript_path
from wrapper.protocol import CLAUDE_STATE_DIR, WORKSPACE_DIR

log = logging.getLogger(__name__)

_CLAUDE_DIR = PurePosixPath(CLAUDE_STATE_DIR)


class TranscriptKeeper:
    def __init__(self, runtime: SessionRuntime, store: ObjectStore) -> None:
        self._runtime = runtime
        self._store = store
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._again: set[uuid.UUID] = set()

    async def close(self) -> None:
        await cancel_and_wait(list(self._running.values()))

    @staticmethod
    def _in_container(session: SessionRow) -> PurePosixPath:
        return transcript_path(
            _CLAUDE_DIR, PurePosixPath(WORKSPACE_DIR), str(session.claude_session_id)
        )

    @staticmethod
    def _key(session: SessionRow) -> str:
        return layout.transcript_key(session.owner, str(session.id), str(session.claude_session_id))

    def schedule_save(self, session: SessionRow) -> None:
        """Save in the background after a turn; saves of one session never overlap, and a
        request during a save runs once more after it."""
        running = self._running.get(session.id)
        if running is not None and not running.done():
            self._again.add(session.id)
            return

        async def loop() -> None:
            while True:
                self._again.discard(session.id)
                try:
                    await self.save(session)
                except Exception as exc:  # the next turn's save tries again
                    log.warning("could not save the transcript of %s: %s", session.id, exc)
                if session.id not in self._again:
                    return

        task = asyncio.create_task(loop(), name=f"transcript-{session.id}")
        self._running[session.id] = task
        task.add_done_callback(lambda _: self._running.pop(session.id, None))

    async def save(self, session: SessionRow) -> bool:
        """Copy the transcript out of the (running or stopped) container. ``False`` when the
        container has none yet."""
        if not session.container_id:
            return False
        try:
            archive = await self._runtime.get_archive(
                session.container_id, str(self._in_container(session))
            )
        except PathMissing:
            return False
        key = self._key(session)

        def copy() -> None:
            with tarstream.extract_single(archive.chunks) as (member, data):
                self._store.put_stream(key, data, member.size)

        with archive:
            await asyncio.to_thread(copy)
        return True

    async def restore(self, session: SessionRow, container_id: str) -> None:
        """Put the stored transcript (if any) where the CLI will look for it."""
        key = self._key(session)
        try:
            info = await asyncio.to_thread(self._store.stat, key)
        except ObjectMissing:
            return
        path = self._in_container(session).relative_to(CLAUDE_STATE_DIR)
        entries = {
            str(parent): Entry(str(parent), "dir", mode=0o700)
            for parent in path.parents
            if str(parent) != "."
        }
        entries[str(path)] = Entry(str(path), "file", size=info.size, mode=0o600, object_key=key)
        await write_entries(
            self._runtime, self._store, container_id, entries, path=CLAUDE_STATE_DIR
        )
