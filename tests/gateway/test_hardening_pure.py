"""What a session container is given, checked on the builders without an engine (the real
container is inspected in tests/e2e/test_confinement.py)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

from docker.types import Mount

from gateway.config import Settings
from gateway.db.models import SessionRow
from gateway.events import access
from gateway.runtime.docker_network import isolation_problem
from gateway.runtime.docker_spec import create_kwargs
from gateway.services.container_spec import build_container_spec

SECRET = "x" * 40
SID = uuid.UUID("11111111-2222-3333-4444-555555555555")


def _spec(**values: object):  # type: ignore[no-untyped-def]
    settings = Settings(_env_file=None, jwt_secret=SECRET, **values)  # type: ignore[arg-type]
    row = SessionRow(
        id=SID,
        owner="alice",
        instance="prod",
        image="img",
        config={},
        claude_session_id=uuid.uuid4(),
        root_id=SID,
        depth=0,
        path=[],
    )
    return build_container_spec(settings, row, "token", "redis://u:p@ccd-host:6379/0", "key")


def test_docker_gets_every_hardening_option() -> None:
    spec = _spec(session_memory="1g", session_tmp_size="64m", session_home_size="32m")
    options = create_kwargs(
        spec, network="net", extra_hosts={"ccd-host": "172.30.0.1"}, volume_labels={"a": "b"}
    )
    assert options["read_only"] is True
    assert options["user"] == "10001:10001"
    assert options["cap_drop"] == ["ALL"]
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["mem_limit"] == options["memswap_limit"] == 1024**3  # no swap
    assert options["oom_score_adj"] > 0
    assert options["ulimits"][0]["Name"] == "nofile"
    assert options["log_config"]["Config"] == {"max-size": str(10 * 1024**2), "max-file": "3"}
    assert options["network"] == "net"
    assert options["extra_hosts"] == {"ccd-host": "172.30.0.1"}
    tmpfs = options["tmpfs"]
    assert set(tmpfs) == {"/tmp", "/run", "/home/claude"}
    assert "size=67108864" in tmpfs["/tmp"] and "nosuid" in tmpfs["/tmp"]
    assert "uid=10001" in tmpfs["/home/claude"] and "size=33554432" in tmpfs["/home/claude"]
    targets = {mount["Target"] for mount in options["mounts"] if isinstance(mount, Mount)}
    assert targets == {"/workspace", "/home/claude/.claude"}
    assert all(mount["Type"] == "volume" and not mount["Source"] for mount in options["mounts"])
    assert "dns" not in options  # the engine's defaults, unless egress is closed


def test_closed_egress_points_the_resolver_at_the_host() -> None:
    options = create_kwargs(
        _spec(),
        network="net",
        extra_hosts={"ccd-host": "172.30.0.1"},
        volume_labels={},
        dns=["172.30.0.1"],
        dns_options=["timeout:1", "attempts:1"],
    )
    assert options["dns"] == ["172.30.0.1"]
    assert options["dns_opt"] == ["timeout:1", "attempts:1"]


def test_a_network_that_lets_containers_talk_is_refused() -> None:
    isolated = {"Driver": "bridge", "Options": {"com.docker.network.bridge.enable_icc": "false"}}
    assert isolation_problem(isolated) is None
    assert "enable_icc" in str(isolation_problem({"Driver": "bridge", "Options": {}}))
    assert "driver" in str(isolation_problem({"Driver": "overlay", "Options": {}}))


def test_a_session_redis_user_reaches_only_its_own_streams() -> None:
    rules = access.acl_rules(str(SID), "ab" * 32)
    assert rules[:2] == ["reset", "on"]
    assert "-@all" in rules and "resetchannels" in rules  # nothing else, no pub/sub
    keys = [rule for rule in rules if "~" in rule]
    assert keys == [f"~ccd:session:{SID}:in", f"(+xadd %W~ccd:session:{SID}:out)"]
    assert not any(rule.startswith("+") and "xadd" in rule for rule in rules)  # only in selector


def test_session_redis_passwords_are_derived_per_container_and_never_sent() -> None:
    keeper = access.SessionAccess(None, "key", "redis://ccd-host:6380/2", "prod")  # type: ignore[arg-type]
    first = datetime(2026, 12, 1, tzinfo=UTC)
    again = datetime(2026, 12, 2, tzinfo=UTC)
    assert keeper.password(SID, first) == keeper.password(SID, first)  # any replica agrees
    assert keeper.password(SID, first) != keeper.password(SID, again)  # a resume changes it
    assert keeper.password(SID, first) != access.SessionAccess(
        None,  # type: ignore[arg-type]
        "other key",
        "redis://h",
        "prod",
    ).password(SID, first)
    url = keeper.url_for(SID, first)
    assert url == f"redis://ccd-session-prod-{SID}:{keeper.password(SID, first)}@ccd-host:6380/2"
    digest = hashlib.sha256(keeper.password(SID, first).encode()).hexdigest()
    assert len(digest) == 64
