"""The FastAPI application and its lifespan, which owns every client and background task."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from fastapi import FastAPI

from gateway import __version__
from gateway.api import build_router
from gateway.api.console import install_console
from gateway.api.model import GatewayApp
from gateway.api.openapi import install_openapi
from gateway.config import Settings
from gateway.db.engine import create_engine, create_session_factory
from gateway.db.notifications import Listener
from gateway.db.statements import Statements
from gateway.deps import Services
from gateway.draining import Drain
from gateway.errors import install_error_handlers
from gateway.events.access import SessionAccess
from gateway.events.bus import EventBus
from gateway.events.hub import EventHub
from gateway.guard import RequestGuard
from gateway.metrics import Metrics
from gateway.model.callers import REVOKED_CHANNEL, CallerCache
from gateway.model.ledger import Ledger
from gateway.model.prices import PriceTable
from gateway.model.proxy import ModelProxy
from gateway.model.slots import CallSlots
from gateway.model.upstream import Upstream
from gateway.model.usage import UsageService
from gateway.ratelimit import RateLimiter
from gateway.runtime import (
    OPEN_EGRESS,
    EgressPolicy,
    IsolationUnavailable,
    RuntimeFailure,
    SessionRuntime,
)
from gateway.runtime.docker import DockerRuntime
from gateway.runtime.metered import MeteredRuntime
from gateway.services import idempotency
from gateway.services.admission import START_SLOTS_CHANNEL, StartAdmission
from gateway.services.background import TaskSet
from gateway.services.disk_guard import DiskGuard
from gateway.services.execute import ExecuteService
from gateway.services.leases import Leases
from gateway.services.pool import WarmPool
from gateway.services.reconciler import Reconciler
from gateway.services.recorder import Recorder
from gateway.services.session_files import LiveFiles
from gateway.services.sessions import SessionService
from gateway.services.snapshots import PeriodicSaves
from gateway.services.termination import Terminator
from gateway.services.trees import TreeService
from gateway.services.turns import TurnService
from gateway.services.workspace_files import StoredFiles
from gateway.services.workspaces import WorkspaceService
from gateway.store.objects import ObjectStore, StoreError
from wrapper.protocol import SESSION_HOST_ALIAS

log = logging.getLogger(__name__)

# One lease each, per instance.
DUTIES = ("reconciler", "exits", "snapshots", "disk", "purge", "pool")

HUB_BLOCK_SECONDS = 30
REDIS_HEALTH_CHECK_SECONDS = 5


def create_app(settings: Settings, drain: Drain | None = None) -> FastAPI:
    """The app. ``drain`` is the process's shutdown state, shared with the server that runs
    the app (``gateway/draining.py``); without one the app gets its own, never draining."""
    metrics = Metrics()  # the app's own registry: several apps in one process never mix

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            engine = create_engine(settings)
            stack.push_async_callback(engine.dispose)
            db = create_session_factory(engine)
            redis_url = settings.gateway_redis_url
            # Connections idle past the health check are pinged before use, so those a Redis
            # restart closed are replaced before a request meets them.
            redis = aioredis.Redis.from_url(
                redis_url,
                decode_responses=True,
                socket_connect_timeout=5,
                health_check_interval=REDIS_HEALTH_CHECK_SECONDS,
            )
            stack.push_async_callback(redis.aclose)
            # The hub blocks in XREAD on its own connections, so it gets its own client, with
            # a socket timeout longer than its blocking reads.
            hub_redis = aioredis.Redis.from_url(
                redis_url,
                decode_responses=True,
                socket_timeout=HUB_BLOCK_SECONDS + 10,
                socket_connect_timeout=5,
                health_check_interval=REDIS_HEALTH_CHECK_SECONDS,
            )
            stack.push_async_callback(hub_redis.aclose)
            runtime = MeteredRuntime(
                DockerRuntime(
                    settings.instance_name,
                    settings.docker_host,
                    network=settings.session_network,
                    host_alias=SESSION_HOST_ALIAS,
                    helper_image=settings.session_image,
                ),
                metrics.runtime_error,
            )
            stack.push_async_callback(runtime.close)
            await _setup_runtime(runtime, settings)
            store = ObjectStore(
                settings.s3_endpoint,
                settings.s3_access_key.get_secret_value(),
                settings.s3_secret_key.get_secret_value(),
                settings.s3_bucket,
                secure=settings.s3_secure,
                region=settings.s3_region,
            )
            stack.callback(store.close)
            await _ensure_bucket(store, settings.s3_bucket)

            bus = EventBus(redis, settings.event_stream_maxlen)
            hub = EventHub(hub_redis, bus, block_ms=int(HUB_BLOCK_SECONDS * 1000))
            access = SessionAccess(
                redis,
                settings.redis_user_key,
                settings.effective_session_redis_url,
                settings.instance_name,
            )
            upstream = Upstream(settings)
            stack.push_async_callback(upstream.close)
            statements = Statements(settings.database_url, settings.database_pool_size)
            stack.push_async_callback(statements.close)
            callers = CallerCache(settings.model_caller_cache_seconds)
            ledger = Ledger(
                db,
                statements,
                PriceTable(settings.model_prices),
                bus,
                settings.budget_wait,
                metrics,
                callers,
            )
            model_proxy = ModelProxy(
                settings,
                upstream,
                ledger,
                CallSlots(
                    redis, settings.model_max_streams_per_owner, settings.model_upstream_timeout
                ),
            )
            stack.push_async_callback(model_proxy.close)
            turns = TurnService(db, bus, hub, metrics)
            workspaces = WorkspaceService(settings, db, runtime, store, bus)
            stack.push_async_callback(workspaces.close)
            terminator = Terminator(
                settings, db, runtime, bus, hub, access, workspaces, metrics=metrics
            )
            stack.push_async_callback(terminator.close)
            hub.on_damage(terminator.stream_damaged)
            admission = StartAdmission(
                db, settings.instance_name, settings.session_start_concurrency
            )
            pool = WarmPool(settings, db, runtime, access, admission, metrics)
            sessions = SessionService(
                settings,
                db,
                runtime,
                bus,
                hub,
                turns,
                terminator,
                access,
                admission,
                workspaces,
                metrics=metrics,
                pool=pool,
            )
            stack.push_async_callback(sessions.close)
            execute = ExecuteService(sessions, turns, terminator, hub)
            stack.push_async_callback(execute.close)
            recorder = Recorder(sessions, turns, terminator, hub, workspaces)
            reconciler = Reconciler(
                settings, db, runtime, terminator, hub, access, ledger, workspaces
            )
            app.state.services = Services(
                settings=settings,
                metrics=metrics,
                db=db,
                runtime=runtime,
                bus=bus,
                hub=hub,
                sessions=sessions,
                terminator=terminator,
                turns=turns,
                trees=TreeService(db),
                workspaces=workspaces,
                files=StoredFiles(settings, db, workspaces),
                live_files=LiveFiles(runtime, settings.workspace_max_bytes),
                model_proxy=model_proxy,
                usage=UsageService(db),
                execute=execute,
                rate_limiter=RateLimiter(
                    redis, settings.rate_limit_per_second, settings.rate_limit_burst
                ),
            )
            # Background work has one owner across replicas: the holder of its lease.
            duties = {duty: f"{settings.instance_name}:{duty}" for duty in DUTIES}
            leases = Leases(db, duties.values(), settings.lease_ttl)

            def mine(duty: str) -> Callable[[], bool]:
                return lambda: leases.holds(duties[duty])

            hub.on_restart(reconciler.wake.set)  # Redis came back: users, gaps, at once

            def hearing() -> None:  # notifications sent while deaf are lost: start afresh
                callers.hearing()
                sessions.slot_freed()

            listener = Listener(
                settings.database_url,
                {
                    REVOKED_CHANNEL: callers.revoked,
                    START_SLOTS_CHANNEL: sessions.start_slots_changed,
                },
                on_hearing=hearing,
                on_deaf=callers.deaf,
            )
            tasks = TaskSet()  # the loops that run for the gateway's whole life
            stack.push_async_callback(tasks.close)
            tasks.spawn(leases.run(), "leases")
            tasks.spawn(listener.run(), "database-notifications")
            tasks.spawn(hub.run(), "event-hub")
            tasks.spawn(recorder.run(), "recorder")
            tasks.spawn(sessions.run_starter(), "starter")
            tasks.spawn(reconciler.watch_exits(mine("exits")), "container-exits")
            tasks.spawn(reconciler.run(mine("reconciler")), "reconciler")
            tasks.spawn(pool.run(mine("pool")), "warm-pool")
            periodic_saves = PeriodicSaves(settings, db, runtime, workspaces, bus, metrics)
            tasks.spawn(periodic_saves.run(mine("snapshots")), "workspace-snapshots")
            tasks.spawn(
                DiskGuard(settings, db, runtime, terminator).run(mine("disk")), "disk-guard"
            )
            tasks.spawn(
                idempotency.run_purge(db, settings.idempotency_ttl, mine("purge")),
                "idempotency-purge",
            )
            # What exists now lives as long as the process (modules, routes, clients): kept out
            # of the collector's sight, a full collection scans only what came later instead
            # of every object, which stalled every stream for 75-250 ms a minute or so.
            gc.collect()
            gc.freeze()
            stack.callback(gc.unfreeze)  # an app stopped in a process that goes on is collected
            log.info("gateway %s ready (instance %s)", __version__, settings.instance_name)
            yield

    app = GatewayApp(
        title="CC-Docker",
        version=__version__,
        description="Claude Code sessions, each in its own Docker container.",
        lifespan=lifespan,
    )
    app.state.drain = drain or Drain()
    install_error_handlers(app)
    app.include_router(build_router())
    install_console(app)
    install_openapi(app)
    # Credentials, rate and body size are checked before routing reads anything. (The model
    # proxy is served before all of this and checks its own callers and bodies: GatewayApp.)
    app.add_middleware(RequestGuard, settings=settings)
    return app


def egress_policy(settings: Settings) -> EgressPolicy:
    """SESSION_EGRESS as the runtime's policy: open, or only the host ports where sessions
    reach the gateway and Redis (the ports of SESSION_GATEWAY_URL and SESSION_REDIS_URL, which
    must then name the host as sessions see it). Raises ``ValueError`` when they do not."""
    if settings.session_egress == "open":
        return OPEN_EGRESS
    ports = []
    urls = {
        "SESSION_GATEWAY_URL": settings.effective_session_gateway_url,
        "SESSION_REDIS_URL": settings.effective_session_redis_url,
    }
    for name, url in urls.items():
        parts = urlsplit(url)
        if parts.hostname != SESSION_HOST_ALIAS:
            raise ValueError(
                f"SESSION_EGRESS=none lets sessions reach only {SESSION_HOST_ALIAS} (the host "
                f"on their network), but {name} is {url}: point it there, or set "
                "SESSION_EGRESS=open"
            )
        ports.append(
            parts.port or {"https": 443, "rediss": 6379, "redis": 6379}.get(parts.scheme, 80)
        )
    return EgressPolicy.only_host_ports(*ports)


async def _setup_runtime(runtime: SessionRuntime, settings: Settings) -> None:
    """Sessions must be kept apart and confined as SESSION_EGRESS says: a network that cannot
    keep them apart, or an engine that cannot enforce the egress policy, stops the gateway
    here, with the reason. Applied at every start, so a rebooted host gets its rules back. An
    engine that does not answer yet is not fatal (``/ready`` says so, and the network is made
    and confined before the first session)."""
    try:
        await runtime.setup(egress_policy(settings))
    except (IsolationUnavailable, ValueError) as exc:
        raise SystemExit(f"gateway: {exc}") from exc
    except RuntimeFailure as exc:
        log.warning("the container runtime is not ready: %s", exc)


async def _ensure_bucket(store: ObjectStore, bucket: str) -> None:
    """Create the bucket when missing. The gateway still starts if the store is down (``/ready``
    says so); workspace operations then fail with 503 until it is back."""
    try:
        await asyncio.to_thread(store.ensure_bucket)
    except StoreError as exc:
        log.warning("could not check or create bucket %s: %s", bucket, exc)
