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

The sessions are idle (the publishers stand in for their wrappers), so their CLIs are frozen
after ``SESSION_IDLE_FREEZE`` (10 s) and cost nothing while the scenarios run, as in a
deployment; ``--gateway-env SESSION_IDLE_FREEZE=0`` keeps them awake, each spending about 6 ms
of CPU a second on its own timers (a hundred: about half a core of this 2-core machine).
``--busy-sessions N`` does the opposite: N sessions spin a CPU each (as a build would) while
the scenarios run, so the relay is measured beside neighbours that want more CPU than the
machine has. ``--replicas N`` runs N gateways of one fleet and spreads the clients over them,
as a load balancer would. ``--client websockets`` reads with the websockets library instead of
scripts/lean_websocket.py's reader, which costs the shared machine less CPU per message.

For each: deliveries/s achieved, latency from the publisher's clock in the event to its
arrival at a client (p50, p99, max), the gateway processes' CPU time per 10,000
deliveries, and how long each one's event loop was ready to run but waited for a CPU (a wait its
latency includes; on a machine short of CPU it makes the tail). The clients run in
``--workers`` processes of their own and the publisher in another, so neither competes with
the gateway's process for its interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
import lean_websocket  # noqa: E402
import redis  # noqa: E402
from bench import percentile  # noqa: E402
from cpu_meter import CpuMeter  # noqa: E402

from tests.client import Api, mint_token  # noqa: E402
from tests.stack import (  # noqa: E402
    at_address,
    run_gateway,
    run_replica,
    start_infra,
    start_s3,
)
from wrapper.protocol import output_stream_key  # noqa: E402

SATURATED_MS = 50.0
BENCH_TIME = '"bench_t": '  # the last field of a bench event: its publisher's clock, in ns


def client_worker(
    ws_urls: list[str],
    token: str,
    expected: int,
    lean: bool,
    ready: Any,
    results: Any,
) -> None:
    """One process: a WebSocket client per URL, each until it has ``expected`` events; with
    ``lean``, scripts/lean_websocket.py's reader instead of the ``websockets`` library's."""

    span = [float("inf"), 0.0]  # first event sent, last one received (ns, wall clock)
    headers = {"Authorization": f"Bearer {token}"}
    marker = BENCH_TIME.encode()

    def counter(latencies: list[float]) -> Callable[[bytes], bool]:
        received = 0

        def on_message(raw: bytes) -> bool:
            nonlocal received
            now = time.time_ns()
            # Not json.loads: the clients' CPU is the benchmark's, not the relay's, and they
            # share this machine with it. A bench event ends with its publisher's time.
            at = raw.rfind(marker)
            if at < 0:
                return False  # a gateway notice, not a bench event
            sent = int(raw[at + len(marker) : raw.index(b"}", at)])
            latencies.append((now - sent) / 1e6)
            span[0] = min(span[0], sent)
            span[1] = max(span[1], now)
            received += 1
            return received >= expected

        return on_message

    async def one(url: str, latencies: list[float]) -> None:
        on_message = counter(latencies)
        if lean:
            await lean_websocket.follow(url, headers, on_message, ready.release)
            return
        async with Api.connect(url, headers) as ws:
            ready.release()
            while not on_message(await ws.recv(decode=False)):
                pass

    async def run() -> list[float]:
        latencies: list[float] = []
        await asyncio.wait_for(
            asyncio.gather(*(one(url, latencies) for url in ws_urls)), expected / 10 + 120
        )
        return latencies

    results.put((asyncio.run(run()), span))


# KEYS: the streams. ARGV: sequence number, publisher's clock (ns). The same entry as the
# wrapper's ``Channel.publish`` writes, into each stream.
_PUBLISH = """
local body = '{"type": "bench", "seq": ' .. ARGV[1] .. ', "bench_t": ' .. ARGV[2] .. '}'
for _, key in ipairs(KEYS) do
  redis.call('XADD', key, 'MAXLEN', '~', 100000, '*',
             'source', 'claude', 'type', 'bench', 'turn', '', 'data', body)
end
"""


