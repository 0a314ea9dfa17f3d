"""The Anthropic Messages API, served to the gateway's own sessions.

A session's CLI sends its model calls here (``ANTHROPIC_BASE_URL`` = the gateway's
``/model``), authenticated with its session's capability token (read through an apiKeyHelper,
so it is refreshed while the CLI runs). The proxy checks the token like any other (refused once
its session has ended), admits the call against its tree's budget, forwards it upstream with
the operator's credential, and passes the answer back byte for byte as it arrives, errors too,
while it meters the usage the upstream reports. Retries stay the CLI's job: every refusal is an
Anthropic-shaped error whose status tells the CLI whether to retry (429, 5xx) or not (400).

A request body goes upstream as it arrives when nothing needs it whole first: its session's tree
has no budget (only a budget reads the request's model and ``max_tokens``) and it declares a
length within ``MODEL_MAX_REQUEST_BYTES``. Read whole before sending, a conversation's body cost
the call about 2.8 ms per MB here (uvicorn hands it over in 64 KB pieces); streamed, the
upstream reads it while it is still arriving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect

from gateway.config import Settings
from gateway.db.outage import database_unavailable, transaction_conflict
from gateway.error_codes import ErrorCode
from gateway.errors import Unauthorized
from gateway.logging_setup import bind_session
from gateway.model.callers import Caller
from gateway.model.ledger import BudgetSpent, Ended, Ledger, NoAnswer, NotRunning, Ticket
from gateway.model.meter import StreamMeter, Usage, usage_of_json
from gateway.model.passthrough import Passthrough
from gateway.model.slots import UNCOUNTED, CallSlots
from gateway.model.upstream import Answer, NoCredential, Upstream, UpstreamUnreachable
from gateway.security import ModelKeys, bearer_token
from gateway.services.background import TaskSet
from wrapper.protocol import MODEL_PROXY_PREFIX

log = logging.getLogger(__name__)

_JSON_BODY_CAP = 16 * 1024 * 1024  # a non-streamed answer is read this far for its usage
_SLOT_RETRY_AFTER = "1"
# Seconds a gateway that shuts down waits for the settlements in flight (one statement each,
# unless the database is down: then they are given up, as a killed gateway's are).
SETTLE_GRACE = 5.0
# Seconds the calls that end are gathered before they are settled, together where they can be
# (one round trip and one commit for all of them). A call's write then also misses the moment
# its CLI is busiest: the few milliseconds after its answer, when it builds its result (on this
# 2-core machine, a write there lengthened the CLI's turn by about half a millisecond).
SETTLE_BATCH_SECONDS = 0.02


@dataclass
class StreamedBody:
    """A request body sent upstream as it arrives from the client, of a declared ``length``
    (within the limit: the HTTP parser never reads past it)."""

    request: Request
    length: int
    cut_short: bool = False  # the client hung up before all of it was sent on

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.request.stream():
                yield chunk
        except ClientDisconnect:
            self.cut_short = True
            raise


Body = bytes | StreamedBody


def anthropic_error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error as the Anthropic API writes it, so the CLI shows the message."""
    body = {"type": "error", "error": {"type": kind, "message": f"CC-Docker: {message}"}}
    return JSONResponse(body, status_code=status, headers=headers)


