"""Pure translation of a ``ContainerSpec`` into the Docker SDK's create arguments.

No I/O, so the exact hardening a container gets is testable without an engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from docker.types import LogConfig, Mount, Ulimit

from gateway.runtime.base import ContainerSpec, ScratchMount

_LOG_DRIVER = "json-file"  # supports rotation and `docker logs` (the failure logs we keep)


def create_kwargs(
    spec: ContainerSpec,
    *,
    network: str | None,
    extra_hosts: Mapping[str, str],
    volume_labels: Mapping[str, str],
    dns: Sequence[str] = (),
    dns_options: Sequence[str] = (),
) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create(spec.image, **kwargs)``. ``dns``: where
    the engine's resolver forwards names it does not know (default: the host's servers)."""
    options: dict[str, Any] = {
        "name": spec.name,
        "environment": dict(spec.env),
        "labels": dict(spec.labels),
        "detach": True,
        "user": spec.user,
        "read_only": spec.read_only_root,
        "tmpfs": {scratch.path: _tmpfs_options(scratch) for scratch in spec.scratch},
        # Anonymous volumes: they outlive a stop (files are saved from stopped containers)
        # and go with the container (removed with v=True).
        "mounts": [
            Mount(target=path, source=None, type="volume", labels=dict(volume_labels))
            for path in spec.persistent_paths
        ],
        "ulimits": [Ulimit(name="nofile", soft=spec.nofile, hard=spec.nofile)],
        "oom_score_adj": spec.oom_score_adj,
        "log_config": LogConfig(
            type=_LOG_DRIVER,
            config={"max-size": str(spec.log_max_bytes), "max-file": str(spec.log_max_files)},
        ),
        "extra_hosts": dict(extra_hosts),
    }
    if spec.drop_all_capabilities:
        options["cap_drop"] = ["ALL"]
    if spec.no_new_privileges:
        options["security_opt"] = ["no-new-privileges"]
    if network:
        options["network"] = network
    if dns:
        options["dns"] = list(dns)
    if dns_options:
        options["dns_opt"] = list(dns_options)
    if spec.cpus:
        options["nano_cpus"] = int(spec.cpus * 1e9)
    if spec.memory_bytes:
        options["mem_limit"] = spec.memory_bytes
        options["memswap_limit"] = spec.memory_bytes  # equal: no swap at all
    if spec.pids_limit:
        options["pids_limit"] = spec.pids_limit
    return options


def _tmpfs_options(scratch: ScratchMount) -> str:
    parts = [f"size={scratch.size_bytes}", f"mode={scratch.mode:o}", "nosuid", "nodev"]
    if scratch.uid is not None:
        parts.append(f"uid={scratch.uid}")
    if scratch.gid is not None:
        parts.append(f"gid={scratch.gid}")
    return ",".join(parts)
