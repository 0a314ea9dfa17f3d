"""The model proxy's pure parts: the operator's credential on the way out, the usage read from
an answer, and prices."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from types import SimpleNamespace

import asyncpg
import httpx
import pytest

from gateway.api.model import GatewayApp
from gateway.config import Settings
from gateway.model.ledger import Ended, Ticket
from gateway.model.meter import StreamMeter, Usage, usage_of_json
from gateway.model.passthrough import Passthrough
from gateway.model.prices import PriceTable
from gateway.model.proxy import ModelProxy
from gateway.model.upstream import OAUTH_BETA, NoCredential, Upstream

SECRET = "x" * 40
INCOMING = {
    "authorization": "Bearer session-token",
    "x-api-key": "session-token",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219",
    "content-type": "application/json",
    "user-agent": "claude-cli/2",
    "x-stainless-os": "Linux",
    "cookie": "nope",
}


def upstream(**values: object) -> Upstream:
    return Upstream(Settings(_env_file=None, jwt_secret=SECRET, **values))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        ({"anthropic_api_key": "sk-op"}, {"x-api-key": "sk-op"}),
        ({"anthropic_auth_token": "tok-op"}, {"authorization": "Bearer tok-op"}),
        ({"claude_code_oauth_token": "oauth-op"}, {"authorization": "Bearer oauth-op"}),
    ],
)
def test_the_operators_credential_replaces_the_sessions(
    credential: dict[str, str], expected: dict[str, str]
) -> None:
    headers = upstream(**credential).request_headers(INCOMING)
    for name, value in expected.items():
        assert headers[name] == value
    assert "session-token" not in json.dumps(headers)
    assert "cookie" not in headers
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["x-stainless-os"] == "Linux"
    betas = headers["anthropic-beta"].split(",")
    assert "claude-code-20250219" in betas
    assert (OAUTH_BETA in betas) == ("claude_code_oauth_token" in credential)


def test_no_credential_is_an_error_not_a_silent_anonymous_call() -> None:
    with pytest.raises(NoCredential):
        upstream().request_headers(INCOMING)


def sse(*events: dict[str, object]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def test_the_meter_keeps_the_last_cumulative_counts_across_split_chunks() -> None:
    body = sse(
        {
            "type": "message_start",
            "message": {
                "model": "claude-opus-4-1",
                "usage": {
                    "input_tokens": 100,
                    "output_tokens": 1,
                    "cache_creation_input_tokens": 20,
                    "cache_read_input_tokens": 30,
                },
            },
        },
        {"type": "content_block_delta", "delta": {"text": '"message_delta" in text'}},
        {"type": "message_delta", "usage": {"output_tokens": 40}},
        {"type": "message_delta", "usage": {"output_tokens": 55}},
        {"type": "message_stop"},
    )
    for size in (1, 7, 64, len(body)):
        meter = StreamMeter("unknown")
        for start in range(0, len(body), size):
            meter.feed(body[start : start + size])
        assert meter.model == "claude-opus-4-1"
        assert meter.usage == Usage(100, 55, 20, 30)


def test_a_json_answer_reports_its_usage() -> None:
    answer = json.dumps(
        {"model": "claude-haiku-4-5", "usage": {"input_tokens": 3, "output_tokens": 4}}
    )
    assert usage_of_json(answer.encode(), "x") == ("claude-haiku-4-5", Usage(3, 4, 0, 0))
    assert usage_of_json(b"not json", "x") == ("x", Usage())


def test_prices_by_family_with_overrides_and_a_safe_default() -> None:
    table = PriceTable(
        {"claude-sonnet-4": {"input": 2, "output": 10}, "acme-": {"input": 1, "output": 1}}
    )
    million = Usage(1_000_000, 1_000_000, 1_000_000, 1_000_000)
    # 2 + 10 + 2.5 (cache write 1.25x) + 0.2 (cache read 0.1x)
    assert table.cost("claude-sonnet-4-5-20250929", million) == Decimal("14.7")
    assert table.cost("claude-opus-4-5", Usage(1_000_000, 0, 0, 0)) == Decimal(5)
    assert table.cost("claude-opus-4-1", Usage(1_000_000, 0, 0, 0)) == Decimal(15)
    assert table.cost("acme-7", Usage(0, 1_000_000, 0, 0)) == Decimal(1)
    # An unknown model is priced as the dearest family: a budget never under-counts.
    assert table.cost("mystery-model", Usage(0, 1_000_000, 0, 0)) == Decimal(75)


def test_prices_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PRICES", '{"new-model": {"input": 9, "output": 99}}')
    settings = Settings(_env_file=None, jwt_secret=SECRET)  # type: ignore[call-arg]
    assert PriceTable(settings.model_prices).price("new-model-1").output == Decimal(99)


def test_a_remembered_model_key_still_expires_and_a_forged_one_is_never_remembered() -> None:
    import time
    import uuid

    import jwt

    from gateway.errors import Unauthorized
    from gateway.security import ModelKeys, mint_session_token

    settings = Settings(_env_file=None, jwt_secret=SECRET)  # type: ignore[arg-type]
    keys = ModelKeys(settings)
    session = uuid.uuid4()
    token = mint_session_token(settings, session, session, "alice").token
    first = keys.authenticate(token)
    assert keys.authenticate(token) is first  # remembered, not verified again
    claims = jwt.decode(token, options={"verify_signature": False})
    brief = jwt.encode({**claims, "exp": int(time.time()) + 1}, settings.session_token_key, "HS256")
    assert keys.authenticate(brief).session_id == session  # type: ignore[union-attr]
    time.sleep(2.1)
    with pytest.raises(Unauthorized, match="expired"):
        keys.authenticate(brief)
    forged = jwt.encode({**claims, "sub": "mallory"}, "not-the-key-" * 4, "HS256")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            keys.authenticate(forged)


def test_a_model_key_names_its_run_and_opens_nothing_but_the_model_proxy() -> None:
    import uuid
    from datetime import UTC, datetime

    import jwt

    from gateway.errors import Unauthorized
    from gateway.security import (
        ModelKeys,
        authenticate_token,
        mint_model_key,
        run_stamp,
    )

    started = datetime(2026, 12, 3, 4, 5, 6, 789012, tzinfo=UTC)
    assert run_stamp(started) == 1_796_270_706_789_012  # exact to the microsecond
    session, root = uuid.uuid4(), uuid.uuid4()
    # Even an operator who signs both kinds with one secret gets no user token out of a key.
    for settings in (
        Settings(_env_file=None, jwt_secret=SECRET),  # type: ignore[arg-type]
        Settings(_env_file=None, jwt_secret=SECRET, session_token_secret=SECRET),  # type: ignore[arg-type]
    ):
        key = mint_model_key(settings, session, root, "alice", started, budgeted=True)
        principal = ModelKeys(settings).authenticate(key)
        assert not isinstance(principal, uuid.UUID)
        assert (principal.session_id, principal.root_id, principal.owner) == (
            session,
            root,
            "alice",
        )
        assert principal.run == run_stamp(started) and principal.budgeted
        with pytest.raises(Unauthorized, match="model proxy only"):
            authenticate_token(settings, key)
        claims = jwt.decode(key, options={"verify_signature": False})
        assert "exp" not in claims  # the CLI cannot be given another; its run bounds it
        for forged in (
            jwt.encode({**claims, "run": claims["run"] + 1}, "not-the-key-" * 4, "HS256"),
            jwt.encode({**claims, "run": "1"}, settings.session_token_key, "HS256"),
        ):
            with pytest.raises(Unauthorized):
                ModelKeys(settings).authenticate(forged)


class FailingProxy:
    async def forward(self, endpoint: str, request: object) -> None:
        raise RuntimeError(f"{endpoint}: a bug")


async def test_a_failure_inside_the_proxy_is_an_anthropic_shaped_500() -> None:
    """Model calls are served before FastAPI's error layers, so the proxy's own failures must
    still answer something the CLI understands (and retries), not a bare 500."""
    app = GatewayApp()
    app.state.services = SimpleNamespace(model_proxy=FailingProxy())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        failed = await http.post("/model/v1/messages", json={})
        assert failed.status_code == 500
        assert failed.json()["type"] == "error"
        assert failed.json()["error"]["type"] == "api_error"
        assert (await http.get("/model/v1/messages")).status_code == 404  # only POST is served


async def relayed(chunks: list[bytes], finished_after: list[bool]) -> list[dict[str, object]]:
    """The ASGI messages a Passthrough sends for an upstream body read in ``chunks``, whose
    end had arrived after each chunk as ``finished_after`` says."""
    sent: list[dict[str, object]] = []
    ends = iter(finished_after)
    ended: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        await asyncio.Event().wait()  # the caller never hangs up
        raise AssertionError("unreachable")

    reply = Passthrough(200, {}, body(), lambda: ended.append(True), lambda: next(ends))
    await reply({"type": "http"}, receive, send)  # type: ignore[arg-type]
    assert ended == [True]
    return sent[1:]


async def test_an_answers_last_bytes_and_its_end_go_out_in_one_message() -> None:
    """A short answer arrives whole, its end with it: sent apart, the CLI read the end one
    wake-up of its event loop later (a few tenths of a millisecond on every turn)."""
    messages = await relayed([b"event: a\n\n", b"event: b\n\n"], [False, True])
    assert [(m["body"], m["more_body"]) for m in messages] == [
        (b"event: a\n\n", True),
        (b"event: b\n\n", False),
    ]


async def test_an_end_that_comes_after_the_last_bytes_is_sent_when_it_comes() -> None:
    messages = await relayed([b"event: a\n\n"], [False])
    assert [(m["body"], m["more_body"]) for m in messages] == [
        (b"event: a\n\n", True),
        (b"", False),
    ]


class SlowLedger:
    """Settles a call in 0.2 s, as a database that is slow for a moment does; a call whose
    model is "together" can be settled in a batch, one whose model is "bad" cannot be written
    in a batch."""

    def __init__(self, conflicts: int = 0) -> None:
        self.settled: list[uuid.UUID] = []
        self.writes: list[list[uuid.UUID]] = []
        self.conflicts = conflicts  # batches PostgreSQL ends as deadlocked first

    @staticmethod
    def settles_together(ticket: Ticket) -> bool:
        return ticket.model in ("together", "bad")

    async def settle_together(self, calls: list[Ended]) -> None:
        await asyncio.sleep(0.2)
        if self.conflicts:
            self.conflicts -= 1
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
        if any(call.model == "bad" for call in calls):
            raise ValueError("a row the database refuses")
        self.writes.append([call.ticket.call_id for call in calls])
        self.settled += self.writes[-1]

    async def settle(self, ticket: Ticket, model: str, usage: Usage, status: int | None) -> None:
        await asyncio.sleep(0.2)
        self.writes.append([ticket.call_id])
        self.settled.append(ticket.call_id)


class FreeSlots:
    def give_back(self, owner: str, slot: str) -> None:
        pass

    async def close(self) -> None:
        pass


def proxy_with(ledger: SlowLedger) -> ModelProxy:
    settings = Settings(_env_file=None, jwt_secret=SECRET)  # type: ignore[call-arg]
    return ModelProxy(settings, Upstream(settings), ledger, FreeSlots())  # type: ignore[arg-type]


def ended(proxy: ModelProxy, model: str) -> uuid.UUID:
    """A call of ``model`` whose answer just ended; its id."""
    caller = SimpleNamespace(owner="alice", session_id=uuid.uuid4(), root_id=uuid.uuid4())
    ticket = Ticket(uuid.uuid4(), caller, model, "messages", 0, Decimal(0))  # type: ignore[arg-type]
    proxy._settle_later(ticket, model, Usage(), 200, "slot")
    return ticket.call_id


async def test_a_gateway_that_shuts_down_still_records_the_calls_that_ended() -> None:
    """A call's usage is written after its answer ended; a shutdown right then used to cancel
    the write, and the call was never metered."""
    ledger = SlowLedger()
    proxy = proxy_with(ledger)
    call = ended(proxy, "claude-sonnet-4-5")
    await proxy.close()
    assert ledger.settled == [call]


async def test_calls_that_end_together_are_written_together() -> None:
    """Calls that end within a batch window are one write; one that cannot go in a batch (a
    budgeted tree's) is written on its own; a call ending during a write is in the next."""
    ledger = SlowLedger()
    proxy = proxy_with(ledger)
    first = [ended(proxy, "together"), ended(proxy, "budgeted"), ended(proxy, "together")]
    await asyncio.sleep(0.1)  # the first batch is being written
    later = ended(proxy, "together")
    await proxy.close()
    batches = [sorted(write) for write in ledger.writes]  # a batch is in tree and session order
    assert batches == [sorted([first[0], first[2]]), [first[1]], [later]]


async def test_a_batch_the_database_refuses_is_written_call_by_call() -> None:
    """One call the database refuses loses only itself, not the calls batched with it."""
    ledger = SlowLedger()
    proxy = proxy_with(ledger)
    calls = [ended(proxy, "together"), ended(proxy, "bad"), ended(proxy, "together")]
    await proxy.close()
    assert sorted(ledger.settled) == sorted(calls)  # the fake's settle takes even the bad one
    assert sorted(ledger.writes) == sorted([call] for call in calls)


async def test_a_batch_ended_by_a_deadlock_is_sent_again(caplog: pytest.LogCaptureFixture) -> None:
    """Two replicas' batches can deadlock; PostgreSQL ends one, and it is sent again whole
    (not given up, not split)."""
    ledger = SlowLedger(conflicts=2)
    proxy = proxy_with(ledger)
    calls = [ended(proxy, "together"), ended(proxy, "together")]
    await proxy.close()
    assert [sorted(write) for write in ledger.writes] == [sorted(calls)]
    assert "could not settle" not in caplog.text
