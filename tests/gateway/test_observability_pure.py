"""Metrics and logs without services: the metric objects, the metered runtime, log lines that
name their session."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import BinaryIO

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.logging_setup import (
    AddSessionId,
    JsonFormatter,
    TextFormatter,
    bind_session,
    session_context,
)
from gateway.metrics import Metrics
from gateway.model.ledger import NoAnswer
from gateway.model.meter import Usage
from gateway.model.prices import PriceTable
from gateway.runtime import (
    ArchiveStream,
    ContainerExit,
    ContainerMissing,
    ContainerSpec,
    ContainerState,
    EgressPolicy,
    ExecResult,
    ImageMissing,
    RuntimeFailure,
    SessionRuntime,
)
from gateway.runtime.metered import MeteredRuntime


def samples(metrics: Metrics, sessions: dict[str, int] | None = None) -> dict[str, float]:
    body, content_type = metrics.render(sessions, accept="")
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def key(name: str, **labels: str) -> str:
    return name + json.dumps(labels, sort_keys=True)


def test_each_app_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.turns.labels(outcome="completed").inc()
    assert samples(one)[key("ccd_turns_total", outcome="completed")] == 1
    assert samples(two)[key("ccd_turns_total", outcome="completed")] == 0


def test_known_labels_start_at_zero_and_sessions_come_from_the_scrape() -> None:
    metrics = Metrics()
    found = samples(metrics, {"ready": 2, "failed": 1})
    assert found[key("ccd_sessions", status="ready")] == 2
    assert found[key("ccd_sessions", status="busy")] == 0
    assert found[key("ccd_turns_total", outcome="interrupted")] == 0
    assert found[key("ccd_runtime_errors_total", operation="create")] == 0
    assert found[key("ccd_session_start_seconds_count", warm="false")] == 0
    assert key("ccd_turns_total", outcome="running") not in found
    # a count that could not be read is left out, never reported stale
    assert not any(name.startswith("ccd_sessions{") for name in samples(metrics, None))


def test_starts_and_turns_are_timed() -> None:
    metrics = Metrics()
    now = datetime.now(UTC)
    metrics.session_ready(now - timedelta(seconds=3))
    metrics.turn_ended("completed", now - timedelta(seconds=2), now)
    metrics.turn_ended("failed", now, None)  # counted, not timed
    metrics.turns_closed("interrupted", ["t1", "t2"])
    metrics.turns_closed("failed", [])
    found = samples(metrics)
    assert found[key("ccd_session_start_seconds_count", warm="false")] == 1
    assert 3 <= found[key("ccd_session_start_seconds_sum", warm="false")] < 10
    assert found[key("ccd_turns_total", outcome="completed")] == 1
    assert found[key("ccd_turns_total", outcome="failed")] == 1
    assert found[key("ccd_turns_total", outcome="interrupted")] == 2
    assert found[key("ccd_turn_seconds_count")] == 1
    assert found[key("ccd_turn_seconds_sum")] == pytest.approx(2)


def test_relay_lag_counts_only_events_stored_after_the_client_connected() -> None:
    metrics = Metrics()
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    connected = now_ms - 5000
    metrics.event_delivered(now_ms - 60_000, connected)  # replayed: not lag
    metrics.event_delivered(now_ms - 20, connected)  # live
    metrics.event_delivered(None, connected)  # a notice has no id
    found = samples(metrics)
    assert found[key("ccd_events_relayed_total")] == 3
    assert found[key("ccd_relay_lag_seconds_count")] == 1
    assert found[key("ccd_relay_lag_seconds_sum")] < 5


def test_model_calls_are_labelled_by_family_never_by_the_requested_name() -> None:
    metrics, prices = Metrics(), PriceTable()
    usage = Usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=100)
    for model in ("claude-sonnet-4-5-20250929", "x" * 200, "another-made-up-name"):
        metrics.model_call(prices.family(model), usage, Decimal("0.25"), 200)
    metrics.model_call(prices.family("claude-opus-4-5"), Usage(), Decimal(0), NoAnswer.UNREACHABLE)
    found = samples(metrics)
    assert found[key("ccd_model_requests_total", model="claude-sonnet-4", status="200")] == 1
    assert found[key("ccd_model_requests_total", model="other", status="200")] == 2
    assert found[key("ccd_model_requests_total", model="claude-opus-4-5", status="unreachable")]
    assert found[key("ccd_model_tokens_total", kind="cache_read", model="other")] == 200
    assert found[key("ccd_model_tokens_total", kind="output", model="claude-sonnet-4")] == 5
    assert found[key("ccd_model_cost_usd_total", model="other")] == pytest.approx(0.5)
    models = {name for name in found if name.startswith("ccd_model_requests_total{")}
    assert len(models) == 3


class ScriptedRuntime(SessionRuntime):
    """Every call answers as scripted: an exception to raise, else a plain result."""

    def __init__(self, failures: dict[str, Exception]) -> None:
        self.failures = failures

    def _maybe_fail(self, operation: str) -> None:
        if operation in self.failures:
            raise self.failures[operation]

    async def setup(self, egress: EgressPolicy) -> None:
        self._maybe_fail("setup")

    async def create(self, spec: ContainerSpec) -> ContainerState:
        self._maybe_fail("create")
        return ContainerState(id="c1", name=spec.name)

    async def start(self, container_id: str) -> None:
        self._maybe_fail("start")

    async def put_archive(self, container_id: str, path: str, data: BinaryIO) -> None:
        self._maybe_fail("put_archive")

    async def get_archive(self, container_id: str, path: str) -> ArchiveStream:
        self._maybe_fail("get_archive")
        return ArchiveStream(iter([b""]), {}, lambda: None)

    async def exec(self, container_id: str, argv: Sequence[str]) -> ExecResult:
        self._maybe_fail("exec")
        return ExecResult(0, b"", b"")

    async def stop(self, container_id: str, grace: float) -> None:
        self._maybe_fail("stop")

    async def remove(self, container_id: str) -> None:
        self._maybe_fail("remove")

    async def inspect(self, container_id: str) -> ContainerState | None:
        self._maybe_fail("inspect")
        return None

    async def list_managed(self) -> list[ContainerState]:
        self._maybe_fail("list_managed")
        return []

    async def exits(self) -> AsyncIterator[ContainerExit]:
        yield ContainerExit("c1", {}, 0)
        self._maybe_fail("exits")

    async def disk_usage(self, container_ids: Collection[str]) -> dict[str, int]:
        self._maybe_fail("disk_usage")
        return {}

    async def tree_digest(self, container_id: str, path: str) -> str:
        self._maybe_fail("tree_digest")
        return "0" * 64

    async def logs_tail(self, container_id: str, lines: int) -> str:
        self._maybe_fail("logs_tail")
        return ""

    async def image_id(self, image: str) -> str:
        self._maybe_fail("image_id")
        return "sha256:0"

    async def ping(self) -> None:
        self._maybe_fail("ping")


async def test_the_metered_runtime_counts_engine_failures_by_operation() -> None:
    metrics = Metrics()
    inner = ScriptedRuntime(
        {
            "create": ImageMissing("no image"),
            "ping": RuntimeFailure("engine down"),
            "stop": ContainerMissing("gone"),  # an answer, not a failure
            "exits": RuntimeFailure("event stream broke"),
        }
    )
    runtime = MeteredRuntime(inner, metrics.runtime_error)
    spec = ContainerSpec(name="n", image="i", env={}, labels={}, user="1:1")
    with pytest.raises(ImageMissing):
        await runtime.create(spec)
    with pytest.raises(RuntimeFailure):
        await runtime.ping()
    with pytest.raises(ContainerMissing):
        await runtime.stop("c1", 1)
    assert await runtime.inspect("c1") is None
    exits = []
    with pytest.raises(RuntimeFailure):
        async for exit_ in runtime.exits():
            exits.append(exit_)
    assert [e.container_id for e in exits] == ["c1"]
    found = samples(metrics)
    errors = {
        name: count
        for name, count in found.items()
        if name.startswith("ccd_runtime_errors_total") and count
    }
    assert errors == {
        key("ccd_runtime_errors_total", operation="create"): 1,
        key("ccd_runtime_errors_total", operation="ping"): 1,
        key("ccd_runtime_errors_total", operation="exits"): 1,
    }


def _log_line(formatter: logging.Formatter, message: str, **extra: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(AddSessionId())
    logger = logging.getLogger(f"test-observability-{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.info(message, extra=extra)
    return stream.getvalue()


def test_log_lines_carry_the_session_they_are_about() -> None:
    assert "session_id" not in json.loads(_log_line(JsonFormatter(), "nothing bound"))
    with session_context("s-1"):
        entry = json.loads(_log_line(JsonFormatter(), "about a session"))
        assert entry["session_id"] == "s-1"
        # an explicit id wins over the bound one
        assert json.loads(_log_line(JsonFormatter(), "x", session_id="s-2"))["session_id"] == "s-2"
        assert _log_line(TextFormatter(), "saving").rstrip().endswith("saving [session s-1]")
        # a message that names it already is not repeated
        assert "[session" not in _log_line(TextFormatter(), "session s-1 failed")
    assert "session_id" not in json.loads(_log_line(JsonFormatter(), "unbound again"))


async def test_a_bound_session_follows_into_tasks_and_stays_in_its_own() -> None:
    import asyncio

    async def request(session_id: str) -> str:
        bind_session(session_id)
        await asyncio.sleep(0)

        async def background() -> str:
            return json.loads(_log_line(JsonFormatter(), "later"))["session_id"]  # type: ignore[no-any-return]

        return await asyncio.create_task(background())

    assert await asyncio.gather(request("a"), request("b")) == ["a", "b"]
    assert "session_id" not in json.loads(_log_line(JsonFormatter(), "outside"))
