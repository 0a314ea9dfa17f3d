"""Benchmark: session start, first output and relay latency, beside their bare costs.

Run by hand (not in CI), after scripts/test.sh has built the images:

    .venv/bin/python scripts/bench.py [--runs 5] [--rate 1000] [--seconds 5] [--clients 1]

It starts the same real stack as the tests (stand-in PostgreSQL and Redis containers, the
scripted fake Anthropic API, ``python -m gateway``) and prints, in one run:

- bare: ``docker run`` of the session image until the CLI answers ``initialize`` (the floor
  for create -> ready), with the same CPU, memory and process limits as a session (and once
  without limits, for reference), and the CLI's own time from a prompt to its first output
  line;
- ours: ``POST /sessions`` -> ``ready`` seen on the WebSocket, and prompt -> first event of
  the turn on the WebSocket, each with its ratio to the bare figure, and where a cold start's
  time goes (``ccd_session_start_step_seconds``, read from the gateway's /metrics);
- confinement: what a session's credentials cost (its own Redis user: ACL SETUSER before the
  container starts, ACL DELUSER when it ends), as a share of create -> ready; the isolated
  network is made once when the gateway starts and costs nothing per session;
- the model proxy (scripts/bench_proxy.py): time to first streamed byte and to the end of a
  trivial answer, and a real CLI's trivial turn, through the proxy beside the upstream reached
  directly; the gateway's CPU per 1,000 proxied streamed events;
- warm: ``POST /sessions`` -> ``ready`` for sessions that claim a pooled container (a second
  gateway with ``SESSION_POOL_SIZE``), p50 and p99, and an idle pooled container's memory;
- stops: ``stop`` and ``delete`` of a ready (idle) session and of one still starting (its
  CLI booting), beside a bare ``docker stop``;
- relay: events published with the wrapper's own publisher (``wrapper.channel.Channel``) at
  ``--rate`` per second into a live session's stream, measured until they arrive at WebSocket
  clients (p50, p99, max). This is the path a CLI line takes after the wrapper reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench_proxy  # noqa: E402
import docker  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from gateway.events.access import SessionAccess  # noqa: E402
from gateway.metrics import START_STEPS  # noqa: E402
from tests.client import Api, mint_token  # noqa: E402
from tests.e2e.test_metrics import Samples, moved, scrape, total  # noqa: E402
from tests.stack import SESSION_IMAGE, run_gateway, start_infra, start_s3  # noqa: E402
from wrapper.channel import Channel  # noqa: E402

INITIALIZE = {"type": "control_request", "request_id": "b1", "request": {"subtype": "initialize"}}


def user_turn(prompt: str) -> dict[str, Any]:
    return {
        "type": "user",
        "message": {"role": "user", "content": prompt},
        "parent_tool_use_id": None,
        "session_id": "",
    }


def bare_run(
    network: str, api_url: str, limits: list[str], hold: threading.Barrier | None = None
) -> tuple[float, float]:
    """(docker run -> initialize answered, prompt -> first stdout line), in seconds. ``limits``
    are extra ``docker run`` options (the sessions' CPU, memory and process limits); ``hold``:
    the CLI stays up, once it answered, until every party of the barrier has too."""
    argv = [
        "docker", "run", "--rm", "-i", "--network", network, *limits,
        "-e", f"ANTHROPIC_BASE_URL={api_url}", "-e", "ANTHROPIC_API_KEY=bench",
        "-e", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "-e", "CLAUDE_CODE_MAX_RETRIES=0",
        SESSION_IMAGE,
        "claude", "-p", "--input-format", "stream-json", "--output-format", "stream-json",
        "--verbose", "--permission-mode", "bypassPermissions",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(INITIALIZE) + "\n")
    proc.stdin.flush()
    for line in proc.stdout:
        if json.loads(line).get("type") == "control_response":
            break
    ready = time.perf_counter() - start
    if hold is not None:
        hold.wait()
    sent = time.perf_counter()
    proc.stdin.write(json.dumps(user_turn("bench: say hi")) + "\n")
    proc.stdin.flush()
    proc.stdout.readline()
    first = time.perf_counter() - sent
    proc.stdin.close()
    for _ in proc.stdout:
        pass
    proc.wait(30)
    return ready, first


async def ours_run(api: Api) -> tuple[float, float, str, float]:
    """(POST /sessions -> ready on the WebSocket, prompt -> first turn event), session id, and
    the wrapper's CPU seconds when its CLI answered the handshake (from ``cli_ready``)."""
    start = time.perf_counter()
    session = await api.create()
    wrapper_cpu = float("nan")
    async with api.stream(session["id"], after="0") as ws:
        while True:
            event = json.loads(await ws.recv())["event"]
            if event.get("type") == "cli_ready":
                wrapper_cpu = event["wrapper_cpu_seconds"]
            if event.get("type") == "status" and event.get("status") == "ready":
                break
        ready = time.perf_counter() - start
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "prompt", "prompt": "bench: say hi"}))
        while True:
            envelope = json.loads(await ws.recv())
            if envelope["source"] == "claude":
                first = time.perf_counter() - sent
                break
        while not (envelope["source"] == "claude" and envelope["event"]["type"] == "result"):
            envelope = json.loads(await ws.recv())
    return ready, first, session["id"], wrapper_cpu


