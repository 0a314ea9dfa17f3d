"""Clients of the real gateway: the SDK (``sdk_for``) and the ``ccd`` command line (``ccd``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ccd
from tests.client import mint_token

CCD = Path(sys.executable).parent / "ccd"  # the console script of the same install


@pytest.fixture
async def sdk_for(gateway: Any) -> AsyncIterator[Callable[..., ccd.AsyncClient]]:
    """``sdk_for("alice")``: an ``AsyncClient`` of the test gateway authenticated as alice
    (``url=`` to go through something else, a proxy)."""
    clients: list[ccd.AsyncClient] = []

    def make(owner: str, url: str | None = None, **kwargs: Any) -> ccd.AsyncClient:
        token = mint_token(gateway.jwt_secret, owner)
        client = ccd.AsyncClient(url or gateway.url, token, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@dataclass
class Cli:
    """``ccd`` as a user runs it: a subprocess configured by CCD_URL and CCD_TOKEN."""

    url: str
    token: str

    def env(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CCD_", "NO_COLOR"))}
        env.pop("FORCE_COLOR", None)
        env.update(CCD_URL=self.url, CCD_TOKEN=self.token, COLUMNS="200")
        env.update(more)
        return env

    def run(self, *args: str, input: str | None = None, timeout: float = 180, **env: str) -> Ran:
        done = subprocess.run(
            [str(CCD), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**env),
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(CCD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(**env),
        )


@pytest.fixture
def cli_for(gateway: Any) -> Callable[[str], Cli]:
    def make(owner: str) -> Cli:
        return Cli(gateway.url, mint_token(gateway.jwt_secret, owner))

    return make
