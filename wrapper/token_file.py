"""The session token's file: how ``ccd-agent`` and the CLI's apiKeyHelper find the current
token. Light on purpose (no HTTP client imported), so the wrapper can write it before the CLI
starts."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["read_token_file", "write_token_file"]


def read_token_file(path: Path) -> str | None:
    """The token saved at ``path``, or ``None`` when there is none."""
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def write_token_file(path: Path, token: str) -> None:
    """Replace ``path`` atomically with ``token`` (mode 0600, directory 0700): a reader sees the
    old token or the new one, never a torn write."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".token-")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(token + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
