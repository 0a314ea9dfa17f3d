"""The live commands: ``chat`` (one turn), ``run`` (one-shot), ``attach`` (follow a session,
send what is typed). Ctrl-C interrupts the running turn; a second Ctrl-C leaves."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from ccd.aio import AsyncClient, AsyncSession
from ccd.cli.render import Output
from ccd.errors import ApiError, Conflict
from ccd.models import Event
from ccd.results import ConfigArg, WorkspaceArg

EXIT_OK = 0
EXIT_TURN_FAILED = 1  # the turn ended in an error, was interrupted, or never ended


class CtrlC:
    """The first Ctrl-C calls ``interrupt`` (when it says a turn runs); the next one (or the
    first, with no turn running) sets ``leave``."""

    def __init__(self, interrupt: Callable[[], bool]) -> None:
        self.leave = asyncio.Event()
        self._interrupt = interrupt
        self._loop = asyncio.get_running_loop()

    def __enter__(self) -> CtrlC:
        self._loop.add_signal_handler(signal.SIGINT, self._pressed)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.remove_signal_handler(signal.SIGINT)

    def _pressed(self) -> None:
        if self.leave.is_set() or not self._interrupt():
            self.leave.set()


async def until_left(ctrl_c: CtrlC, work: asyncio.Future[int] | asyncio.Task[int]) -> int:
    """``work``'s exit code, or 130 once Ctrl-C says leave (``work`` is then cancelled)."""
    leaving = asyncio.ensure_future(ctrl_c.leave.wait())
    waiting: set[asyncio.Future[Any]] = {work, leaving}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return 130


class TurnWatch:
    """Which turn of a session runs, from its events; asks for an interrupt once per turn."""

    def __init__(self, session: AsyncSession, output: Output, running: str | None) -> None:
        self.session = session
        self.output = output
        self.running = running
        self._interrupted: str | None = None

    def see(self, event: Event) -> None:
        if event.type == "turn_started" and event.source == "gateway":
            self.running = event.turn_id or event.data.get("turn_id")
        elif self.running is not None and event.ends_turn(self.running):
            self.running = None

    def interrupt(self) -> bool:
        """Ctrl-C: interrupt the running turn; ``False`` when there is none to interrupt (or
        it was interrupted already): then the caller leaves."""
        if self.running is None or self._interrupted == self.running:
            return False
        self._interrupted = self.running
        self.output.note("interrupting the turn (Ctrl-C again to leave)")
        asyncio.get_running_loop().create_task(self._send_interrupt())
        return True

    async def _send_interrupt(self) -> None:
        with contextlib.suppress(Conflict):  # it ended meanwhile
            await self.session.interrupt()


async def chat(client: AsyncClient, output: Output, session_id: str, prompt: str) -> int:
    session = await client.get_session(session_id)
    watch = TurnWatch(session, output, None)

    async def work() -> int:
        async for event in session.chat_stream(prompt):
            watch.see(event)
            output.event(event)
            if event.is_result:
                turn_id = event.turn_id
                cost = None
                with contextlib.suppress(ApiError):  # the recorder writes its own cost soon
                    done = await session.wait(timeout=10)
                    if done.turn is not None and str(done.turn.id) == turn_id:
                        cost = done.turn.cost_usd
                output.result(event, cost)
                return EXIT_TURN_FAILED if event.data.get("is_error") else EXIT_OK
        return EXIT_TURN_FAILED

    with CtrlC(watch.interrupt) as ctrl_c:
        return await until_left(ctrl_c, asyncio.ensure_future(work()))


async def run(
    client: AsyncClient,
    output: Output,
    prompt: str,
    config: ConfigArg,
    workspace: WorkspaceArg,
    timeout: float | None,
) -> int:
    """One-shot: the gateway creates the session, runs the prompt, and removes the session;
    the stream ends once it is gone. Leaving early (Ctrl-C) ends the run the same way."""
    code = EXIT_TURN_FAILED
    async for event in client.execute(prompt, config, workspace, timeout):
        output.event(event)
        if event.is_result:
            # One process ran one turn: its running total is this turn's cost.
            output.result(event, event.data.get("total_cost_usd"))
            code = EXIT_TURN_FAILED if event.data.get("is_error") else EXIT_OK
    return code


