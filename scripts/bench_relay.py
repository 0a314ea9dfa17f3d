"""The relay at scale: events written into sessions' output streams (with the wrapper's own
publisher) until they reach WebSocket clients. Run by hand (not in CI), after
scripts/test.sh has built the images:

    .venv/bin/python scripts/bench_relay.py [--seconds 5] [--workers 2]

It starts the same real stack as the tests (stand-in PostgreSQL and Redis, ``python -m
gateway``, real session containers) and runs, one after the other:

- one client of one session at 1,000 events/s;
- 100 viewers of one session at 100 events/s (10,000 deliveries/s);
- ``--sessions`` sessions (20) with one client each, at 10,000 deliveries/s in all;
- a sweep of one session's viewers at rising rates until p99 passes 50 ms: the saturation
  point in deliveries/s.

For each: deliveries/s achieved, latency from the publisher's clock in the event to its
arrival at a client (p50, p99, max), and the gateway process's CPU time per 10,000
deliveries. The clients run in ``--workers`` processes of their own and the publisher in
another, so neither competes with the gateway's process for its interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from bench import percentile  # noqa: E402
from bench_proxy import cpu_seconds  # noqa: E402

from tests.client import Api, mint_token  # noqa: E402
from tests.stack import run_gateway, start_infra, start_s3  # noqa: E402
from wrapper.protocol import output_stream_key  # noqa: E402

SATURATED_MS = 50.0


def client_worker(
    ws_urls: list[str],
    token: str,
    expected: int,
    ready: Any,
    results: Any,
) -> None:
    """One process: a WebSocket client per URL, each until it has ``expected`` events."""

    span = [float("inf"), 0.0]  # first event sent, last one received (ns, wall clock)

    async def one(url: str, latencies: list[float]) -> None:
        async with Api.connect(url, {"Authorization": f"Bearer {token}"}) as ws:
            ready.release()
            received = 0
            while received < expected:
                raw = await ws.recv()
                now = time.time_ns()
                event = json.loads(raw)["event"]
                if event.get("type") != "bench":
                    continue
                latencies.append((now - event["t"]) / 1e6)
                span[0] = min(span[0], event["t"])
                span[1] = max(span[1], now)
                received += 1

    async def run() -> list[float]:
        latencies: list[float] = []
        await asyncio.wait_for(
            asyncio.gather(*(one(url, latencies) for url in ws_urls)), expected / 10 + 120
        )
        return latencies

    results.put((asyncio.run(run()), span))


def publisher(redis_url: str, session_ids: list[str], rate: int, seconds: float) -> None:
    """``rate`` events/s into each session's stream, in a process: the same entries as the
    wrapper's ``Channel.publish``, each tick's in one pipelined round trip. Awaiting them one
    after the other, the publisher and not the relay set the pace; many concurrent clients
    cost the benchmark more CPU than the relay it measures (a 2-core machine holds both)."""

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        keys = [output_stream_key(sid) for sid in session_ids]
        count = int(rate * seconds)
        interval = 1.0 / rate
        next_at = time.perf_counter()
        for seq in range(count):
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    body = json.dumps({"type": "bench", "seq": seq, "t": time.time_ns()})
                    fields = {"source": "claude", "type": "bench", "turn": "", "data": body}
                    pipe.xadd(key, fields, maxlen=100_000, approximate=True)
                await pipe.execute()
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await client.aclose()

    asyncio.run(run())


def scenario(
    name: str,
    api: Api,
    redis_url: str,
    gateway_pid: int,
    session_ids: list[str],
    viewers: int,
    rate: int,
    seconds: float,
    workers: int,
) -> float:
    """Run one scenario; print its line and return its p99 in ms."""
    expected = int(rate * seconds)
    urls = [api.ws_url(sid, "$") for sid in session_ids for _ in range(viewers)]
    context = mp.get_context("spawn")
    ready = context.Semaphore(0)
    results = context.Queue()
    shares = [urls[i::workers] for i in range(workers) if urls[i::workers]]
    processes = [
        context.Process(target=client_worker, args=(share, api.token, expected, ready, results))
        for share in shares
    ]
    for process in processes:
        process.start()
    for _ in urls:
        if not ready.acquire(timeout=120):
            raise RuntimeError("the clients did not connect")
    time.sleep(0.5)  # every client is subscribed in the gateway
    cpu_before = cpu_seconds(gateway_pid)
    # One publisher per few sessions, as every session has its own wrapper.
    senders = [
        context.Process(target=publisher, args=(redis_url, session_ids[i::5], rate, seconds))
        for i in range(min(5, len(session_ids)))
    ]
    for sender in senders:
        sender.start()
    latencies: list[float] = []
    first_sent, last_received = float("inf"), 0.0
    for _ in processes:
        values, (sent, received) = results.get(timeout=seconds + 180)
        latencies.extend(values)
        first_sent, last_received = min(first_sent, sent), max(last_received, received)
    elapsed = (last_received - first_sent) / 1e9
    cpu = cpu_seconds(gateway_pid) - cpu_before
    for sender in senders:
        sender.join(30)
    for process in processes:
        process.join(30)
    latencies.sort()
    deliveries = len(latencies)
    p99 = percentile(latencies, 99)
    print(
        f"{name:<40} {deliveries / elapsed:>8,.0f} deliveries/s ({deliveries:,}): "
        f"p50 {percentile(latencies, 50):6.2f} ms  p99 {p99:7.2f} ms  max {latencies[-1]:8.2f} "
        f"ms  gateway CPU {cpu / deliveries * 10_000:5.2f} s per 10,000",
        flush=True,
    )
    return p99


async def ready_sessions(api: Api, count: int) -> list[str]:
    sessions = [await api.create() for _ in range(count)]
    for session in sessions:
        await api.wait_status(session["id"], "ready", timeout=180)
    return [session["id"] for session in sessions]


def main(args: argparse.Namespace) -> None:
    client = docker.from_env()
    with (
        start_infra(client) as infra,
        tempfile.TemporaryDirectory() as logs,
        start_s3(Path(logs)) as s3,
        run_gateway(
            infra,
            "http://127.0.0.1:9",  # no model calls here
            s3,
            Path(logs),
            LOG_LEVEL="WARNING",
            EVENT_STREAM_MAXLEN="200000",
            MAX_SESSIONS_PER_OWNER=str(args.sessions + 5),
            RATE_LIMIT_PER_SECOND="10000",  # a hundred WebSockets open at once
            RATE_LIMIT_BURST="10000",
            **dict(item.split("=", 1) for item in args.gateway_env),
        ) as gateway,
    ):
        assert gateway.process is not None
        pid = gateway.process.pid
        api = Api(gateway.url, mint_token(gateway.jwt_secret, "bench"))
        loop = asyncio.new_event_loop()
        sessions = loop.run_until_complete(ready_sessions(api, args.sessions))
        common = (api, infra.redis_url, pid)
        one = sessions[:1]
        seconds, workers = args.seconds, args.workers
        scenario("1 client, 1,000 events/s", *common, one, 1, 1000, seconds, workers)
        scenario("100 viewers of 1 session, 100 events/s", *common, one, 100, 100, seconds, workers)
        scenario(
            f"{len(sessions)} sessions x 1 client, {10_000 // len(sessions)} events/s each",
            *common,
            sessions,
            1,
            10_000 // len(sessions),
            seconds,
            workers,
        )
        for rate in args.sweep:
            p99 = scenario(
                f"saturation: 100 viewers, {rate} events/s", *common, one, 100, rate, 3, workers
            )
            if p99 > SATURATED_MS:
                print(f"saturated: p99 passed {SATURATED_MS:.0f} ms at {rate * 100:,} asked/s")
                break
        for sid in sessions:
            loop.run_until_complete(api.stop(sid))
        loop.run_until_complete(api.aclose())
        loop.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=[100, 200, 300, 400, 600, 800, 1000],
        help="events/s per viewer step of the saturation sweep (100 viewers)",
    )
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE")
    main(parser.parse_args())
