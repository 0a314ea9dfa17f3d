"""The wrapper's gateway client, the token refresher and ``ccd-agent``, against a stub gateway."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.wrapper.stub_gateway import Reply, StubGateway, error, make_jwt
from wrapper import protocol
from wrapper.config import AgentSettings, WrapperSettings
from wrapper.gateway_client import WAIT_MARGIN, GatewayClient, GatewayError
from wrapper.session_token import SessionToken, token_expiry
from wrapper.token_file import read_token_file, write_token_file

pytestmark = pytest.mark.timeout(10)

PARENT = "0a6f2c1e-5b1d-4f7e-9d51-6f0b7c1d2e3f"
TOKEN = make_jwt(time.time() + 3600, sid=PARENT)


@pytest.fixture
def stub() -> Iterator[StubGateway]:
    with StubGateway(PARENT) as gateway:
        yield gateway


def client(stub: StubGateway, token: str | None = TOKEN) -> GatewayClient:
    return GatewayClient(stub.base_url, PARENT, lambda: token, timeout=5)


# --------------------------------------------------------------------------- client


async def test_operations_send_the_token_and_parse_answers(stub: StubGateway) -> None:
    async with client(stub) as gateway:
        child = await gateway.spawn("work", model="m")
        assert child.id == stub.child_id and child.status == "starting"
        assert child.parent_id == PARENT and child.model_extra == {"owner": "alice"}
        turn = await gateway.send(child.id, "more")
        assert turn.id == "turn-2" and turn.seq == 2
        outcome = await gateway.wait(child.id, 2.5)
        assert outcome.result == "the answer is 42" and outcome.turn is not None
        assert (await gateway.get(child.id)).status == "ready"
        assert [s.id for s in await gateway.children()] == [child.id]
        assert (await gateway.stop(child.id)).status == "stopped"
        grant = await gateway.refresh_token()
        assert grant.expires_in == 3600 and token_expiry(grant.token) is not None

    paths = [(c.method, c.path) for c in stub.calls]
    assert paths == [
        ("POST", f"/api/v1/sessions/{PARENT}/spawn"),
        ("POST", f"/api/v1/sessions/{child.id}/chat"),
        ("POST", f"/api/v1/sessions/{child.id}/wait"),
        ("GET", f"/api/v1/sessions/{child.id}"),
        ("GET", f"/api/v1/sessions/{PARENT}/children"),
        ("POST", f"/api/v1/sessions/{child.id}/stop"),
        ("POST", f"/api/v1/sessions/{PARENT}/token"),
    ]
    assert {c.authorization for c in stub.calls} == {f"Bearer {TOKEN}"}
    assert stub.calls[0].body == {"prompt": "work", "config": {"model": "m"}}
    assert stub.calls[1].body == {"prompt": "more", "wait": False}
    assert stub.calls[2].body == {"timeout": 2.5}


async def test_errors_carry_the_gateways_code_and_message(stub: StubGateway) -> None:
    stub.on("POST", r"/sessions/[^/]+/spawn", error(403, "tree_limit_reached", "tree holds 10"))
    stub.on("GET", r"/sessions/[^/]+", Reply(502, "<html>bad gateway</html>"))
    async with client(stub) as gateway:
        with pytest.raises(GatewayError) as refused:
            await gateway.spawn("x")
        assert (refused.value.status, refused.value.code) == (403, "tree_limit_reached")
        assert refused.value.message == "tree holds 10"
        with pytest.raises(GatewayError) as proxy:
            await gateway.get("c")
        assert (proxy.value.status, proxy.value.code, proxy.value.message) == (
            502,
            "http_502",
            "Bad Gateway",
        )
    async with client(stub, token=None) as gateway:
        with pytest.raises(GatewayError, match="no_session_token"):
            await gateway.children()
    async with GatewayClient("http://127.0.0.1:9", PARENT, lambda: TOKEN) as gateway:
        with pytest.raises(GatewayError) as unreachable:
            await gateway.children()
        assert unreachable.value.code == "gateway_unreachable" and unreachable.value.status is None


async def test_wait_outlasts_the_default_timeout(stub: StubGateway) -> None:
    stub.on("POST", r"/sessions/[^/]+/wait", error(504, "wait_timeout", "busy after 1.2 s"))
    stub.on("GET", r"/sessions/[^/]+", Reply(200, {}, delay=1.2))
    async with GatewayClient(stub.base_url, PARENT, lambda: TOKEN, timeout=0.5) as gateway:
        with pytest.raises(GatewayError) as slow:
            await gateway.get("c")  # the default timeout applies
        assert slow.value.code == "gateway_timeout"
        stub.on("POST", r"/sessions/[^/]+/wait", _slow_wait_timeout)
        with pytest.raises(GatewayError) as waited:
            await gateway.wait("c", 1.0)  # 1.0 s + margin, though the client default is 0.5
        assert waited.value.code == "wait_timeout"
    assert WAIT_MARGIN >= 10


def _slow_wait_timeout(call: object, match: object) -> Reply:
    return Reply(504, {"error": {"code": "wait_timeout", "message": "1 s"}}, delay=1.0)


# --------------------------------------------------------------------------- token


def test_token_file_is_private_and_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "home" / protocol.SESSION_TOKEN_FILE
    write_token_file(path, "one")
    write_token_file(path, "two")
    assert read_token_file(path) == "two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["session-token"]  # no temp files left
    assert read_token_file(tmp_path / "missing") is None
    assert token_expiry("not-a-jwt") is None and token_expiry("a.b.c") is None
    assert token_expiry(make_jwt(1234)) == 1234.0


async def test_refresher_renews_a_token_about_to_expire(stub: StubGateway, tmp_path: Path) -> None:
    path = tmp_path / protocol.SESSION_TOKEN_FILE
    expiring = make_jwt(time.time() + 2, sid=PARENT)
    token = SessionToken(expiring, path)
    token.save()
    failures = iter([error(503, "unavailable", "restarting")])

    def flaky(call: object, match: object) -> Reply:
        return next(failures, None) or stub._token()

    stub.on("POST", r"/sessions/[^/]+/token", flaky)
    async with GatewayClient(stub.base_url, PARENT, token.get) as gateway:
        refresher = asyncio.create_task(token.refresh_forever(gateway, min_delay=0.2))
        try:
            deadline = time.monotonic() + 15  # a bound for failure only
            while token.get() == expiring:
                assert time.monotonic() < deadline, "the token was never refreshed"
                await asyncio.sleep(0.05)
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)

    calls = stub.calls_to("POST", "/token")
    assert len(calls) == 2  # one failure, retried
    assert calls[0].authorization == f"Bearer {expiring}"
    fresh = token.get()
    assert fresh is not None and (token_expiry(fresh) or 0) > time.time() + 3000
    assert read_token_file(path) == fresh
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_no_token_means_no_refresh(tmp_path: Path) -> None:
    token = SessionToken(None, tmp_path / "t")
    token.save()
    assert not (tmp_path / "t").exists()
    unused = GatewayClient("http://127.0.0.1:9", PARENT, token.get)
    await asyncio.wait_for(token.refresh_forever(unused), 1)  # returns at once
    await unused.aclose()


def test_settings_read_the_token_and_its_file() -> None:
    env = {
        protocol.ENV_SESSION_ID: PARENT,
        protocol.ENV_REDIS_URL: "redis://r",
        protocol.ENV_GATEWAY_URL: "http://g",
        protocol.ENV_CLAUDE_SESSION_ID: "c",
        protocol.ENV_SESSION_TOKEN: "s3cr3t",
        "HOME": "/home/claude",
    }
    settings = WrapperSettings.from_env(env)
    assert settings.session_token == "s3cr3t" and "s3cr3t" not in repr(settings)
    assert settings.token_file == Path("/home/claude/.ccd/session-token")
    assert WrapperSettings.from_env({**env, protocol.ENV_SESSION_TOKEN: ""}).session_token is None
    agent = AgentSettings.from_env(env)
    assert (agent.gateway_url, agent.session_id, agent.env_token) == ("http://g", PARENT, "s3cr3t")


# --------------------------------------------------------------------------- ccd-agent


def ccd_agent(
    stub: StubGateway, home: Path, *args: str, token: str | None = None
) -> tuple[int, str, str]:
    """Run the installed console script (as the agent would from Bash)."""
    script = Path(sys.executable).parent / "ccd-agent"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "wrapper.agent_cli"]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        protocol.ENV_GATEWAY_URL: stub.base_url,
        protocol.ENV_SESSION_ID: PARENT,
    }
    if token is not None:
        env[protocol.ENV_SESSION_TOKEN] = token
    done = subprocess.run(
        [*argv, *args], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    return done.returncode, done.stdout, done.stderr


def test_ccd_agent_prints_json(stub: StubGateway, tmp_path: Path) -> None:
    write_token_file(tmp_path / protocol.SESSION_TOKEN_FILE, TOKEN)
    code, out, err = ccd_agent(stub, tmp_path, "spawn", "do it", "--model", "m", token="stale")
    assert code == 0, err
    assert json.loads(out)["id"] == stub.child_id
    assert stub.calls[-1].body == {"prompt": "do it", "config": {"model": "m"}}
    assert stub.calls[-1].authorization == f"Bearer {TOKEN}"  # the file wins over the env

    code, out, _ = ccd_agent(stub, tmp_path, "wait", stub.child_id, "--timeout", "7")
    assert code == 0 and json.loads(out)["result"] == "the answer is 42"
    assert stub.calls[-1].body == {"timeout": 7.0}
    code, out, _ = ccd_agent(stub, tmp_path, "children")
    assert code == 0 and [s["id"] for s in json.loads(out)["sessions"]] == [stub.child_id]
    code, out, _ = ccd_agent(stub, tmp_path, "send", stub.child_id, "again")
    assert code == 0 and json.loads(out)["id"] == "turn-2"
    code, out, _ = ccd_agent(stub, tmp_path, "stop", stub.child_id)
    assert code == 0 and json.loads(out)["status"] == "stopped"


def test_ccd_agent_reports_gateway_errors(stub: StubGateway, tmp_path: Path) -> None:
    stub.on(
        "POST",
        r"/sessions/[^/]+/spawn",
        error(403, "children_limit_reached", "MAX_CHILDREN_PER_SESSION=1 reached"),
    )
    code, out, err = ccd_agent(stub, tmp_path, "spawn", "x", token=TOKEN)  # no file: env token
    assert code == 1 and out == ""
    assert err.strip() == "error: children_limit_reached: MAX_CHILDREN_PER_SESSION=1 reached"
    assert stub.calls[-1].authorization == f"Bearer {TOKEN}"

    code, _, err = ccd_agent(stub, tmp_path, "get", "missing-id")  # no token at all
    assert code == 1 and err.startswith("error: no_session_token:")
    code, _, err = ccd_agent(stub, tmp_path, "bogus")
    assert code == 2 and "invalid choice" in err


def test_a_pooled_container_has_no_identity_until_its_claim(tmp_path: Path) -> None:
    """Before the claim: no session id, token or Redis URL anywhere in the settings, and
    ccd-agent cannot name a session. After it, ccd-agent reads the session id from the file the
    wrapper wrote (its environment was fixed before there was one)."""
    env = {
        protocol.ENV_GATEWAY_URL: "http://g",
        protocol.ENV_CLAUDE_SESSION_ID: "c",
        protocol.ENV_POOL_ID: "p1",
        protocol.ENV_POOL_REDIS_URL: "redis://pool:pw@r",
        protocol.ENV_POOL_MODEL_KEY: "pool-key",
        "HOME": str(tmp_path),
    }
    pooled = WrapperSettings.from_env(env)
    assert pooled.pool is not None and pooled.session_token is None and pooled.warm
    assert (pooled.contract.session_id, pooled.contract.redis_url) == ("", "")
    assert pooled.contract.claude_session_id == "c"
    assert "pool-key" not in repr(pooled) and "pw" not in repr(pooled)
    with pytest.raises(KeyError):
        AgentSettings.from_env(env)
    pooled.session_id_file.parent.mkdir(parents=True)
    pooled.session_id_file.write_text(PARENT + "\n")
    assert AgentSettings.from_env(env).session_id == PARENT