async def attach(client: AsyncClient, output: Output, session_id: str, after: str | None) -> int:
    """Follow the session live; each line read from stdin is sent as a prompt once the
    session is free (lines typed meanwhile wait their turn). At the end of stdin, leaves once
    what was sent has finished."""
    session = await client.get_session(session_id)
    current = session.info.current_turn_id
    watch = TurnWatch(session, output, str(current) if current else None)
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    _read_lines_into(lines)
    if not output.json_mode:
        output.note(
            f"attached to {session.id} ({session.status}): type a prompt and Enter; Ctrl-C "
            "interrupts a running turn, twice leaves"
        )

    async def work() -> int:
        pending: list[str] = []
        ended = False
        connected = asyncio.Event()
        events = session.stream(after=after or "$", connected=connected)
        next_event = asyncio.ensure_future(anext(events))
        next_line: asyncio.Future[str | None] = asyncio.ensure_future(lines.get())
        # Prompts are sent once the stream is open, so their turns' events all reach it.
        opened = asyncio.ensure_future(connected.wait())
        await asyncio.wait({next_event, opened}, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        try:
            while True:
                if not ended or pending:
                    both: set[asyncio.Future[Any]] = {next_event, next_line}
                    await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.wait({next_event}, timeout=0.2)
                if next_line.done():
                    line = next_line.result()
                    if line is None:
                        ended = True
                        next_line = asyncio.get_running_loop().create_future()
                    else:
                        if line.strip():
                            pending.append(line.strip())
                        next_line = asyncio.ensure_future(lines.get())
                if next_event.done():
                    event = next_event.result()
                    watch.see(event)
                    output.event(event)
                    if event.is_result:
                        output.result(event, None)
                    next_event = asyncio.ensure_future(anext(events))
                if pending and watch.running is None:
                    watch.running = await _send(session, output, pending.pop(0))
                if ended and not pending and watch.running is None:
                    return EXIT_OK
        finally:
            next_line.cancel()
            next_event.cancel()  # then the stream can be closed (it is not running any more)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await next_event
            await events.aclose()

    with CtrlC(watch.interrupt) as ctrl_c:
        code = await until_left(ctrl_c, asyncio.ensure_future(work()))
    return EXIT_OK if code == 130 else code  # leaving with Ctrl-C is how attach ends


# Times a prompt that finds the session busy waits for it (up to _BUSY_WAIT seconds each) and is
# sent again before attach gives up on it: busy once is the previous turn being recorded; more
# is someone else's turns.
_BUSY_RETRIES = 3
_BUSY_WAIT = 300.0


async def _send(session: AsyncSession, output: Output, prompt: str) -> str | None:
    """Send one prompt of attach's; its turn's id, or ``None`` when it was refused. The CLI's
    ``result`` reaches the stream a moment before the gateway has recorded the turn and made
    the session ``ready``: a prompt sent on that result can find the session still busy, and
    then waits until it runs no turn (``wait``) and goes."""
    for attempt in range(_BUSY_RETRIES + 1):
        try:
            turn = await session.send(prompt)
        except Conflict as exc:
            if exc.code == "session_busy" and attempt < _BUSY_RETRIES:
                await session.wait(timeout=_BUSY_WAIT)
                continue
            refused: ApiError = exc
        except ApiError as exc:
            refused = exc
        else:
            return str(turn.id)
        output.err.print(f"[red]not sent: {refused.code}: {refused.message}[/]")
        return None
    return None


def _read_lines_into(queue: asyncio.Queue[str | None]) -> None:
    """stdin's lines into ``queue``, ``None`` at its end (a daemon thread: input() blocks)."""
    loop = asyncio.get_running_loop()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="ccd-stdin", daemon=True).start()
