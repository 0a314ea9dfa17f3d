"""The Docker Engine backend of the runtime contract, on the official ``docker`` SDK.

The SDK is synchronous, so every call runs on a small dedicated thread pool (the event loop
never waits on the engine), and the event stream has a thread of its own. Docker's errors and
states are translated here and never leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar

import docker
import docker.errors
from docker.models.containers import Container

from gateway.runtime.base import (
    ArchiveStream,
    ContainerExit,
    ContainerMissing,
    ContainerPhase,
    ContainerSpec,
    ContainerState,
    EgressPolicy,
    ExecResult,
    ImageMissing,
    PathMissing,
    RuntimeFailure,
    SessionRuntime,
)
from gateway.runtime.docker_egress import apply_egress
from gateway.runtime.docker_network import SessionNetwork, ensure_network
from gateway.runtime.docker_spec import create_kwargs
from gateway.runtime.naming import instance_filter, managed_labels, session_network_name

log = logging.getLogger(__name__)

T = TypeVar("T")

_DEFAULT_SOCKET = "unix:///var/run/docker.sock"
_ARCHIVE_CHUNK = 64 * 1024  # bounded memory per archive stream


# Docker's states, as the contract's phases.
_PHASES = {
    "created": ContainerPhase.CREATED,
    "running": ContainerPhase.RUNNING,
    "restarting": ContainerPhase.RUNNING,
    "paused": ContainerPhase.RUNNING,
}


class DockerRuntime(SessionRuntime):
    def __init__(
        self,
        instance: str,
        docker_host: str | None = None,
        *,
        helper_image: str,
        network: str | None = None,
        host_alias: str | None = None,
        workers: int = 16,
    ) -> None:
        """``network``: the session network (default ``ccd-<instance>-sessions``, made by
        ``setup``); ``host_alias``: a name every container resolves to the host's address on
        that network; ``helper_image``: an image with ``iptables`` that installs the egress
        rules (the session image)."""
        self._instance = instance
        self._base_url = docker_host or _DEFAULT_SOCKET
        self._network_name = network or session_network_name(instance)
        self._host_alias = host_alias
        self._helper_image = helper_image
        self._egress: EgressPolicy | None = None
        self._network: SessionNetwork | None = None
        self._prepare_lock = threading.Lock()
        self._workers = workers
        self._client_lock = threading.Lock()
        self._docker: docker.DockerClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker")

    @property
    def _client(self) -> docker.DockerClient:
        """Created on first use, in a worker thread: API version negotiation talks to the
        engine, and the gateway must start (and report not-ready) while the engine is down."""
        with self._client_lock:
            if self._docker is None:
                self._docker = docker.DockerClient(
                    base_url=self._base_url,
                    version="auto",
                    max_pool_size=self._workers,
                    timeout=120,
                )
            return self._docker

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except docker.errors.ImageNotFound as exc:
            raise ImageMissing(str(exc.explanation or exc)) from exc
        except docker.errors.NotFound as exc:
            raise _missing(exc) from exc
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(_describe(exc)) from exc

    async def setup(self, egress: EgressPolicy) -> None:
        def prepare() -> None:
            with self._prepare_lock:
                self._egress, self._network = egress, None  # prepared again, now
            self._session_network()

        await self._call(prepare)

    def _session_network(self) -> SessionNetwork:
        """The network, made and its egress policy enforced once (again after ``setup``);
        under a lock, since the first creates may race here."""
        with self._prepare_lock:
            if self._network is None:
                if self._egress is None:
                    raise RuntimeFailure("the runtime was not set up (setup() names the egress)")
                network = ensure_network(
                    self._client, self._network_name, managed_labels(self._instance)
                )
                apply_egress(self._client, self._helper_image, network, self._egress)
                self._network = network
            return self._network

    async def create(self, spec: ContainerSpec) -> ContainerState:
        container = await self._call(self._create, spec)
        return _state(container.attrs)

    async def start(self, container_id: str) -> None:
        await self._call(lambda: self._client.api.start(container_id))

    async def put_archive(self, container_id: str, path: str, data: BinaryIO) -> None:
        def put() -> None:
            if not self._client.api.put_archive(container_id, path, data):
                raise RuntimeFailure(f"the engine refused to extract an archive at {path}")

        await self._call(put)

    async def get_archive(self, container_id: str, path: str) -> ArchiveStream:
        def get() -> ArchiveStream:
            chunks, stat = self._client.api.get_archive(
                container_id, path, chunk_size=_ARCHIVE_CHUNK
            )
            return ArchiveStream(chunks, stat or {}, chunks.close)

        return await self._call(get)

    async def exec(self, container_id: str, argv: Sequence[str]) -> ExecResult:
        def run() -> ExecResult:
            created = self._client.api.exec_create(
                container_id, list(argv), stdout=True, stderr=True
            )
            stdout, stderr = self._client.api.exec_start(created["Id"], demux=True)
            code = self._client.api.exec_inspect(created["Id"]).get("ExitCode")
            return ExecResult(int(code or 0), stdout or b"", stderr or b"")

        return await self._call(run)

    async def disk_usage(self, container_ids: Collection[str]) -> dict[str, int]:
        # Two engine calls a round however many sessions run: which volumes each container
        # mounts, and the engine's sizes of its volumes (file lengths, read as root; computed
        # at every call). An exec of du in each container cost a process start in every
        # session and a few ms of this process's CPU per session per round, enough to put tens
        # of ms on the relay's tail with a hundred sessions.
        wanted = set(container_ids)

        def measure() -> dict[str, int]:
            listed = self._managed_summaries()
            sizes = _volume_sizes(self._client.api)
            used = {}
            for summary in listed:
                if summary.get("Id") not in wanted:
                    continue
                mounts = summary.get("Mounts") or []
                volumes = [m.get("Name") for m in mounts if m.get("Type") == "volume"]
                if all(name in sizes for name in volumes):
                    used[summary["Id"]] = sum(sizes[name] for name in volumes)
            return used

        return await self._call(measure)

    async def tree_digest(self, container_id: str, path: str) -> str:
        # Each entry's change time (ctime: a write, a rename, a mode change or a child's removal
        # moves it, and no one can set it back as `touch` does mtime), size, mode and name, hashed
        # in the container so that only the digest crosses the engine.
        script = 'find "$1" -xdev -printf "%C@ %s %m %p\\0" | sha256sum'
        result = await self.exec(container_id, ["sh", "-c", script, "digest", path])
        digest = result.stdout.split(b" ", 1)[0].decode(errors="replace")
        if result.exit_code or result.stderr or len(digest) != 64:
            raise RuntimeFailure(
                f"could not take a digest of {path}: "
                f"{result.stderr.decode(errors='replace')[:200] or result.exit_code}"
            )
        return digest

    def _create(self, spec: ContainerSpec) -> Container:
        network = self._session_network()
        closed = self._egress is not None and not self._egress.open
        options = create_kwargs(
            spec,
            network=network.name,
            extra_hosts={self._host_alias: network.host_address} if self._host_alias else {},
            volume_labels=spec.labels,
            # Docker's resolver forwards names it does not know: under closed egress only to
            # the host address, where the rules refuse it (on any engine, even one that would
            # forward to a host loopback resolver from the host's namespace), giving up after
            # a second rather than glibc's ten.
            dns=[network.host_address] if closed else (),
            dns_options=["timeout:1", "attempts:1"] if closed else (),
        )
        # create rather than run: run would try to pull a missing image.
        return self._client.containers.create(spec.image, **options)

    async def stop(self, container_id: str, grace: float) -> None:
        def stop() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._client.api.stop(container_id, timeout=max(0, round(grace)))

        await self._call(stop)

    async def remove(self, container_id: str) -> None:
        def remove() -> None:
            try:
                self._client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                # 409 "removal already in progress" means someone else is doing our job.
                if exc.status_code != 409:
                    raise

        await self._call(remove)

    async def inspect(self, container_id: str) -> ContainerState | None:
        def inspect() -> dict[str, Any] | None:
            try:
                attrs: dict[str, Any] = self._client.api.inspect_container(container_id)
            except docker.errors.NotFound:
                return None
            return attrs

        attrs = await self._call(inspect)
        return None if attrs is None else _state(attrs)

    async def list_managed(self) -> list[ContainerState]:
        def listing() -> list[ContainerState]:
            listed = self._managed_summaries()
            found = []
            for summary in listed:
                # The listing says all there is to know of a running container; only an ended
                # one is inspected (its exit code, OOM kill, error). Inspecting every one made
                # each reconciler pass cost a request per session (43% of an idle gateway's
                # CPU with 30 sessions). One removed meanwhile is simply gone.
                if summary.get("State") == "running":
                    found.append(_running_state(summary))
                    continue
                try:
                    found.append(_state(self._client.api.inspect_container(summary["Id"])))
                except docker.errors.NotFound:
                    continue
            return found

        return await self._call(listing)

    def _managed_summaries(self) -> list[dict[str, Any]]:
        """The engine's listing of this instance's containers, running or not (in a thread)."""
        listed: list[dict[str, Any]] = self._client.api.containers(
            all=True, filters={"label": instance_filter(self._instance)}
        )
        return listed

    async def logs_tail(self, container_id: str, lines: int) -> str:
        def logs() -> str:
            try:
                raw: bytes = self._client.api.logs(container_id, tail=lines)
            except docker.errors.NotFound:
                return ""
            return raw.decode("utf-8", errors="replace")

        return await self._call(logs)

    async def image_id(self, image: str) -> str:
        return str(await self._call(lambda: self._client.images.get(image).id))

    async def ping(self) -> None:
        await self._call(lambda: self._client.ping())

    async def exits(self) -> AsyncIterator[ContainerExit]:
        """Follow the engine's ``die`` events for our containers, reconnecting on failure."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ContainerExit] = asyncio.Queue()
        stop = threading.Event()
        holder: dict[str, Any] = {}

        def follow() -> None:
            while not stop.is_set():
                try:
                    stream = self._client.events(
                        decode=True,
                        filters={
                            "type": "container",
                            "event": "die",
                            "label": instance_filter(self._instance),
                        },
                    )
                    holder["stream"] = stream
                    for event in stream:
                        exit_ = _exit_from_event(event)
                        if exit_ is not None:
                            loop.call_soon_threadsafe(queue.put_nowait, exit_)
                except Exception as exc:  # engine restarts, socket errors: keep following
                    if stop.is_set():
                        return
                    log.warning("docker event stream broke (%s); reconnecting", exc)
                stop.wait(1.0)

        thread = threading.Thread(target=follow, name="docker-events", daemon=True)
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()
            stream = holder.get("stream")
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._docker is not None:
            await asyncio.to_thread(self._docker.close)  # closing the HTTP pool may block