async def create_ready(api: Api) -> tuple[float, str]:
    """POST /sessions -> ready on the WebSocket (the session's id too)."""
    start = time.perf_counter()
    session = await api.create()
    async with api.stream(session["id"], after="0") as ws:
        while True:
            event = json.loads(await ws.recv())["event"]
            if event.get("type") == "status" and event.get("status") == "ready":
                return time.perf_counter() - start, session["id"]


def pool_ready(gateway_url: str) -> float:
    return total(scrape(gateway_url, token=None), "ccd_pool_containers", status="ready")


async def warm_starts(gateway: Any, runs: int, pool_size: int, boot_wait: float) -> None:
    """Warm create -> ready, each create made once the pool is full again and its newest
    container had ``boot_wait`` seconds to boot its CLI; then an idle pooled container's memory."""
    api = Api(gateway.url, mint_token(gateway.jwt_secret, "bench-warm"))
    before = scrape(gateway.url, token=None)
    times, sessions = [], []
    for _ in range(runs):
        async with asyncio.timeout(120):
            while True:  # the gauge is read from PostgreSQL: nothing to wait on here
                if pool_ready(gateway.url) >= pool_size:
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(boot_wait)
        took, session_id = await create_ready(api)
        times.append(took)
        sessions.append(session_id)
        await api.stop(session_id)
    after = scrape(gateway.url, token=None)
    warm = moved(before, after, "ccd_session_start_seconds_count", warm="true")
    ordered = sorted(times)
    print(
        f"{'ours, warm: POST /sessions -> ready (WebSocket)':<44} p50 "
        f"{percentile(ordered, 50) * 1000:7.1f} ms  p99 {percentile(ordered, 99) * 1000:.1f} ms  "
        f"max {ordered[-1] * 1000:.1f} ms  ({runs} runs, {warm:.0f} claimed a pooled container)"
    )
    client = docker.from_env()
    pooled = client.containers.list(
        filters={"label": [f"cc-docker.instance={gateway.instance}", "cc-docker.pool-id"]}
    )
    held = {(await api.get(s))["container_id"] for s in sessions}
    idle = [c for c in pooled if c.id not in held]
    memory = [c.stats(stream=False)["memory_stats"].get("usage", 0) for c in idle]
    if memory:
        print(
            f"{'idle pooled container memory':<44} median "
            f"{statistics.median(memory) / 2**20:7.0f} MiB  ({len(memory)} containers)"
        )
    await api.aclose()


def print_steps(before: Samples, after: Samples, wrapper_cpu: list[float]) -> None:
    """Mean time of each cold-start step between two scrapes of the gateway's /metrics, and
    the wrapper's mean CPU time up to the CLI's handshake answer."""
    parts = []
    for step in START_STEPS:
        count = moved(before, after, "ccd_session_start_step_seconds_count", step=step)
        if count:
            spent = moved(before, after, "ccd_session_start_step_seconds_sum", step=step)
            parts.append(f"{step} {spent / count * 1000:.0f}")
    parts.append(f"(wrapper CPU until then {statistics.mean(wrapper_cpu) * 1000:.0f})")
    print(f"{'ours: where a cold start goes (mean ms)':<44} " + ", ".join(parts))


def bare_stop(network: str) -> float:
    """``docker stop`` of a running session-image container whose process ends on SIGTERM:
    the engine's own floor for a stop."""
    argv = [
        "docker", "run", "-d", "--rm", "--network", network, SESSION_IMAGE,
        "sh", "-c", "sleep 600 | claude -p --input-format stream-json --output-format "
        "stream-json --verbose",
    ]  # fmt: skip
    container = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()
    time.sleep(2)  # the CLI booted and waits
    start = time.perf_counter()
    subprocess.run(["docker", "stop", "-t", "10", container], check=True, capture_output=True)
    return time.perf_counter() - start


