"""The turns written to the CLI that have not ended yet, and what the CLI showed of each.

The CLI works through user messages in the order they were written, so the oldest turn here is
the one its output belongs to. Whether that turn has *started* matters for interrupts: the CLI
acknowledges an ``interrupt`` control request that arrives after a user message was written but
before its turn has begun, and then ignores it (measured with CLI 2.1.197: the first turn of a
process waits several hundred milliseconds for its MCP servers before it prints ``system/init``;
an interrupt in that window is answered ``success`` and the turn runs to its end).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Output that only a running turn prints. ``system``/``init`` is the first line of every turn;
# the others are fallbacks should a CLI version ever print no ``init``.
_TURN_LINE_TYPES = frozenset({"assistant", "user", "stream_event"})


def shows_turn_running(message: Mapping[str, Any]) -> bool:
    """Whether a CLI stdout message proves that the CLI is working on a turn."""
    kind = message.get("type")
    if kind == "system":
        return message.get("subtype") == "init"
    return kind in _TURN_LINE_TYPES


@dataclass(eq=False)
class WrittenTurn:
    """One turn whose user message the CLI has received."""

    turn_id: str
    started: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the CLI printed output of this turn (it acts on interrupts from then on)."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the turn's result was read or the turn failed."""
    interrupt: asyncio.Task[None] | None = None
    """The task delivering an interrupt to this turn, if one was asked for."""
    interrupt_sent: bool = False
    """Whether the CLI acknowledged an interrupt for this turn (reported once)."""


class InFlightTurns:
    """Turns written to the CLI, oldest first. Not thread-safe; one event loop owns it."""

    def __init__(self) -> None:
        self._turns: deque[WrittenTurn] = deque()

    def __bool__(self) -> bool:
        return bool(self._turns)

    @property
    def current(self) -> WrittenTurn | None:
        """The turn the CLI's output belongs to now (the oldest one), or ``None``."""
        return self._turns[0] if self._turns else None

    @property
    def current_id(self) -> str | None:
        return self._turns[0].turn_id if self._turns else None

    def find(self, turn_id: str | None) -> WrittenTurn | None:
        """The written turn ``turn_id``; the current turn when ``turn_id`` is ``None``."""
        if turn_id is None:
            return self.current
        return next((turn for turn in self._turns if turn.turn_id == turn_id), None)

    def add(self, turn_id: str) -> WrittenTurn:
        turn = WrittenTurn(turn_id)
        self._turns.append(turn)
        return turn

    def discard(self, turn: WrittenTurn) -> None:
        """Forget a turn whose user message could not be written after all."""
        if turn in self._turns:
            self._turns.remove(turn)
        turn.ended.set()

    def saw(self, message: Mapping[str, Any]) -> None:
        """Note a stdout message of the current turn: it may show that the turn started."""
        turn = self.current
        if turn is not None and shows_turn_running(message):
            turn.started.set()

    def end_current(self) -> WrittenTurn | None:
        """The CLI printed the current turn's result: it is over."""
        if not self._turns:
            return None
        turn = self._turns.popleft()
        turn.ended.set()
        return turn

    def end_all(self) -> list[WrittenTurn]:
        """The CLI is gone: every written turn is over, oldest first."""
        ended = list(self._turns)
        self._turns.clear()
        for turn in ended:
            turn.ended.set()
        return ended

    def __contains__(self, turn: object) -> bool:
        return turn in self._turns
