"""``python -m wrapper``: the session container's main process (PID 1's only child, under tini)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from wrapper.channel import Channel, connect
from wrapper.config import WrapperSettings
from wrapper.supervisor import Supervisor

log = logging.getLogger("wrapper")


async def run(settings: WrapperSettings) -> int:
    client = connect(settings.contract.redis_url)
    channel = Channel(client, settings.contract.session_id, settings.contract.stream_maxlen)
    supervisor = Supervisor(settings, channel)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.stop)
    try:
        return await supervisor.run()
    finally:
        await client.aclose()


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
