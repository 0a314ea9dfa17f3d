"""The gateway image's entrypoint (scripts/prestart.sh) when several replicas start together on
one state volume: they agree on one generated JWT secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRESTART = ROOT / "scripts/prestart.sh"


def test_replicas_starting_together_share_one_generated_secret(tmp_path: Path) -> None:
    # `python -m gateway migrate` is not this test's subject (tests/gateway/test_migrations.py):
    # a shim answers it, and runs every other python command for real.
    shims = tmp_path / "bin"
    shims.mkdir()
    shim = shims / "python"
    shim.write_text(
        '#!/bin/sh\nif [ "$1 $2 $3" = "-m gateway migrate" ]; then exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    shim.chmod(0o755)
    secret_file = tmp_path / "state" / "jwt-secret"
    env = {
        "PATH": f"{shims}:{os.environ['PATH']}",
        "JWT_SECRET_FILE": str(secret_file),
    }
    replicas = [
        subprocess.Popen(
            ["sh", str(PRESTART), "sh", "-c", 'cat "$JWT_SECRET_FILE"'],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = [replica.communicate(timeout=60) for replica in replicas]
    assert [replica.returncode for replica in replicas] == [0] * 8, outputs
    secrets = {stdout.strip().splitlines()[-1] for stdout, _ in outputs}
    assert len(secrets) == 1 and len(secrets.pop()) >= 32, outputs
    generated = [stdout for stdout, _ in outputs if "generated a JWT secret" in stdout]
    assert len(generated) == 1, outputs
    assert sorted(p.name for p in secret_file.parent.iterdir()) == ["jwt-secret"]  # no leftovers
    assert secret_file.stat().st_mode & 0o077 == 0  # readable by its owner only
