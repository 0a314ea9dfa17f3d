"""Where the real Claude Code CLI is for the tests that run it on the host (not in a container).

``scripts/test.sh`` copies the binary out of the session image into ``.venv/bin/claude`` and
sets ``CLAUDE_BIN``, so these tests use exactly the CLI the sessions run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent


def claude_binary() -> str:
    """The CLI's path; fails the test (no silent skip) when there is none."""
    for candidate in (
        os.environ.get("CLAUDE_BIN"),
        str(_ROOT / ".venv/bin/claude"),
        shutil.which("claude"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "the Claude Code CLI was not found: run scripts/test.sh (it copies it out of the "
        "session image) or set CLAUDE_BIN"
    )
