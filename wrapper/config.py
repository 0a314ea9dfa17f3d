"""The wrapper's settings, read once from the environment at start-up.

The session contract (ids, URLs, the session config) comes from ``protocol.ContainerEnv``; the
rest are tunables with defaults that suit a container and can be overridden for tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wrapper.cli import claude_config_dir
from wrapper.protocol import (
    ENV_GATEWAY_URL,
    ENV_MODEL_KEY,
    ENV_POOL_ID,
    ENV_POOL_MODEL_KEY,
    ENV_POOL_REDIS_URL,
    ENV_REDIS_URL,
    ENV_SESSION_ID,
    ENV_SESSION_TOKEN,
    SESSION_ID_FILE,
    SESSION_TOKEN_FILE,
    ContainerEnv,
)


def token_file(environ: Mapping[str, str]) -> Path:
    """Where the current session token is kept for ``ccd-agent``: under ``$HOME``."""
    return Path(environ.get("HOME") or "/root") / SESSION_TOKEN_FILE


def session_id_file(environ: Mapping[str, str]) -> Path:
    """Where a pooled container's wrapper writes the session id it was claimed for."""
    return Path(environ.get("HOME") or "/root") / SESSION_ID_FILE


@dataclass(frozen=True)
class PoolSettings:
    """A pooled container's own, before any claim: where to wait for one, and the model key
    its CLI starts with (it means nothing until the claim binds it to a session)."""

    pool_id: str
    redis_url: str = field(repr=False)
    model_key: str = field(repr=False)


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
    token_file: Path
    """Where the wrapper keeps the current session token for ``ccd-agent``."""
    session_token: str | None = field(default=None, repr=False)
    """The session's capability token at start (``CCD_SESSION_TOKEN``); ``None`` without one,
    and then the ``sessions`` tools answer with an error."""
    model_key: str | None = field(default=None, repr=False)
    """The CLI's model key for its whole life (``CCD_MODEL_KEY``, given to the CLI as
    ``ANTHROPIC_API_KEY``); without one the CLI reads the token file through an
    apiKeyHelper (a pooled container, whose key changes at the claim)."""
    interrupt_retry: float = 2.0
    """Seconds a turn has to end after the CLI acknowledged an interrupt before it is sent
    again (``CCD_INTERRUPT_RETRY``); also how long an interrupt waits for its turn to show
    that it started before it is sent anyway."""
    interrupt_attempts: int = 5
    """Interrupts sent to a running turn before the wrapper reports ``interrupt_failed``."""
    pool: PoolSettings | None = None
    """Set in a pooled container: its ``contract`` has no session id or Redis URL (the claim
    brings them), only what the CLI's command line needs."""
    session_id_file: Path = Path("/nonexistent")
    """Where a claimed pooled container's session id is written for ``ccd-agent``."""

    @property
    def warm(self) -> bool:
        """A pooled container: its CLI boots (and answers its handshake) before its session
        exists."""
        return self.pool is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WrapperSettings:
        env = os.environ if environ is None else environ
        pool = None
        if env.get(ENV_POOL_ID):
            pool = PoolSettings(env[ENV_POOL_ID], env[ENV_POOL_REDIS_URL], env[ENV_POOL_MODEL_KEY])
            # Unknown until the claim, which hands them to the session's channel and client;
            # nothing reads them from here.
            contract = ContainerEnv.from_env({**env, ENV_SESSION_ID: "", ENV_REDIS_URL: ""})
        else:
            contract = ContainerEnv.from_env(env)
        return cls(
            contract=contract,
            pool=pool,
            session_id_file=session_id_file(env),
            claude_bin=env.get("CCD_CLAUDE_BIN", "claude"),
            workdir=Path(env.get("CCD_WORKDIR") or os.getcwd()),
            config_dir=claude_config_dir(env),
            handshake_timeout=float(env.get("CCD_HANDSHAKE_TIMEOUT", "60")),
            max_restarts=int(env.get("CCD_MAX_RESTARTS", "5")),
            restart_window=float(env.get("CCD_RESTART_WINDOW", "300")),
            terminate_grace=float(env.get("CCD_TERMINATE_GRACE", "5")),
            max_line_bytes=int(env.get("CCD_MAX_LINE_BYTES", str(64 * 1024 * 1024))),
            token_file=token_file(env),
            session_token=env.get(ENV_SESSION_TOKEN) or None,
            model_key=None if pool else env.get(ENV_MODEL_KEY) or None,
            interrupt_retry=float(env.get("CCD_INTERRUPT_RETRY", "2")),
            interrupt_attempts=int(env.get("CCD_INTERRUPT_ATTEMPTS", "5")),
        )


@dataclass(frozen=True)
class AgentSettings:
    """``ccd-agent``'s settings: it runs inside the CLI's environment, where the wrapper left
    the gateway URL and the session id (not the token: that is read from ``token_file``)."""

    gateway_url: str
    session_id: str
    token_file: Path
    env_token: str | None = field(default=None, repr=False)
    """``CCD_SESSION_TOKEN`` if set: used only when the token file is missing."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgentSettings:
        """Raises ``KeyError`` naming the variable that is missing. The session id comes from
        the environment, or (in a container claimed from the pool, whose CLI started before
        it had one) from the file its wrapper wrote at the claim."""
        env = os.environ if environ is None else environ
        session_id = env.get(ENV_SESSION_ID)
        if not session_id:
            try:
                session_id = session_id_file(env).read_text(encoding="ascii").strip()
            except OSError:
                raise KeyError(ENV_SESSION_ID) from None
        return cls(
            gateway_url=env[ENV_GATEWAY_URL],
            session_id=session_id,
            token_file=token_file(env),
            env_token=env.get(ENV_SESSION_TOKEN) or None,
        )
