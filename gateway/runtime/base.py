"""The runtime contract: start, stop, remove, inspect and list session containers.

Mechanism only. Timeouts, retries, cleanup after failure and what a status means live in the
session service. Backends translate their own errors into the exceptions below, and every
method that ends something is idempotent: a missing container is not an error.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field


class RuntimeFailure(Exception):
    """The runtime could not do what was asked (engine down, refused, ...)."""


class ImageMissing(RuntimeFailure):
    """The session image is not present on the engine."""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to start one session container."""

    name: str
    image: str
    env: Mapping[str, str]
    labels: Mapping[str, str]
    network: str | None = None
    cpus: float | None = None
    memory: str | None = None
    pids_limit: int | None = None


@dataclass(frozen=True)
class ContainerState:
    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    running: bool = False
    status: str = "unknown"  # the engine's word: created, running, exited, dead, ...
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""


@dataclass(frozen=True)
class ContainerExit:
    """A managed container stopped running (for whatever reason)."""

    container_id: str
    labels: Mapping[str, str]
    exit_code: int | None


class SessionRuntime(abc.ABC):
    @abc.abstractmethod
    async def start(self, spec: ContainerSpec) -> ContainerState:
        """Create and start a container; raises ``ImageMissing`` or ``RuntimeFailure``."""

    @abc.abstractmethod
    async def stop(self, container_id: str, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. Idempotent."""

    @abc.abstractmethod
    async def remove(self, container_id: str) -> None:
        """Remove the container (killing it if needed). Idempotent."""

    @abc.abstractmethod
    async def inspect(self, container_id: str) -> ContainerState | None:
        """The container's state, or ``None`` when it does not exist."""

    @abc.abstractmethod
    async def list_managed(self) -> list[ContainerState]:
        """Every container this gateway instance manages, running or not."""

    @abc.abstractmethod
    def exits(self) -> AsyncIterator[ContainerExit]:
        """Managed containers that stop, as they stop. Runs until cancelled."""

    @abc.abstractmethod
    async def logs_tail(self, container_id: str, lines: int) -> str:
        """The last ``lines`` of the container's output ('' when it is gone)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``RuntimeFailure`` unless the engine answers."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and threads."""
