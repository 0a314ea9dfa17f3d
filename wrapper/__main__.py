"""``python -m wrapper``: the session container's main process (PID 1's only child, under tini)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator

from wrapper.channel import Channel, connect
from wrapper.config import WrapperSettings
from wrapper.gateway_client import GatewayClient
from wrapper.mcp_sessions import SessionsServer
from wrapper.session_token import SessionToken
from wrapper.supervisor import Supervisor

log = logging.getLogger("wrapper")


@contextlib.asynccontextmanager
async def assemble(settings: WrapperSettings) -> AsyncIterator[Supervisor]:
    """Everything around the supervisor: Redis, the gateway client with the session token and
    its refresher, the ``sessions`` MCP server. Run the supervisor inside; all is closed after."""
    contract = settings.contract
    token = SessionToken(settings.session_token, settings.token_file)
    if settings.session_token is None:
        log.warning("no session token: the sessions tools will answer with an error")
    else:
        try:
            token.save()  # before the CLI starts, so that ccd-agent finds it from the first turn
        except OSError as exc:
            log.warning("cannot write the token file %s: %s", settings.token_file, exc)
    redis = connect(contract.redis_url)
    channel = Channel(redis, contract.session_id, contract.stream_maxlen)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(redis.aclose)
        gateway = await stack.enter_async_context(
            GatewayClient(contract.gateway_url, contract.session_id, token.get)
        )
        sessions = SessionsServer(gateway)
        refresher = asyncio.create_task(token.refresh_forever(gateway), name="token-refresh")
        stack.push_async_callback(_cancel, refresher)
        # The CLI's first request is ``initialize`` for the sessions server, about 0.4 s after
        # it starts: have mcp_types imported by then, in a thread, while the CLI boots.
        sessions.preload()
        yield Supervisor(settings, channel, {"mcp_message": sessions.handle_control})


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run(settings: WrapperSettings) -> int:
    async with assemble(settings) as supervisor:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.stop)
        return await supervisor.run()


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        settings = WrapperSettings.from_env()
    except (KeyError, ValueError) as exc:
        log.error("broken container environment: %s", exc)
        return 2
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
