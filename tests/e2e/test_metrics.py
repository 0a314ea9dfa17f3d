"""``GET /metrics`` of the real gateway: what a real session, turn and stream move.

A gateway of this module's own, with ``METRICS_TOKEN`` set, so its counters move only by what
these tests do (the shared ``gateway`` fixture serves the other tests, and serves /metrics
open).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.client import Api, is_claude, is_status, marker, mint_token, read_until
from tests.fake_anthropic import text
from tests.stack import Gateway, run_gateway

pytestmark = pytest.mark.docker

METRICS_TOKEN = secrets.token_urlsafe(24)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def metered(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("metered-gateway")
    with run_gateway(
        infra, fake_api.base_url, s3_endpoint, logs, METRICS_TOKEN=METRICS_TOKEN
    ) as running:
        yield running


def scrape(url: str, token: str | None = METRICS_TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every label set that includes ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


async def test_a_session_and_a_turn_move_the_metrics(metered, fake_api) -> None:
    api = Api(metered.url, mint_token(metered.jwt_secret, marker("metrics")))
    tag = marker()
    fake_api.on(tag, text(f"measured {tag}"))
    before = scrape(metered.url)
    session = await api.create(config={"model": "claude-sonnet-4-5"})
    try:
        async with api.stream(session["id"]) as ws:
            received = await read_until(ws, is_status("ready"), timeout=90)
            during = scrape(metered.url)
            reply = await api.chat(session["id"], f"measure me {tag}")
            received += await read_until(ws, is_claude("result"))
        assert reply["turn"]["status"] == "completed"
        after = scrape(metered.url)
        await _check_moved(before, during, after, received, fake_api.reported(tag))

        # the client left: the gauge goes back (polled: the server notices the close)
        deadline = time.monotonic() + 10
        while value(scrape(metered.url), "ccd_websocket_clients") != 0:
            assert time.monotonic() < deadline, "ccd_websocket_clients stayed above 0"
            await asyncio.sleep(0.1)
        await api.stop(session["id"])
        stopped = scrape(metered.url)
        assert value(stopped, "ccd_sessions", status="stopped") >= 1 + value(
            after, "ccd_sessions", status="stopped"
        )
    finally:
        await api.aclose()


async def _check_moved(
    before: Samples,
    during: Samples,
    after: Samples,
    received: list[dict[str, Any]],
    reported: list[tuple[str, dict[str, Any]]],
) -> None:

    # create -> ready, once, with the warm pool's label fixed to false for now
    assert moved(before, after, "ccd_session_start_seconds_count", warm="false") == 1
    start = moved(before, after, "ccd_session_start_seconds_sum", warm="false")
    assert 0 < start < 90
    # and where its time went: every step of the cold start observed once, the steps
    # together no longer than the whole (give or take the engine's reply to its start, which
    # the wrapper's boot overlaps)
    steps = ("database", "credentials", "engine_create", "restore", "engine_start")
    steps += ("wrapper_boot", "cli_handshake")
    for step in steps:
        assert moved(before, after, "ccd_session_start_step_seconds_count", step=step) == 1, step
    spent = sum(
        moved(before, after, "ccd_session_start_step_seconds_sum", step=step) for step in steps
    )
    assert 0 < spent < start + 0.5
    # the turn: counted by outcome and timed
    assert moved(before, after, "ccd_turns_total", outcome="completed") == 1
    assert moved(before, after, "ccd_turn_seconds_count") == 1
    assert moved(before, after, "ccd_turn_seconds_sum") > 0
    # every event this client got was counted; those stored while it was connected were
    # timed from their stream id to their delivery
    assert moved(before, after, "ccd_events_relayed_total") >= len(received)
    assert moved(before, after, "ccd_relay_lag_seconds_count") >= 3
    assert value(during, "ccd_websocket_clients") == 1
    # the fleet's sessions, from PostgreSQL
    assert value(during, "ccd_sessions", status="ready") >= 1
    assert set(_labels(after, "ccd_sessions", "status")) == {
        "starting",
        "ready",
        "busy",
        "stopping",
        "stopped",
        "failed",
    }
    # the model calls of the turn, through the gateway's proxy, priced
    assert moved(before, after, "ccd_model_requests_total", status="200") >= 1
    assert reported, "the fake API saw no call for this turn"
    output = sum(usage["output_tokens"] for _, usage in reported)
    assert moved(before, after, "ccd_model_tokens_total", kind="output") >= output
    assert moved(before, after, "ccd_model_tokens_total", kind="input") > 0
    assert moved(before, after, "ccd_model_cost_usd_total") > 0
    families = set(_labels(after, "ccd_model_requests_total", "model"))
    assert "claude-sonnet-4" in families  # a price-table family, never a raw name
    # every runtime operation is exposed from zero, so rate() works from the first scrape
    assert ("ccd_runtime_errors_total", frozenset({("operation", "create")})) in after


async def test_every_replica_counts_the_fleets_sessions(metered, api_for) -> None:
    """ccd_sessions comes from PostgreSQL: a session of another gateway counts here too."""
    other = api_for(marker("elsewhere"))
    before = scrape(metered.url)
    session = await other.create()  # on the shared gateway, not on `metered`
    try:
        after = scrape(metered.url)
        running = ("starting", "ready", "busy")
        assert sum(moved(before, after, "ccd_sessions", status=s) for s in running) >= 1
    finally:
        await other.stop(session["id"])


def test_metrics_token_is_required_when_set(metered, gateway) -> None:
    missing = httpx.get(f"{metered.url}/metrics", timeout=10)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "missing_token"
    wrong = httpx.get(
        f"{metered.url}/metrics", headers={"Authorization": "Bearer not-it"}, timeout=10
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_token"
    # a user's JWT is not the metrics token either
    user = mint_token(metered.jwt_secret, "alice")
    refused = httpx.get(
        f"{metered.url}/metrics", headers={"Authorization": f"Bearer {user}"}, timeout=10
    )
    assert refused.status_code == 401
    assert (
        "ccd_sessions"
        in httpx.get(
            f"{metered.url}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            timeout=10,
        ).text
    )
    # without METRICS_TOKEN (the shared gateway) the endpoint is open
    open_ = scrape(gateway.url, token=None)
    assert ("ccd_turns_total", frozenset({("outcome", "completed")})) in open_


def test_openmetrics_is_served_to_scrapers_that_ask(metered) -> None:
    response = httpx.get(
        f"{metered.url}/metrics",
        headers={
            "Authorization": f"Bearer {METRICS_TOKEN}",
            "Accept": "application/openmetrics-text; version=1.0.0",
        },
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def _labels(samples: Samples, name: str, label: str) -> list[str]:
    found: list[str] = []
    for (sample_name, labels), _ in samples.items():
        if sample_name == name:
            found += [v for k, v in labels if k == label]
    return found
