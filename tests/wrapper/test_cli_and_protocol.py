"""Pieces of the wrapper: the CLI command line, the wire contract, the CLI process handle."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wrapper import protocol
from wrapper.claude_process import ClaudeProcess, ControlError
from wrapper.cli import build_argv, claude_config_dir, cli_environment, transcript_path
from wrapper.config import WrapperSettings
from wrapper.protocol import CliConfig, ContainerEnv, InterruptInput, PoolClaim, PromptInput
from wrapper.session_config import SessionConfig


def contract(**config: object) -> ContainerEnv:
    return ContainerEnv(
        session_id="s-1",
        redis_url="redis://redis:6379/0",
        gateway_url="http://gateway:8000",
        claude_session_id="0b968909-2749-41a2-9879-dd3609639a40",
        config=SessionConfig.model_validate(config).cli(),
        permission_mode="bypassPermissions",
        stream_maxlen=1000,
    )


def test_default_argv_is_headless_stream_json_with_a_fixed_session_id() -> None:
    argv = build_argv("claude", contract(), resume=False)
    assert argv[:8] == [
        "claude",
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
    ]
    assert argv[8] == "bypassPermissions"
    assert argv[9:11] == ["--session-id", "0b968909-2749-41a2-9879-dd3609639a40"]
    assert "--model" not in argv
    # The in-process sessions MCP server is always there, and its tools always allowed.
    mcp = json.loads(argv[argv.index("--mcp-config") + 1])
    assert mcp == {"mcpServers": {"sessions": {"type": "sdk", "name": "sessions"}}}
    assert argv[argv.index("--allowedTools") + 1] == "mcp__sessions"


def test_argv_carries_the_session_config_and_resume() -> None:
    argv = build_argv(
        "claude",
        contract(
            model="claude-x",
            permission_mode="acceptEdits",
            allowed_tools=["Bash", "Read"],
            disallowed_tools=["WebFetch"],
            max_turns=3,
            system_prompt="be brief",
            append_system_prompt="and kind",
        ),
        resume=True,
    )
    joined = " ".join(argv)
    assert "--permission-mode acceptEdits" in joined
    assert "--resume=0b968909-2749-41a2-9879-dd3609639a40" in argv
    assert "--session-id" not in argv
    assert argv[argv.index("--model") + 1] == "claude-x"
    assert argv[argv.index("--allowedTools") + 1] == "Bash,Read,mcp__sessions"
    assert argv.count("--allowedTools") == 1 and argv.count("--mcp-config") == 1
    assert argv[argv.index("--disallowedTools") + 1] == "WebFetch"
    assert argv[argv.index("--max-turns") + 1] == "3"
    assert argv[argv.index("--system-prompt") + 1] == "be brief"
    assert argv[argv.index("--append-system-prompt") + 1] == "and kind"


def test_cli_environment_drops_the_wrappers_variables() -> None:
    env = cli_environment(
        {
            "CCD_SESSION_ID": "x",
            "CCD_GATEWAY_URL": "http://gateway:8000",
            "CCD_REDIS_URL": "redis://redis",
            "CCD_SESSION_TOKEN": "secret",
            "CLAUDECODE": "1",
            "HOME": "/home/claude",
            "ANTHROPIC_API_KEY": "k",
        }
    )
    # ccd-agent, run by the model, needs the gateway and its session id; the token it reads
    # from the file the wrapper keeps fresh.
    assert env == {
        "HOME": "/home/claude",
        "ANTHROPIC_API_KEY": "k",
        "CCD_SESSION_ID": "x",
        "CCD_GATEWAY_URL": "http://gateway:8000",
    }


def test_a_cold_cli_has_its_model_key_in_its_environment_a_pooled_one_reads_a_file() -> None:
    """An apiKeyHelper costs the CLI's boot about 0.1 s; only a pooled CLI, whose key changes
    at its claim, needs one."""
    helper = build_argv("claude", contract(), resume=False)
    assert "apiKeyHelper" in helper[helper.index("--settings") + 1]
    assert "--settings" not in build_argv("claude", contract(), resume=False, key_helper=False)
    env = cli_environment({"HOME": "/h", "ANTHROPIC_API_KEY": "stale"}, "model-key")
    assert env == {"HOME": "/h", "ANTHROPIC_API_KEY": "model-key"}
    container = {
        **contract().to_env(),
        "CCD_SESSION_TOKEN": "token",
        "CCD_MODEL_KEY": "model-key",
    }
    assert WrapperSettings.from_env(container).model_key == "model-key"
    pooled = {**container, "CCD_POOL_ID": "p", "CCD_POOL_REDIS_URL": "r", "CCD_POOL_MODEL_KEY": "k"}
    assert WrapperSettings.from_env(pooled).model_key is None


def test_transcript_path_follows_the_clis_layout() -> None:
    assert claude_config_dir({"HOME": "/home/claude"}) == Path("/home/claude/.claude")
    assert claude_config_dir({"CLAUDE_CONFIG_DIR": "/cfg", "HOME": "/h"}) == Path("/cfg")
    path = transcript_path(Path("/home/claude/.claude"), Path("/workspace/my_app"), "abc")
    assert path == Path("/home/claude/.claude/projects/-workspace-my-app/abc.jsonl")


def test_container_env_round_trips_through_the_environment() -> None:
    original = dataclasses.replace(contract(model="m", max_turns=2), idle_freeze=2.5)
    assert ContainerEnv.from_env(original.to_env()) == original
    assert "None" not in original.to_env()[protocol.ENV_SESSION_CONFIG]


def test_every_cli_option_of_a_session_config_reaches_the_container() -> None:
    """The container is given the CLI's part of the config: every field of ``CliConfig`` is
    one of ``SessionConfig``'s, and a config that sets them all arrives whole."""
    assert CliConfig.field_names() <= set(SessionConfig.model_fields)
    full = SessionConfig(
        model="claude-x",
        permission_mode="plan",
        allowed_tools=["Bash", "Read"],
        disallowed_tools=["Write"],
        max_turns=3,
        system_prompt="be brief ✓",
        append_system_prompt="and kind",
        timeout=60,
        budget={"max_tokens": 10},
    )
    sent = contract(**full.model_dump(exclude_none=True))
    received = ContainerEnv.from_env(sent.to_env())
    assert received.config == full.cli()
    assert received.config.allowed_tools == ("Bash", "Read")
    # Options only the gateway reads stay out of the container.
    assert json.loads(sent.to_env()[protocol.ENV_SESSION_CONFIG]).keys() == CliConfig.field_names()


