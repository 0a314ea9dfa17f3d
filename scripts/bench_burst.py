"""A burst of creates on a fleet of replicas, beside a bare burst of the same size. Run by
hand (not in CI), after scripts/test.sh has built the images:

    .venv/bin/python scripts/bench_burst.py [--sessions 50] [--replicas 3] [--concurrency 4]
        [--pool-size 0]

- bare: N ``docker run -i`` of the session image at once (the sessions' limits), each until
  its CLI answers ``initialize``: the floor of a burst on this engine; and once more with
  every CLI kept up until the last has answered, as a session's CLI stays up;
- ours: N ``POST /sessions`` at once, spread round-robin over the replicas (the test harness's
  load balancer, tests/fleet.py), each until the session is ``ready``.

It prints p50 and the last of each, and the ratio of the last ones; with ``--pool-size`` the
first creates take pooled containers (ready in milliseconds) and the rest start cold. Where the
machine lets it (scripts/cpu_meter.py), it also prints where each burst's CPU went, per session:
the session containers, PostgreSQL, Redis, the gateways, the engine's daemons, this process
(the clients and the load balancer) and the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import docker  # noqa: E402
from bench import bare_run  # noqa: E402
from bench_proxy import start_upstream  # noqa: E402
from cpu_meter import CpuMeter  # noqa: E402

from tests.client import Api  # noqa: E402
from tests.fleet import Fleet, token  # noqa: E402
from tests.stack import start_infra, start_s3  # noqa: E402

LIMITS = ["--cpus=1.0", "--memory=2g", "--pids-limit=512", "--cap-drop=ALL"]


def bare_burst(
    network: str, upstream: str, count: int, held: Callable[[], None] | None = None
) -> list[float]:
    """``held``: each CLI stays up until the last has answered, as sessions do (an idle CLI
    still spends CPU: about 9 ms a second, its own once-a-second timers), and ``held`` is
    called the moment the last one answers (before any CLI takes its turn and exits)."""
    hold = threading.Barrier(count, action=held) if held else None
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(bare_run, network, upstream, LIMITS, hold) for _ in range(count)]
        return [future.result()[0] for future in futures]


async def queue_and_start(
    database_url: str, ready: dict[str, float]
) -> tuple[list[float], list[float], list[float]]:
    """Per cold session: seconds waiting for a start slot (created -> admitted), and seconds
    from admission to ready; per warm one (it claimed a pooled container): created -> ready."""
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await connection.fetch(
            "SELECT id::text, extract(epoch FROM started_at) AS created, "
            "extract(epoch FROM admitted_at) AS admitted, pool_id IS NOT NULL AS warm "
            "FROM sessions WHERE id::text = ANY($1)",
            list(ready),
        )
    finally:
        await connection.close()
    cold = [row for row in rows if not row["warm"]]
    waits = [float(row["admitted"] - row["created"]) for row in cold]
    starts = [ready[row["id"]] - float(row["admitted"]) for row in cold]
    warm = [ready[row["id"]] - float(row["created"]) for row in rows if row["warm"]]
    return waits, starts, warm


async def ours_burst(fleet: Fleet, count: int, ready_at: dict[str, float]) -> list[float]:
    urls = [replica.url for replica in fleet.replicas if replica is not None]
    clients = [Api(urls[i % len(urls)], token(fleet, f"burst-{i % 10}")) for i in range(count)]

    async def one(client: Api) -> float:
        # Readiness as a client sees it on the session's WebSocket: polling 50 sessions with
        # GETs would load the replicas the burst is measuring.
        start = time.perf_counter()
        session = await client.create()
        async with client.stream(session["id"], after="0") as ws:
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 600))["event"]
                if event.get("type") == "status" and event.get("status") in ("ready", "failed"):
                    assert event["status"] == "ready", event
                    ready_at[session["id"]] = time.time()
                    return time.perf_counter() - start

    try:
        return list(await asyncio.gather(*(one(client) for client in clients)))
    finally:
        for client in clients:
            await client.aclose()


async def pool_full(database_url: str, size: int) -> None:
    """Wait until the warm pool holds ``size`` ready containers, and their CLIs had time to
    boot."""
    if not size:
        return
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        async with asyncio.timeout(300):
            while True:
                ready = await connection.fetchval(
                    "SELECT count(*) FROM pool_containers WHERE status = 'ready'"
                )
                if ready >= size:
                    break
                await asyncio.sleep(0.5)
    finally:
        await connection.close()
    await asyncio.sleep(3)


def line(name: str, values: list[float]) -> str:
    return (
        f"{name:<48} p50 {statistics.median(values):6.2f} s   last {max(values):6.2f} s   "
        f"({len(values)} sessions)"
    )


async def main(args: argparse.Namespace) -> None:
    client = docker.from_env()
    with start_infra(client) as infra:
        upstream, upstream_url = start_upstream(infra.gateway_ip)
        try:
            with tempfile.TemporaryDirectory() as logs, start_s3(Path(logs)) as s3:
                fleet = Fleet(
                    infra,
                    upstream_url,
                    s3,
                    Path(logs),
                    size=args.replicas,
                    overrides={
                        "SESSION_START_CONCURRENCY": str(args.concurrency),
                        "MAX_SESSIONS_PER_OWNER": str(args.sessions),
                        "RATE_LIMIT_PER_SECOND": "0",
                        "SESSION_START_TIMEOUT": "600",
                        "LOG_LEVEL": "WARNING",
                        "SESSION_POOL_SIZE": str(args.pool_size),
                    },
                )
                with fleet.running():
                    meters = [meter_for(infra, fleet) for _ in range(3)]
                    meters[0].start()
                    bare = await asyncio.to_thread(
                        bare_burst, infra.network_name, upstream_url, args.sessions
                    )
                    meters[0].stop()
                    meters[1].start()  # stopped as the last CLI answers, as ours is
                    held = await asyncio.to_thread(
                        bare_burst, infra.network_name, upstream_url, args.sessions, meters[1].stop
                    )
                    await pool_full(infra.database_url, args.pool_size)
                    ready_at: dict[str, float] = {}
                    meters[2].start()
                    ours = await ours_burst(fleet, args.sessions, ready_at)
                    meters[2].stop()
                    waits, starts, warm = await queue_and_start(infra.database_url, ready_at)
        finally:
            upstream.kill()
    print(
        f"burst of {args.sessions}, {args.replicas} replicas, {args.concurrency} start slots, "
        f"a warm pool of {args.pool_size}"
    )
    print(line("bare: docker run -i + CLI initialize, at once", bare))
    print(line("bare, each CLI kept up until the last is", held))
    print(line("ours: POST /sessions -> ready, at once", ours))
    print(
        f"ratio of the last ready: {max(ours) / max(bare):.2f}x "
        f"({max(ours) / max(held):.2f}x of the bare burst whose CLIs stay up)"
    )
    print(line("ours, cold: waiting for a start slot", waits))
    print(line("ours, cold: admitted -> ready", starts))
    if warm:
        print(line("ours, warm (a pooled container): created -> ready", warm))
    if meters[0].available:
        # The first bare burst's figures include its CLIs' turns and exits; the others end
        # with the last ready.
        for name, meter in zip(("bare", "bare, kept up", "ours"), meters, strict=True):
            print(f"{name}: {meter.summary(args.sessions)}")
            print(f"{'':>{len(name) + 1}} {meter.cores()}")


def meter_for(infra: Any, fleet: Fleet) -> CpuMeter:
    containers = {
        "postgres": infra.postgres.get_wrapped_container().id,
        "redis": infra.redis.get_wrapped_container().id,
    }
    processes = {
        f"gateway:{i}": replica.process.pid
        for i, replica in enumerate(fleet.replicas)
        if replica is not None and replica.process is not None
    }
    return CpuMeter(containers, processes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool-size", type=int, default=0, help="SESSION_POOL_SIZE")
    asyncio.run(main(parser.parse_args()))
