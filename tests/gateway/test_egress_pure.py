"""SESSION_EGRESS as a policy, and the firewall rules the Docker backend makes of it, checked on
the builders without an engine (tests/e2e/test_egress.py attacks the real thing)."""

from __future__ import annotations

import pytest

from gateway.config import Settings
from gateway.main import egress_policy
from gateway.runtime import OPEN_EGRESS, EgressPolicy, IsolationUnavailable
from gateway.runtime.docker_egress import rules_v4, rules_v6
from gateway.runtime.docker_network import bridge_name

SECRET = "x" * 40


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, jwt_secret=SECRET, **values)  # type: ignore[arg-type]


def test_none_allows_the_ports_where_sessions_reach_the_gateway_and_redis() -> None:
    assert egress_policy(_settings()) == EgressPolicy(open=False, host_ports=(6379, 8000))
    settings = _settings(
        port=9000,  # where the gateway listens is not where sessions reach it
        session_gateway_url="http://ccd-host:18000",
        redis_url="redis://u:p@redis:6379/0",
        session_redis_url="redis://ccd-host:16379/0",
    )
    assert egress_policy(settings).host_ports == (16379, 18000)
    assert egress_policy(_settings(session_gateway_url="https://ccd-host")).host_ports == (
        443,
        6379,
    )
    assert egress_policy(_settings(session_egress="open")) is OPEN_EGRESS


def test_none_refuses_session_urls_that_name_another_host() -> None:
    with pytest.raises(ValueError, match="SESSION_GATEWAY_URL"):
        egress_policy(_settings(session_gateway_url="http://gateway.internal:8000"))
    with pytest.raises(ValueError, match="SESSION_REDIS_URL"):
        egress_policy(_settings(session_redis_url="redis://10.0.0.5:6379/0"))
    # Open egress reaches wherever they are.
    assert egress_policy(
        _settings(session_egress="open", session_redis_url="redis://10.0.0.5:6379/0")
    ).open


def test_the_bridge_is_named_by_docker_or_by_its_option() -> None:
    network_id = "fc5f75067b42c9abe87ac11b2cd5af0793fcdf4af9bbe8370570973147df4058"
    assert bridge_name({"Id": network_id, "Options": {}}) == "br-fc5f75067b42"
    named = {"Id": network_id, "Options": {"com.docker.network.bridge.name": "ccd0"}}
    assert bridge_name(named) == "ccd0"


def test_rules_reject_everything_but_tcp_to_the_allowed_host_ports() -> None:
    rules = rules_v4("br-0123456789ab", "172.30.0.1", (6379, 8000)).splitlines()
    inbound, forward = "CCD-IN-br-0123456789ab", "CCD-FWD-br-0123456789ab"
    assert rules[0] == "*filter" and rules[-1] == "COMMIT"
    # Declared, so iptables-restore --noflush empties them first: applying again replaces.
    assert f":{inbound} - [0:0]" in rules and f":{forward} - [0:0]" in rules
    own = [line for line in rules if line.startswith(f"-A {inbound} ")]
    assert own == [
        f"-A {inbound} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {inbound} -d 172.30.0.1/32 -p tcp -m tcp --dport 6379 -j RETURN",
        f"-A {inbound} -d 172.30.0.1/32 -p tcp -m tcp --dport 8000 -j RETURN",
        f"-A {inbound} -p tcp -j REJECT --reject-with tcp-reset",
        f"-A {inbound} -j REJECT --reject-with icmp-port-unreachable",
    ]
    forwarded = [line for line in rules if line.startswith(f"-A {forward} ")]
    assert forwarded[0] == f"-A {forward} -o br-0123456789ab -j RETURN"  # Docker's ICC rule
    assert "--ctstate DNAT --ctorigdst 172.30.0.1/32 --ctorigdstport 6379" in forwarded[1]
    assert forwarded[-1] == f"-A {forward} -j REJECT --reject-with icmp-port-unreachable"
    # Nothing is ever accepted: the host's own rules still apply to what is let through.
    assert not [line for line in rules if "ACCEPT" in line]
    assert all(len(chain) <= 28 for chain in (inbound, forward))


def test_ipv6_rules_let_nothing_leave_the_bridge() -> None:
    rules = rules_v6("br-0123456789ab").splitlines()
    assert "-A CCD-IN-br-0123456789ab -j REJECT" in rules
    assert "-A CCD-FWD-br-0123456789ab -j REJECT" in rules


def test_a_bridge_name_iptables_cannot_take_is_refused() -> None:
    with pytest.raises(IsolationUnavailable):
        rules_v4("br bad;name", "172.30.0.1", (1,))
    with pytest.raises(IsolationUnavailable):
        rules_v6("a-name-longer-than-15")