@pytest.mark.parametrize(
    "config",
    [
        "[]",
        "{not json",
        '{"budget": {"max_tokens": 1}}',
        '{"max_turns": "3"}',
        '{"max_turns": true}',
        '{"allowed_tools": ["Bash", 3]}',
        '{"model": 7}',
    ],
)
def test_a_broken_container_environment_is_refused(config: str) -> None:
    env = {**contract().to_env(), protocol.ENV_SESSION_CONFIG: config}
    with pytest.raises(ValueError):
        ContainerEnv.from_env(env)


def test_inputs_round_trip_and_garbage_is_refused() -> None:
    prompt = PromptInput(turn_id="t1", prompt="hi\n{not json} ✓")
    assert protocol.decode_input(protocol.encode_input(prompt)) == prompt
    for interrupt in (InterruptInput(), InterruptInput(turn_id="t1")):
        assert protocol.decode_input(protocol.encode_input(interrupt)) == interrupt
    for broken in [
        {"type": "shutdown", "data": "{}"},
        {"type": "prompt", "data": '{"turn_id": "t"}'},
        {"type": "prompt", "data": '{"turn_id": "t", "prompt": 3}'},
        {"type": "prompt", "data": '{"turn_id": "t", "prompt": "p", "sudo": true}'},
        {"type": "prompt", "data": '{"type": "interrupt", "turn_id": "t", "prompt": "p"}'},
        {"type": "interrupt", "data": '{"turn_id": 5}'},
        {"type": "interrupt", "data": "[]"},
        {"type": "prompt"},
    ]:
        with pytest.raises(ValueError):
            protocol.decode_input(broken)


def test_a_pool_claim_round_trips_and_keeps_its_secrets_out_of_logs() -> None:
    claim = PoolClaim(session_id="s", redis_url="redis://u:secret@r", session_token="tok")
    assert PoolClaim.from_json(claim.to_json()) == claim
    assert "secret" not in repr(claim) and "tok" not in repr(claim)
    with pytest.raises(ValueError):
        PoolClaim.from_json('{"session_id": "s", "redis_url": "r"}')


