"""The model proxy's cost, measured beside the upstream reached directly (part of bench.py).

- time to the first streamed byte and to the end of a trivial streamed answer, for the same
  request sent to the upstream directly and through the gateway's proxy (sequential requests
  from this process, direct and proxied alternating; the upstream, the scripted fake API, runs
  in a process of its own and keeps connections alive as the real API does);
- a full trivial turn of the real CLI (prompt -> result) talking to the upstream directly, and
  through the proxy with a session's token: pairs of long-lived `claude -p` on this host, one
  each way, whose turns alternate (a fresh pair for each of a few rounds);
- the gateway's CPU time per 1,000 streamed events it relays (read from /proc).

Run with bench.py, or alone: .venv/bin/python scripts/bench_proxy.py (it starts its own stack).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.claude_cli import claude_binary, host_cli_environment  # noqa: E402
from tests.stack import free_port  # noqa: E402

MANY_EVENTS = 1000
# Pairs not counted: they open the connections and fill what the gateway keeps (its pools, the
# session's caller), as a session's first calls do.
WARM_UP = 30
# Real CLI turns are measured in rounds, each with a fresh pair of CLIs (see cli_turns).
CLI_ROUNDS = 6

# The upstream in a process of its own: trivial answers, and one with many events.
UPSTREAM = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from tests.fake_anthropic import FakeAnthropic, slow_text, text
fake = FakeAnthropic(host=sys.argv[1], port=int(sys.argv[2]))
fake.on("", text("hi"))
fake.on("many-events", slow_text(["x"] * {MANY_EVENTS}, 0))
fake.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def start_upstream(host: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port(host)
    process = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM, host, str(port)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    process.stdout.readline()
    return process, f"http://{host}:{port}"


def body(prompt: str) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }


async def timed_request(http: httpx.AsyncClient, key: str, prompt: str) -> tuple[float, float]:
    """(first byte, whole answer) in seconds for one streamed request."""
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    start = time.perf_counter()
    async with http.stream(
        "POST", "/v1/messages?beta=true", json=body(prompt), headers=headers
    ) as response:
        assert response.status_code == 200, await response.aread()
        first = None
        async for _ in response.aiter_raw():
            if first is None:
                first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


Timings = tuple[list[float], list[float]]


async def timed_pairs(
    direct_url: str, proxy_url: str, token: str, runs: int
) -> tuple[Timings, Timings]:
    """((first byte, whole answer) direct, the same through the proxy), in seconds, for
    ``runs`` pairs of sequential streamed requests. The two alternate (and which goes first
    alternates too), so a machine whose speed drifts during the run weighs on both alike."""
    direct: Timings = ([], [])
    proxied: Timings = ([], [])
    async with (
        httpx.AsyncClient(base_url=direct_url, timeout=30) as direct_http,
        httpx.AsyncClient(base_url=proxy_url, timeout=30) as proxy_http,
    ):
        ways = [(direct_http, "bench-direct", direct), (proxy_http, token, proxied)]
        for i in range(runs + WARM_UP):
            for http, key, timings in ways if i % 2 else reversed(ways):
                first, whole = await timed_request(http, key, f"bench {i}")
                if i >= WARM_UP:
                    timings[0].append(first)
                    timings[1].append(whole)
    return direct, proxied


class Cli:
    """One long-lived real CLI (`claude -p`, stream-json) on this host, for trivial turns."""

    def __init__(self, base_url: str, key_file: Path | None) -> None:
        home = tempfile.mkdtemp(prefix="bench-cli-")
        env = {"PATH": os.environ.get("PATH", ""), **host_cli_environment(base_url, home, None)}
        argv = [
            claude_binary(), "-p", "--input-format", "stream-json", "--output-format",
            "stream-json", "--verbose", "--permission-mode", "bypassPermissions",
        ]  # fmt: skip
        if key_file is None:
            env["ANTHROPIC_API_KEY"] = "bench-direct"
        else:
            argv += ["--settings", json.dumps({"apiKeyHelper": f"cat {key_file}"})]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.turns = 0

    def turn(self) -> float:
        """Seconds from prompt to result of one trivial turn."""
        assert self.process.stdin is not None and self.process.stdout is not None
        turn = {
            "type": "user",
            "message": {"role": "user", "content": f"bench turn {self.turns}"},
            "parent_tool_use_id": None,
            "session_id": "",
        }
        self.turns += 1
        start = time.perf_counter()
        self.process.stdin.write(json.dumps(turn) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            message = json.loads(line)
            if message.get("type") == "result":
                assert not message.get("is_error"), message
                return time.perf_counter() - start
        raise RuntimeError("the CLI ended before its turn's result")

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def cli_turns(
    direct_url: str, proxy_url: str, key_file: Path, runs: int, rounds: int = CLI_ROUNDS
) -> tuple[Timings, list[float]]:
    """(direct, proxied) prompt -> result of ``runs`` trivial turns each, and each round's
    paired median (ms). Every round starts two fresh long-lived CLIs, one each way, whose
    turns alternate (as the requests of ``timed_pairs`` do): one CLI process can be steadily
    a millisecond faster or slower than an identical one, so one pair would measure its own
    two processes as much as the proxy."""
    durations: Timings = ([], [])
    per_round: list[float] = []
    for _ in range(rounds):
        clis = [Cli(direct_url, None), Cli(proxy_url, key_file)]
        paired: list[float] = []
        try:
            for i in range(runs // rounds + 2):  # two warm-up turns each
                took = [0.0, 0.0]
                for which in (0, 1) if i % 2 else (1, 0):
                    took[which] = clis[which].turn()
                if i >= 2:
                    durations[0].append(took[0])
                    durations[1].append(took[1])
                    paired.append((took[1] - took[0]) * 1000)
        finally:
            for cli in clis:
                cli.close()
        per_round.append(statistics.median(paired))
    return durations, per_round


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def relay_cpu(gateway_url: str, token: str, pid: int, answers: int) -> float:
    """Gateway CPU milliseconds per 1,000 streamed events it relays."""
    headers = {"x-api-key": token, "anthropic-version": "2023-06-01"}
    events = 0
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        before = cpu_seconds(pid)
        for _ in range(answers):
            async with http.stream(
                "POST", "/model/v1/messages", json=body("many-events"), headers=headers
            ) as response:
                async for chunk in response.aiter_raw():
                    events += chunk.count(b"\nevent: ") + chunk.startswith(b"event: ")
        used = cpu_seconds(pid) - before
    return used * 1000 / (events / 1000)


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000


def line(name: str, direct: list[float], proxied: list[float]) -> str:
    """Both ways' percentiles and what the proxy adds: the difference of the p50s and p99s, and
    the median of the per-pair differences (each proxied measurement less the direct one taken
    beside it), which a machine whose speed drifts between pairs does not move."""
    added50 = p(proxied, 50) - p(direct, 50)
    added99 = p(proxied, 99) - p(direct, 99)
    paired = sorted((b - a) * 1000 for a, b in zip(direct, proxied, strict=True))
    # A 95% confidence interval of that median, from order statistics (no assumption about
    # how the differences are spread, which for CLI turns is far from normal).
    half = int(1.96 * math.sqrt(len(paired)) / 2)
    low = paired[max(0, len(paired) // 2 - half - 1)]
    high = paired[min(len(paired) - 1, len(paired) // 2 + half)]
    return (
        f"{name:<40} direct p50 {p(direct, 50):6.2f} p99 {p(direct, 99):6.2f} ms | proxy "
        f"p50 {p(proxied, 50):6.2f} p99 {p(proxied, 99):6.2f} ms | added p50 {added50:+.2f} "
        f"p99 {added99:+.2f} ms; paired median {statistics.median(paired):+.2f} ms "
        f"(95% CI {low:+.2f}..{high:+.2f})"
    )


async def run(
    gateway: Any,
    api: Any,
    upstream_url: str,
    runs: int = 300,
    turns: int | None = None,
    rounds: int = CLI_ROUNDS,
) -> None:
    """Print the proxy's figures for a running gateway whose upstream is ``upstream_url``:
    ``runs`` plain requests each way, and ``turns`` CLI turns each way (``2 * runs`` unless
    given) in ``rounds`` fresh pairs of CLIs."""
    session = await api.create()
    await api.wait_status(session["id"], "ready")
    await asyncio.sleep(3)  # its CLI goes on booting for a moment after it answered
    token = (await api.http.post(f"/api/v1/sessions/{session['id']}/token")).json()["token"]
    (direct_first, direct_whole), (proxy_first, proxy_whole) = await timed_pairs(
        upstream_url, f"{gateway.url}/model", token, runs
    )
    print(f"model proxy, {runs} sequential streamed requests each way, alternating:")
    print(line("  time to first streamed byte", direct_first, proxy_first))
    print(line("  whole trivial streamed answer", direct_whole, proxy_whole))
    with tempfile.NamedTemporaryFile("w", suffix=".token", delete=False) as key:
        key.write(token)
    # A trivial turn's time jitters by 15-25 ms (sd) between turns, and two identical CLIs'
    # medians differ by up to 1.2 ms over 200 turns: many turns, to resolve the proxy's 1-2 ms.
    turns = turns or max(20, runs * 2)
    (direct_turns, proxy_turns), per_round = await asyncio.to_thread(
        cli_turns, upstream_url, f"{gateway.url}/model", Path(key.name), turns, rounds
    )
    os.unlink(key.name)
    print(line(f"  real CLI trivial turn ({turns} turns)", direct_turns, proxy_turns))
    rounds = " ".join(f"{median:+.2f}" for median in per_round)
    print(f"    paired median of each round's fresh pair of CLIs: {rounds} ms")
    assert gateway.process is not None
    per_thousand = await relay_cpu(gateway.url, token, gateway.process.pid, 20)
    print(f"  gateway CPU per 1,000 proxied streamed events: {per_thousand:.1f} ms")
    print(f"  (medians: first byte {statistics.median(proxy_first) * 1000:.2f} ms)")
    await api.stop(session["id"])


async def main() -> None:
    import argparse

    import docker

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="plain requests each way")
    parser.add_argument("--turns", type=int, help="CLI turns each way (default: 2 x requests)")
    parser.add_argument("--rounds", type=int, default=CLI_ROUNDS, help="fresh pairs of CLIs")
    args = parser.parse_args()

    from tests.client import Api, mint_token
    from tests.stack import run_gateway, start_infra, start_s3

    with start_infra(docker.from_env()) as infra:
        process, upstream_url = start_upstream(infra.gateway_ip)
        try:
            with (
                tempfile.TemporaryDirectory() as logs,
                start_s3(Path(logs)) as s3,
                run_gateway(infra, upstream_url, s3, Path(logs), LOG_LEVEL="WARNING") as gateway,
            ):
                api = Api(gateway.url, mint_token(gateway.jwt_secret, "bench"))
                await run(gateway, api, upstream_url, args.requests, args.turns, args.rounds)
                await api.aclose()
        finally:
            process.kill()


if __name__ == "__main__":
    asyncio.run(main())
