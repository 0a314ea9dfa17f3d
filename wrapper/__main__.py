"""``python -m wrapper``: the session container's main process (PID 1's only child, under tini).

Start-up order and weight matter for how fast a session is ready: the CLI takes about half a
second of CPU to boot, and in a one-CPU container it shares that CPU with the wrapper. So the CLI
is started first, and until it is ready the wrapper loads only the standard library and
redis-py; pydantic, httpx and mcp_types wait for the first tool call or token refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NoReturn

from wrapper.aio import cancel_and_wait
from wrapper.config import WrapperSettings

if TYPE_CHECKING:
    from wrapper.supervisor import Supervisor

log = logging.getLogger("wrapper")


@contextlib.asynccontextmanager
async def assemble(settings: WrapperSettings) -> AsyncIterator[Supervisor]:
    """Everything around the supervisor: Redis, the gateway client with the session token and
    its refresher, the ``sessions`` MCP server. Run the supervisor inside; all is closed after."""
    # Imported here, not at the top: after the CLI has started. Nothing imported on the way to
    # a ready CLI loads pydantic, httpx or mcp_types (a test checks).
    from wrapper.channel import Channel, connect
    from wrapper.gateway_client import GatewayClient
    from wrapper.mcp_sessions import SessionsServer
    from wrapper.session_token import SessionToken
    from wrapper.supervisor import Supervisor

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
        stack.push_async_callback(cancel_and_wait, [refresher])
        yield Supervisor(settings, channel, {"mcp_message": sessions.handle_control})


async def run(settings: WrapperSettings) -> int:
    from wrapper.claude_process import has_transcript, spawn_cli
    from wrapper.token_file import write_token_file

    # Before the CLI starts, when its apiKeyHelper reads the model credential from this file
    # (and caches it); not when its environment has it. A pooled container's key means
    # nothing until a claim binds it to a session.
    helper_key = settings.pool.model_key if settings.pool else settings.session_token
    if helper_key is not None and settings.model_key is None:
        try:
            write_token_file(settings.token_file, helper_key)
        except OSError as exc:
            log.warning("cannot write the token file %s: %s", settings.token_file, exc)
    # A stop may come at any moment, the CLI's boot included: note it from the start, so the
    # container ends at once and cleanly instead of being killed after the engine's grace.
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    first = await spawn_cli(settings, resume=has_transcript(settings))
    try:
        if settings.pool is not None:
            from wrapper.pool import run_pooled

            return await run_pooled(settings, first, stop_requested)
        async with assemble(settings) as supervisor:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, supervisor.stop)
            if stop_requested.is_set():
                supervisor.stop()
            return await supervisor.run(first)
    finally:
        if first.returncode is None:  # assembling failed before the supervisor took it over
            await first.terminate(settings.terminate_grace)


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


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown: once the CLI has exited and the
    last events are in Redis nothing is left to do, and unloading every module would keep a
    stopping container alive about 150 ms longer (measured: the wrapper's run returned 55 ms
    after SIGTERM, the container died 210 ms after it)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
