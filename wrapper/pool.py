"""A pooled container: its CLI booted and its handshake answered before any session exists.

The container was started ahead of demand with no session's identity or secret. The wrapper
runs its supervisor at once, on a ``HeldChannel``: the CLI's handshake (and the ``sessions`` MCP
server's, which needs no session) is done and its output held. The gateway's claim arrives on a
Redis list only this container's pool user may pop; then the wrapper writes the session's
token and id, connects to Redis as the session, and writes what it held (``cli_ready`` among
it) into the session's stream, so the session is ready a few milliseconds after its claim.
Until then it holds nothing worth stealing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import redis.asyncio as aioredis

from wrapper.aio import cancel_and_wait
from wrapper.channel import Channel, HeldChannel, connect
from wrapper.claude_process import ClaudeProcess
from wrapper.config import PoolSettings, WrapperSettings
from wrapper.gateway_client import GatewayClient
from wrapper.mcp_sessions import SessionsServer
from wrapper.protocol import PoolClaim, pool_claim_key
from wrapper.session_token import SessionToken
from wrapper.supervisor import Supervisor
from wrapper.token_file import write_token_file

log = logging.getLogger(__name__)

RETRY_MAX = 5.0  # seconds between attempts while Redis cannot be reached


async def run_pooled(
    settings: WrapperSettings, first: ClaudeProcess, stop_requested: asyncio.Event
) -> int:
    """Supervise the CLI from now on; become the session a claim names when it comes."""
    assert settings.pool is not None
    contract = settings.contract
    token = SessionToken(None, settings.token_file)
    held = HeldChannel()
    async with GatewayClient(contract.gateway_url, "", token.get) as gateway:
        supervisor = Supervisor(
            settings, held, {"mcp_message": SessionsServer(gateway).handle_control}
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.stop)
        if stop_requested.is_set():
            supervisor.stop()
        running = asyncio.create_task(supervisor.run(first), name="supervisor")
        waiting = asyncio.create_task(wait_for_claim(settings.pool), name="claim")
        await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():  # stopped (or the CLI kept crashing) while pooled
            await cancel_and_wait([waiting])
            return await running
        claim = waiting.result()
        log.info("claimed by session %s", claim.session_id)
        # Before its first turn, which may run ccd-agent: that reads the session id from this
        # file (the CLI's environment was fixed before there was a session) and the token.
        token.replace(claim.session_token)
        await asyncio.to_thread(_write_identity, settings, token, claim.session_id)
        gateway.session_id = claim.session_id
        redis = connect(claim.redis_url)
        try:
            await held.bind(Channel(redis, claim.session_id, contract.stream_maxlen))
            refresher = asyncio.create_task(token.refresh_forever(gateway), name="token-refresh")
            try:
                return await running
            finally:
                await cancel_and_wait([refresher])
        finally:
            await redis.aclose()


def _write_identity(settings: WrapperSettings, token: SessionToken, session_id: str) -> None:
    write_token_file(settings.session_id_file, session_id)
    token.save()  # also the CLI's model key from its next read on (apiKeyHelper)


async def wait_for_claim(pool: PoolSettings) -> PoolClaim:
    """The claim, whenever it comes. Survives Redis restarts (a claim pushed meanwhile is
    still in its list)."""
    key = pool_claim_key(pool.pool_id)
    backoff = 0.1
    while True:
        client = aioredis.Redis.from_url(pool.redis_url, socket_connect_timeout=5)
        try:
            reply = await client.blpop([key], timeout=0)
            if reply is not None:
                return PoolClaim.from_json(reply[1])
        except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
            log.warning("pool %s: Redis unreachable (%s); retrying", pool.pool_id, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
