"""PostgreSQL notifications (LISTEN) on one connection of each replica's own.

What a replica keeps in memory about shared rows (gateway/model/callers.py) is told of their
changes by ``NOTIFY``s that triggers send when those changes commit. Notifications sent while
the listening connection is down are lost, so the listener tells its subscribers when it stops
hearing (``on_deaf``) and when it hears again (``on_hearing``): a subscriber trusts what it
kept only in between. A connection that dies silently (a network partition, a server that
froze) is found by a query every ``heartbeat`` seconds that must answer within as long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from gateway.db.engine import asyncpg_dsn

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class Listener:
    def __init__(
        self,
        database_url: str,
        channels: Mapping[str, Callable[[str], None]],
        on_hearing: Callable[[], None],
        on_deaf: Callable[[], None],
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._channels = dict(channels)
        self._on_hearing = on_hearing
        self._on_deaf = on_deaf
        self._heartbeat = heartbeat
        self.hearing = False
        self._heard = False  # in the current connection's life

    async def run(self) -> None:
        """Listen for the gateway's whole life, connecting again whenever the connection is
        lost."""
        failures = 0
        while True:
            try:
                await self._listen()
            except Exception as exc:  # ``_listen`` made it deaf already
                failures = 0 if self._heard else failures + 1
                if failures <= 1:
                    log.warning("database notifications lost (%s); listening again", exc)
            await asyncio.sleep(_RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)])

    async def _listen(self) -> None:
        self._heard = False
        connection: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            timeout=self._heartbeat,
            server_settings={"application_name": "ccd-listener"},
        )
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        try:
            for channel, handler in self._channels.items():
                await connection.add_listener(channel, _payload_to(handler))
            # Listening from here on: whatever changed before is unknown, so subscribers start
            # afresh now.
            self.hearing = self._heard = True
            self._on_hearing()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._heartbeat):
                        await lost.wait()
                if not lost.is_set():
                    await connection.fetchval("SELECT 1", timeout=self._heartbeat)
            raise ConnectionError("the listening connection was closed")
        finally:
            self._deaf()  # before anything else runs: nothing may trust what was kept
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), self._heartbeat)

    def _deaf(self) -> None:
        if self.hearing:
            self.hearing = False
            self._on_deaf()


def _payload_to(handler: Callable[[str], None]) -> Callable[..., None]:
    def received(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            handler(payload)
        except Exception:
            log.exception("a database notification's handler failed")

    return received