async def ours_stop(api: Api, action: str, state: str) -> float:
    """One ``stop`` or ``delete`` (synchronous HTTP call) of a session that is ``ready`` and
    idle, or still ``starting`` (0.5 s after its create, its CLI booting)."""
    session = await api.create()
    if state == "ready":
        await api.wait_status(session["id"], "ready")
    else:
        await asyncio.sleep(0.5)
    start = time.perf_counter()
    if action == "stop":
        response = await api.http.post(f"/api/v1/sessions/{session['id']}/stop")
    else:
        response = await api.http.delete(f"/api/v1/sessions/{session['id']}")
    elapsed = time.perf_counter() - start
    assert response.status_code in (200, 204), response.text
    if action == "stop":
        await api.http.delete(f"/api/v1/sessions/{session['id']}")
    return elapsed


async def stops(api: Api, network: str, runs: int) -> None:
    bare = [bare_stop(network) for _ in range(runs)]
    print(summary("bare: docker stop (process ends on SIGTERM)", bare))
    for state in ("ready", "starting"):
        for action in ("stop", "delete"):
            values = [await ours_stop(api, action, state) for _ in range(runs)]
            line = summary(f"ours: {action} a {state} session", values, bare)
            print(f"{line}   p99 {percentile(sorted(values), 99) * 1000:.0f} ms")


async def credentials_cost(redis_url: str, runs: int) -> list[float]:
    """Seconds per session for its Redis user: created (before its container) and deleted (at
    its end), against the same Redis the gateway uses."""
    import uuid
    from datetime import UTC, datetime

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    access = SessionAccess(client, "bench-key", "redis://ccd-host:6379/0", "bench")
    costs = []
    try:
        for _ in range(runs):
            session_id = uuid.uuid4()
            start = time.perf_counter()
            await access.grant(session_id, datetime.now(UTC))
            await access.revoke(session_id)
            costs.append(time.perf_counter() - start)
    finally:
        await client.aclose()
    return costs


def publish_at_rate(
    redis_url: str, session_id: str, rate: int, seconds: float, done: threading.Event
) -> int:
    """The wrapper's publisher in its own thread and loop, as in a container."""

    async def run() -> int:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        channel = Channel(client, session_id, maxlen=100_000)
        interval = 1.0 / rate
        count = int(rate * seconds)
        next_at = time.perf_counter()
        for seq in range(count):
            body = json.dumps({"type": "bench", "seq": seq, "t": time.perf_counter_ns()})
            await channel.publish({"source": "claude", "type": "bench", "turn": "", "data": body})
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await client.aclose()
        return count

    try:
        return asyncio.run(run())
    finally:
        done.set()


async def relay(api: Api, redis_url: str, session_id: str, args: argparse.Namespace) -> None:
    latencies: list[float] = []
    expected = int(args.rate * args.seconds)

    async def client() -> None:
        async with api.stream(session_id, after="$") as ws:
            ready.set()
            received = 0
            while received < expected:
                envelope = json.loads(await ws.recv())
                event = envelope["event"]
                if event.get("type") == "bench":
                    latencies.append((time.perf_counter_ns() - event["t"]) / 1e6)
                    received += 1

    ready = asyncio.Event()
    clients = [asyncio.create_task(client()) for _ in range(args.clients)]
    await asyncio.wait_for(ready.wait(), 10)
    await asyncio.sleep(0.5)  # every client subscribed
    done = threading.Event()
    started = time.perf_counter()
    thread = threading.Thread(
        target=publish_at_rate,
        args=(redis_url, session_id, args.rate, args.seconds, done),
        daemon=True,
    )
    thread.start()
    await asyncio.wait_for(asyncio.gather(*clients), args.seconds + 30)
    elapsed = time.perf_counter() - started
    latencies.sort()
    print(
        f"relay      {len(latencies)} events to {args.clients} client(s) at "
        f"{expected / elapsed:,.0f} events/s achieved ({args.rate}/s asked): "
        f"p50 {percentile(latencies, 50):.2f} ms, p99 {percentile(latencies, 99):.2f} ms, "
        f"max {latencies[-1]:.2f} ms"
    )


