"""One running Claude Code CLI process, spoken to in stream-json over stdin and stdout."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wrapper.cli import build_argv, cli_environment, transcript_path
from wrapper.config import WrapperSettings

log = logging.getLogger(__name__)

_request_ids = itertools.count(1)


class ControlError(RuntimeError):
    """The CLI answered a control request with an error."""


class RefuseControl(Exception):
    """Raised by a control handler to answer the CLI's request with this error message (an
    expected refusal, not a bug: no traceback is logged)."""


class ClaudeProcess:
    """Owns the subprocess; the caller reads ``stdout_lines``/``stderr_lines`` and writes turns.

    Control responses are matched to their requests by ``resolve_control_response``, which the
    stdout reader must call for every ``control_response`` line (reading and answering happen
    concurrently: the CLI sends requests of its own before it answers ``initialize``).
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._write_lock = asyncio.Lock()
        self._output_closed = False
        self._frozen = False
        self.spawned_at = time.monotonic()
        self.last_active = self.spawned_at  # the last line read from it or written to it
        self.wrapper_age_at_spawn = process_age()

    @classmethod
    async def spawn(
        cls, argv: Sequence[str], env: Mapping[str, str], cwd: Path, max_line_bytes: int
    ) -> ClaudeProcess:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            limit=max_line_bytes,
            start_new_session=True,  # its own process group: signals reach its tool children
        )
        return cls(proc)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def stdout_line(self) -> bytes | None:
        """The next stdout line without its newline; ``None`` at EOF. Raises ``ValueError``
        for a line longer than the reader's limit (that line is discarded)."""
        assert self._proc.stdout is not None
        line = _strip(await self._proc.stdout.readline())
        self.last_active = time.monotonic()
        if line is None:
            # No answer can come any more: a control request waiting for one (the handshake
            # of a CLI stopped while it booted) fails now, not after its timeout.
            self._output_closed = True
            self.fail_pending("the CLI closed its output")
        return line

    async def stderr_line(self) -> bytes | None:
        assert self._proc.stderr is not None
        return _strip(await self._proc.stderr.readline())

    async def send(self, message: Mapping[str, Any]) -> None:
        """Write one JSON line. Encoding here guarantees the CLI never sees a non-JSON line,
        which would kill it."""
        assert self._proc.stdin is not None
        data = json.dumps(message, ensure_ascii=False).encode() + b"\n"
        self.thaw()
        self.last_active = time.monotonic()
        async with self._write_lock:
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()

    async def send_user_turn(self, prompt: str) -> None:
        await self.send(
            {
                "type": "user",
                "message": {"role": "user", "content": prompt},
                "parent_tool_use_id": None,
                "session_id": "",
            }
        )

    async def control(self, subtype: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """Send a control request and wait for its answer; raises ``ControlError`` on error."""
        if self._output_closed:
            raise ControlError("the CLI closed its output")
        request_id = f"ccd-{next(_request_ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.send(
                {
                    "type": "control_request",
                    "request_id": request_id,
                    "request": {"subtype": subtype, **fields},
                }
            )
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)

    def resolve_control_response(self, message: Mapping[str, Any]) -> None:
        response = message.get("response") or {}
        future = self._pending.get(str(response.get("request_id")))
        if future is None or future.done():
            return
        if response.get("subtype") == "success":
            future.set_result(response.get("response") or {})
        else:
            future.set_exception(ControlError(str(response.get("error") or "control error")))

    async def answer_control(self, request_id: str, response: Mapping[str, Any]) -> None:
        await self.send(
            {
                "type": "control_response",
                "response": {"subtype": "success", "request_id": request_id, "response": response},
            }
        )

    async def refuse_control(self, request_id: str, error: str) -> None:
        await self.send(
            {
                "type": "control_response",
                "response": {"subtype": "error", "request_id": request_id, "error": error},
            }
        )

    def fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ControlError(reason))

    async def wait(self) -> int:
        return await self._proc.wait()

    async def terminate(self, grace: float) -> int:
        """SIGTERM the CLI's process group, SIGKILL after ``grace`` seconds; returns the code."""
        if self._proc.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self._proc.wait(), grace)
            except TimeoutError:
                self._signal(signal.SIGKILL)
        return await self._proc.wait()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)
        self.thaw()  # a stopped process acts on SIGTERM only once it runs again

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Stop the CLI (SIGSTOP) while it has nothing to do: an idle CLI's own timers cost
        4-7 ms of CPU a second, a hundred of them about half a core. Only the CLI itself: a
        tool it left running in the background goes on. Writing to it or signalling it thaws
        it first."""
        if self._frozen or self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self._proc.pid, signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        if not self._frozen:
            return
        self._frozen = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self._proc.pid, signal.SIGCONT)

    @property
    def busy(self) -> bool:
        """Whether a control request of ours waits for its answer."""
        return bool(self._pending)


def process_age() -> float | None:
    """Seconds since this process was started (interpreter start-up included), from
    ``/proc``; ``None`` where that cannot be read. Its resolution is the clock tick."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, now - started_ticks / os.sysconf("SC_CLK_TCK"))


def _strip(line: bytes) -> bytes | None:
    return line.rstrip(b"\r\n") if line else None


def has_transcript(settings: WrapperSettings) -> bool:
    """Whether the CLI can ``--resume`` this session's conversation (its file is here)."""
    return transcript_path(
        settings.config_dir, settings.workdir, settings.contract.claude_session_id
    ).exists()


async def spawn_cli(settings: WrapperSettings, resume: bool) -> ClaudeProcess:
    argv = build_argv(
        settings.claude_bin, settings.contract, resume=resume, key_helper=not settings.model_key
    )
    environment = cli_environment(os.environ, settings.model_key)
    return await ClaudeProcess.spawn(argv, environment, settings.workdir, settings.max_line_bytes)