def test_every_key_of_a_session_shares_its_prefix() -> None:
    prefix = protocol.session_key_prefix("abc")
    assert protocol.output_stream_key("abc").startswith(prefix)
    assert protocol.input_stream_key("abc").startswith(prefix)
    assert protocol.output_stream_key("abc") != protocol.input_stream_key("abc")


async def test_a_control_request_fails_at_once_when_the_cli_goes_away(tmp_path: Path) -> None:
    """A CLI that ends before answering (stopped while it booted) fails the handshake at
    once with ``ControlError``, rather than leaving it to run into its timeout."""
    proc = await ClaudeProcess.spawn(
        ["sh", "-c", "read line; exit 0"], {"PATH": "/usr/bin:/bin"}, tmp_path, 1024
    )

    async def drain() -> None:
        while await proc.stdout_line() is not None:
            pass

    reader = asyncio.create_task(drain())
    with pytest.raises(ControlError):
        await proc.control("initialize", timeout=60)
    await reader
    with pytest.raises(ControlError):  # and so does any later request
        await proc.control("interrupt", timeout=60)
    assert await proc.wait() == 0


# A stand-in CLI: echoes each stdin line, and on SIGTERM says so and exits 0.
ECHO_UNTIL_TERM = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: (print("terminated", flush=True), sys.exit(0)))
for line in sys.stdin:
    print(line.strip(), flush=True)
"""


def _state(pid: int) -> str:
    """The process's scheduler state letter (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def test_a_frozen_cli_is_thawed_by_a_write_and_a_stop_does_not_wait_out_its_grace(
    tmp_path: Path,
) -> None:
    """An idle CLI is frozen with SIGSTOP. A stopped process acts on SIGTERM only once it runs
    again: a stop that only sent SIGTERM would wait out the whole grace and then kill it."""
    proc = await ClaudeProcess.spawn(
        [sys.executable, "-c", ECHO_UNTIL_TERM], {"PATH": "/usr/bin:/bin"}, tmp_path, 1024
    )
    await proc.send({"n": 1})
    assert await proc.stdout_line() == b'{"n": 1}'
    proc.freeze()
    await asyncio.sleep(0.1)
    assert proc.frozen and _state(proc.pid) == "T"
    await proc.send({"n": 2})  # thaws it first
    assert await asyncio.wait_for(proc.stdout_line(), 5) == b'{"n": 2}'
    assert not proc.frozen and _state(proc.pid) != "T"
    proc.freeze()
    await asyncio.sleep(0.1)
    assert _state(proc.pid) == "T"
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await proc.terminate(grace=30) == 0  # exit 0: SIGTERM handled, not SIGKILL
    assert loop.time() - began < 5
    assert await proc.stdout_line() == b"terminated"


START_PATH = """
import asyncio, json, sys
import wrapper.__main__
from wrapper import protocol, pool, session_token, supervisor
from wrapper.cli import build_argv
from wrapper.config import WrapperSettings
from wrapper.mcp_sessions import SessionsServer

settings = WrapperSettings.from_env(json.loads(sys.argv[1]))
build_argv("claude", settings.contract, resume=False)
server = SessionsServer(api=None)
init = {"protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "claude-code", "version": "2"}}
for ident, (method, params) in enumerate(
    [("initialize", init), ("tools/list", None), ("ping", None)]
):
    message = {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}
    answer = asyncio.run(server.handle_message(message))
    assert "result" in answer, answer
prompt = protocol.PromptInput(turn_id="t", prompt="hi")
assert protocol.decode_input(protocol.encode_input(prompt)) == prompt
print(json.dumps(sorted(m for m in ("pydantic", "httpx", "mcp_types") if m in sys.modules)))
"""


def test_the_wrapper_reaches_a_ready_cli_without_pydantic(tmp_path: Path) -> None:
    """In a one-CPU container the CLI's boot waits for whatever the wrapper does meanwhile:
    pydantic (about 0.1 s), httpx and mcp_types are not loaded until a tool call or a token
    refresh needs them. Reading the contract, building the command line, the MCP start-up
    answers and a first prompt all work without them."""
    env = {**contract(model="m", allowed_tools=["Bash"]).to_env(), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", START_PATH, json.dumps(env)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
