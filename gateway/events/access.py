"""Per-session Redis users: each session container reaches only its own two streams.

Before a session's container starts, the gateway creates a Redis ACL user for it that may run
only the stream commands the wrapper needs, only on that session's keys: XREADGROUP, XACK and
XGROUP CREATE on its input stream, XADD (write-only) on its output stream, PING. No other key,
no KEYS/SCAN/CONFIG/ACL/FLUSH*, no pub/sub channels. The user is deleted when the session ends,
which also drops its connections.

The password is an HMAC of the gateway's key over the session id and the start of its current
container, so any gateway replica can re-create the user (after a Redis restart lost it)
without storing a secret; Redis receives only its SHA-256 (``#hash``), never the password.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis.asyncio as aioredis

from wrapper import protocol

log = logging.getLogger(__name__)

USER_PREFIX = "ccd-session-"


def username(instance: str, session_id: uuid.UUID | str) -> str:
    """Named after the gateway instance too: gateways of other instances (or other
    deployments) sharing this Redis never mistake each other's users for stale ones."""
    return f"{USER_PREFIX}{instance}-{session_id}"


def acl_rules(session_id: str, password_hash: str) -> list[str]:
    """``ACL SETUSER`` arguments for a session's user (pure, so the rules are testable)."""
    inbox = protocol.input_stream_key(session_id)
    outbox = protocol.output_stream_key(session_id)
    return [
        "reset",  # no earlier rule survives a re-grant
        "on",
        f"#{password_hash}",
        "resetchannels",
        "-@all",
        "+ping",
        "+xreadgroup",
        "+xack",
        "+xgroup|create",
        f"~{inbox}",
        # A selector: XADD, and only to its own output stream (write-only: it cannot read it).
        f"(+xadd %W~{outbox})",
    ]


class SessionAccess:
    def __init__(
        self, client: aioredis.Redis, key: str, session_redis_url: str, instance: str
    ) -> None:
        """``session_redis_url``: where containers reach Redis (no credentials)."""
        self._redis: Any = client
        self._key = key.encode()
        self._base = urlsplit(session_redis_url)
        self._instance = instance
        self._prefix = username(instance, "")

    def password(self, session_id: uuid.UUID, generation: datetime) -> str:
        message = f"redis-user:{session_id}:{generation.isoformat()}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def url_for(self, session_id: uuid.UUID, generation: datetime) -> str:
        """The Redis URL a session container gets: its own user and password."""
        user = quote(username(self._instance, session_id), safe="")
        credentials = f"{user}:{self.password(session_id, generation)}"
        netloc = f"{credentials}@{self._base.hostname}"
        if self._base.port:
            netloc += f":{self._base.port}"
        return urlunsplit(self._base._replace(netloc=netloc))

    async def grant(self, session_id: uuid.UUID, generation: datetime) -> str:
        """Create (or reset) the session's user; returns the URL for its container."""
        digest = hashlib.sha256(self.password(session_id, generation).encode()).hexdigest()
        await self._redis.execute_command(
            "ACL",
            "SETUSER",
            username(self._instance, session_id),
            *acl_rules(str(session_id), digest),
        )
        return self.url_for(session_id, generation)

    async def revoke(self, session_id: uuid.UUID) -> None:
        """Delete the session's user and drop its connections. Idempotent."""
        await self._redis.execute_command("ACL", "DELUSER", username(self._instance, session_id))

    async def sessions_with_users(self) -> set[uuid.UUID]:
        """Sessions of this instance that have a Redis user now."""
        names = await self._redis.execute_command("ACL", "USERS")
        found: set[uuid.UUID] = set()
        for name in names:
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name.startswith(self._prefix):
                try:
                    found.add(uuid.UUID(name[len(self._prefix) :]))
                except ValueError:  # another instance whose name starts like ours
                    continue
        return found
