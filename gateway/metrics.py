"""The gateway's Prometheus metrics: the metric objects and the one-line calls that feed them.

One ``Metrics`` per app (built in ``create_app``) on a registry of its own, never the
process-wide default, so that several apps (tests) never share figures. The places that know
call one method each: the session service when a start completes, the turn service and the
terminator when turns end, the WebSocket route per event it delivers, the runtime wrapper
(``gateway.runtime.metered``) per failed engine call, the ledger per settled model call.

Counters and histograms count what *this* process did, so a fleet sums them over replicas.
``ccd_sessions`` is the exception: it is read from PostgreSQL at scrape time, so every replica
reports the whole fleet's sessions (aggregate it with ``max``, never ``sum``).

Label values are bounded: statuses, outcomes, operations and token kinds are fixed sets, and
a model is labelled by its price-table family (``other`` when none matches), never by the
name a request carried.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from gateway.db.models import PoolStatus, SessionStatus, TurnStatus
from gateway.model.meter import Usage

# Seconds. A start is a container plus the CLI's handshake (a few seconds); a turn is anything
# from one reply to an hour of tool use; relaying should take milliseconds.
START_BUCKETS = (0.5, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120)
TURN_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
START_STEPS = (
    "database",  # the session's row inserted (admission included)
    "credentials",  # its capability token minted and its Redis user created
    "engine_create",  # the container created (hardened spec, network, volumes)
    "restore",  # its container recorded and its workspace restored into it
    "engine_start",  # the engine started the container
    "wrapper_boot",  # container process start -> the wrapper started the CLI (from cli_ready)
    "cli_handshake",  # the CLI started -> it answered initialize (from cli_ready)
)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

RUNTIME_OPERATIONS = (
    "setup",
    "create",
    "start",
    "put_archive",
    "get_archive",
    "exec",
    "stop",
    "remove",
    "inspect",
    "list_managed",
    "exits",
    "disk_usage",
    "tree_digest",
    "logs_tail",
    "image_id",
    "ping",
)
TOKEN_KINDS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_input_tokens": "cache_creation",
    "cache_read_input_tokens": "cache_read",
}
OTHER_MODEL = "other"
POOL_CLAIM_OUTCOMES = ("claimed", "empty")
PERIODIC_SAVE_OUTCOMES = ("saved", "unchanged", "failed")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sessions = Gauge(
            "ccd_sessions",
            "Sessions by status, the whole fleet's (read from PostgreSQL at scrape time).",
            ["status"],
            registry=r,
        )
        self.session_start = Histogram(
            "ccd_session_start_seconds",
            "From create (or resume) to ready: the container started and the CLI answered.",
            ["warm"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.start_steps = Histogram(
            "ccd_session_start_step_seconds",
            "Where a cold start's time goes, step by step (see START_STEPS in gateway/metrics.py).",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.pool_containers = Gauge(
            "ccd_pool_containers",
            "Pooled containers by status, every engine's (read from PostgreSQL at scrape time).",
            ["status"],
            registry=r,
        )
        self.pool_claims = Counter(
            "ccd_pool_claims",
            "Creates that looked for a pooled container: claimed one, or found the pool empty.",
            ["outcome"],
            registry=r,
        )
        self.periodic_saves = Counter(
            "ccd_workspace_periodic_saves",
            "Periodic workspace saves by outcome: saved, unchanged (the workspace's digest showed "
            "nothing to save, so it was not read), failed.",
            ["outcome"],
            registry=r,
        )
        self.turns = Counter(
            "ccd_turns", "Chat turns that ended, by outcome.", ["outcome"], registry=r
        )
        self.turn_seconds = Histogram(
            "ccd_turn_seconds",
            "From a prompt accepted to its turn's end (a result or turn_failed).",
            buckets=TURN_BUCKETS,
            registry=r,
        )
        self.events_relayed = Counter(
            "ccd_events_relayed", "Events delivered to WebSocket clients.", registry=r
        )
        self.relay_lag = Histogram(
            "ccd_relay_lag_seconds",
            "From an event's stream id (when Redis stored it) to its delivery to a WebSocket "
            "client, for events stored after the client connected (replays are not lag).",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.websocket_clients = Gauge(
            "ccd_websocket_clients", "WebSocket streams open on this process.", registry=r
        )
        self.runtime_errors = Counter(
            "ccd_runtime_errors",
            "Container runtime calls that failed (the engine refused or did not answer), by "
            "operation. A missing container or path is an answer, not an error.",
            ["operation"],
            registry=r,
        )
        self.model_requests = Counter(
            "ccd_model_requests",
            "Model calls through the proxy, settled, by model family and upstream HTTP status "
            "(when there was none: 'unreachable', or 'caller_gone' for a caller that hung up "
            "mid-request).",
            ["model", "status"],
            registry=r,
        )
        self.model_tokens = Counter(
            "ccd_model_tokens",
            "Tokens the upstream reported, by kind and model family.",
            ["kind", "model"],
            registry=r,
        )
        self.model_cost = Counter(
            "ccd_model_cost_usd",
            "What settled model calls cost (MODEL_PRICES), by model family.",
            ["model"],
            registry=r,
        )
        # Known label values start at zero, so a rate() over them works from the first scrape.
        self.session_start.labels(warm="false")
        self.session_start.labels(warm="true")
        for outcome in POOL_CLAIM_OUTCOMES:
            self.pool_claims.labels(outcome=outcome)
        for outcome in PERIODIC_SAVE_OUTCOMES:
            self.periodic_saves.labels(outcome=outcome)
        for step in START_STEPS:
            self.start_steps.labels(step=step)
        for outcome in TurnStatus:
            if outcome != TurnStatus.RUNNING:
                self.turns.labels(outcome=outcome.value)
        for operation in RUNTIME_OPERATIONS:
            self.runtime_errors.labels(operation=operation)

    # -- sessions and turns --------------------------------------------------------------------

    def session_ready(self, started_at: datetime, warm: bool = False) -> None:
        """A session's start (create or resume, at ``started_at``) completed just now."""
        seconds = max(0.0, (datetime.now(UTC) - started_at).total_seconds())
        self.session_start.labels(warm="true" if warm else "false").observe(seconds)

    def pool_claim(self, outcome: str) -> None:
        self.pool_claims.labels(outcome=outcome).inc()

    def periodic_save(self, outcome: str) -> None:
        self.periodic_saves.labels(outcome=outcome).inc()

    def start_step(self, step: str, seconds: float | None) -> None:
        if seconds is not None and step in START_STEPS:
            self.start_steps.labels(step=step).observe(max(0.0, seconds))

    def turn_ended(self, outcome: str, created_at: datetime, finished_at: datetime | None) -> None:
        """One turn ended on its own (a result or a turn_failed event)."""
        self.turns.labels(outcome=outcome).inc()
        if finished_at is not None:
            self.turn_seconds.observe(max(0.0, (finished_at - created_at).total_seconds()))

    def turns_closed(self, outcome: str, turn_ids: Iterable[object]) -> None:
        """Turns cut off by their session's end (a stop, a failure): counted, not timed."""
        count = sum(1 for _ in turn_ids)
        if count:
            self.turns.labels(outcome=outcome).inc(count)

    # -- the relay -----------------------------------------------------------------------------

    def event_delivered(self, stored_ms: int | None, connected_ms: float) -> None:
        """An event stored at ``stored_ms`` (its stream id's time; ``None`` for a notice)
        went to a WebSocket client that connected at ``connected_ms`` (epoch milliseconds).
        Its lag is observed when it was stored since: older events are a replay, whose age is
        not lag. Called once per delivery, so it does no more than it must."""
        self.events_relayed.inc()
        if stored_ms is not None and stored_ms >= connected_ms:
            self.relay_lag.observe(max(0.0, time.time() - stored_ms / 1000))

    # -- the runtime and the model -------------------------------------------------------------

    def runtime_error(self, operation: str) -> None:
        self.runtime_errors.labels(operation=operation).inc()

    def model_call(
        self, family: str | None, usage: Usage, cost: Decimal, status: int | str
    ) -> None:
        """One model call settled: what the upstream reported it used, and its price.
        ``status``: the upstream's HTTP status, or why there was none."""
        model = family or OTHER_MODEL
        self.model_requests.labels(model=model, status=str(status)).inc()
        for field, kind in TOKEN_KINDS.items():
            tokens = getattr(usage, field)
            if tokens:
                self.model_tokens.labels(kind=kind, model=model).inc(tokens)
        if cost:
            self.model_cost.labels(model=model).inc(float(cost))

    # -- exposition ----------------------------------------------------------------------------

    def render(
        self,
        sessions: Mapping[str, int] | None,
        accept: str,
        pool: Mapping[str, int] | None = None,
    ) -> tuple[bytes, str]:
        """The exposition (body, content type) for a scraper sending ``accept``, with
        ``ccd_sessions`` set from ``sessions`` (status -> count) and ``ccd_pool_containers``
        from ``pool``, each left out when it could not be read (``None``: a stale figure
        would be worse than none)."""
        self.sessions.clear()
        if sessions is not None:
            for status in SessionStatus:
                self.sessions.labels(status=status.value).set(sessions.get(status.value, 0))
        self.pool_containers.clear()
        if pool is not None:
            for pool_status in PoolStatus:
                self.pool_containers.labels(status=pool_status.value).set(
                    pool.get(pool_status.value, 0)
                )
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
