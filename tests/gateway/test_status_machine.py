"""The status machine lives in one table (gateway/db/models.py TRANSITIONS); SPEC.md states it,
and the one update that changes statuses refuses anything outside it."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from gateway.db import queries
from gateway.db.models import TRANSITIONS, SessionStatus

SPEC = Path(__file__).resolve().parents[2] / "SPEC.md"


def spec_transitions() -> dict[str, set[str]]:
    section = SPEC.read_text().split("## 6. Status machine", 1)[1].split("\n## ", 1)[0]
    transitions = section.split("| From | To |", 1)[1].split("\n\n", 1)[0]
    table: dict[str, set[str]] = {}
    for line in transitions.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            table[cells[0].strip("`")] = set(re.findall(r"`([a-z]+)`", cells[1]))
    return table


def test_spec_states_exactly_the_status_machine() -> None:
    assert spec_transitions() == {
        str(source): {str(target) for target in targets} for source, targets in TRANSITIONS.items()
    }
    assert set(TRANSITIONS) == set(SessionStatus)


async def test_a_change_outside_the_machine_is_refused_before_it_runs() -> None:
    with pytest.raises(ValueError, match="status machine"):
        # No database is needed: the check comes before any statement.
        await queries.transition(
            None,  # type: ignore[arg-type]
            uuid.uuid4(),
            [SessionStatus.STOPPED],
            SessionStatus.READY,
        )