class ModelProxy:
    def __init__(
        self, settings: Settings, upstream: Upstream, ledger: Ledger, slots: CallSlots
    ) -> None:
        self._settings = settings
        self._upstream = upstream
        self._ledger = ledger
        self._slots = slots
        self._keys = ModelKeys(settings)
        self._settling = TaskSet()  # settlements outlive the responses that start them
        self._ended: list[Ended] = []  # calls not settled yet (a settling task takes them)
        self._settler: asyncio.Task[None] | None = None

    async def close(self) -> None:
        # A call that ended just before the shutdown is still being written: cancelled, its
        # usage would be lost as if the gateway had been killed.
        await self._settling.close(grace=SETTLE_GRACE)
        await self._slots.close()

    async def forward(self, endpoint: str, request: Request) -> Response | Passthrough:
        try:
            caller, slot, body = await self._prepare(request)
        except (Unauthorized, NotRunning) as exc:
            return anthropic_error(401, "authentication_error", str(exc))
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            return _database_down()
        bind_session(caller.session_id)  # this call's log lines (and its settlement's) name it
        if body is None:
            self._give_back(caller.owner, slot)
            return anthropic_error(
                413,
                "request_too_large",
                f"a model request may be at most {self._settings.model_max_request_bytes} bytes "
                "(MODEL_MAX_REQUEST_BYTES)",
            )
        if slot is None:
            return anthropic_error(
                429,
                "rate_limit_error",
                f"owner {caller.owner!r} has {self._settings.model_max_streams_per_owner} model "
                "calls in flight (MODEL_MAX_STREAMS_PER_OWNER)",
                {"retry-after": _SLOT_RETRY_AFTER},
            )
        try:
            headers = self._upstream.request_headers(request.headers)
        except NoCredential as exc:
            self._give_back(caller.owner, slot)
            return anthropic_error(500, "api_error", str(exc))
        try:
            ticket = await self._admit(caller, endpoint, body)
        except BudgetSpent as exc:
            self._give_back(caller.owner, slot)
            return anthropic_error(400, "invalid_request_error", f"{exc} ({_spent(exc.figures)})")
        except Exception as exc:
            self._give_back(caller.owner, slot)
            if database_unavailable(exc):  # a budgeted call cannot be admitted: retry later
                return _database_down()
            raise
        path = request.url.path.removeprefix(MODEL_PROXY_PREFIX)
        sent: bytes | AsyncIterator[bytes]
        if isinstance(body, StreamedBody):
            sent = body.chunks()
            headers["content-length"] = str(body.length)  # so it is not sent chunked
        else:
            sent = body
        try:
            answer = await self._upstream.send(path, request.url.query, headers, sent)
        except (UpstreamUnreachable, ClientDisconnect) as exc:
            # A ClientDisconnect comes only from a streamed body's chunks, which mark it cut
            # short first; aiohttp may also pass it on as UpstreamUnreachable.
            if isinstance(body, StreamedBody) and body.cut_short:
                # Nobody is left to answer, and the upstream did nothing wrong.
                self._settle_later(ticket, ticket.model, Usage(), NoAnswer.CALLER_GONE, slot)
                log.info("model call of %s: the caller hung up mid-request", caller.session_id)
                return anthropic_error(400, "invalid_request_error", "the request was cut short")
            self._settle_later(ticket, ticket.model, Usage(), NoAnswer.UNREACHABLE, slot)
            log.warning("model upstream unreachable for %s: %s", caller.session_id, exc)
            return anthropic_error(502, "api_error", f"the model API could not be reached: {exc}")
        return self._relay(answer, ticket, slot)

    async def _prepare(self, request: Request) -> tuple[Caller, str | None, Body | None]:
        """The calling session (raises ``Unauthorized``, ``NotRunning``), the slot of its
        owner's it got (``None``: none free; given back here if the caller is refused) and the
        request body (``None``: too large; a ``StreamedBody`` when it may go upstream as it
        arrives). Once the token's signature is checked, the three are looked up at once (the
        database, Redis and the client each take one round trip), or, when this replica kept
        the caller, the body (almost always in already) then the slot (most often kept here
        from the session's previous call: no round trip)."""
        token = bearer_token(request.headers.get("authorization")) or request.headers.get(
            "x-api-key"
        )
        if not token:
            raise Unauthorized("no session token", code=ErrorCode.MISSING_TOKEN)
        principal = self._keys.authenticate(token)
        finding: Awaitable[Caller]
        budgeted = True  # until the token says otherwise: read the body whole
        if isinstance(principal, uuid.UUID):  # a claimed pooled CLI's first key, for a while
            caller = await self._ledger.caller_of_pool(principal)  # its owner: from here
            owner, finding = caller.owner, _ready(caller)
        elif principal.session_id is None:
            raise Unauthorized(
                "only a session's own token may call the model through here",
                code=ErrorCode.INVALID_TOKEN,
            )
        else:
            kept = self._ledger.kept_caller(principal)
            if kept is not None:  # one round trip left: two awaits cost less than a gather
                read = await self._body(request, kept.has_budget)
                return kept, await self._take_slot(kept.owner), read
            owner, finding = principal.owner, self._ledger.caller(principal)
            budgeted = principal.budgeted
        looked_up = await asyncio.gather(
            finding,
            self._take_slot(owner),
            self._body(request, budgeted),
            return_exceptions=True,
        )
        found, slot, body = looked_up
        if (
            isinstance(found, Caller)
            and not isinstance(slot, BaseException)
            and not isinstance(body, BaseException)
        ):
            if found.has_budget and isinstance(body, StreamedBody):  # its token did not say so
                body = await _read_body(request, self._settings.model_max_request_bytes)
            return found, slot, body
        if isinstance(slot, str):
            self._give_back(owner, slot)
        raise next(r for r in looked_up if isinstance(r, BaseException))

    async def _body(self, request: Request, budgeted: bool) -> Body | None:
        limit = self._settings.model_max_request_bytes
        declared = request.headers.get("content-length")
        if not budgeted and declared and declared.isdigit() and int(declared) <= limit:
            return StreamedBody(request, int(declared))
        return await _read_body(request, limit)

    async def _admit(self, caller: Caller, endpoint: str, body: Body) -> Ticket:
        model, max_tokens = "unknown", 0
        if isinstance(body, StreamedBody):  # a tree without a budget: nothing to read in it
            size = body.length
        else:
            size = len(body)
            if caller.has_budget:  # only a budget needs the request's own figures
                model, max_tokens = _model_and_max_tokens(body)
        return await self._ledger.admit(caller, model, endpoint, size, max_tokens)

    def _relay(self, answer: Answer, ticket: Ticket, slot: str) -> Passthrough:
        """The answer to the CLI as it arrives, metered on its way; settled once it ended,
        however it ended (read to its end, the caller gone, the upstream cut)."""
        streamed = answer.content_type.startswith("text/event-stream")
        meter = StreamMeter(ticket.model)
        kept = bytearray()

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in answer.chunks():
                if streamed:
                    meter.feed(chunk)
                elif len(kept) < _JSON_BODY_CAP:
                    kept.extend(chunk)
                yield chunk

        def ended() -> None:
            model, usage = meter.model, meter.usage
            if not streamed:
                model, usage = usage_of_json(bytes(kept), ticket.model)
            self._settle_later(ticket, model, usage, answer.status, slot)
            answer.close()

        return Passthrough(answer.status, answer.headers, chunks(), ended, answer.finished)

    def _settle_later(
        self,
        ticket: Ticket,
        model: str,
        usage: Usage,
        status: int | NoAnswer,
        slot: str,
    ) -> None:
        self._give_back(ticket.caller.owner, slot)
        self._ended.append(Ended(ticket, model, usage, status))
        if self._settler is None:
            self._settler = self._settling.spawn(self._settle_ended(), name="settle-calls")

    async def _settle_ended(self) -> None:
        """Settles the calls that end, a batch every ``SETTLE_BATCH_SECONDS``, until none is
        left (the next call to end starts this again)."""
        try:
            while self._ended:
                await asyncio.sleep(SETTLE_BATCH_SECONDS)
                calls, self._ended = self._ended, []
                await self._settle(calls)
        finally:
            self._settler = None

    async def _settle(self, calls: list[Ended]) -> None:
        """Never lost to a database hiccup: retried until written. A batch that fails for
        another reason is settled call by call, so one bad call loses only itself. A batch
        holds the rows it counted to until it commits, so two (from two replicas) can deadlock
        with each other or with one call's write: PostgreSQL ends one of them, which is sent
        again. Batches are in the order of tree and session, which makes that rarer."""
        calls = sorted(calls, key=_tree_and_session)
        together: list[Ended] = []
        alone: list[Ended] = []
        for call in calls:
            (together if self._ledger.settles_together(call.ticket) else alone).append(call)
        if together and not await self._written(
            partial(self._ledger.settle_together, together), f"{len(together)} model calls"
        ):
            alone = calls
        for call in alone:
            await self._written(
                partial(self._ledger.settle, call.ticket, call.model, call.usage, call.status),
                f"model call {call.ticket.call_id} of session {call.ticket.caller.session_id}",
            )

    async def _written(self, write: Callable[[], Awaitable[None]], what: str) -> bool:
        """Runs ``write`` until the database takes it; ``False``: it failed otherwise."""
        delay = 0.2
        while True:
            try:
                await write()
                return True
            except Exception as exc:
                if transaction_conflict(exc):
                    log.info("settling %s met another transaction (%s); again", what, exc)
                    await asyncio.sleep(0.01)
                    continue
                if not database_unavailable(exc):
                    log.exception("could not settle %s", what)
                    return False
                log.warning("settling %s waits for the database", what)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _take_slot(self, owner: str) -> str | None:
        try:
            return await self._slots.take(owner)
        except RedisError as exc:  # availability over limiting, as for the request rate
            log.warning("model call slots unavailable (%s); letting the call through", exc)
            return UNCOUNTED

    def _give_back(self, owner: str, slot: str | None) -> None:
        if slot is not None:
            self._slots.give_back(owner, slot)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or ``None`` once it passes ``limit`` (never held beyond it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)  # one copy (a bytearray grown chunk by chunk, then copied: three)


