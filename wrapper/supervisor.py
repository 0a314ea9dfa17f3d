"""Keeps one Claude Code CLI running for the session and relays everything it says.

Inputs (prompts, interrupts) arrive from the session's Redis input stream and go to the CLI's
stdin; every stdout line is published to the output stream as it arrives, tagged with the turn
it belongs to. A CLI that dies is restarted with ``--resume`` so the conversation survives;
too many crashes in a window make the wrapper give up, which ends the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any, Protocol

from wrapper import protocol
from wrapper.aio import cancel_and_wait, wait_any
from wrapper.channel import EventChannel
from wrapper.claude_process import (
    ClaudeProcess,
    ControlError,
    RefuseControl,
    has_transcript,
    spawn_cli,
)
from wrapper.config import WrapperSettings
from wrapper.inflight import InFlightTurns, WrittenTurn
from wrapper.protocol import GatewayEvent, PromptInput, Source

log = logging.getLogger(__name__)

_STDERR_LINE_LIMIT = 4000
_INVALID_LINE_LIMIT = 10_000


class ControlHandler(Protocol):
    """Answers a ``control_request`` the CLI sends us (for example an MCP message): returns
    the ``response`` object, or raises ``RefuseControl`` to answer with an error."""

    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]: ...


class Supervisor:
    def __init__(
        self,
        settings: WrapperSettings,
        channel: EventChannel,
        control_handlers: dict[str, ControlHandler] | None = None,
    ) -> None:
        self._settings = settings
        self._contract = settings.contract
        self._channel = channel
        self._control_handlers = control_handlers or {}
        self._proc: ClaudeProcess | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._turns = InFlightTurns()  # turns written to the CLI, oldest first
        self._queue: deque[tuple[str, PromptInput]] = deque()  # prompts waiting for the CLI
        self._queued = asyncio.Event()
        self._crash_times: deque[float] = deque()
        self._process_cost = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        # Control requests from the CLI being answered, by request id, so that its
        # control_cancel_request can withdraw one.
        self._answering: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, first: ClaudeProcess | None = None) -> int:
        """Run until stopped (returns 0) or until the CLI keeps crashing (returns 1). ``first``
        is a CLI already started with ``spawn_cli`` (the wrapper starts it before loading the
        rest of itself, so the CLI's boot overlaps with that)."""
        inputs = asyncio.create_task(self._consume_inputs(), name="inputs")
        feeder = asyncio.create_task(self._feed_prompts(), name="feeder")
        tasks = [inputs, feeder]
        if self._contract.idle_freeze > 0:
            tasks.append(asyncio.create_task(self._freeze_when_idle(), name="idle-freeze"))
        try:
            return await self._supervise(first)
        finally:
            await cancel_and_wait([*tasks, *self._background])

    def stop(self) -> None:
        """Begin a graceful stop (SIGTERM): end the CLI, publish what is left, return 0."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        proc = self._proc
        if proc is not None:
            self._spawn(proc.terminate(self._settings.terminate_grace))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _supervise(self, first: ClaudeProcess | None) -> int:
        resume = has_transcript(self._settings)
        while not self._stopping.is_set():
            exit_code = await self._run_once(resume, first)
            first = None
            self._ready.clear()
            self._proc = None
            expected = self._stopping.is_set()
            await self._channel.publish_gateway(
                GatewayEvent.CLI_EXITED, exit_code=exit_code, expected=expected
            )
            reason = "session stopped" if expected else f"CLI exited with code {exit_code}"
            await self._fail_inflight_turns(reason, interrupted=expected)
            if expected:
                break
            if self._crashed_too_often():
                await self._channel.publish_gateway(
                    GatewayEvent.WRAPPER_FATAL,
                    reason=(
                        f"CLI crashed {len(self._crash_times)} times within "
                        f"{self._settings.restart_window:.0f} s (last exit code {exit_code})"
                    ),
                    exit_code=exit_code,
                )
                return 1
            resume = has_transcript(self._settings)
            await asyncio.sleep(min(0.2 * len(self._crash_times), 2.0))
        return 0

    async def _run_once(self, resume: bool, proc: ClaudeProcess | None) -> int:
        """Start the CLI (unless given), handshake, relay until it exits; returns its exit
        code."""
        warm = proc is not None and self._settings.warm  # booted before its session existed
        if proc is None:
            proc = await spawn_cli(self._settings, resume)
        self._proc = proc
        self._process_cost = 0.0  # the CLI's total_cost_usd counts from its own start
        if self._stopping.is_set():  # SIGTERM arrived while we were spawning
            self._spawn(proc.terminate(self._settings.terminate_grace))
        stdout = asyncio.create_task(self._relay_stdout(proc), name="stdout")
        stderr = asyncio.create_task(self._relay_stderr(proc), name="stderr")
        try:
            await proc.control("initialize", timeout=self._settings.handshake_timeout)
        except (ControlError, TimeoutError, OSError) as exc:
            if not self._stopping.is_set():
                await self._channel.publish_gateway(
                    GatewayEvent.ERROR,
                    code="cli_handshake_failed",
                    message=f"the CLI did not answer initialize: {exc!r}",
                )
            await proc.terminate(self._settings.terminate_grace)
        else:
            await self._channel.publish_gateway(
                GatewayEvent.CLI_READY,
                claude_session_id=self._contract.claude_session_id,
                resumed=resume,
                warm=warm,
                pid=proc.pid,
                # Where a start's time went inside the container (the benchmark reads these).
                wrapper_boot_seconds=_rounded(proc.wrapper_age_at_spawn),
                cli_handshake_seconds=_rounded(time.monotonic() - proc.spawned_at),
                # The wrapper's CPU so far: in a one-CPU container, the CLI's boot waits for it.
                wrapper_cpu_seconds=_rounded(time.process_time()),
            )
            self._ready.set()
        exit_code = await proc.wait()
        proc.fail_pending("CLI exited")
        # Everything the CLI printed is published before its exit is reported.
        await asyncio.gather(stdout, stderr, return_exceptions=True)
        return exit_code

    async def _freeze_when_idle(self) -> None:
        """Freeze the CLI (``ClaudeProcess.freeze``) once it has been idle ``idle_freeze``
        seconds: ready, no turn written to it or waiting for it, no control request either
        way, no line read from it or written to it. The next prompt, interrupt or signal
        thaws it."""
        limit = self._contract.idle_freeze
        while True:
            proc = self._proc
            wait = limit
            if proc is not None and not proc.frozen and self._idle(proc):
                wait = limit - (time.monotonic() - proc.last_active)
                if wait <= 0:
                    proc.freeze()
                    wait = limit
            await asyncio.sleep(wait)

    def _idle(self, proc: ClaudeProcess) -> bool:
        return (
            self._ready.is_set()
            and not self._stopping.is_set()
            and not self._turns
            and not self._queue
            and not self._answering
            and not proc.busy
        )

    def _crashed_too_often(self) -> bool:
        now = time.monotonic()
        self._crash_times.append(now)
        while self._crash_times and now - self._crash_times[0] > self._settings.restart_window:
            self._crash_times.popleft()
        return len(self._crash_times) > self._settings.max_restarts

    async def _fail_inflight_turns(self, reason: str, interrupted: bool) -> None:
        for turn in self._turns.end_all():
            await self._channel.publish_gateway(
                GatewayEvent.TURN_FAILED, turn.turn_id, reason=reason, interrupted=interrupted
            )

    # -- CLI output ------------------------------------------------------------------------

    async def _relay_stdout(self, proc: ClaudeProcess) -> None:
        while True:
            try:
                raw = await proc.stdout_line()
            except ValueError as exc:
                await self._channel.publish_gateway(
                    GatewayEvent.ERROR, code="cli_line_too_long", message=str(exc)
                )
                continue
            if raw is None:
                return
            if raw:
                await self._on_stdout_line(proc, raw.decode("utf-8", errors="replace"))

    async def _on_stdout_line(self, proc: ClaudeProcess, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self._channel.publish_gateway(
                GatewayEvent.CLI_OUTPUT_INVALID, line=line[:_INVALID_LINE_LIMIT]
            )
            return
        kind = str(message.get("type", ""))
        turn_id = self._turns.current_id
        self._turns.saw(message)  # first, so that an interrupt held for this turn goes out now
        turn_cost = self._turn_cost(message) if kind == "result" else None
        await self._channel.publish(
            protocol.encode_event(Source.CLAUDE, kind, line, turn_id, turn_cost)
        )
        if kind == "result":
            self._turns.end_current()
        elif kind == "control_response":
            proc.resolve_control_response(message)
        elif kind == "control_request":
            # Answered in the background: the CLI may ask while we wait on it.
            request_id = str(message.get("request_id", ""))
            task = self._spawn(self._answer_control(proc, message))
            self._answering[request_id] = task
            task.add_done_callback(lambda done: self._forget_answer(request_id, done))
        elif kind == "control_cancel_request":
            # The CLI withdrew its request (say, the turn was interrupted): stop answering it
            # and send nothing.
            cancelled = self._answering.pop(str(message.get("request_id", "")), None)
            if cancelled is not None:
                cancelled.cancel()

    def _turn_cost(self, result: dict[str, Any]) -> float | None:
        total = result.get("total_cost_usd")
        if not isinstance(total, int | float):
            return None
        cost = max(0.0, float(total) - self._process_cost)
        self._process_cost = float(total)
        return cost

    def _forget_answer(self, request_id: str, task: asyncio.Task[None]) -> None:
        if self._answering.get(request_id) is task:
            del self._answering[request_id]

    async def _answer_control(self, proc: ClaudeProcess, message: dict[str, Any]) -> None:
        request_id = str(message.get("request_id", ""))
        request = message.get("request") or {}
        subtype = str(request.get("subtype", ""))
        handler = self._control_handlers.get(subtype)
        try:
            if handler is None:
                await proc.refuse_control(request_id, f"unsupported control request {subtype!r}")
            else:
                await proc.answer_control(request_id, await handler(request))
        except (BrokenPipeError, ConnectionResetError):
            return  # the CLI is gone; its exit is reported by the supervisor
        except RefuseControl as exc:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await proc.refuse_control(request_id, str(exc))
        except Exception as exc:  # a handler bug must not kill the session
            log.exception("control handler for %s failed", subtype)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await proc.refuse_control(request_id, f"{type(exc).__name__}: {exc}")

    async def _relay_stderr(self, proc: ClaudeProcess) -> None:
        while True:
            try:
                raw = await proc.stderr_line()
            except ValueError:
                continue
            if raw is None:
                return
            if not raw:
                continue
            line = raw.decode("utf-8", errors="replace")[:_STDERR_LINE_LIMIT]
            turn_id = self._turns.current_id
            await self._channel.publish_gateway(GatewayEvent.CLI_STDERR, turn_id, line=line)

    # -- inputs ----------------------------------------------------------------------------

    async def _consume_inputs(self) -> None:
        async for entry_id, fields in self._channel.inputs():
            try:
                message = protocol.decode_input(fields)
            except ValueError as exc:
                await self._channel.publish_gateway(
                    GatewayEvent.ERROR, code="invalid_input", message=str(exc)[:500]
                )
                await self._channel.ack(entry_id)
                continue
            if isinstance(message, PromptInput):
                self._queue.append((entry_id, message))
                self._queued.set()
            else:
                await self._interrupt(message.turn_id)
                await self._channel.ack(entry_id)

    async def _feed_prompts(self) -> None:
        """Write queued prompts to the CLI once it is ready; a failed write is retried on the
        next CLI, so an accepted prompt is never dropped."""
        while True:
            while not self._queue:
                self._queued.clear()
                await self._queued.wait()
            await self._ready.wait()
            proc = self._proc
            if proc is None:
                continue
            entry_id, prompt = self._queue.popleft()
            turn = self._turns.add(prompt.turn_id)
            try:
                await proc.send_user_turn(prompt.prompt)
            except (BrokenPipeError, ConnectionResetError):
                self._turns.discard(turn)
                if self._proc is proc:  # dead: wait for the supervisor's next CLI
                    self._ready.clear()
                if turn.interrupt is None:
                    self._queue.appendleft((entry_id, prompt))
                else:  # interrupted while being written: it never started
                    await self._channel.ack(entry_id)
                    await self._fail_unstarted(prompt.turn_id)
                continue
            await self._channel.ack(entry_id)

    async def _fail_unstarted(self, turn_id: str) -> None:
        await self._channel.publish_gateway(
            GatewayEvent.TURN_FAILED,
            turn_id,
            reason="interrupted before it started",
            interrupted=True,
        )

    async def _interrupt(self, turn_id: str | None) -> None:
        """Interrupt turn ``turn_id`` (the current one when ``None``). A prompt still queued
        here is dropped; a turn written to the CLI gets an interrupt delivered until it ends.
        Nothing running (or a turn that already ended) is not an error."""
        for index, (entry_id, queued) in enumerate(self._queue):
            if turn_id is not None and queued.turn_id == turn_id:
                del self._queue[index]
                await self._channel.ack(entry_id)
                await self._fail_unstarted(turn_id)
                return
        turn = self._turns.find(turn_id)
        if turn is not None and turn.interrupt is None:
            turn.interrupt = self._spawn(self._deliver_interrupt(turn))

    async def _deliver_interrupt(self, turn: WrittenTurn) -> None:
        """Send ``interrupt`` control requests until ``turn`` ends.

        The CLI answers ``success`` to an interrupt that comes before its turn began and then
        ignores it (see ``wrapper.inflight``), so an interrupt is sent the moment the turn
        shows it runs; before that, only every ``interrupt_retry`` seconds in case it never
        shows. Once the turn runs, an acknowledged interrupt it outlives by ``interrupt_retry``
        seconds is sent again, ``interrupt_attempts`` times in all; then ``interrupt_failed``
        is reported.
        """
        retry, attempts = self._settings.interrupt_retry, 0
        while attempts < self._settings.interrupt_attempts:
            await wait_any([turn.started, turn.ended], retry)
            proc = self._proc
            if turn.ended.is_set() or proc is None:
                return
            running = turn.started.is_set()
            try:
                await proc.control("interrupt", timeout=10)
            except (ControlError, TimeoutError, OSError) as exc:
                if not turn.ended.is_set():
                    await self._interrupt_failed(turn, str(exc))
                return
            if not turn.interrupt_sent:
                turn.interrupt_sent = True
                await self._channel.publish_gateway(GatewayEvent.INTERRUPT_SENT, turn.turn_id)
            if not running:
                continue  # sent again as soon as the turn shows it runs
            attempts += 1
            if await wait_any([turn.ended], retry):
                return
            log.warning(
                "turn %s still runs %.1f s after the CLI acknowledged an interrupt; sending "
                "it again",
                turn.turn_id,
                retry,
            )
        await self._interrupt_failed(
            turn, f"the CLI acknowledged {attempts} interrupts and the turn goes on"
        )

    async def _interrupt_failed(self, turn: WrittenTurn, message: str) -> None:
        await self._channel.publish_gateway(
            GatewayEvent.ERROR, turn.turn_id, code="interrupt_failed", message=message
        )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)
