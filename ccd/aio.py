"""The asynchronous SDK: ``AsyncClient`` and the sessions it hands out. ``ccd.Client`` runs
exactly this on a loop of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from ccd.errors import ConnectionFailed, SessionEnded
from ccd.models import (
    ChatAccepted,
    ChatRequest,
    ChatResponse,
    CreateSessionRequest,
    Event,
    ExecuteRequest,
    FileEntry,
    FileList,
    InterruptResponse,
    OwnerUsage,
    SaveOut,
    SessionList,
    SessionOut,
    SessionStatus,
    SessionTree,
    SessionUsage,
    SpawnRequest,
    TurnList,
    TurnOut,
    WaitResponse,
    WorkspaceList,
    WorkspaceOut,
)
from ccd.results import ConfigArg, TurnResult, WorkspaceArg, checked, session_body
from ccd.stream import Backoff, follow
from ccd.transport import Transport, path_of, resolve
from ccd.workspaces import AsyncWorkspace, Uploadable, save_download, upload_content

__all__ = ["AsyncClient", "AsyncSession"]

_UP = (SessionStatus.READY, SessionStatus.BUSY)
_ENDED = (SessionStatus.STOPPING, SessionStatus.STOPPED, SessionStatus.FAILED)
_LONG_WAIT = 3600.0  # the longest any chat or wait may take (the gateway's bound)
_SLACK = 30.0  # beyond a wait's own timeout, for the answer to arrive


class AsyncClient:
    """A client of one gateway. ``base_url`` and ``token`` default to ``CCD_URL`` and
    ``CCD_TOKEN``; ``timeout`` bounds each ordinary request; ``reconnect`` says how streams
    reconnect after a dropped connection. Use as ``async with`` or call ``aclose()``."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        reconnect: Backoff | None = None,
    ) -> None:
        url, resolved_token = resolve(base_url, token)
        self.transport = Transport(url, resolved_token, timeout)
        self.reconnect = reconnect or Backoff()

    @property
    def base_url(self) -> str:
        return self.transport.base_url

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _session(self, info: SessionOut) -> AsyncSession:
        return AsyncSession(self, info)

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(
        self,
        prompt: str | None = None,
        config: ConfigArg = None,
        workspace: WorkspaceArg = None,
        idempotency_key: str | None = None,
    ) -> AsyncSession:
        """Start a session in its own container (status ``starting``; ``prompt``, if given,
        runs as its first turn). ``workspace``: a persistent workspace's name, or a model or
        dict. With ``idempotency_key`` a retry answers the same session."""
        body = checked(CreateSessionRequest, session_body(prompt, config, workspace))
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        info = await self.transport.send_model(
            SessionOut, "POST", "/sessions", json=body, headers=headers
        )
        return self._session(info)

    async def get_session(self, session_id: str) -> AsyncSession:
        return self._session(
            await self.transport.get_model(SessionOut, path_of("/sessions", str(session_id)))
        )

    async def list_sessions(
        self, status: str | None = None, limit: int | None = None
    ) -> list[AsyncSession]:
        """The caller's sessions, newest first (all of them, or the first ``limit``)."""
        found: list[AsyncSession] = []
        cursor: str | None = None
        while limit is None or len(found) < limit:
            page_size = 200 if limit is None else min(200, limit - len(found))
            params: dict[str, Any] = {"limit": page_size}
            if status:
                params["status"] = status
            if cursor:
                params["cursor"] = cursor
            page = await self.transport.get_model(SessionList, "/sessions", params=params)
            found.extend(self._session(info) for info in page.sessions)
            cursor = page.next_cursor
            if cursor is None:
                break
        return found

    async def execute(
        self,
        prompt: str,
        config: ConfigArg = None,
        workspace: WorkspaceArg = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Event]:
        """A one-shot run: the gateway starts a session, runs ``prompt``, and yields its events,
        the CLI's ``result`` last; the stream ends once the session is stopped and deleted
        (a persistent workspace saved first). An error ends it with its ``ApiError``."""
        body = checked(ExecuteRequest, session_body(prompt, config, workspace, timeout=timeout))
        async for event in self.transport.events(
            "/execute", body, (timeout or _LONG_WAIT) + _SLACK
        ):
            yield event

    # -- workspaces -------------------------------------------------------------------------

    async def list_workspaces(self) -> list[WorkspaceOut]:
        return (await self.transport.get_model(WorkspaceList, "/workspaces")).workspaces

    def workspace(self, name: str) -> AsyncWorkspace:
        """A handle on the workspace ``name`` (uploads create it; nothing is asked yet)."""
        return AsyncWorkspace(self.transport, name)

    async def usage(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> OwnerUsage:
        """The caller's model usage over ``[since, until)`` (all time by default)."""
        params = {
            name: value.isoformat()
            for name, value in (("since", since), ("until", until))
            if value is not None
        }
        return await self.transport.get_model(OwnerUsage, "/usage", params=params)


class AsyncSession:
    """One session. ``info`` (and ``status``) are as last read: ``refresh()`` reads again;
    the methods that answer a session update it."""

    def __init__(self, client: AsyncClient, info: SessionOut) -> None:
        self.client = client
        self.info = info

    def __repr__(self) -> str:
        return f"<AsyncSession {self.id} {self.status}>"

    @property
    def id(self) -> str:
        return str(self.info.id)

    @property
    def status(self) -> SessionStatus:
        return self.info.status

    def _path(self, *more: str) -> str:
        return path_of("/sessions", self.id, *more)

    @property
    def _transport(self) -> Transport:
        return self.client.transport

    async def refresh(self) -> AsyncSession:
        self.info = await self._transport.get_model(SessionOut, self._path())
        return self

    async def wait_until_ready(self, timeout: float = 120.0) -> AsyncSession:
        """Until its CLI is up (``ready``, or ``busy`` with a first prompt). Raises
        ``SessionEnded`` if it stops or fails instead, ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            await self.refresh()
            if self.status in _UP:
                return self
            if self.status in _ENDED:
                raise SessionEnded(self.id, self.status, self.info.failure_reason)
            if time.monotonic() > deadline:
                raise TimeoutError(f"session {self.id} is still {self.status} after {timeout} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    # -- turns ------------------------------------------------------------------------------

    async def chat(self, prompt: str, timeout: float | None = None) -> TurnResult:
        """Run one turn and answer how it ended (an interrupted turn too: ``is_error``)."""
        body = checked(ChatRequest, {"prompt": prompt, "timeout": timeout})
        response = await self._transport.send_model(
            ChatResponse,
            "POST",
            self._path("chat"),
            json={k: v for k, v in body.items() if v is not None},
            read_timeout=(timeout or _LONG_WAIT) + _SLACK,
        )
        return TurnResult.of_chat(response)

    async def send(self, prompt: str) -> TurnOut:
        """Start a turn and answer at once with it (follow it with ``stream``)."""
        body = checked(ChatRequest, {"prompt": prompt, "wait": False})
        accepted = await self._transport.send_model(
            ChatAccepted, "POST", self._path("chat"), json=body
        )
        return accepted.turn

    async def chat_stream(self, prompt: str, timeout: float | None = None) -> AsyncIterator[Event]:
        """Run one turn and yield its events as they happen, from ``turn_started`` to the CLI's
        ``result``. If the connection drops mid-turn, the rest comes from the session's stream
        (resumed after the last event delivered), so nothing is lost or repeated."""
        body = checked(ChatRequest, {"prompt": prompt, "stream": True, "timeout": timeout})
        body = {k: v for k, v in body.items() if v is not None}
        turn_id: str | None = None
        last: str | None = None
        try:
            async for event in self._transport.events(
                self._path("chat"), body, (timeout or _LONG_WAIT) + _SLACK
            ):
                turn_id = turn_id or event.turn_id
                last = event.id or last
                yield event
            return
        except ConnectionFailed:
            if turn_id is None or last is None:
                raise  # the turn cannot be told apart from others: the caller decides
        async for event in self.stream(after=last):
            ends = event.ends_turn(turn_id)
            if event.is_notice or event.turn_id == turn_id or ends:
                yield event
            if ends:
                return

    async def stream(
        self, after: str | None = None, *, connected: asyncio.Event | None = None
    ) -> AsyncGenerator[Event, None]:
        """Every event of the session after cursor ``after`` (default: from the first event
        kept; ``"$"``: only new ones), live, until it is deleted; across dropped connections
        (see ``ccd.stream``). ``connected`` is set once events reach the stream. Break out of
        the loop to stop following."""
        reconnect = self.client.reconnect
        async for event in follow(self._transport, self.id, after, reconnect, connected):
            yield event

    async def interrupt(self) -> str:
        """Abort the running turn; answers its id (``Conflict`` when none runs)."""
        answer = await self._transport.send_model(
            InterruptResponse, "POST", self._path("interrupt")
        )
        return str(answer.turn_id)

    async def wait(self, timeout: float = 300.0) -> WaitResponse:
        """Until the session runs no turn (or has ended): its last finished turn and result."""
        answer = await self._transport.send_model(
            WaitResponse,
            "POST",
            self._path("wait"),
            json={"timeout": timeout},
            read_timeout=timeout + _SLACK,
        )
        self.info = answer.session
        return answer

    async def turns(self) -> list[TurnOut]:
        return (await self._transport.get_model(TurnList, self._path("turns"))).turns

    # -- lifecycle --------------------------------------------------------------------------

    async def stop(self) -> AsyncSession:
        """Stop it and its subtree (files saved, containers removed)."""
        self.info = await self._transport.send_model(SessionOut, "POST", self._path("stop"))
        return self

    async def resume(self) -> AsyncSession:
        """Start a stopped or failed session again, conversation and files restored."""
        self.info = await self._transport.send_model(SessionOut, "POST", self._path("resume"))
        return self

    async def delete(self) -> None:
        """Stop it if needed and remove it and its subtree for good."""
        await self._transport.request("DELETE", self._path())

    # -- spawn trees ------------------------------------------------------------------------

    async def spawn(
        self,
        prompt: str,
        config: ConfigArg = None,
        workspace: WorkspaceArg = None,
        idempotency_key: str | None = None,
    ) -> AsyncSession:
        """Start a child running ``prompt`` (the parent's config, overridden by ``config``)."""
        body = checked(SpawnRequest, session_body(prompt, config, workspace))
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        info = await self._transport.send_model(
            SessionOut, "POST", self._path("spawn"), json=body, headers=headers
        )
        return self.client._session(info)

    async def children(self) -> list[AsyncSession]:
        page = await self._transport.get_model(SessionList, self._path("children"))
        return [self.client._session(info) for info in page.sessions]

    async def tree(self) -> SessionTree:
        return await self._transport.get_model(SessionTree, self._path("tree"))

    async def usage(self) -> SessionUsage:
        return await self._transport.get_model(SessionUsage, self._path("usage"))

    # -- files of the running container -----------------------------------------------------

    async def list_files(self, prefix: str = "", limit: int = 10_000) -> list[FileEntry]:
        listing = await self._transport.get_model(
            FileList, self._path("files"), params={"prefix": prefix, "limit": limit}
        )
        return listing.files

    async def download(self, path: str) -> bytes:
        return (await self._transport.request("GET", self._path("files", path))).content

    async def download_to(self, path: str, destination: str | Path) -> int:
        """Stream the file into ``destination``; answers the bytes written."""
        return await save_download(self._transport, self._path("files", path), Path(destination))

    async def upload(self, path: str, data: Uploadable, mode: str = "0644") -> FileEntry:
        """Write ``data`` (bytes, or a local file's path) into the running container."""
        return await self._transport.send_model(
            FileEntry,
            "PUT",
            self._path("files", path),
            content=upload_content(data),
            params={"mode": mode},
        )

    async def snapshot(self) -> SaveOut:
        """Save its workspace now."""
        return await self._transport.send_model(
            SaveOut, "POST", self._path("workspace", "snapshot")
        )
