"""Chaos soak: a fleet of gateway replicas with many sessions streaming, while replicas are
killed and Redis and PostgreSQL restarted at random. Run by hand (not in CI), after
scripts/test.sh has built the images:

    .venv/bin/python scripts/chaos.py --replicas 3 --sessions 20 --minutes 10 [--seed 1]

Everything stays on this machine: the stand-in PostgreSQL and Redis (its data on disk, an
append-only file, as in the compose stack), the scripted fake Anthropic API, real gateway
processes behind the harness's TCP load balancer (tests/fleet.py), real session containers with
the real CLI. Each session runs turn after turn; a client follows each stream through the
balancer and resumes with ``?after=`` whenever its connection drops. It prints: turns
completed, results lost (a turn accepted that never produced a result on the stream nor a
final status in the database: must be 0), duplicate events delivered (must be 0), gaps
signalled, and the relay latency (stream id to client) before and during chaos.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from tests.client import Api  # noqa: E402
from tests.e2e.test_fleet_faults import Follower  # noqa: E402
from tests.fake_anthropic import FakeAnthropic, slow_text  # noqa: E402
from tests.fleet import Fleet, token  # noqa: E402
from tests.stack import start_infra, start_postgres, start_redis, start_s3  # noqa: E402


class Soak:
    def __init__(self, fleet: Fleet, sessions: int) -> None:
        self.fleet = fleet
        self.client = Api(fleet.url, token(fleet, "chaos"))
        self.count = sessions
        self.accepted: dict[str, str] = {}  # turn id -> session id
        self.completed: set[str] = set()
        self.followers: list[Follower] = []
        self.following_since: dict[int, float] = {}  # events stored earlier are a replay
        self.chaos_started: float | None = None
        self.stopping = False

    async def run_session(self, index: int) -> None:
        session = await self.client.create()
        await self.client.wait_status(session["id"], "ready", timeout=300)
        follower = Follower(Api(self.fleet.url, self.client.token), session["id"])
        self.followers.append(follower)
        self.following_since[id(follower)] = time.time()
        seq = 0
        while not self.stopping:
            seq += 1
            turn_id = await self._send(session["id"], f"chaos {index} turn {seq}")
            if turn_id is None:
                continue
            with contextlib.suppress(TimeoutError):
                await follower.until(
                    lambda e, t=turn_id: (
                        e.get("turn_id") == t
                        and e["source"] == "claude"
                        and e["event"].get("type") == "result"
                    ),
                    timeout=180,
                )
                self.completed.add(turn_id)

    async def _send(self, session_id: str, prompt: str) -> str | None:
        for _ in range(120):
            with contextlib.suppress(Exception):
                response = await self.client.http.post(
                    f"/api/v1/sessions/{session_id}/chat", json={"prompt": prompt, "wait": False}
                )
                if response.status_code == 202:
                    turn_id = str(response.json()["turn"]["id"])
                    self.accepted[turn_id] = session_id
                    return turn_id
                if response.status_code == 409:  # a turn still runs (a retried call)
                    await asyncio.sleep(1)
                    continue
            await asyncio.sleep(1)  # 503 while a store restarts, or the balancer has no one
        return None

    async def chaos(self, seconds: float, rng: random.Random) -> list[str]:
        self.chaos_started = time.monotonic()
        actions: list[str] = []
        end = self.chaos_started + seconds
        while time.monotonic() < end:
            await asyncio.sleep(rng.uniform(15, 35))
            action = rng.choice(["kill", "kill", "redis", "postgres"])
            if action == "kill" and len(self.fleet.alive()) > 1:
                victim = rng.choice(self.fleet.alive())
                self.fleet.stop(victim, signal.SIGKILL)
                actions.append(f"{time.strftime('%H:%M:%S')} killed replica {victim}")
                await asyncio.sleep(rng.uniform(3, 8))
                await asyncio.to_thread(self.fleet.start, victim)
            elif action == "redis":
                await asyncio.to_thread(self.fleet.redis.restart)  # type: ignore[attr-defined]
                actions.append(f"{time.strftime('%H:%M:%S')} restarted Redis")
            elif action == "postgres":
                down = rng.uniform(5, 10)
                await asyncio.to_thread(self.fleet.postgres.stop)  # type: ignore[attr-defined]
                await asyncio.sleep(down)
                await asyncio.to_thread(self.fleet.postgres.start)  # type: ignore[attr-defined]
                actions.append(f"{time.strftime('%H:%M:%S')} PostgreSQL down {down:.0f} s")
        return actions

    async def lost_results(self) -> list[str]:
        """Accepted turns with no result seen and no final status recorded."""
        lost = []
        for turn_id, session_id in self.accepted.items():
            if turn_id in self.completed:
                continue
            turns = (await self.client.http.get(f"/api/v1/sessions/{session_id}/turns")).json()
            status = next((t["status"] for t in turns["turns"] if t["id"] == turn_id), None)
            if status not in ("completed", "failed", "interrupted"):
                lost.append(turn_id)
        return lost


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    client = docker.from_env()
    with (
        start_infra(client) as infra,
        FakeAnthropic(host=infra.gateway_ip) as fake,
        tempfile.TemporaryDirectory() as logs,
        start_s3(Path(logs)) as s3,
        start_postgres(client, infra) as postgres,
        start_redis(client, infra) as redis,
    ):
        fake.on("chaos", slow_text(["chaos ", "turn ", "done"], delay=0.5))
        fleet = Fleet(
            infra,
            fake.base_url,
            s3,
            Path(logs),
            size=args.replicas,
            overrides={
                "DATABASE_URL": postgres.database_url,
                "REDIS_URL": redis.url,
                "SESSION_REDIS_URL": redis.session_url,
                "CLAUDE_CODE_MAX_RETRIES": "8",
                "LOG_LEVEL": "WARNING",
            },
        )
        with fleet.running():
            fleet.postgres, fleet.redis = postgres, redis  # type: ignore[attr-defined]
            soak = Soak(fleet, args.sessions)
            drivers = [asyncio.create_task(soak.run_session(i)) for i in range(args.sessions)]
            warmup = min(60.0, args.minutes * 60 * 0.15)
            await asyncio.sleep(warmup)
            chaos_wall = time.time()
            actions = await soak.chaos(args.minutes * 60 - warmup, rng)
            soak.stopping = True
            await asyncio.sleep(30)  # turns in flight end
            for driver in drivers:
                driver.cancel()
            await asyncio.gather(*drivers, return_exceptions=True)
            lost = await soak.lost_results()
            # Per stream: ids are unique within a session's stream, not across sessions (two
            # streams written in the same millisecond share an id).
            duplicates = sum(len(f.ids()) - len(set(f.ids())) for f in soak.followers)
            gaps = sum(
                1 for f in soak.followers for e in f.envelopes if e["event"].get("type") == "gap"
            )
            split: dict[str, list[float]] = {"before": [], "during": []}
            for f in soak.followers:
                for e in f.envelopes:
                    if e.get("id") and "_received" in e:
                        sent = int(e["id"].split("-")[0]) / 1000
                        if sent < soak.following_since[id(f)]:
                            continue  # stored before its client followed: not relay latency
                        key = "during" if sent >= chaos_wall else "before"
                        split[key].append((e["_received"] - sent) * 1000)
            for values in split.values():
                values.sort()
            print(f"{args.replicas} replicas, {args.sessions} sessions, {args.minutes} min")
            print("chaos:", *actions, sep="\n  ")
            print(f"turns accepted {len(soak.accepted)}, completed {len(soak.completed)}")
            print(f"results lost: {len(lost)} {lost[:5]}")
            print(f"duplicate events delivered: {duplicates}")
            print(f"gaps signalled: {gaps}")
            print(f"client reconnects: {sum(f.reconnects for f in soak.followers)}")
            for name, values in split.items():
                print(
                    f"relay latency {name} chaos: p50 {percentile(values, 50):.1f} ms, "
                    f"p99 {percentile(values, 99):.1f} ms ({len(values)} events)"
                )
            await soak.client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
