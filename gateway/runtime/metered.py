"""The runtime contract with every failed engine call reported by operation (for metrics).

A decorator around any backend, so the count is the same whatever the engine and no backend
carries instrumentation. ``ContainerMissing`` and ``PathMissing`` are answers about state
(the container or path is not there), not failures of the engine, and are not reported.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import BinaryIO, TypeVar

from gateway.runtime.base import (
    ArchiveStream,
    ContainerExit,
    ContainerMissing,
    ContainerSpec,
    ContainerState,
    EgressPolicy,
    ExecResult,
    PathMissing,
    RuntimeFailure,
    SessionRuntime,
)

T = TypeVar("T")


class MeteredRuntime(SessionRuntime):
    def __init__(self, inner: SessionRuntime, on_failure: Callable[[str], None]) -> None:
        """``on_failure(operation)`` is called once per call that raised ``RuntimeFailure``
        (``ImageMissing`` and ``IsolationUnavailable`` included); the error still propagates."""
        self.inner = inner
        self._on_failure = on_failure

    async def _call(self, operation: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except (ContainerMissing, PathMissing):
            raise
        except RuntimeFailure:
            self._on_failure(operation)
            raise

    async def setup(self, egress: EgressPolicy) -> None:
        await self._call("setup", self.inner.setup(egress))

    async def create(self, spec: ContainerSpec) -> ContainerState:
        return await self._call("create", self.inner.create(spec))

    async def start(self, container_id: str) -> None:
        await self._call("start", self.inner.start(container_id))

    async def put_archive(self, container_id: str, path: str, data: BinaryIO) -> None:
        await self._call("put_archive", self.inner.put_archive(container_id, path, data))

    async def get_archive(self, container_id: str, path: str) -> ArchiveStream:
        return await self._call("get_archive", self.inner.get_archive(container_id, path))

    async def exec(self, container_id: str, argv: Sequence[str]) -> ExecResult:
        return await self._call("exec", self.inner.exec(container_id, argv))

    async def stop(self, container_id: str, grace: float) -> None:
        await self._call("stop", self.inner.stop(container_id, grace))

    async def remove(self, container_id: str) -> None:
        await self._call("remove", self.inner.remove(container_id))

    async def inspect(self, container_id: str) -> ContainerState | None:
        return await self._call("inspect", self.inner.inspect(container_id))

    async def list_managed(self) -> list[ContainerState]:
        return await self._call("list_managed", self.inner.list_managed())

    async def exits(self) -> AsyncIterator[ContainerExit]:
        try:
            async for exit_ in self.inner.exits():
                yield exit_
        except RuntimeFailure:
            self._on_failure("exits")
            raise

    async def disk_usage(self, container_ids: Collection[str]) -> dict[str, int]:
        return await self._call("disk_usage", self.inner.disk_usage(container_ids))

    async def tree_digest(self, container_id: str, path: str) -> str:
        return await self._call("tree_digest", self.inner.tree_digest(container_id, path))

    async def logs_tail(self, container_id: str, lines: int) -> str:
        return await self._call("logs_tail", self.inner.logs_tail(container_id, lines))

    async def image_id(self, image: str) -> str:
        return await self._call("image_id", self.inner.image_id(image))

    async def ping(self) -> None:
        await self._call("ping", self.inner.ping())

    async def close(self) -> None:
        await self.inner.close()
