"""The runtime contract: start, stop, remove, inspect and list session containers.

Mechanism only, and neutral about the engine (Docker today, Kubernetes later): timeouts,
retries, cleanup after failure and what a status means live in the session service. Backends
translate their own errors into the exceptions below and their own states into
``ContainerPhase``; no engine wire format leaves a backend. Every method that ends something is
idempotent: a missing container is not an error there. Hardening is part of the spec, not a
backend's choice: a backend that cannot apply a field must refuse the spec.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import BinaryIO


class RuntimeFailure(Exception):
    """The runtime could not do what was asked (engine down, refused, ...)."""


class ImageMissing(RuntimeFailure):
    """The session image is not present on the engine."""


class ContainerMissing(RuntimeFailure):
    """The container does not exist (never created, removed, or lost by the engine). Never
    "nothing to save": its files are gone, which callers must treat as a loss."""


class IsolationUnavailable(RuntimeFailure):
    """The engine cannot keep sessions apart or confined as asked (a shared network that does
    not keep containers apart, an egress policy it cannot enforce): nothing may start until an
    operator fixes it."""


class PathMissing(RuntimeFailure):
    """The path does not exist in a container that does."""


@dataclass(frozen=True)
class EgressPolicy:
    """What session containers may open connections to, beyond answering what they are asked.

    ``open``: anything their network routes to (the engine's defaults). Otherwise only TCP to
    ``host_ports`` of the host as the sessions see it (``ccd-host``: the gateway and Redis);
    no other host service, no other network, no internet, no cloud metadata address, no name
    resolution beyond the session network. A backend enforces it outside the container (a
    firewall of the engine's host, a NetworkPolicy), never by anything the session can change.
    """

    open: bool
    host_ports: tuple[int, ...] = ()

    @classmethod
    def only_host_ports(cls, *ports: int) -> EgressPolicy:
        return cls(open=False, host_ports=tuple(sorted(set(ports))))


OPEN_EGRESS = EgressPolicy(open=True)


@dataclass(frozen=True)
class ScratchMount:
    """An in-memory filesystem of bounded size, emptied when the container stops."""

    path: str
    size_bytes: int
    mode: int = 0o1777
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to start one session container, hardening included.

    The root filesystem is read-only; only ``scratch`` (in memory, bounded) and
    ``persistent_paths`` (kept across a stop so files can be saved from a stopped container,
    removed with the container) are writable. Memory is also the limit of memory plus swap (no
    swap). The process runs as ``user``, never the image's default, with no capabilities and
    no way to gain privileges.
    """

    name: str
    image: str
    env: Mapping[str, str]
    labels: Mapping[str, str]
    user: str  # "uid:gid"
    persistent_paths: tuple[str, ...] = ()
    scratch: tuple[ScratchMount, ...] = ()
    cpus: float | None = None
    memory_bytes: int | None = None
    pids_limit: int | None = None
    nofile: int = 8192
    oom_score_adj: int = 500
    log_max_bytes: int = 10 * 1024 * 1024
    log_max_files: int = 3
    read_only_root: bool = True
    drop_all_capabilities: bool = True
    no_new_privileges: bool = True


class ContainerPhase(StrEnum):
    CREATED = "created"  # created, not started yet
    RUNNING = "running"
    EXITED = "exited"  # stopped or dead; its files can still be read


@dataclass(frozen=True)
class ContainerState:
    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    phase: ContainerPhase = ContainerPhase.EXITED
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    image_id: str = ""  # the image it runs, by content (a tag updated in place is another)

    @property
    def running(self) -> bool:
        return self.phase == ContainerPhase.RUNNING


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


@dataclass(frozen=True)
class ContainerExit:
    """A managed container stopped running (for whatever reason)."""

    container_id: str
    labels: Mapping[str, str]
    exit_code: int | None


class SessionRuntime(abc.ABC):
    @abc.abstractmethod
    async def setup(self, egress: EgressPolicy) -> None:
        """Prepare what every session shares (an isolated network, the egress policy ``egress``
        enforced on it), at start-up; idempotent, so calling it again re-applies the policy
        (after a reboot lost it). Raises ``IsolationUnavailable`` with a clear message when
        sessions could not be kept apart or confined as asked (the gateway then refuses to
        start), ``RuntimeFailure`` when the engine does not answer (then ``create`` prepares
        the same before the first container, and fails rather than start one unconfined)."""

    @abc.abstractmethod
    async def create(self, spec: ContainerSpec) -> ContainerState:
        """Create a container without starting it (files can be copied in first); raises
        ``ImageMissing`` or ``RuntimeFailure``."""

    @abc.abstractmethod
    async def start(self, container_id: str) -> None:
        """Start a created container."""

    @abc.abstractmethod
    async def put_archive(self, container_id: str, path: str, data: BinaryIO) -> None:
        """Extract the tar read from ``data`` (streamed, read in a worker thread) at ``path``,
        which must be in one of the spec's ``persistent_paths``. Works on created and stopped
        containers too. Raises ``ContainerMissing``, ``PathMissing``."""

    @abc.abstractmethod
    async def get_archive(self, container_id: str, path: str) -> ArchiveStream:
        """A tar of ``path`` (a symlink is archived as the link itself; ``dir/.`` archives the
        directory's contents with names relative to it). Works on stopped containers too, for
        paths in ``persistent_paths``. Raises ``ContainerMissing``, ``PathMissing``."""

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
    async def disk_usage(self, container_ids: Collection[str]) -> dict[str, int]:
        """Bytes each of ``container_ids`` keeps in its ``persistent_paths``, all measured in
        one pass by the engine's own accounting (not in the containers, where every session
        would cost an exec and could hide files from its own user). A file counts at its
        length, as a save would archive it (a sparse file whole), whatever its permissions.
        A container that does not exist is left out. Raises ``RuntimeFailure`` when nothing
        could be measured."""

    @abc.abstractmethod
    async def tree_digest(self, container_id: str, path: str) -> str:
        """A digest of everything under ``path`` in the running container, different as soon
        as anything there is written, created, removed, renamed or has its mode changed. Raises
        ``ContainerMissing``, or ``RuntimeFailure`` when it cannot be taken (an entry the
        session user cannot read, say)."""

    @abc.abstractmethod
    async def logs_tail(self, container_id: str, lines: int) -> str:
        """The last ``lines`` of the container's output ('' when it is gone)."""

    @abc.abstractmethod
    async def image_id(self, image: str) -> str:
        """The content id of the image ``image`` names now (a tag rebuilt in place names
        another); raises ``ImageMissing``."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``RuntimeFailure`` unless the engine answers."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and threads."""
