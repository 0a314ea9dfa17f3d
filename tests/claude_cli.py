"""Where the real Claude Code CLI is for the tests that run it on the host (not in a container).

``scripts/test.sh`` copies the binary out of the session image into ``.venv/bin/claude`` and
sets ``CLAUDE_BIN``, so these tests use exactly the CLI the sessions run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from wrapper.protocol import HEADLESS_CLI_VARIABLES

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


def host_cli_environment(
    base_url: str, home: Path | str, api_key: str | None = "test"
) -> dict[str, str]:
    """The variables a real CLI run on this host gets, on top of an environment cleared of
    any Claude Code or Anthropic setting of the machine's: headless (as in a session), talking
    to ``base_url`` only, never retrying (a test's fake answers once), and allowed
    ``bypassPermissions`` as root (sessions run unprivileged; the host's tests may not)."""
    variables = {
        **HEADLESS_CLI_VARIABLES,
        "ANTHROPIC_BASE_URL": base_url,
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "IS_SANDBOX": "1",
        "HOME": str(home),
    }
    if api_key is not None:
        variables["ANTHROPIC_API_KEY"] = api_key
    return variables


def foreign_setting(name: str) -> bool:
    """Whether ``name`` is a variable of the machine's that would change how a CLI or the
    wrapper run by a test behaves (its own key, base URL, options, nesting marker)."""
    return name.startswith(("ANTHROPIC_", "CLAUDE_CODE_", "CCD_")) or name == "CLAUDECODE"
