"""What a session's container gets: image, hardening, limits, labels and its environment; and
what a pooled container (no session yet) gets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from typing import Any

from gateway.config import Settings, parse_size
from gateway.db.models import SessionRow
from gateway.runtime import ContainerSpec, ScratchMount
from gateway.runtime.naming import (
    container_name,
    pool_container_name,
    pool_labels,
    session_labels,
)
from wrapper.cli import build_argv
from wrapper.protocol import (
    CLAUDE_STATE_DIR,
    CONTAINER_GID,
    CONTAINER_HOME,
    CONTAINER_UID,
    ENV_MODEL_KEY,
    ENV_POOL_ID,
    ENV_POOL_MODEL_KEY,
    ENV_POOL_REDIS_URL,
    ENV_SESSION_TOKEN,
    HEADLESS_CLI_VARIABLES,
    WORKSPACE_DIR,
    CliConfig,
    ContainerEnv,
)
from wrapper.session_config import SessionConfig

_RUN_SIZE = 16 * 1024 * 1024
# How often the CLI reads its model key again: well within the token's half life, after which
# the wrapper has written a fresh one.
MODEL_KEY_REFRESH_MS = 60_000


def build_container_spec(
    settings: Settings, session: SessionRow, session_token: str, redis_url: str, model_key: str
) -> ContainerSpec:
    """Pure: the same settings, row, token, Redis URL and model key always give the same spec.
    ``redis_url`` carries the session's own Redis user, never the gateway's; ``model_key`` is
    what its CLI calls the model proxy with (``mint_model_key``)."""
    session_id = str(session.id)
    config = SessionConfig.model_validate(session.config).cli()
    contract = _contract(settings, session_id, redis_url, str(session.claude_session_id), config)
    return _spec(
        settings,
        name=container_name(settings.instance_name, session_id),
        image=session.image,
        labels=session_labels(settings.instance_name, session_id, session.owner),
        contract_env={
            **contract.to_env(),
            ENV_SESSION_TOKEN: session_token,
            ENV_MODEL_KEY: model_key,
        },
    )


def build_pool_spec(
    settings: Settings,
    pool_id: uuid.UUID,
    claude_session_id: uuid.UUID,
    pool_redis_url: str,
    model_key: str,
    config: SessionConfig | None = None,
) -> ContainerSpec:
    """A pooled container: a session's spec with ``config``'s CLI options (default: none),
    minus everything that belongs to a session (its id, token, Redis user, owner); a claim
    supplies those."""
    cli = config.cli() if config is not None else CliConfig()
    contract = _contract(settings, "", "", str(claude_session_id), cli)
    return _spec(
        settings,
        name=pool_container_name(settings.instance_name, str(pool_id)),
        image=settings.session_image,
        labels=pool_labels(settings.instance_name, str(pool_id)),
        contract_env={
            **contract.pooled_env(),
            ENV_POOL_ID: str(pool_id),
            ENV_POOL_REDIS_URL: pool_redis_url,
            ENV_POOL_MODEL_KEY: model_key,
        },
    )


def pool_spec_hash(settings: Settings, config: SessionConfig | None = None) -> str:
    """What a pooled container (of a pool with ``config``'s CLI options) is made with under
    ``settings``, as a digest: one made otherwise (another image, limits, environment, CLI
    options) is never claimed."""
    zero = uuid.UUID(int=0)
    spec = build_pool_spec(settings, zero, zero, "", "", config)
    canonical = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cli_options(config: dict[str, Any] | SessionConfig, permission_mode: str) -> tuple[str, ...]:
    """The CLI command line a session with ``config`` gets, but for its session id: sessions
    whose options give the same one may take each other's pooled containers (options only the
    gateway reads, like a budget, do not count)."""
    chosen = config if isinstance(config, SessionConfig) else SessionConfig.model_validate(config)
    contract = ContainerEnv(
        session_id="",
        redis_url="",
        gateway_url="",
        claude_session_id="00000000-0000-0000-0000-000000000000",
        config=chosen.cli(),
        permission_mode=permission_mode,
        stream_maxlen=100,
    )
    return tuple(build_argv("claude", contract, resume=False))


def _contract(
    settings: Settings,
    session_id: str,
    redis_url: str,
    claude_session_id: str,
    config: CliConfig,
) -> ContainerEnv:
    return ContainerEnv(
        session_id=session_id,
        redis_url=redis_url,
        gateway_url=settings.effective_session_gateway_url,
        claude_session_id=claude_session_id,
        config=config,
        permission_mode=settings.session_permission_mode,
        stream_maxlen=settings.event_stream_maxlen,
        idle_freeze=settings.session_idle_freeze,
    )


def _spec(
    settings: Settings,
    *,
    name: str,
    image: str,
    labels: dict[str, str],
    contract_env: dict[str, str],
) -> ContainerSpec:
    # Later entries win: operators' extras may override the headless defaults, and the
    # contract is applied last so nothing can spoof a session's identity.
    env = {
        **HEADLESS_CLI_VARIABLES,
        **settings.session_extra_env,
        **settings.session_cli_env(),
        **contract_env,
        # The model is reached through the gateway's proxy, never directly, and with no
        # credential of the operator's: the CLI's key is its session's model key (cold), or
        # what a pooled container's apiKeyHelper reads (its pool key, then its session token).
        "ANTHROPIC_BASE_URL": settings.model_proxy_url,
        "CLAUDE_CODE_API_KEY_HELPER_TTL_MS": str(MODEL_KEY_REFRESH_MS),
    }
    user = (CONTAINER_UID, CONTAINER_GID)
    return ContainerSpec(
        name=name,
        image=image,
        env=env,
        labels=labels,
        user=f"{CONTAINER_UID}:{CONTAINER_GID}",
        persistent_paths=(WORKSPACE_DIR, CLAUDE_STATE_DIR),
        scratch=(
            ScratchMount("/tmp", parse_size(settings.session_tmp_size), 0o1777),
            ScratchMount("/run", _RUN_SIZE, 0o755, *user),
            ScratchMount(CONTAINER_HOME, parse_size(settings.session_home_size), 0o700, *user),
        ),
        cpus=settings.session_cpus,
        memory_bytes=settings.session_memory_bytes,
        pids_limit=settings.session_pids_limit,
        nofile=settings.session_nofile,
        oom_score_adj=settings.session_oom_score_adj,
        log_max_bytes=parse_size(settings.session_log_max_size),
        log_max_files=settings.session_log_max_files,
    )
