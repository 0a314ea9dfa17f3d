"""Graceful shutdown: what a gateway does between SIGTERM (or Ctrl-C) and its exit.

1. At once, ``/ready`` answers 503 ``draining``, so a load balancer sends no new requests, and
   new WebSockets are refused before they are accepted (503 ``shutting_down``, the error
   body); every other request is still served, since a balancer may send a few more before
   its health check notices.
2. After ``SHUTDOWN_DRAIN_DELAY`` seconds (time for those health checks), every open WebSocket
   is sent the events this process has already read for it and closed with code 1001 (going
   away); its client reconnects (through the balancer, to another replica) with
   ``?after=<last id>`` and misses nothing. This waits up to ``STREAM_CLOSE_TIMEOUT`` seconds.
3. uvicorn stops listening and gives the requests in flight ``SHUTDOWN_GRACE`` seconds to
   finish (its ``timeout_graceful_shutdown``), then cancels them.
4. The lifespan's exit stack stops the background loops and closes every client, so their
   owners release what they hold. Session containers are not touched: they run on, and any
   replica of the same ``INSTANCE_NAME`` serves them.

uvicorn alone would close open WebSockets with 1012 (service restart) in step 3, the moment it
stops listening: step 2 runs first, so clients see our 1001. A second Ctrl-C (uvicorn's
``force_exit``) skips the waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn
from fastapi import Request
from uvicorn.config import STARTUP_FAILURE

from gateway.error_codes import ErrorCode
from gateway.errors import Unavailable
from gateway.events.hub import FollowControl

log = logging.getLogger(__name__)

# Close code and reason of a WebSocket the gateway ends because it shuts down (RFC 6455 1001:
# "going away"). The reason tells a person what to do; a client acts on the code.
GOING_AWAY = 1001
GOING_AWAY_REASON = "gateway shutting down: reconnect with ?after=<last id>"
# Most seconds step 2 waits for the streams to end (a client that reads nothing holds its own).
STREAM_CLOSE_TIMEOUT = 10.0
_POLL = 0.1  # seconds between checks of a second Ctrl-C during the delay (as uvicorn's own)


class ShuttingDown(Unavailable):
    code = ErrorCode.SHUTTING_DOWN


class Drain:
    """The process's shutdown state, shared by the server, ``/ready`` and the stream route.
    One per process: ``serve`` makes it and passes it to both the app and the server."""

    def __init__(self) -> None:
        # A plain flag: the signal handler sets it, so readiness turns at the signal itself.
        self.draining = False
        self._closing = False
        self._streams: set[FollowControl] = set()
        self._none_open = asyncio.Event()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def refuse_new_streams(self) -> None:
        """Raise ``ShuttingDown`` (503) once draining: a new stream would only be cut soon,
        while another replica can serve it for as long as the client likes."""
        if self.draining:
            raise ShuttingDown(
                "this gateway is shutting down: connect again (another replica answers); "
                "resume with ?after=<last id>",
                headers={"Retry-After": "1"},
            )

    @contextlib.contextmanager
    def stream(self) -> Iterator[FollowControl]:
        """Register an open WebSocket stream for the time of the block. Its control is
        finished when the streams are closed (at once if they already are)."""
        control = FollowControl()
        if self._closing:
            control.finish()
        self._streams.add(control)
        try:
            yield control
        finally:
            self._streams.discard(control)
            if not self._streams:
                self._none_open.set()

    async def close_streams(self, timeout: float) -> int:
        """Finish every open stream (each sends what it holds, then closes with 1001) and wait
        up to ``timeout`` seconds for them to end. Returns how many were still open then
        (a client that reads nothing); uvicorn closes those itself."""
        self._closing = True
        for control in list(self._streams):
            control.finish()
        if self._streams:
            self._none_open.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_open.wait(), timeout)
        return len(self._streams)

    async def shutdown(
        self, delay: float, stream_timeout: float, abandon: Callable[[], bool]
    ) -> None:
        """Steps 1 and 2 of the module's description. ``abandon()`` true (a second Ctrl-C)
        cuts the wait short."""
        self.draining = True
        log.info(
            "draining: /ready answers 503 and new streams are refused; %d open stream(s) "
            "close in %.1f s, then requests in flight get their grace period",
            len(self._streams),
            delay,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        # Polled: uvicorn's signal handler sets a plain attribute, which no event can await.
        while loop.time() < deadline and not abandon():  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
        count = len(self._streams)
        left = await self.close_streams(0 if abandon() else stream_timeout)
        log.info("closed %d stream(s) with %d; %d did not finish in time", count, GOING_AWAY, left)


def get_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


class GracefulServer(uvicorn.Server):
    """uvicorn's server with the drain (steps 1 and 2) run before its own shutdown."""

    def __init__(
        self, config: uvicorn.Config, drain: Drain, *, delay: float, stream_timeout: float
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.delay = delay
        self.stream_timeout = stream_timeout

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.drain.draining = True  # /ready answers 503 from this instant
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.drain.shutdown(self.delay, self.stream_timeout, lambda: self.force_exit)
        await super().shutdown(sockets)


def serve(server: GracefulServer) -> None:
    """Run the server to its end, as ``uvicorn.run`` does for one process."""
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
