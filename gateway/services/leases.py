"""Leases: which gateway process does a piece of background work now.

Any number of identical replicas may run; each piece of background work (reconciling the
engine with the database, acting on container exits, periodic saves, disk checks, purges) has
exactly one owner at a time: the holder of its lease, a row in PostgreSQL that the holder
renews every third of ``LEASE_TTL``. A replica that dies (even SIGKILL) stops renewing, and its
leases pass to another replica within ``LEASE_TTL``. A holder counts a lease as its own only
until a local deadline safely before its expiry, so two replicas never both believe they hold
it (short of a clock stalled for more than a third of the TTL; the work itself is written as
conditional updates and database locks, so even then nothing is done twice).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterable

from sqlalchemy import ARRAY, String, bindparam, delete, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.models import LeaseRow
from gateway.db.outage import database_unavailable

log = logging.getLogger(__name__)

# One statement for all of a replica's leases, each taken when it is free or expired, or
# renewed when it is ours: the leases it returns are ours. In name order, so that replicas
# renewing together lock the rows in one order and never deadlock.
_TAKE_OR_RENEW = text(
    """
    INSERT INTO leases (name, holder, expires_at)
    SELECT name, :holder, now() + make_interval(secs => :ttl)
    FROM unnest(:names) AS name ORDER BY name
    ON CONFLICT (name) DO UPDATE
        SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
        WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now()
    RETURNING name
    """
).bindparams(bindparam("names", type_=ARRAY(String)))


def process_identity() -> str:
    """This process, uniquely (a restarted process is another holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        names: Iterable[str],
        ttl: float,
        holder: str | None = None,
    ) -> None:
        self._db = db
        self._names = tuple(names)
        self._ttl = ttl
        self.holder = holder or process_identity()
        self._until: dict[str, float] = {}  # lease -> loop time until which it is ours
        self._changed = asyncio.Event()

    def holds(self, name: str) -> bool:
        return asyncio.get_running_loop().time() < self._until.get(name, 0.0)

    async def wait_for(self, name: str) -> None:
        """Return once this process holds ``name`` (at once when it does)."""
        while not self.holds(name):
            self._changed.clear()
            await self._changed.wait()

    async def run(self) -> None:
        """Take and renew the leases until cancelled; then give them back."""
        try:
            while True:
                await self.renew_once()
                await asyncio.sleep(self._ttl / 3)
        finally:
            await asyncio.shield(self.release())

    async def renew_once(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with self._db() as db, db.begin():
                rows = await db.execute(
                    _TAKE_OR_RENEW,
                    {"names": list(self._names), "holder": self.holder, "ttl": self._ttl},
                )
                ours = set(rows.scalars())
        except Exception as exc:
            if not database_unavailable(exc):
                log.exception("could not renew leases")
            return  # unknown is not ours: the deadlines run out by themselves
        for name in self._names:
            had = self.holds(name)
            if name in ours:
                # Counted from before the statement was sent, and a third short of the TTL.
                self._until[name] = started + self._ttl * 2 / 3
            elif had:
                self._until.pop(name, None)
            if (name in ours) != had:
                log.info("%s lease %s", "took" if name in ours else "lost", name)
                self._changed.set()

    async def release(self) -> None:
        """Give every lease back at once (a graceful shutdown), so another replica takes over
        without waiting for them to expire."""
        self._until.clear()
        try:
            async with self._db() as db, db.begin():
                await db.execute(delete(LeaseRow).where(LeaseRow.holder == self.holder))
        except Exception as exc:
            log.warning("could not release leases (they expire by themselves): %s", exc)
