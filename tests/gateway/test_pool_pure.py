"""What a pooled container is made with, and who may take one (pure: no engine needed)."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from gateway.config import Settings
from gateway.services.container_spec import build_pool_spec, cli_options, pool_spec_hash
from gateway.services.pool import DEFAULT_POOL, pools_of
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


def test_a_session_takes_the_pool_whose_cli_runs_as_its_own_would() -> None:
    opus = {"size": 1, "config": {"model": "claude-opus-4-5"}}
    chosen = settings(session_pool_size=2, session_pool_templates={"opus": opus})
    pools = pools_of(chosen)
    mode = chosen.session_permission_mode

    def pool_name(config: dict[str, object]) -> str | None:
        pool = pools.get(cli_options(config, mode))
        return None if pool is None else pool.name

    assert pool_name({}) == DEFAULT_POOL
    assert pool_name({"budget": {"max_tokens": 10}, "timeout": 60}) == DEFAULT_POOL
    assert pool_name({"permission_mode": mode}) == DEFAULT_POOL
    assert pool_name({"model": "claude-opus-4-5", "timeout": 60}) == "opus"
    for own in (
        {"model": "claude-sonnet-4-5"},
        {"permission_mode": "plan"},
        {"allowed_tools": ["Bash"]},
        {"disallowed_tools": ["Bash"]},
        {"max_turns": 3},
        {"system_prompt": "be terse"},
        {"append_system_prompt": "be terse"},
    ):
        assert pool_name(own) is None, own
    # Each pool's containers are made differently, so a claim never takes another pool's.
    assert len({pool.spec_hash for pool in pools.values()}) == 2
    # An empty pool is no pool: its sessions start cold.
    assert DEFAULT_POOL not in {p.name for p in pools_of(settings()).values()}


def test_templates_are_checked_when_the_gateway_starts() -> None:
    bad = (
        {"Opus": {"size": 1, "config": {}}},  # a name is a label
        {"opus": {"size": 1, "config": {"budget": {"max_tokens": 5}}}},  # per session
        {"opus": {"size": 1, "config": {"modle": "x"}}},  # a typo is no option
        {"opus": {"size": -1, "config": {}}},
    )
    for templates in bad:
        with pytest.raises(ValidationError):
            settings(session_pool_templates=templates)
    parsed = Settings(  # as the environment gives it: JSON
        _env_file=None,  # type: ignore[call-arg]
        jwt_secret=SECRET,  # type: ignore[arg-type]
        session_pool_templates='{"opus": {"size": 2, "config": {"model": "claude-opus-4-5"}}}',  # type: ignore[arg-type]
    )
    assert parsed.session_pool_templates["opus"].config.model == "claude-opus-4-5"
