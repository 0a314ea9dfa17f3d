"""Deterministic names and labels, so a restarted gateway can find its containers again."""

from __future__ import annotations

LABEL_MANAGED = "cc-docker.managed"
LABEL_INSTANCE = "cc-docker.instance"
LABEL_SESSION = "cc-docker.session-id"
LABEL_OWNER = "cc-docker.owner"
LABEL_POOL = "cc-docker.pool-id"  # a pooled container; after its claim the records say whose


def container_name(instance: str, session_id: str) -> str:
    return f"ccd-{instance}-{session_id}"


def pool_container_name(instance: str, pool_id: str) -> str:
    """A pooled container keeps this name after its claim (the engine's names are for
    people; the gateway maps a container to its session by its records)."""
    return f"ccd-{instance}-pool-{pool_id}"


def pool_labels(instance: str, pool_id: str) -> dict[str, str]:
    return {**managed_labels(instance), LABEL_POOL: pool_id}


def session_network_name(instance: str) -> str:
    """The network the gateway makes for its sessions when SESSION_NETWORK names none."""
    return f"ccd-{instance}-sessions"


def managed_labels(instance: str) -> dict[str, str]:
    """Labels of everything an instance makes (containers, their volumes, its network)."""
    return {LABEL_MANAGED: "true", LABEL_INSTANCE: instance}


def session_labels(instance: str, session_id: str, owner: str) -> dict[str, str]:
    return {**managed_labels(instance), LABEL_SESSION: session_id, LABEL_OWNER: owner}


def instance_filter(instance: str) -> list[str]:
    """Docker label filters selecting one gateway instance's containers."""
    return [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"]