def publisher(
    redis_url: str, session_ids: list[str], rate: int, seconds: float, ready: Any, go: Any
) -> None:
    """``rate`` events/s into each session's stream, in a process. Each tick writes one entry
    into every stream in one script call: Redis does the same work as for the wrappers'
    XADDs, and the publisher (standing in for a hundred wrappers, each with a container of its
    own) costs this machine less than half the CPU that redis-py's pipelined XADDs did (0.4 of
    a core against 0.9 at 10,000 events/s), CPU the relay it measures needs on 2 cores. Ticks
    go one after the other, so the publisher and not the relay sets the pace."""
    client = redis.Redis.from_url(redis_url)
    publish = client.register_script(_PUBLISH)
    keys = [output_stream_key(sid) for sid in session_ids]
    client.script_load(_PUBLISH)  # before the clock starts
    count = int(rate * seconds)
    interval = 1.0 / rate
    ready.release()
    go.wait()  # every publisher starts at once, after the CPU meter
    next_at = time.perf_counter()
    for seq in range(count):
        publish(keys=keys, args=[seq, time.time_ns()])
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    client.close()


def scenario(
    name: str,
    apis: list[Api],
    redis_url: str,
    gateway_pids: list[int],
    redis_container: str,
    session_ids: list[str],
    viewers: int,
    rate: int,
    seconds: float,
    workers: int,
    lean: bool,
) -> float:
    """Run one scenario; print its line and return its p99 in ms. With several replicas
    (``apis``, one per replica), the clients take them in turn, as a load balancer spreads
    connections."""
    expected = int(rate * seconds)
    followed = [sid for sid in session_ids for _ in range(viewers)]
    urls = [apis[i % len(apis)].ws_url(sid, "$") for i, sid in enumerate(followed)]
    context = mp.get_context("spawn")
    ready = context.Semaphore(0)
    results = context.Queue()
    shares = [urls[i::workers] for i in range(workers) if urls[i::workers]]
    processes = [
        context.Process(
            target=client_worker, args=(share, apis[0].token, expected, lean, ready, results)
        )
        for share in shares
    ]
    for process in processes:
        process.start()
    for _ in urls:
        if not ready.acquire(timeout=120):
            raise RuntimeError("the clients did not connect")
    # One publisher per few sessions, as every session has its own wrapper. Started (their
    # interpreters' imports) before the meter, and held until every client is subscribed.
    go = context.Event()
    senders = [
        context.Process(
            target=publisher, args=(redis_url, session_ids[i::5], rate, seconds, ready, go)
        )
        for i in range(min(5, len(session_ids)))
    ]
    for sender in senders:
        sender.start()
    for _ in senders:
        if not ready.acquire(timeout=120):
            raise RuntimeError("the publishers did not start")
    time.sleep(0.5)  # every client is subscribed in the gateway
    meter = CpuMeter(
        {"redis": redis_container},
        {
            **{f"gateway:{i}": pid for i, pid in enumerate(gateway_pids)},
            **{f"clients:{i}": process.pid for i, process in enumerate(processes)},
            **{f"publishers:{i}": sender.pid for i, sender in enumerate(senders)},
        },
    )
    meter.start()
    go.set()
    latencies: list[float] = []
    first_sent, last_received = float("inf"), 0.0
    for _ in processes:
        values, (sent, received) = results.get(timeout=seconds + 180)
        latencies.extend(values)
        first_sent, last_received = min(first_sent, sent), max(last_received, received)
    elapsed = (last_received - first_sent) / 1e9
    meter.stop()  # before the joins: a child's CPU is readable until it is reaped
    for sender in senders:
        sender.join(30)
    for process in processes:
        process.join(30)
    latencies.sort()
    deliveries = len(latencies)
    cpu = sum(meter.spent[f"gateway:{i}"] for i in range(len(gateway_pids)))
    p99 = percentile(latencies, 99)
    print(
        f"{name:<40} {deliveries / elapsed:>8,.0f} deliveries/s ({deliveries:,}): "
        f"p50 {percentile(latencies, 50):6.2f} ms  p99 {p99:7.2f} ms  max {latencies[-1]:8.2f} "
        f"ms  gateway CPU {cpu / deliveries * 10_000:5.2f} s per 10,000",
        flush=True,
    )
    if meter.available:
        waited = ", ".join(
            f"{meter.waited(f'gateway:{i}') * 1000:.0f}" for i in range(len(gateway_pids))
        )
        print(f"{'':<40} {meter.cores()}", flush=True)
        print(f"{'':<40} the gateway's event loop waited for a CPU {waited} ms a second")
    return p99


