"""The wrapper's settings, read once from the environment at start-up.

The session contract (ids, URLs, the session config) comes from ``protocol.ContainerEnv``; the
rest are tunables with defaults that suit a container and can be overridden for tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from wrapper.cli import claude_config_dir
from wrapper.protocol import ContainerEnv


@dataclass(frozen=True)
class WrapperSettings:
    contract: ContainerEnv
    claude_bin: str
    """The CLI binary (``CCD_CLAUDE_BIN``, default ``claude`` on PATH)."""
    workdir: Path
    """The CLI's working directory; its transcripts are keyed by it."""
    config_dir: Path
    """The CLI's state directory, where transcripts live."""
    handshake_timeout: float
    """Seconds the CLI has to answer ``initialize`` before it counts as crashed."""
    max_restarts: int
    """CLI crashes tolerated within ``restart_window`` before the wrapper gives up."""
    restart_window: float
    terminate_grace: float
    """Seconds between SIGTERM and SIGKILL for the CLI when the container stops."""
    max_line_bytes: int
    """Longest stdout line accepted from the CLI."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WrapperSettings:
        env = os.environ if environ is None else environ
        return cls(
            contract=ContainerEnv.from_env(env),
            claude_bin=env.get("CCD_CLAUDE_BIN", "claude"),
            workdir=Path(env.get("CCD_WORKDIR") or os.getcwd()),
            config_dir=claude_config_dir(env),
            handshake_timeout=float(env.get("CCD_HANDSHAKE_TIMEOUT", "60")),
            max_restarts=int(env.get("CCD_MAX_RESTARTS", "5")),
            restart_window=float(env.get("CCD_RESTART_WINDOW", "300")),
            terminate_grace=float(env.get("CCD_TERMINATE_GRACE", "5")),
            max_line_bytes=int(env.get("CCD_MAX_LINE_BYTES", str(64 * 1024 * 1024))),
        )
