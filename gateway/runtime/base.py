"""The runtime contract: start, stop, remove, inspect and list session containers.

Mechanism only. Timeouts, retries, cleanup after failure and what a status means live in the
session service. Backends translate their own errors into the exceptions below, and every
method that ends something is idempotent: a missing container is not an error.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO


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
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class ArchiveStream:
    """A tar stream read from a container: ``chunks`` is a blocking iterator of bytes, to be
    consumed in a worker thread; ``stat`` describes the path (``name``, ``size``, ``mode``,
    ``linkTarget``). Close it when done, consumed or not."""

    def __init__(
        self, chunks: Iterator[bytes], stat: Mapping[str, object], close: Callable[[], None]
    ) -> None:
        self.chunks = chunks
        self.stat = stat
        self._close = close

    def close(self) -> None:
        self._close()

    def __enter__(self) -> ArchiveStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PathMissing(RuntimeFailure):
    """The path does not exist in the container."""


@dataclass(frozen=True)
class ContainerExit:
    """A managed container stopped running (for whatever reason)."""

    container_id: str
    labels: Mapping[str, str]
    exit_code: int | None


class SessionRuntime(abc.ABC):
    @abc.abstractmethod
    async def create(self, spec: ContainerSpec) -> ContainerState:
        """Create a container without starting it (files can be copied in first); raises
        ``ImageMissing`` or ``RuntimeFailure``."""

    @abc.abstractmethod
    async def start(self, container_id: str) -> None:
        """Start a created container."""

    @abc.abstractmethod
    async def put_archive(self, container_id: str, path: str, data: BinaryIO) -> None:
        """Extract the tar read from ``data`` (streamed, read in a worker thread) at ``path``.
        Works on created and stopped containers too."""

    @abc.abstractmethod
    async def get_archive(self, container_id: str, path: str) -> ArchiveStream:
        """A tar of ``path`` (a symlink is archived as the link itself); raises
        ``PathMissing``. Works on stopped containers too."""

    @abc.abstractmethod
    async def exec(self, container_id: str, argv: Sequence[str]) -> ExecResult:
        """Run ``argv`` in the running container as its default user; no shell."""

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