def percentile(sorted_values: list[float], p: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def summary(name: str, values: list[float], floor: list[float] | None = None) -> str:
    line = f"{name:<44} median {statistics.median(values) * 1000:7.0f} ms  " + " ".join(
        f"{v * 1000:.0f}" for v in values
    )
    if floor:
        line += f"   ratio {statistics.median(values) / statistics.median(floor):.2f}x"
    return line


@contextlib.contextmanager
def bench_gateway(infra: Any, upstream_url: str, settings: dict[str, Any]) -> Iterator[Any]:
    """A gateway of its own (and an S3 server) with ``settings``."""
    with (
        tempfile.TemporaryDirectory() as logs,
        start_s3(Path(logs)) as s3,
        run_gateway(infra, upstream_url, s3, Path(logs), LOG_LEVEL="WARNING", **settings) as gw,
    ):
        yield gw


async def main(args: argparse.Namespace) -> None:
    client = docker.from_env()
    settings = dict(item.split("=", 1) for item in args.gateway_env)
    with start_infra(client) as infra:
        upstream, upstream_url = bench_proxy.start_upstream(infra.gateway_ip)
        with bench_gateway(infra, upstream_url, settings) as gateway:
            # The fair floor runs the container as the gateway does: the same limits (a session
            # gets SESSION_CPUS, 1 by default; the CLI boots slower on one CPU than on two).
            limits = [
                f"--cpus={settings.get('SESSION_CPUS', '1.0')}",
                f"--memory={settings.get('SESSION_MEMORY', '2g')}",
                f"--pids-limit={settings.get('SESSION_PIDS_LIMIT', '512')}",
                "--cap-drop=ALL",
                "--security-opt=no-new-privileges",
            ]
            unlimited = [bare_run(infra.network_name, upstream_url, []) for _ in range(args.runs)]
            bare = [bare_run(infra.network_name, upstream_url, limits) for _ in range(args.runs)]
            api = Api(gateway.url, mint_token(gateway.jwt_secret, "bench"))
            steps_before = scrape(gateway.url, token=None)
            ours = []
            for run in range(args.runs):
                ours.append(await ours_run(api))
                if run < args.runs - 1:  # as the bare runs' containers end: none left idling
                    await api.stop(ours[-1][2])
            steps_after = scrape(gateway.url, token=None)
            print(f"session image {SESSION_IMAGE}, {args.runs} runs each (first run included)")
            bare_ready = [r for r, _ in bare]
            bare_first = [f for _, f in bare]
            print(summary("bare, no limits: docker run -> initialize", [r for r, _ in unlimited]))
            print(summary("bare: docker run -> CLI initialize answered", bare_ready))
            print(
                summary(
                    "ours: POST /sessions -> ready (WebSocket)",
                    [r for r, _, _, _ in ours],
                    bare_ready,
                )
            )
            print_steps(steps_before, steps_after, [c for _, _, _, c in ours])
            print(summary("bare: CLI prompt -> first output line", bare_first))
            print(
                summary(
                    "ours: prompt -> first turn event (WebSocket)",
                    [f for _, f, _, _ in ours],
                    bare_first,
                )
            )
            credentials = await credentials_cost(infra.redis_url, 200)
            share = statistics.median(credentials) / statistics.median([r for r, _, _, _ in ours])
            print(
                f"{'confinement: Redis user created + deleted':<44} median "
                f"{statistics.median(credentials) * 1000:7.2f} ms  "
                f"p99 {percentile(sorted(credentials), 99) * 1000:.2f} ms  "
                f"= {share:.2%} of create -> ready (network: made once at start-up, 0 per session)"
            )
            await relay(api, infra.redis_url, ours[-1][2], args)
            await stops(api, infra.network_name, args.runs)
            with contextlib.suppress(Exception):
                await api.stop(ours[-1][2])
            if not args.skip_proxy:
                await bench_proxy.run(gateway, api, upstream_url, args.proxy_requests)
            await api.aclose()
        if args.warm_runs:
            pooled = {"SESSION_POOL_SIZE": str(args.pool_size)}
            with bench_gateway(infra, upstream_url, {**settings, **pooled}) as gateway:
                await warm_starts(gateway, args.warm_runs, args.pool_size, args.boot_wait)
        upstream.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=int, default=1000, help="relay events per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="relay duration")
    parser.add_argument("--clients", type=int, default=1, help="WebSocket clients in the relay")
    parser.add_argument("--skip-proxy", action="store_true", help="skip the model proxy figures")
    parser.add_argument(
        "--proxy-requests", type=int, default=300, help="requests each way for the proxy figures"
    )
    parser.add_argument("--warm-runs", type=int, default=20, help="warm creates (0: none)")
    parser.add_argument("--pool-size", type=int, default=2, help="SESSION_POOL_SIZE for them")
    parser.add_argument(
        "--boot-wait",
        type=float,
        default=2.0,
        help="seconds a refilled pooled container gets to boot its CLI before the next create",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a gateway setting for this run, e.g. SESSION_CPUS=2",
    )
    asyncio.run(main(parser.parse_args()))
