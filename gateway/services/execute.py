"""One-shot execution: a session made for one prompt, its events, then gone.

``start`` creates the session and queues the prompt (errors then are ordinary answers: a
limit, a missing image); ``events`` follows the session's stream from its first event until
the turn ends, recording the end as a chat does; ``ensure_cleanup`` stops the session (which
saves a persistent workspace) and deletes it. The cleanup runs in a task of this service's own,
not in the request: it happens whether the client stays to the end, leaves mid-run, or never
reads a byte of the answer, and it is started exactly once per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from gateway.error_codes import ErrorCode
from gateway.errors import (
    GatewayError,
    SessionNotFound,
    SessionNotRunning,
    TurnFailed,
    TurnTimeout,
    Unavailable,
)
from gateway.events.bus import Event
from gateway.events.hub import EventHub
from gateway.services.background import TaskSet
from gateway.services.sessions import SessionService
from gateway.services.termination import Terminator
from gateway.services.turns import TurnService, ends_turn
from gateway.services.workspaces import WorkspaceChoice
from wrapper.protocol import GatewayEvent, Source
from wrapper.session_config import SessionConfig

log = logging.getLogger(__name__)

STOP_REASON = "one-shot run finished"


@dataclass
class Run:
    """One execution: its session and turn, and (once started) its cleanup."""

    session_id: uuid.UUID
    turn_id: uuid.UUID
    timeout: float
    cleanup: asyncio.Task[bool] | None = field(default=None, repr=False)


class ExecuteService:
    def __init__(
        self,
        sessions: SessionService,
        turns: TurnService,
        terminator: Terminator,
        hub: EventHub,
    ) -> None:
        self._sessions = sessions
        self._turns = turns
        self._terminator = terminator
        self._hub = hub
        self._background = TaskSet()

    async def close(self) -> None:
        """At shutdown: cleanups still running are cancelled (their sessions then end by
        their idle timeout, as any session a gateway left)."""
        await self._background.close()

    async def start(
        self,
        owner: str,
        prompt: str,
        config: SessionConfig,
        workspace: WorkspaceChoice,
        timeout: float,
    ) -> Run:
        """Create the session and accept its prompt. Raises what create raises; a session it
        made anyway (recorded as failed) is deleted, so a refused run leaves nothing."""
        try:
            created = await self._sessions.create(owner, config, None, workspace)
        except GatewayError as exc:
            failed = exc.details.get("session_id")
            if failed is not None:
                self._delete_later(uuid.UUID(str(failed)))
            raise
        session_id = created.session.id
        try:
            turn, _ = await self._turns.begin(session_id, prompt)
        except BaseException:
            self._delete_later(session_id)
            raise
        return Run(session_id=session_id, turn_id=turn.id, timeout=timeout)

    def _delete_later(self, session_id: uuid.UUID) -> None:
        self._background.spawn(
            self._terminator.delete(session_id), name=f"execute-delete-{session_id}"
        )

    async def events(self, run: Run) -> AsyncGenerator[Event, None]:
        """Every event of the run's session from its first, the CLI's ``result`` last; then
        waits for the cleanup. Raises ``TurnTimeout`` (the run took longer than its timeout),
        ``TurnFailed``, ``SessionNotRunning`` (it ended without a result) or ``Unavailable``
        ``workspace_unsaved`` (the files could not be saved: the stopped session is kept, and
        the reconciler saves them once the store is back), each after the cleanup."""
        failure: Exception | None = None
        try:
            async for event in self._follow(run):
                yield event
        except (TurnTimeout, TurnFailed, SessionNotRunning) as exc:
            failure = exc
        finally:
            cleanup = self.ensure_cleanup(run)
        # A client that leaves now cancels only this wait: the cleanup goes on.
        kept = await asyncio.shield(cleanup)
        if failure is not None:
            raise failure
        if kept:
            raise Unavailable(
                f"the workspace of session {run.session_id} could not be saved; the stopped "
                "session is kept until its files are saved",
                code=ErrorCode.WORKSPACE_UNSAVED,
                session_id=str(run.session_id),
            )

    async def _follow(self, run: Run) -> AsyncGenerator[Event, None]:
        sid, tid = str(run.session_id), str(run.turn_id)
        try:
            async with asyncio.timeout(run.timeout):
                async with contextlib.aclosing(self._hub.follow(sid, "0")) as stream:
                    async for event in stream:
                        yield event
                        if ends_turn(event, tid):
                            await self._record_end(run, event)
                            return
        except TimeoutError:
            raise TurnTimeout(
                f"the run did not finish within {run.timeout:g} s; it was interrupted and its "
                "session removed",
                turn_id=tid,
            ) from None

    async def _record_end(self, run: Run, event: Event) -> None:
        """Record how the turn ended, as a chat does: the stop that follows then finds no
        running turn to interrupt and wait for."""
        tid = str(run.turn_id)
        if event.source == Source.CLAUDE and event.type == "result":
            await self._turns.finish(
                run.session_id, run.turn_id, event.payload, event.id, event.turn_cost
            )
            return
        if event.type == GatewayEvent.TURN_FAILED:
            reason = str(event.payload.get("reason", "the turn failed"))
            interrupted = bool(event.payload.get("interrupted"))
            await self._turns.fail(run.session_id, run.turn_id, reason, event.id, interrupted)
            raise TurnFailed(f"turn {tid} failed: {reason}", turn_id=tid)
        reason = str(event.payload.get("reason") or event.payload.get("status"))
        raise SessionNotRunning(
            f"session {run.session_id} ended before the run finished: {reason}", turn_id=tid
        )

    def ensure_cleanup(self, run: Run) -> asyncio.Task[bool]:
        """The run's cleanup, started on the first call (idempotent, synchronous: safe from
        a cancelled request). Its result: whether the session was kept (unsaved files)."""
        if run.cleanup is None:
            run.cleanup = self._background.spawn(
                self._clean_up(run.session_id), name=f"execute-cleanup-{run.session_id}"
            )
        return run.cleanup

    async def _clean_up(self, session_id: uuid.UUID) -> bool:
        # Stop first, then delete: the stop saves the workspace (a persistent one outlives
        # the session), and delete would give up a container kept for a failed save.
        try:
            stopped = await self._terminator.stop(session_id, STOP_REASON)
        except SessionNotFound:  # deleted meanwhile by its owner: nothing left to do
            return False
        if stopped.workspace_dirty:
            log.warning(
                "one-shot session %s kept: its workspace %s is not saved yet",
                session_id,
                stopped.workspace_name,
            )
            return True
        with contextlib.suppress(SessionNotFound):
            await self._terminator.delete(session_id)
        return False
