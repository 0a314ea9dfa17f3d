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
POOL_USER_PREFIX = "ccd-pool-"


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


def pool_acl_rules(pool_id: str, password_hash: str) -> list[str]:
    """A pooled container's user: it may only pop its own claim list (and ping)."""
    return [
        "reset",
        "on",
        f"#{password_hash}",
        "resetchannels",
        "-@all",
        "+ping",
        "+blpop",
        f"~{protocol.pool_claim_key(pool_id)}",
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
        return self._url(
            username(self._instance, session_id), self.password(session_id, generation)
        )

    def _url(self, user: str, password: str) -> str:
        netloc = f"{quote(user, safe='')}:{password}@{self._base.hostname}"
        if self._base.port:
            netloc += f":{self._base.port}"
        return urlunsplit(self._base._replace(netloc=netloc))

    # -- pooled containers -----------------------------------------------------------------

    def _pool_user(self, pool_id: uuid.UUID) -> str:
        return f"{POOL_USER_PREFIX}{self._instance}-{pool_id}"

    async def grant_pool(self, pool_id: uuid.UUID) -> str:
        """Create a pooled container's user (it may only wait for its claim); its URL."""
        password = hmac.new(self._key, f"pool-user:{pool_id}".encode(), hashlib.sha256).hexdigest()
        digest = hashlib.sha256(password.encode()).hexdigest()
        user = self._pool_user(pool_id)
        await self._redis.execute_command(
            "ACL", "SETUSER", user, *pool_acl_rules(str(pool_id), digest)
        )
        return self._url(user, password)

    async def send_claim(self, pool_id: uuid.UUID, claim: protocol.PoolClaim, ttl: float) -> None:
        """Hand a pooled container its claim. It is not kept past ``ttl`` seconds: a claim no
        wrapper took (its container died) does not leave a session's secrets lying around."""
        key = protocol.pool_claim_key(str(pool_id))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, claim.to_json())
            pipe.expire(key, max(1, int(ttl)))
            await pipe.execute()

    async def revoke_pool(self, pool_id: uuid.UUID) -> None:
        """Delete a pooled container's user and any claim it did not take. Idempotent. Not
        at the claim itself: dropping the user's connection could lose the claim's delivery."""
        await self._redis.execute_command("ACL", "DELUSER", self._pool_user(pool_id))
        await self._redis.delete(protocol.pool_claim_key(str(pool_id)))

    async def pools_with_users(self) -> set[uuid.UUID]:
        """Pooled containers of this instance that have a Redis user now."""
        return await self._users_named(f"{POOL_USER_PREFIX}{self._instance}-")

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
        return await self._users_named(self._prefix)

    async def _users_named(self, prefix: str) -> set[uuid.UUID]:
        names = await self._redis.execute_command("ACL", "USERS")
        found: set[uuid.UUID] = set()
        for name in names:
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name.startswith(prefix):
                try:
                    found.add(uuid.UUID(name[len(prefix) :]))
                except ValueError:  # another instance whose name starts like ours
                    continue
        return found
