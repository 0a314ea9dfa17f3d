"""Benchmark: what SESSION_EGRESS=none costs beside open.

Run by hand (not in CI), after scripts/test.sh has built the images:

    .venv/bin/python scripts/bench_egress.py [--runs 10] [--round-trips 2000]

It starts the same real stack as the tests and two gateways side by side, one with
``SESSION_EGRESS=open`` and one with ``none`` (each on its own session network), and prints:

- rules: one run of the egress helper (a container that installs the network's rules; what a
  gateway start with ``none`` adds, once);
- create -> ready: ``POST /sessions`` until ``ready`` on the WebSocket, alternating between the
  two gateways so that neither gets a warmer engine;
- round trip: TCP request/response from inside a session to Redis at ``ccd-host`` (the path
  every event takes), where the rules are matched on every packet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from bench import create_ready  # noqa: E402

from gateway.runtime import EgressPolicy  # noqa: E402
from gateway.runtime.docker_egress import apply_egress  # noqa: E402
from gateway.runtime.docker_network import ensure_network  # noqa: E402
from tests.client import Api, mint_token  # noqa: E402
from tests.fake_anthropic import FakeAnthropic  # noqa: E402
from tests.stack import (  # noqa: E402
    SESSION_IMAGE,
    remove_instance_containers,
    run_gateway,
    start_infra,
    start_s3,
)

# In a session: round trips to Redis (an unauthenticated PING answers NOAUTH: one round trip).
ROUND_TRIPS = """
import json, socket, sys, time
sock = socket.create_connection(("ccd-host", int(sys.argv[1])), timeout=5)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter_ns()
    sock.sendall(b"PING\\r\\n")
    sock.recv(256)
    times.append((time.perf_counter_ns() - start) / 1000)
print(json.dumps(sorted(times)))
"""


def round_trips(
    client: docker.DockerClient, container_id: str, port: int, count: int
) -> list[float]:
    code, output = client.containers.get(container_id).exec_run(
        ["python3", "-c", ROUND_TRIPS, str(port), str(count)]
    )
    assert code == 0, output
    return list(json.loads(output))


def helper_runs(client: docker.DockerClient, instance: str, runs: int) -> list[float]:
    network = ensure_network(client, f"ccd-{instance}-sessions", {"cc-docker.instance": instance})
    times = []
    try:
        for _ in range(runs):
            start = time.perf_counter()
            apply_egress(client, SESSION_IMAGE, network, EgressPolicy.only_host_ports(8000, 6379))
            times.append(time.perf_counter() - start)
    finally:
        remove_instance_containers(instance)
    return times


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:6.0f} ms  " + " ".join(
        f"{v * 1000:.0f}" for v in values
    )


def us(sorted_values: list[float]) -> str:
    p99 = sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * 0.99))]
    return f"p50 {statistics.median(sorted_values):6.0f} us  p99 {p99:6.0f} us"


async def main(args: argparse.Namespace) -> None:
    client = docker.from_env()
    with (
        start_infra(client) as infra,
        FakeAnthropic(host=infra.gateway_ip) as fake,
        tempfile.TemporaryDirectory() as logs,
        start_s3(Path(logs)) as s3,
    ):
        helper = helper_runs(client, f"test-{infra.run_id}-bench", args.runs)
        modes = ("open", "none")
        redis_port = urlsplit(infra.session_redis_url).port or 6379
        with (
            run_gateway(infra, fake.base_url, s3, Path(logs), SESSION_EGRESS="open") as open_gw,
            run_gateway(infra, fake.base_url, s3, Path(logs), SESSION_EGRESS="none") as none_gw,
        ):
            apis = {
                mode: Api(gw.url, mint_token(gw.jwt_secret, "bench"))
                for mode, gw in zip(modes, (open_gw, none_gw), strict=True)
            }
            ready: dict[str, list[float]] = {mode: [] for mode in modes}
            sessions: dict[str, list[str]] = {mode: [] for mode in modes}
            for _ in range(args.runs):
                for mode in modes:
                    seconds, session_id = await create_ready(apis[mode])
                    ready[mode].append(seconds)
                    sessions[mode].append(session_id)
            trips: dict[str, list[float]] = {}
            for mode in modes:
                session: dict[str, Any] = await apis[mode].get(sessions[mode][-1])
                trips[mode] = round_trips(
                    client, session["container_id"], redis_port, args.round_trips
                )
            for mode in modes:
                for session_id in sessions[mode]:
                    await apis[mode].stop(session_id)
                await apis[mode].aclose()
    print(f"session image {SESSION_IMAGE}, {args.runs} runs each (first run included)")
    print(f"{'rules: one egress helper run (per gateway start)':<52} {ms(helper)}")
    for mode in modes:
        print(f"{f'create -> ready, SESSION_EGRESS={mode}':<52} {ms(ready[mode])}")
    for mode in modes:
        print(
            f"{f'session -> Redis round trip, SESSION_EGRESS={mode}':<52} {us(trips[mode])}"
            f"  ({args.round_trips} round trips)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--round-trips", type=int, default=2000)
    asyncio.run(main(parser.parse_args()))
