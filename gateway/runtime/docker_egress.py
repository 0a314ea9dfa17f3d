"""Egress of session containers on Docker: firewall rules on the engine's host, per network.

Under a closed ``EgressPolicy`` a session may open TCP connections only to the allowed ports of
its network's host address (``ccd-host``: the gateway and Redis, host processes or published
ports). Everything else it sends is rejected by netfilter on the engine's host, outside the
container's network namespace, where a session (no capabilities) cannot reach:

- DOCKER-USER (FORWARD): anything in on the session bridge that would leave on another
  interface (the internet, the cloud metadata address, other Docker networks), except
  connections Docker's NAT turned from ``<host address>:<allowed port>`` into a container's
  address (published ports on an engine that runs without its userland proxy);
- INPUT: anything in on the bridge to the host itself (any of its addresses), except replies
  and TCP to ``<host address>:<allowed port>``;
- IPv6, when the kernel has it: everything in on the bridge (sessions use IPv4 ``ccd-host``).

Rejected, not dropped: a blocked connection fails at once instead of hanging a tool until its
timeout. The rules only ever reject or return to the host's own rules, never accept.

They live in chains of our own named after the bridge (``CCD-IN-<bridge>``, ``CCD-FWD-<bridge>``,
at most 23 characters of iptables' 28), so applying again replaces them in one transaction
(``iptables-restore --noflush``), and chains whose bridge is gone are removed whenever the
helper runs. They are installed by a short-lived helper container from the session image (it
carries ``iptables``) in the host's network namespace with NET_ADMIN and NET_RAW only, through
the Engine API: the gateway needs no privilege beyond the Docker socket it already holds, and
the engine may be remote. The helper uses the iptables backend (nft or legacy) that holds
Docker's own chains, and the host's xtables lock when there is one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import docker
import docker.errors
from docker.types import Mount

from gateway.runtime.base import EgressPolicy, ImageMissing, IsolationUnavailable
from gateway.runtime.docker_network import SessionNetwork

log = logging.getLogger(__name__)

CHAIN_IN = "CCD-IN-"
CHAIN_FORWARD = "CCD-FWD-"
LABEL_HELPER = "cc-docker.egress-helper"
HELPER_TIMEOUT = 60  # seconds; the helper takes well under one
_XTABLES_LOCK = "/run/xtables.lock"
_BRIDGE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # a Linux interface name, safe in a chain name

# The helper: ``sh -c SCRIPT ccd-egress MODE BRIDGE`` with the rules in CCD_RULES4/CCD_RULES6.
# MODE apply installs them, remove takes the bridge's rules away, sweep only collects garbage.
# Exit 3: the host cannot take the rules; 4: this image cannot install them.
HELPER_SCRIPT = r"""
set -u
mode=$1 bridge=$2
fail() { echo "$2" >&2; exit "$1"; }
command -v iptables-nft >/dev/null && command -v iptables-legacy >/dev/null ||
    fail 4 "the image has no iptables (rebuild it from container/Dockerfile)"