def _exit_from_event(event: dict[str, Any]) -> ContainerExit | None:
    actor = event.get("Actor") or {}
    attributes = dict(actor.get("Attributes") or {})
    container_id = actor.get("ID") or event.get("id")
    if not container_id:
        return None
    code = attributes.pop("exitCode", None)
    return ContainerExit(
        container_id=container_id,
        labels=attributes,
        exit_code=int(code) if code is not None and str(code).lstrip("-").isdigit() else None,
    )


def _state(attrs: dict[str, Any]) -> ContainerState:
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    phase = _PHASES.get(str(state.get("Status", "")), ContainerPhase.EXITED)
    return ContainerState(
        id=attrs.get("Id", ""),
        name=str(attrs.get("Name", "")).lstrip("/"),
        labels=dict(config.get("Labels") or {}),
        phase=phase,
        exit_code=None if phase == ContainerPhase.RUNNING else state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        error=str(state.get("Error") or ""),
        image_id=str(attrs.get("Image") or ""),  # inspected: the image's id, not its tag
    )


def _running_state(summary: dict[str, Any]) -> ContainerState:
    """A running container's state from the engine's container listing."""
    names = summary.get("Names") or [""]
    return ContainerState(
        id=summary.get("Id", ""),
        name=str(names[0]).lstrip("/"),
        labels=dict(summary.get("Labels") or {}),
        phase=ContainerPhase.RUNNING,
        image_id=str(summary.get("ImageID") or ""),
    )


def _volume_sizes(api: docker.APIClient) -> dict[str, int]:
    """Every local volume's size in bytes, by name (those the engine could not size left
    out). The SDK's ``df()`` takes no ``type``, and without it the engine also sizes every
    container's writable layer and every image; so the request is built with the SDK's own
    helpers, which raise its usual errors."""
    answer = api._result(api._get(api._url("/system/df"), params={"type": "volume"}), json=True)
    sizes = {}
    for volume in answer.get("Volumes") or []:
        size = (volume.get("UsageData") or {}).get("Size", -1)
        if isinstance(size, int) and size >= 0:  # -1: not computed
            sizes[volume["Name"]] = size
    return sizes


def _missing(exc: docker.errors.NotFound) -> RuntimeFailure:
    """Docker answers 404 both for a missing container and for a missing path in one."""
    explanation = _describe(exc)
    if "no such container" in explanation.lower():
        return ContainerMissing(explanation)
    if "could not find the file" in explanation.lower():
        return PathMissing(explanation)
    return RuntimeFailure(explanation)


def _describe(exc: docker.errors.DockerException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)
