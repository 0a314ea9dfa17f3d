"""How a round of periodic saves is paced: spread over its interval, in id order, and given
up as soon as the replica loses the lease."""

from __future__ import annotations

import asyncio
import uuid

from gateway.services.rounds import every
from gateway.services.snapshots import PeriodicSaves


class RecordedRound(PeriodicSaves):
    """The pacing alone: which session is looked at, and when (loop time)."""

    def __init__(self, session_ids: list[uuid.UUID]) -> None:  # no database, no engine
        self.session_ids = session_ids
        self.calls: list[tuple[uuid.UUID, float]] = []

    async def _running(self) -> list[uuid.UUID]:
        return self.session_ids

    async def save_if_changed(self, session_id: uuid.UUID) -> None:
        self.calls.append((session_id, asyncio.get_running_loop().time()))


async def test_a_round_spreads_its_sessions_over_the_interval() -> None:
    ids = sorted(uuid.uuid4() for _ in range(4))
    saves = RecordedRound(ids)
    start = asyncio.get_running_loop().time()
    await saves.round(start, 0.8, lambda: True)
    assert [session_id for session_id, _ in saves.calls] == ids
    for i, (_, at) in enumerate(saves.calls):
        assert at >= start + i * 0.2  # its own point of the interval, not back to back


async def test_a_round_stops_when_the_lease_is_lost() -> None:
    saves = RecordedRound([uuid.uuid4() for _ in range(3)])
    held = iter([True, False])
    await saves.round(asyncio.get_running_loop().time(), 0.3, lambda: next(held, False))
    assert len(saves.calls) == 1


async def test_a_failed_round_does_not_end_the_rounds() -> None:
    """The database down during one round (its listing fails): the next round still comes."""
    starts: list[float] = []

    async def round_(start: float) -> None:
        starts.append(start)
        if len(starts) == 1:
            raise ConnectionError("the database is down")

    task = asyncio.create_task(every(0.05, lambda: True, round_))
    try:
        for _ in range(100):
            if len(starts) >= 2:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert len(starts) >= 2 and starts[1] >= starts[0] + 0.05
