"""What a session's container gets: image, limits, labels and its environment contract."""

from __future__ import annotations

from gateway.config import Settings
from gateway.db.models import SessionRow
from gateway.runtime import ContainerSpec
from gateway.runtime.naming import container_name, session_labels
from wrapper.protocol import (
    ENV_SESSION_TOKEN,
    HEADLESS_CLI_VARIABLES,
    ContainerEnv,
    SessionConfig,
)


def build_container_spec(
    settings: Settings, session: SessionRow, session_token: str
) -> ContainerSpec:
    """Pure: the same settings, row and token always give the same spec."""
    session_id = str(session.id)
    contract = ContainerEnv(
        session_id=session_id,
        redis_url=settings.effective_session_redis_url,
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
    }
    return ContainerSpec(
        name=container_name(settings.instance_name, session_id),
        image=session.image,
        env=env,
        labels=session_labels(settings.instance_name, session_id, session.owner),
        network=settings.session_network,
        cpus=settings.session_cpus,
        memory=settings.session_memory,
        pids_limit=settings.session_pids_limit,
    )