async def _ready(caller: Caller) -> Caller:
    return caller


def _tree_and_session(call: Ended) -> tuple[uuid.UUID, uuid.UUID]:
    return call.ticket.caller.root_id, call.ticket.caller.session_id


def _model_and_max_tokens(body: bytes) -> tuple[str, int]:
    try:
        request: Any = json.loads(body)
    except ValueError:
        return "unknown", 0
    if not isinstance(request, dict):
        return "unknown", 0
    model = request.get("model") if isinstance(request.get("model"), str) else "unknown"
    limit = request.get("max_tokens")
    return str(model), limit if isinstance(limit, int) and limit > 0 else 0


def _database_down() -> JSONResponse:
    # 503: the CLI retries it, by which time the database may be back.
    return anthropic_error(
        503,
        "overloaded_error",
        "the gateway's database is unavailable; retry shortly",
        {"retry-after": "5"},
    )


def _spent(figures: dict[str, Any]) -> str:
    parts = []
    if figures.get("max_tokens") is not None:
        parts.append(f"{figures['spent_tokens']} of {figures['max_tokens']} tokens")
    if figures.get("max_cost_usd") is not None:
        parts.append(f"${figures['spent_cost_usd']:.4f} of ${figures['max_cost_usd']:.4f}")
    return ", ".join(parts) or "no budget"
