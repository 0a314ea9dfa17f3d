"""What a pooled container is made with, and who may take one (pure: no engine needed)."""

from __future__ import annotations

import uuid

from gateway.config import Settings
from gateway.services.container_spec import (
    build_pool_spec,
    pool_compatible,
    pool_spec_hash,
)
from wrapper.protocol import ENV_REDIS_URL, ENV_SESSION_ID, ENV_SESSION_TOKEN

SECRET = "x" * 40


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, jwt_secret=SECRET, **values)  # type: ignore[arg-type]


def test_a_pooled_container_is_hardened_like_a_session_and_has_no_identity() -> None:
    pool_id = uuid.uuid4()
    spec = build_pool_spec(settings(), pool_id, uuid.uuid4(), "redis://p:pw@ccd-host/0", "key")
    assert not {ENV_SESSION_ID, ENV_REDIS_URL, ENV_SESSION_TOKEN} & set(spec.env)
    assert "cc-docker.session-id" not in spec.labels and "cc-docker.owner" not in spec.labels
    assert spec.labels["cc-docker.pool-id"] == str(pool_id)
    assert spec.read_only_root and spec.drop_all_capabilities and spec.no_new_privileges
    assert spec.memory_bytes is not None and spec.pids_limit is not None


def test_changed_session_settings_make_the_pool_stale() -> None:
    base = pool_spec_hash(settings())
    assert pool_spec_hash(settings()) == base  # deterministic: same settings, same hash
    for changed in (
        {"session_image": "other:tag"},
        {"session_permission_mode": "acceptEdits"},
        {"session_memory": "1g"},
        {"session_extra_env": "HTTP_PROXY=http://proxy:3128"},
    ):
        assert pool_spec_hash(settings(**changed)) != base, changed


def test_only_sessions_whose_cli_would_run_the_same_take_a_pooled_container() -> None:
    mode = "bypassPermissions"
    assert pool_compatible({}, mode)
    assert pool_compatible({"budget": {"max_tokens": 10}, "timeout": 60}, mode)
    assert pool_compatible({"permission_mode": mode}, mode)
    for own in (
        {"model": "claude-opus-4-5"},
        {"permission_mode": "plan"},
        {"allowed_tools": ["Bash"]},
        {"disallowed_tools": ["Bash"]},
        {"max_turns": 3},
        {"system_prompt": "be terse"},
        {"append_system_prompt": "be terse"},
    ):
        assert not pool_compatible(own, mode), own
