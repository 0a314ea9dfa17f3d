"""Who a session token names, kept by each replica between that session's model calls.

Every model call needs its session's row (is it running, this run, its tree's budget): a
database round trip and about a millisecond of the gateway's CPU before the first byte. What
it says changes only when the session ends or starts again, and then a trigger tells every
replica (``NOTIFY ccd_session_revoked``, migration 0008), so a replica keeps the answer and
forgets it on that notification. It keeps nothing while it cannot hear notifications
(``Listener``), and forgets everything when it starts hearing again. A lookup that was under
way when any notification arrived is not kept: it may have read the row before the change.
Entries also expire after ``ttl`` seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

REVOKED_CHANNEL = "ccd_session_revoked"


@dataclass(frozen=True)
class Caller:
    session_id: uuid.UUID
    root_id: uuid.UUID
    owner: str
    max_tokens: int | None
    max_cost_usd: Decimal | None
    # Its spawn path (root first), when it was read with the session: a call's row lists it.
    ancestors: tuple[uuid.UUID, ...] | None = None

    @property
    def has_budget(self) -> bool:
        return self.max_tokens is not None or self.max_cost_usd is not None


@dataclass(frozen=True)
class _Kept:
    caller: Caller
    run: int
    expires: float


class CallerCache:
    def __init__(
        self, ttl: float, capacity: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._kept: dict[uuid.UUID, _Kept] = {}
        self._epoch = 0  # moves on every notification and every change of hearing
        self._hearing = False

    def get(self, session_id: uuid.UUID, run: int | None) -> Caller | None:
        """The running caller kept for ``session_id`` (and ``run``, when the key names one)."""
        kept = self._kept.get(session_id)
        if kept is None:
            return None
        if kept.expires <= self._clock():
            del self._kept[session_id]
            return None
        return kept.caller if run is None or run == kept.run else None

    def lookup_begins(self) -> int | None:
        """A mark to give ``keep`` with the result of a lookup begun now (``None``: nothing
        may be kept now)."""
        return self._epoch if self._hearing and self._ttl > 0 else None

    def keep(self, mark: int | None, caller: Caller, run: int) -> None:
        """Keep what a lookup found, unless anything was revoked (or hearing changed) since
        it began."""
        if mark is None or mark != self._epoch:
            return
        if len(self._kept) >= self._capacity:
            del self._kept[next(iter(self._kept))]  # the oldest
        self._kept[caller.session_id] = _Kept(caller, run, self._clock() + self._ttl)

    def revoked(self, payload: str) -> None:
        """A session ended or started again (a notification's payload: its id)."""
        self._epoch += 1
        try:
            self._kept.pop(uuid.UUID(payload), None)
        except ValueError:  # not an id: forget everything rather than keep a stale one
            self._kept.clear()

    def hearing(self) -> None:
        self._epoch += 1
        self._kept.clear()
        self._hearing = True

    def deaf(self) -> None:
        self._epoch += 1
        self._kept.clear()
        self._hearing = False