# Docker's own chains tell which iptables backend the host uses.
if iptables-nft -w -S DOCKER-USER >/dev/null 2>&1; then backend=nft
elif iptables-legacy -w -S DOCKER-USER >/dev/null 2>&1; then backend=legacy
else fail 3 "the engine's host has no DOCKER-USER chain (nft or legacy): Docker manages no \
firewall there (dockerd --iptables=false?)"
fi
ipt() { "$tables-$backend" -w "$@"; }
unhook() {
    for pair in INPUT:CCD-IN DOCKER-USER:CCD-FWD FORWARD:CCD-FWD; do
        while ipt -D "${pair%%:*}" -i "$1" -j "${pair#*:}-$1" 2>/dev/null; do :; done
    done
    for chain in "CCD-IN-$1" "CCD-FWD-$1"; do
        if ipt -F "$chain" 2>/dev/null; then ipt -X "$chain"; fi
    done
}
hook() {
    ipt -C "$1" -i "$bridge" -j "$2" 2>/dev/null || ipt -I "$1" 1 -i "$bridge" -j "$2" ||
        fail 3 "could not hook $2 into $1 ($tables)"
}
families=4
if [ -e /proc/net/if_inet6 ]; then families="4 6"; fi
for f in $families; do
    tables=iptables
    if [ "$f" = 6 ]; then tables=ip6tables; fi
    for gone in $(ipt -S | sed -n 's/^-N CCD-\(IN\|FWD\)-//p' | sort -u); do
        [ -e "/sys/class/net/$gone" ] || unhook "$gone"
    done
    case $mode in
    apply)
        [ -e "/sys/class/net/$bridge" ] || fail 3 "no interface $bridge on the engine's host"
        eval "rules=\$CCD_RULES$f"
        printf '%s\n' "$rules" | "$tables-$backend-restore" -w --noflush ||
            fail 3 "$tables-restore refused the rules"
        hook INPUT "CCD-IN-$bridge"
        # Docker's forwarding rules accept early: ours go first, in DOCKER-USER where it has one.
        if ipt -S DOCKER-USER >/dev/null 2>&1; then hook DOCKER-USER "CCD-FWD-$bridge"
        else hook FORWARD "CCD-FWD-$bridge"; fi
        ;;
    remove) unhook "$bridge" ;;
    esac
