"""What a session's container gets: image, hardening, limits, labels and its environment."""

from __future__ import annotations

from gateway.config import Settings, parse_size
from gateway.db.models import SessionRow
from gateway.runtime import ContainerSpec, ScratchMount
from gateway.runtime.naming import container_name, session_labels
from wrapper.protocol import (
    CLAUDE_STATE_DIR,
    CONTAINER_GID,
    CONTAINER_HOME,
    CONTAINER_UID,
    ENV_SESSION_TOKEN,
    HEADLESS_CLI_VARIABLES,
    WORKSPACE_DIR,
    ContainerEnv,
    SessionConfig,
)

_RUN_SIZE = 16 * 1024 * 1024
# How often the CLI reads its model key again: well within the token's half life, after which
# the wrapper has written a fresh one.
MODEL_KEY_REFRESH_MS = 60_000


def build_container_spec(
    settings: Settings, session: SessionRow, session_token: str, redis_url: str
) -> ContainerSpec:
    """Pure: the same settings, row, token and Redis URL always give the same spec.
    ``redis_url`` carries the session's own Redis user, never the gateway's."""
    session_id = str(session.id)
    contract = ContainerEnv(
        session_id=session_id,
        redis_url=redis_url,
        gateway_url=settings.effective_session_gateway_url,
        claude_session_id=str(session.claude_session_id),
        config=SessionConfig.model_validate(session.config),
        permission_mode=settings.session_permission_mode,
        stream_maxlen=settings.event_stream_maxlen,
    )
    # Later entries win: operators' extras may override the headless defaults, and the
    # contract is applied last so nothing can spoof a session's identity.
    env = {
        **HEADLESS_CLI_VARIABLES,
        **settings.session_extra_env,
        **settings.session_cli_env(),
        **contract.to_env(),
        ENV_SESSION_TOKEN: session_token,
        # The model is reached through the gateway's proxy, never directly, and with no
        # credential of the operator's: the CLI's key is its session's token (apiKeyHelper).
        "ANTHROPIC_BASE_URL": settings.model_proxy_url,
        "CLAUDE_CODE_API_KEY_HELPER_TTL_MS": str(MODEL_KEY_REFRESH_MS),
    }
    user = (CONTAINER_UID, CONTAINER_GID)
    return ContainerSpec(
        name=container_name(settings.instance_name, session_id),
        image=session.image,
        env=env,
        labels=session_labels(settings.instance_name, session_id, session.owner),
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
