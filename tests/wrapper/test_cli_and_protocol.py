"""Pieces of the wrapper: the CLI command line, the wire contract, the CLI process handle."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from wrapper import protocol
from wrapper.claude_process import ClaudeProcess, ControlError
from wrapper.cli import build_argv, claude_config_dir, cli_environment, transcript_path
from wrapper.protocol import ContainerEnv, PromptInput, SessionConfig


def contract(**config: object) -> ContainerEnv:
    return ContainerEnv(
        session_id="s-1",
        redis_url="redis://redis:6379/0",
        gateway_url="http://gateway:8000",
        claude_session_id="0b968909-2749-41a2-9879-dd3609639a40",
        config=SessionConfig.model_validate(config),
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


def test_transcript_path_follows_the_clis_layout() -> None:
    assert claude_config_dir({"HOME": "/home/claude"}) == Path("/home/claude/.claude")
    assert claude_config_dir({"CLAUDE_CONFIG_DIR": "/cfg", "HOME": "/h"}) == Path("/cfg")
    path = transcript_path(Path("/home/claude/.claude"), Path("/workspace/my_app"), "abc")
    assert path == Path("/home/claude/.claude/projects/-workspace-my-app/abc.jsonl")


def test_container_env_round_trips_through_the_environment() -> None:
    original = contract(model="m", max_turns=2)
    assert ContainerEnv.from_env(original.to_env()) == original
    assert "None" not in original.to_env()[protocol.ENV_SESSION_CONFIG]


def test_inputs_round_trip_and_garbage_is_refused() -> None:
    prompt = PromptInput(turn_id="t1", prompt="hi\n{not json}")
    assert protocol.decode_input(protocol.encode_input(prompt)) == prompt
    with pytest.raises(ValueError):
        protocol.decode_input({"type": "shutdown", "data": "{}"})
    with pytest.raises(ValueError):
        protocol.decode_input({"type": "prompt", "data": '{"turn_id": "t"}'})


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