done
echo "$backend"
"""


def valid_bridge(bridge: str) -> str:
    if not _BRIDGE.match(bridge):
        raise IsolationUnavailable(f"bridge interface name {bridge!r} is not one iptables takes")
    return bridge


def rules_v4(bridge: str, host_address: str, ports: Sequence[int]) -> str:
    """``iptables-restore --noflush`` input: the bridge's two chains, (re)declared and so
    emptied, then filled, in one transaction."""
    inbound, forward = CHAIN_IN + valid_bridge(bridge), CHAIN_FORWARD + bridge
    lines = [
        "*filter",
        f":{inbound} - [0:0]",
        f":{forward} - [0:0]",
        f"-A {inbound} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        *(
            f"-A {inbound} -d {host_address}/32 -p tcp -m tcp --dport {port} -j RETURN"
            for port in ports
        ),
        f"-A {inbound} -p tcp -j REJECT --reject-with tcp-reset",
        f"-A {inbound} -j REJECT --reject-with icmp-port-unreachable",
        # Within the bridge Docker's own rule decides (inter-container traffic is off).
        f"-A {forward} -o {bridge} -j RETURN",
        *(
            f"-A {forward} -p tcp -m conntrack --ctstate DNAT --ctorigdst {host_address}/32 "
            f"--ctorigdstport {port} -j RETURN"
            for port in ports
        ),
        f"-A {forward} -p tcp -j REJECT --reject-with tcp-reset",
        f"-A {forward} -j REJECT --reject-with icmp-port-unreachable",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def rules_v6(bridge: str) -> str:
    """Sessions reach the gateway and Redis over IPv4: nothing over IPv6 leaves the bridge."""
    inbound, forward = CHAIN_IN + valid_bridge(bridge), CHAIN_FORWARD + bridge
    lines = [
        "*filter",
        f":{inbound} - [0:0]",
        f":{forward} - [0:0]",
        f"-A {inbound} -j REJECT",
        f"-A {forward} -o {bridge} -j RETURN",
        f"-A {forward} -j REJECT",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def apply_egress(
    client: docker.DockerClient, image: str, network: SessionNetwork, policy: EgressPolicy
) -> None:
    """Enforce ``policy`` for every container of ``network`` (blocking; idempotent). Closed:
    raises ``IsolationUnavailable`` when the engine cannot (rootless, no iptables, the helper
    cannot run). Open: removes rules an earlier closed policy left; failing that only warns
    (sessions then stay confined, which is safe)."""
    if policy.open:
        try:
            _run_helper(client, image, "remove", network.bridge, {})
        except IsolationUnavailable as exc:
            log.warning(
                "egress is open but rules from an earlier SESSION_EGRESS=none could not be "
                "checked or removed on %s: %s",
                network.name,
                exc,
            )
        return
    if _rootless(client):
        raise IsolationUnavailable(
            "the Docker engine runs rootless: its firewall is not the host's, so "
            "SESSION_EGRESS=none cannot be enforced; use a rootful engine or set "
            "SESSION_EGRESS=open"
        )
    env = {
        "CCD_RULES4": rules_v4(network.bridge, network.host_address, policy.host_ports),
        "CCD_RULES6": rules_v6(network.bridge),
    }
    backend = _run_helper(client, image, "apply", network.bridge, env)
    log.info(
        "egress of network %s (%s) limited to %s:%s (iptables %s)",
        network.name,
        network.bridge,
        network.host_address,
        ",".join(map(str, policy.host_ports)),
        backend,
    )


def sweep_egress_rules(client: docker.DockerClient, image: str) -> None:
    """Remove the rules of every bridge that no longer exists (blocking). What a removed
    network leaves is collected by the next helper anyway; this is for a clean teardown."""
    _run_helper(client, image, "sweep", "-", {})


def _rootless(client: docker.DockerClient) -> bool:
    info: dict[str, Any] = client.info()
    return any("rootless" in str(option) for option in info.get("SecurityOptions") or [])


def _run_helper(
    client: docker.DockerClient, image: str, mode: str, bridge: str, env: Mapping[str, str]
) -> str:
    """Run the helper to its end and remove it; its output (the iptables backend)."""
    options: dict[str, Any] = {
        "entrypoint": ["/bin/sh", "-c"],
        "command": [HELPER_SCRIPT, "ccd-egress", mode, bridge],
        "environment": dict(env),
        "user": "0:0",
        "network_mode": "host",
        "userns_mode": "host",  # capabilities must be the host's, even under userns-remap
        "cap_drop": ["ALL"],
        "cap_add": ["NET_ADMIN", "NET_RAW"],
        "labels": {LABEL_HELPER: "true"},
        "detach": True,
    }
    # Legacy iptables serialises writers with this lock: share the host's (dockerd's), so a
    # concurrent change by the engine is never lost. Not every host has the file.
    lock = Mount(target=_XTABLES_LOCK, source=_XTABLES_LOCK, type="bind")
    try:
        try:
            container = client.containers.create(image, mounts=[lock], **options)
        except docker.errors.APIError as exc:
            if "bind source path does not exist" not in str(exc.explanation or exc):
                raise
            container = client.containers.create(image, **options)
    except docker.errors.ImageNotFound as exc:
        # Not fatal at start-up: no session can start without the image either, and the
        # policy is applied before the first one once the image is there.
        raise ImageMissing(
            f"the egress helper runs the session image {image}, which the engine lacks: {exc}"
        ) from exc
    except docker.errors.DockerException as exc:
        raise IsolationUnavailable(f"the egress helper could not be created: {exc}") from exc
    try:
        container.start()
        code = int(container.wait(timeout=HELPER_TIMEOUT).get("StatusCode", -1))
        output = container.logs(stdout=True, stderr=True).decode(errors="replace").strip()
    except Exception as exc:  # the engine's errors, and requests' timeout on wait
        raise IsolationUnavailable(f"the egress helper did not finish: {exc}") from exc
    finally:
        try:
            container.remove(force=True)
        except docker.errors.DockerException as exc:
            log.warning("could not remove the egress helper %s: %s", container.id, exc)
    if code != 0:
        raise IsolationUnavailable(
            f"the egress helper ({image}) failed with exit code {code}: {output[-500:]}"
        )
    return output.splitlines()[-1] if output else ""
