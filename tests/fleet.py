"""Several real gateway processes of one instance behind a small TCP load balancer: the test
harness of the fleet test and of scripts/chaos.py.

The balancer is the test's own (a real one, HAProxy, fronts the compose stack): every new
connection goes to the next replica that accepts it, so a request or WebSocket lands on any
replica, and a dead replica is skipped. Sessions reach the fleet through it, as they would
reach a production load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.stack import Gateway, Infra, free_port, remove_instance_containers, run_gateway


class Balancer:
    """Round-robin TCP forwarding to ``backends`` (host, port), skipping refused ones."""

    def __init__(self, backends: list[tuple[str, int]], host: str = "0.0.0.0") -> None:
        self.backends = backends
        self.port = free_port(host)
        self._host = host
        self._next = itertools.cycle(range(len(backends)))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> Balancer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.backends)):
            host, port = self.backends[next(self._next)]
            with contextlib.suppress(OSError):
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
                break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(Exception):
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@dataclass
class Fleet:
    """``size`` replicas of one instance sharing database, Redis, secret and engine."""

    infra: Infra
    api_base_url: str
    s3_endpoint: str
    log_dir: Path
    size: int = 3
    overrides: dict[str, str] = field(default_factory=dict)
    # "test-" so that tests/stack.py's sweep finds what a killed run left.
    instance: str = field(default_factory=lambda: f"test-fleet-{secrets.token_hex(3)}")
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    ports: list[int] = field(default_factory=list)
    replicas: list[Gateway | None] = field(default_factory=list)
    balancer: Balancer | None = None
    _stacks: list[contextlib.ExitStack] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.balancer is not None
        return f"http://{self.infra.gateway_ip}:{self.balancer.port}"

    @contextlib.contextmanager
    def running(self) -> Iterator[Fleet]:
        self.ports = [free_port() for _ in range(self.size)]
        backends = [("127.0.0.1", port) for port in self.ports]
        with Balancer(backends) as balancer:
            self.balancer = balancer
            try:
                self.replicas = [None] * self.size
                for index in range(self.size):
                    self.start(index)
                yield self
            finally:
                for index in range(self.size):
                    self.stop(index, signal.SIGTERM)
                remove_instance_containers(self.instance)

    def start(self, index: int) -> Gateway:
        """Start replica ``index`` (again) on its own port."""
        stack = contextlib.ExitStack()
        assert self.balancer is not None
        gateway = stack.enter_context(
            run_gateway(
                self.infra,
                self.api_base_url,
                self.s3_endpoint,
                self.log_dir,
                port=self.ports[index],
                INSTANCE_NAME=self.instance,
                JWT_SECRET=self.secret,
                # Sessions reach the fleet through the balancer, as in production.
                SESSION_GATEWAY_URL=f"http://ccd-host:{self.balancer.port}",
                **self.overrides,
            )
        )
        while len(self._stacks) <= index:
            self._stacks.append(contextlib.ExitStack())
        self._stacks[index] = stack
        self.replicas[index] = gateway
        return gateway

    def stop(self, index: int, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill (SIGKILL: no goodbye) or stop (SIGTERM: drain) replica ``index``."""
        gateway = self.replicas[index]
        if gateway is None or gateway.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(gateway.process.pid, sig)
        with contextlib.suppress(Exception):
            gateway.process.wait(30)
        self.replicas[index] = None
        # run_gateway's own teardown removes the containers of the instance name it made up,
        # not the fleet's: the sessions keep running, as they must when a replica goes.
        self._stacks[index].close()

    def alive(self) -> list[int]:
        return [i for i, r in enumerate(self.replicas) if r is not None]


def reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def token(fleet: Fleet, owner: str, **claims: Any) -> str:
    from tests.client import mint_token

    return mint_token(fleet.secret, owner, **claims)
