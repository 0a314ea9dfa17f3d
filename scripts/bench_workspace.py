"""Benchmark: save and restore a large workspace, with the gateway's memory staying bounded.

Run by hand (not in CI), after scripts/test.sh has built the images:

    .venv/bin/python scripts/bench_workspace.py [--megabytes 200] [--files 40]

It starts the real stack of the tests (stand-in PostgreSQL and Redis, an S3 server, the real
``python -m gateway``), fills a session's workspace with random files inside its container,
stops the session (which saves the workspace), starts a new session on the same workspace
(which restores it), checks every file byte for byte, and prints the time of each step and the
gateway process's resident memory: its baseline and its peak during the save and the restore
(Linux VmHWM, reset before each step through /proc/PID/clear_refs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from tests.client import Api, mint_token  # noqa: E402
from tests.fake_anthropic import FakeAnthropic  # noqa: E402
from tests.stack import run_gateway, start_infra, start_s3  # noqa: E402

FINGERPRINT = "cd /workspace && find . -type f | sort | xargs sha256sum"


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) // 1024
    return values


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def run_in(client: docker.DockerClient, container_id: str, script: str) -> str:
    code, output = client.containers.get(container_id).exec_run(["sh", "-c", script])
    if code != 0:
        raise RuntimeError(output.decode())
    return output.decode()


async def main(args: argparse.Namespace) -> None:
    client = docker.from_env()
    with (
        tempfile.TemporaryDirectory() as logs,
        start_infra(client) as infra,
        start_s3(Path(logs)) as s3,
        FakeAnthropic(host=infra.gateway_ip) as fake,
        run_gateway(
            infra,
            fake.base_url,
            s3,
            Path(logs),
            LOG_LEVEL="WARNING",
            WORKSPACE_MAX_BYTES=str(args.megabytes * 2 * 1024 * 1024),
            SESSION_MEMORY="4g",
        ) as gateway,
    ):
        assert gateway.process is not None
        pid = gateway.process.pid
        api = Api(gateway.url, mint_token(gateway.jwt_secret, "bench"))
        project = f"bench-{uuid.uuid4().hex[:8]}"
        first = await api.create(workspace={"type": "persistent", "id": project})
        await api.wait_status(first["id"], "ready")
        per_file = args.megabytes // args.files
        run_in(
            client,
            first["container_id"],
            f"for i in $(seq {args.files}); do"
            f" head -c {per_file}M /dev/urandom > /workspace/file-$i.bin; done",
        )
        expected = run_in(client, first["container_id"], FINGERPRINT)
        total = args.files * per_file
        baseline = memory(pid)

        reset_peak(pid)
        started = time.perf_counter()
        stopped = await api.stop(first["id"])  # saves the workspace
        save_seconds = time.perf_counter() - started
        save_peak = memory(pid)["VmHWM"]
        assert stopped["workspace"]["unsaved"] is False, stopped

        reset_peak(pid)
        started = time.perf_counter()
        second = await api.create(workspace={"type": "persistent", "id": project})
        restore_seconds = time.perf_counter() - started  # create returns once files are in
        restore_peak = memory(pid)["VmHWM"]
        await api.wait_status(second["id"], "ready")
        restored = run_in(client, second["container_id"], FINGERPRINT)
        assert restored == expected, "restored files differ"
        await api.stop(second["id"])
        await api.aclose()

    print(f"workspace: {args.files} files, {total} MiB, restored byte for byte")
    print(f"gateway RSS baseline {baseline['VmRSS']} MiB")
    print(
        f"save (stop)    {save_seconds:6.1f} s  {total / save_seconds:6.1f} MiB/s"
        f"  gateway peak RSS {save_peak} MiB"
    )
    print(
        f"restore (create) {restore_seconds:4.1f} s  {total / restore_seconds:6.1f} MiB/s"
        f"  gateway peak RSS {restore_peak} MiB"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--files", type=int, default=40)
    asyncio.run(main(parser.parse_args()))
