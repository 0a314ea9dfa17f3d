"""The Docker engine restarted under a running gateway. Run by hand, as root, on a machine whose
dockerd this script may stop and start (it is started as ``scripts/lib.sh`` does in CI); never in
CI, since every container on the engine dies with it:

    .venv/bin/python scripts/engine_restart.py [--sessions 4]

It starts a gateway (PostgreSQL and Redis in containers on fixed ports, so that they come back
at the same address), creates sessions (ready ones, one stopped, one still starting when the
engine goes), restarts dockerd, starts PostgreSQL and Redis again, and prints what became of
each session: those whose containers died must be ``failed`` with the reason, the stopped one
stays ``stopped`` (its files saved), nothing stays ``starting`` or ``stopping``, and a session
created afterwards works.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from bench_proxy import start_upstream  # noqa: E402

from tests.client import Api, mint_token  # noqa: E402
from tests.stack import run_gateway, start_infra, start_postgres, start_redis, start_s3  # noqa: E402

SETTLED = ("ready", "busy", "stopped", "failed")


def restart_engine() -> float:
    """Stop dockerd (its containers die with it) and start it again; seconds it took."""
    began = time.monotonic()
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"], check=False)
    while subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode == 0:
        time.sleep(0.2)
    with open("/var/log/dockerd.log", "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        time.sleep(0.2)
    return time.monotonic() - began


async def settle(api: Api, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = {sid: await api.get(sid) for sid in ids}
        if all(row["status"] in SETTLED for row in rows.values()):
            return rows
        if time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.5)


async def main(args: argparse.Namespace) -> None:
    client = docker.from_env()
    with (
        start_infra(client) as infra,
        start_postgres(client, infra) as postgres,
        start_redis(client, infra) as redis,
        tempfile.TemporaryDirectory() as logs,
        start_s3(Path(logs)) as s3,
    ):
        upstream, upstream_url = start_upstream(infra.gateway_ip)
        try:
            with run_gateway(
                infra,
                upstream_url,
                s3,
                Path(logs),
                DATABASE_URL=postgres.database_url,
                REDIS_URL=redis.url,
                SESSION_REDIS_URL=redis.session_url,
                RECONCILE_INTERVAL="2",
                LOG_LEVEL="WARNING",
            ) as gateway:
                api = Api(gateway.url, mint_token(gateway.jwt_secret, "engine"))
                ready = [(await api.create())["id"] for _ in range(args.sessions)]
                for sid in ready:
                    await api.wait_status(sid, "ready", timeout=90)
                stopped = ready.pop()
                await api.stop(stopped)
                starting = (await api.create())["id"]  # its CLI is booting when the engine goes
                took = await asyncio.to_thread(restart_engine)
                print(f"engine restarted in {took:.1f} s")
                await asyncio.to_thread(postgres.start)
                await asyncio.to_thread(redis.restart)
                began = time.monotonic()
                rows = await settle(api, [*ready, stopped, starting], 120)
                print(
                    f"sessions settled {time.monotonic() - began:.1f} s after the engine came back"
                )
                for sid, row in rows.items():
                    role = {stopped: "stopped before", starting: "starting"}.get(sid, "ready")
                    print(f"  {role:<15} {sid}  {row['status']:<8} {row['failure_reason'] or ''}")
                after = (await api.create())["id"]
                fresh = await api.wait_status(after, "ready", timeout=120)
                print(f"a session created afterwards: {fresh['status']}")
                await api.aclose()
        finally:
            upstream.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
