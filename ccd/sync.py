"""The synchronous SDK: the asynchronous one (``ccd.aio``), run on a loop of its own.

Every method runs the ``AsyncClient``'s coroutine of the same name and waits for it; every
stream iterates the same async iterator. No behaviour lives here.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType

from ccd._runner import LoopThread
from ccd.aio import AsyncClient, AsyncSession
from ccd.models import (
    Event,
    FileEntry,
    OwnerUsage,
    SaveOut,
    SessionOut,
    SessionStatus,
    SessionTree,
    SessionUsage,
    TurnOut,
    WaitResponse,
    WorkspaceOut,
)
from ccd.results import ConfigArg, TurnResult, WorkspaceArg
from ccd.stream import Backoff
from ccd.workspaces import AsyncWorkspace, Uploadable

__all__ = ["Client", "Session", "Workspace"]


class Client:
    """A client of one gateway, for synchronous code (see ``AsyncClient``). Use as ``with``
    or call ``close()``."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        reconnect: Backoff | None = None,
    ) -> None:
        self._runner = LoopThread()
        self._async = AsyncClient(base_url, token, timeout=timeout, reconnect=reconnect)

    @property
    def base_url(self) -> str:
        return self._async.base_url

    def close(self) -> None:
        self._runner.run(self._async.aclose())
        self._runner.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _session(self, session: AsyncSession) -> Session:
        return Session(self._runner, session)

    def create_session(
        self,
        prompt: str | None = None,
        config: ConfigArg = None,
        workspace: WorkspaceArg = None,
        idempotency_key: str | None = None,
    ) -> Session:
        run = self._runner.run
        return self._session(
            run(self._async.create_session(prompt, config, workspace, idempotency_key))
        )

    def get_session(self, session_id: str) -> Session:
        return self._session(self._runner.run(self._async.get_session(session_id)))

    def list_sessions(self, status: str | None = None, limit: int | None = None) -> list[Session]:
        found = self._runner.run(self._async.list_sessions(status, limit))
        return [self._session(session) for session in found]

    def execute(
        self,
        prompt: str,
        config: ConfigArg = None,
        workspace: WorkspaceArg = None,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        return self._runner.iterate(self._async.execute(prompt, config, workspace, timeout))

    def list_workspaces(self) -> list[WorkspaceOut]:
        return self._runner.run(self._async.list_workspaces())

    def workspace(self, name: str) -> Workspace:
        return Workspace(self._runner, self._async.workspace(name))

    def usage(self, since: datetime | None = None, until: datetime | None = None) -> OwnerUsage:
        return self._runner.run(self._async.usage(since, until))


class Session:
    """One session (see ``AsyncSession``)."""

    def __init__(self, runner: LoopThread, session: AsyncSession) -> None:
        self._runner = runner
        self.aio = session  # the asynchronous session this one runs

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.status}>"

    @property
    def id(self) -> str:
        return self.aio.id

    @property
    def status(self) -> SessionStatus:
        return self.aio.status

    @property
    def info(self) -> SessionOut:
        return self.aio.info

    def _wrap(self, session: AsyncSession) -> Session:
        return Session(self._runner, session)

    def refresh(self) -> Session:
        self._runner.run(self.aio.refresh())
        return self

    def wait_until_ready(self, timeout: float = 120.0) -> Session:
        self._runner.run(self.aio.wait_until_ready(timeout))
        return self

    def chat(self, prompt: str, timeout: float | None = None) -> TurnResult:
        return self._runner.run(self.aio.chat(prompt, timeout))

    def send(self, prompt: str) -> TurnOut:
        return self._runner.run(self.aio.send(prompt))

    def chat_stream(self, prompt: str, timeout: float | None = None) -> Iterator[Event]:
        return self._runner.iterate(self.aio.chat_stream(prompt, timeout))

    def stream(self, after: str | None = None) -> Iterator[Event]:
        return self._runner.iterate(self.aio.stream(after))

    def interrupt(self) -> str:
        return self._runner.run(self.aio.interrupt())

    def wait(self, timeout: float = 300.0) -> WaitResponse:
        return self._runner.run(self.aio.wait(timeout))

    def turns(self) -> list[TurnOut]:
        return self._runner.run(self.aio.turns())

    def stop(self) -> Session:
        self._runner.run(self.aio.stop())
        return self

    def resume(self) -> Session:
        self._runner.run(self.aio.resume())
        return self

    def delete(self) -> None:
        self._runner.run(self.aio.delete())

    def spawn(
        self,
        prompt: str,
        config: ConfigArg = None,
        workspace: WorkspaceArg = None,
        idempotency_key: str | None = None,
    ) -> Session:
        return self._wrap(
            self._runner.run(self.aio.spawn(prompt, config, workspace, idempotency_key))
        )

    def children(self) -> list[Session]:
        return [self._wrap(child) for child in self._runner.run(self.aio.children())]

    def tree(self) -> SessionTree:
        return self._runner.run(self.aio.tree())

    def usage(self) -> SessionUsage:
        return self._runner.run(self.aio.usage())

    def list_files(self, prefix: str = "", limit: int = 10_000) -> list[FileEntry]:
        return self._runner.run(self.aio.list_files(prefix, limit))

    def download(self, path: str) -> bytes:
        return self._runner.run(self.aio.download(path))

    def download_to(self, path: str, destination: str | Path) -> int:
        return self._runner.run(self.aio.download_to(path, destination))

    def upload(self, path: str, data: Uploadable, mode: str = "0644") -> FileEntry:
        return self._runner.run(self.aio.upload(path, data, mode))

    def snapshot(self) -> SaveOut:
        return self._runner.run(self.aio.snapshot())


class Workspace:
    """A stored workspace (see ``AsyncWorkspace``)."""

    def __init__(self, runner: LoopThread, workspace: AsyncWorkspace) -> None:
        self._runner = runner
        self.aio = workspace

    def __repr__(self) -> str:
        return f"<Workspace {self.name}>"

    @property
    def name(self) -> str:
        return self.aio.name

    def info(self) -> WorkspaceOut:
        return self._runner.run(self.aio.info())

    def list_files(self, prefix: str = "") -> list[FileEntry]:
        return self._runner.run(self.aio.list_files(prefix))

    def download(self, path: str) -> bytes:
        return self._runner.run(self.aio.download(path))

    def download_to(self, path: str, destination: str | Path) -> int:
        return self._runner.run(self.aio.download_to(path, destination))

    def upload(self, path: str, data: Uploadable, mode: str = "0644") -> FileEntry:
        return self._runner.run(self.aio.upload(path, data, mode))

    def delete_file(self, path: str) -> None:
        self._runner.run(self.aio.delete_file(path))

    def download_archive(self, destination: str | Path) -> int:
        return self._runner.run(self.aio.download_archive(destination))

    def upload_archive(self, source: Uploadable) -> WorkspaceOut:
        return self._runner.run(self.aio.upload_archive(source))

    def delete(self) -> None:
        self._runner.run(self.aio.delete())
