"""The upstream's answer relayed to the calling CLI as it arrives, as an ASGI response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.types import Receive, Scope, Send


class Passthrough:
    """Sends ``body`` chunk by chunk as it arrives, then calls ``ended`` (whatever ended it).
    The caller hanging up ends it at once, so the upstream call ends too and nothing is
    generated for nobody.

    ``finished`` says whether the body has nothing more to come once a chunk is read (the
    upstream's end arrived with it, as a short answer's does): that chunk then goes out with
    the end of the answer in one write, as the upstream sent them. Sent apart, the CLI read the
    end a wake-up of its event loop later, a few tenths of a millisecond per turn.

    Starlette's ``StreamingResponse`` does the same in an anyio task group, which costs about
    0.12 ms per response on this path; here one task watches for the hang-up and cancels the
    relay, which runs in the request's own task."""

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes],
        ended: Callable[[], None],
        finished: Callable[[], bool],
    ) -> None:
        self._start = {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in headers.items()
            ],
        }
        self._body = body
        self._ended = ended
        self._finished = finished

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relaying = asyncio.current_task()
        assert relaying is not None
        hung_up = False

        async def watch() -> None:
            nonlocal hung_up
            while (await receive())["type"] != "http.disconnect":
                pass
            hung_up = True
            relaying.cancel()

        watcher = asyncio.create_task(watch(), name="model-call-hang-up")
        try:
            await send(self._start)
            more = True
            async for chunk in self._body:
                more = not self._finished()
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if more:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not hung_up or relaying.uncancel() > 0:
                raise  # cancelled from elsewhere too (the server is shutting down)
        finally:
            watcher.cancel()
            self._ended()
