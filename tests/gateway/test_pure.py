"""Pure pieces of the gateway: settings, the container spec, stream ids and envelopes."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from gateway.config import Settings
from gateway.db.models import SessionRow
from gateway.events.bus import Event, is_stream_id, parse_stream_id, stream_id_before
from gateway.runtime.naming import LABEL_INSTANCE, LABEL_OWNER, LABEL_SESSION
from gateway.services.container_spec import build_container_spec
from wrapper.protocol import ENV_SESSION_ID, ContainerEnv

SECRET = "x" * 32


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, jwt_secret=SECRET, **values)  # type: ignore[arg-type]


def test_settings_refuse_a_missing_or_short_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(_env_file=None, jwt_secret="short")  # type: ignore[call-arg, arg-type]


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("SESSION_EXTRA_ENV", "FOO=1, BAR=two=2")
    monkeypatch.setenv("PORT", "9000")
    loaded = Settings(_env_file=None)  # type: ignore[call-arg]
    assert loaded.session_extra_env == {"FOO": "1", "BAR": "two=2"}
    # Containers reach the host as ccd-host, never 0.0.0.0, and get no Redis credentials.
    assert loaded.effective_session_gateway_url == "http://ccd-host:9000"
    assert loaded.effective_session_redis_url == "redis://ccd-host:6379/0"
    with pytest.raises(ValidationError, match="credentials"):
        settings(session_redis_url="redis://gateway:secret@redis:6379/0")
    with pytest.raises(ValidationError, match="asyncpg"):
        settings(database_url="postgresql://u@h/db")
    with pytest.raises(ValidationError, match="NAME=value"):
        settings(session_extra_env="novalue")


def _row(**values: object) -> SessionRow:
    return SessionRow(
        id=uuid.UUID("11111111-2222-3333-4444-555555555555"),
        owner="alice",
        instance="prod",
        image="cc-docker/session:test",
        config={"model": "m"},
        claude_session_id=uuid.UUID("66666666-2222-3333-4444-555555555555"),
        root_id=uuid.UUID("11111111-2222-3333-4444-555555555555"),
        depth=0,
        path=[],
        **values,
    )


def test_container_spec_carries_labels_limits_and_the_contract() -> None:
    spec = build_container_spec(
        settings(
            instance_name="prod",
            session_network="sessions",
            session_cpus=0.5,
            session_memory="1g",
            session_pids_limit=100,
            anthropic_api_key="sk-1",
            anthropic_base_url="http://api",
            session_extra_env={"CCD_SESSION_ID": "spoofed", "HTTP_PROXY": "http://proxy"},
        ),
        _row(),
        "cap-token",
        "redis://ccd-session-x:pw@ccd-host:6379/0",
        "model-key",
    )
    sid = "11111111-2222-3333-4444-555555555555"
    assert spec.name == f"ccd-prod-{sid}"
    assert spec.image == "cc-docker/session:test"
    assert spec.labels[LABEL_SESSION] == sid
    assert spec.labels[LABEL_OWNER] == "alice"
    assert spec.labels[LABEL_INSTANCE] == "prod"
    assert (spec.cpus, spec.memory_bytes, spec.pids_limit) == (0.5, 1024**3, 100)
    assert spec.env["CCD_REDIS_URL"] == "redis://ccd-session-x:pw@ccd-host:6379/0"
    # The operator's key stays in the gateway; the CLI reaches the model through its proxy.
    assert "sk-1" not in json.dumps(dict(spec.env))
    assert spec.env["ANTHROPIC_BASE_URL"] == "http://ccd-host:8000/model"
    assert spec.env["HTTP_PROXY"] == "http://proxy"
    assert spec.env[ENV_SESSION_ID] == sid  # operators' extras cannot spoof the identity
    assert spec.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert spec.env["CCD_SESSION_TOKEN"] == "cap-token"
    assert spec.env["CCD_MODEL_KEY"] == "model-key"
    contract = ContainerEnv.from_env(spec.env)
    assert contract.config.model == "m"
    assert contract.claude_session_id == "66666666-2222-3333-4444-555555555555"


def test_no_model_credential_ever_reaches_a_container() -> None:
    operator = settings(
        anthropic_api_key="sk-op-1",
        anthropic_auth_token="tok-op-2",
        claude_code_oauth_token="oauth-op-3",
    )
    spec = build_container_spec(operator, _row(), "token", "redis://u:p@h:1/0", "key")
    assert not {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"} & set(
        spec.env
    )
    assert not {"sk-op-1", "tok-op-2", "oauth-op-3"} & set(spec.env.values())
    with pytest.raises(ValidationError, match="SESSION_EXTRA_ENV may not set ANTHROPIC_API_KEY"):
        settings(session_extra_env="ANTHROPIC_API_KEY=sk-sneaky")


def test_stream_ids_compare_numerically() -> None:
    assert parse_stream_id("10-2") > parse_stream_id("9-99")
    assert stream_id_before("10-2") == "10-1"
    assert stream_id_before("10-0") == f"9-{2**64 - 1}"
    assert stream_id_before("0-0") == "0-0"
    assert is_stream_id("1700000000000-3") and is_stream_id("0")
    assert not is_stream_id("yesterday") and not is_stream_id("1-x")


def test_envelope_embeds_the_event_unchanged() -> None:
    line = '{"type":"assistant","message":{"content":[{"type":"text","text":"é \\" }"}]}}'
    event = Event(
        id="5-1", session_id="s", source="claude", type="assistant", turn_id="t", data=line
    )
    envelope = json.loads(event.envelope_json())
    assert envelope == {
        "id": "5-1",
        "session_id": "s",
        "source": "claude",
        "turn_id": "t",
        "event": json.loads(line),
    }


def test_every_setting_is_documented_in_env_example(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / ".env.example"
    documented = {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    }
    settings_names = {name.upper() for name in Settings.model_fields}
    assert settings_names <= documented
    # the rest configure the compose stack and must really be used there
    root = Path(__file__).resolve().parents[2]
    stack = (root / "docker-compose.yml").read_text() + (root / "scripts/setup.sh").read_text()
    stack += (root / "scripts/lib.sh").read_text()
    assert {name for name in documented - settings_names if name not in stack} == set()
    # and the file as written (empty values included) is a valid configuration
    for name in documented:
        monkeypatch.delenv(name, raising=False)
    loaded = Settings(_env_file=example, jwt_secret=SECRET)  # type: ignore[call-arg, arg-type]
    assert loaded.jwt_audience is None and loaded.claude_code_max_retries is None


def test_a_gap_notice_has_no_cursor_and_names_what_is_left() -> None:
    gap = Event.gap("s", "5-1", "9-0", "trimmed")
    envelope = json.loads(gap.envelope_json())
    assert gap.is_notice
    assert envelope["id"] is None and envelope["turn_id"] is None
    assert envelope["event"] == {
        "type": "gap",
        "after": "5-1",
        "first_available": "9-0",
        "reason": "trimmed",
    }
