"""The network session containers join: one bridge on which containers cannot reach each other.

Docker's ``enable_icc=false`` drops traffic between containers of one bridge (by address and by
name), while a container still reaches the host through the bridge's own address, and through
it the gateway and Redis (published ports or host processes). That is the whole isolation
mechanism, so it costs nothing per session.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from gateway.runtime.base import IsolationUnavailable, RuntimeFailure

log = logging.getLogger(__name__)

ICC_OPTION = "com.docker.network.bridge.enable_icc"


BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"


@dataclass(frozen=True)
class SessionNetwork:
    name: str
    host_address: str  # the bridge's address: how a container reaches the host
    bridge: str  # the bridge's interface on the engine's host (where egress rules match)


def ensure_network(
    client: docker.DockerClient, name: str, labels: Mapping[str, str]
) -> SessionNetwork:
    """The network ``name``, created isolated when missing. Raises ``IsolationUnavailable``
    when an existing one lets containers talk to each other (or cannot be told)."""
    try:
        attrs = client.api.inspect_network(name)
    except docker.errors.NotFound:
        attrs = _create(client, name, labels)
    problem = isolation_problem(attrs)
    if problem:
        raise IsolationUnavailable(
            f"network {name!r} {problem}, so session containers could reach each other; "
            f"create it with `docker network create -o {ICC_OPTION}=false {name}`, or leave "
            "SESSION_NETWORK empty and the gateway makes its own"
        )
    return SessionNetwork(
        name=name, host_address=_gateway_address(attrs, name), bridge=bridge_name(attrs)
    )


def isolation_problem(attrs: Mapping[str, Any]) -> str | None:
    """Why containers on this network could reach each other, or ``None`` if they cannot."""
    driver = attrs.get("Driver")
    if driver != "bridge":
        return f"uses the {driver!r} driver (only a bridge can disable inter-container traffic)"
    if (attrs.get("Options") or {}).get(ICC_OPTION) != "false":
        return f"does not set {ICC_OPTION}=false"
    return None


def bridge_name(attrs: Mapping[str, Any]) -> str:
    """The host interface of a bridge network: its ``bridge.name`` option, else Docker's
    ``br-`` and the first 12 characters of the network's id (``docker0`` for the default
    network sets the option)."""
    named = (attrs.get("Options") or {}).get(BRIDGE_NAME_OPTION)
    return str(named) if named else f"br-{str(attrs.get('Id', ''))[:12]}"


def _create(client: docker.DockerClient, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    log.info("creating session network %s (inter-container traffic disabled)", name)
    try:
        client.api.create_network(
            name,
            driver="bridge",
            options={ICC_OPTION: "false"},
            labels=dict(labels),
            check_duplicate=True,
        )
    except docker.errors.APIError as exc:
        # Another replica created it first: use theirs.
        if exc.status_code != 409:
            raise
    attrs: dict[str, Any] = client.api.inspect_network(name)
    return attrs


def _gateway_address(attrs: Mapping[str, Any], name: str) -> str:
    for config in (attrs.get("IPAM") or {}).get("Config") or []:
        gateway = config.get("Gateway")
        if gateway:
            return str(gateway).split("/")[0]
    raise RuntimeFailure(
        f"network {name!r} has no gateway address for containers to reach the host"
    )