def wrappers_redis_url(infra: Any) -> str:
    """Where the publishers, standing in for the sessions' wrappers, reach Redis: at its
    published port, as a wrapper does (through ``ccd-host``; on an engine with its userland
    proxy, the default, that is through docker-proxy), not at the address on the test network
    the gateway uses."""
    return at_address(infra.redis_url, "127.0.0.1", infra.redis.get_exposed_port(6379))


BUSY_LOOP = "while :; do :; done"


def spin(client: Any, container_ids: list[str], on: bool) -> None:
    """Start (or end) a loop that spins a CPU in each container, as its session's user."""
    for container_id in container_ids:
        container = client.containers.get(container_id)
        if on:
            container.exec_run(["sh", "-c", BUSY_LOOP], detach=True)
        else:
            container.exec_run(["pkill", "-f", BUSY_LOOP])


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
        contextlib.ExitStack() as replicas,
    ):
        settings = {
            "LOG_LEVEL": "WARNING",
            "EVENT_STREAM_MAXLEN": "200000",
            "MAX_SESSIONS_PER_OWNER": str(args.sessions + 5),
            "RATE_LIMIT_PER_SECOND": "10000",  # a hundred WebSockets open at once
            "RATE_LIMIT_BURST": "10000",
            **dict(item.split("=", 1) for item in args.gateway_env),
        }
        no_model = "http://127.0.0.1:9"  # no model calls here
        gateway = replicas.enter_context(run_gateway(infra, no_model, s3, Path(logs), **settings))
        gateways = [gateway] + [
            replicas.enter_context(
                run_replica(gateway, infra, no_model, s3, Path(logs), **settings)
            )
            for _ in range(args.replicas - 1)
        ]
        pids = [replica.process.pid for replica in gateways if replica.process is not None]
        token = mint_token(gateway.jwt_secret, "bench")
        apis = [Api(replica.url, token) for replica in gateways]
        api = apis[0]
        loop = asyncio.new_event_loop()
        sessions = loop.run_until_complete(ready_sessions(api, args.sessions))
        spinning = sessions[len(sessions) - args.busy_sessions :] if args.busy_sessions else []
        busy = [loop.run_until_complete(api.get(sid))["container_id"] for sid in spinning]
        spin(client, busy, True)
        common = (apis, wrappers_redis_url(infra), pids, infra.redis.get_wrapped_container().id)
        one = sessions[:1]
        seconds, clients = args.seconds, (args.workers, args.client == "lean")
        print(f"clients: {args.workers} processes, {args.client} reader", flush=True)
        if "one" in args.scenarios:
            scenario("1 client, 1,000 events/s", *common, one, 1, 1000, seconds, *clients)
        if "viewers" in args.scenarios:
            name = "100 viewers of 1 session, 100 events/s"
            scenario(name, *common, one, 100, 100, seconds, *clients)
        if "sessions" in args.scenarios:
            rate = 10_000 // len(sessions)
            name = f"{len(sessions)} sessions x 1 client, {rate} events/s each"
            scenario(name, *common, sessions, 1, rate, seconds, *clients)
        for rate in args.sweep:
            p99 = scenario(
                f"saturation: 100 viewers, {rate} events/s", *common, one, 100, rate, 3, *clients
            )
            if p99 > SATURATED_MS:
                print(f"saturated: p99 passed {SATURATED_MS:.0f} ms at {rate * 100:,} asked/s")
                break
        spin(client, busy, False)
        for sid in sessions:
            loop.run_until_complete(api.stop(sid))
        for each in apis:
            loop.run_until_complete(each.aclose())
        loop.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument(
        "--client",
        choices=["lean", "websockets"],
        default="lean",
        help="the clients' reader: scripts/lean_websocket.py (least CPU), or the websockets "
        "library's",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="gateway replicas (one fleet); the clients take them in turn",
    )
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=[100, 200, 300, 400, 600, 800, 1000],
        help="events/s per viewer step of the saturation sweep (100 viewers)",
    )
    parser.add_argument(
        "--scenarios",
        nargs="*",
        choices=("one", "viewers", "sessions"),
        default=["one", "viewers", "sessions"],
    )
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--busy-sessions",
        type=int,
        default=0,
        metavar="N",
        help="N sessions (the last ones) each spin a CPU while the scenarios run",
    )
    main(parser.parse_args())
