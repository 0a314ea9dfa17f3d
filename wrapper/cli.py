"""How the wrapper starts the Claude Code CLI: argv, environment and transcript location.

Pure functions, so the exact command line is testable without a container.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import TypeVar

from wrapper.protocol import ENV_GATEWAY_URL, ENV_SESSION_ID, SESSION_TOKEN_FILE, ContainerEnv

# Variables that must not leak from the wrapper's environment into the CLI: CLAUDECODE makes
# the CLI believe it runs nested inside another Claude Code; CCD_* are ours, not the model's,
# except what ``ccd-agent`` (run by the model through Bash) needs to find the gateway. Its
# token comes from the token file, which the wrapper keeps fresh, not from the environment.
_DROPPED_PREFIXES = ("CCD_",)
_DROPPED_NAMES = frozenset({"CLAUDECODE"})
_KEPT_NAMES = frozenset({ENV_GATEWAY_URL, ENV_SESSION_ID})

# The in-process MCP server the wrapper answers over the control channel (see mcp_sessions).
MCP_SERVER_NAME = "sessions"
MCP_CONFIG = json.dumps(
    {"mcpServers": {MCP_SERVER_NAME: {"type": "sdk", "name": MCP_SERVER_NAME}}},
    separators=(",", ":"),
)
MCP_TOOLS = f"mcp__{MCP_SERVER_NAME}"  # as an --allowedTools entry: every tool of the server

# A pooled CLI's model credential: the key in the file the wrapper writes (the pool's key,
# then the session's token after the claim; the CLI runs the helper again every
# CLAUDE_CODE_API_KEY_HELPER_TTL_MS). The CLI sends it as both x-api-key and a bearer token to
# ANTHROPIC_BASE_URL, the gateway's proxy. A cold-started CLI has its key in its environment.
MODEL_KEY_SETTINGS = json.dumps(
    {"apiKeyHelper": f'cat "$HOME/{SESSION_TOKEN_FILE}"'}, separators=(",", ":")
)


def build_argv(
    binary: str, env: ContainerEnv, *, resume: bool, key_helper: bool = True
) -> list[str]:
    """The CLI command line for a session. ``resume`` continues the saved conversation;
    ``key_helper``: the CLI reads its model key from the token file (else its environment
    has one: see ``cli_environment``)."""
    config = env.config
    argv = [
        binary,
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        config.permission_mode or env.permission_mode,
    ]
    if resume:
        argv.append(f"--resume={env.claude_session_id}")
    else:
        argv += ["--session-id", env.claude_session_id]
    if config.model:
        argv += ["--model", config.model]
    if key_helper:
        argv += ["--settings", MODEL_KEY_SETTINGS]
    argv += ["--mcp-config", MCP_CONFIG]
    argv += ["--allowedTools", ",".join([*(config.allowed_tools or []), MCP_TOOLS])]
    if config.disallowed_tools:
        argv += ["--disallowedTools", ",".join(config.disallowed_tools)]
    if config.max_turns is not None:
        argv += ["--max-turns", str(config.max_turns)]
    if config.system_prompt is not None:
        argv += ["--system-prompt", config.system_prompt]
    if config.append_system_prompt is not None:
        argv += ["--append-system-prompt", config.append_system_prompt]
    return argv


def cli_environment(environ: Mapping[str, str], model_key: str | None = None) -> dict[str, str]:
    """The CLI's environment: the container's, minus what belongs to the wrapper, plus its
    ``model_key`` (if given) as its API key."""
    kept = {
        name: value
        for name, value in environ.items()
        if name in _KEPT_NAMES
        or (name not in _DROPPED_NAMES and not name.startswith(_DROPPED_PREFIXES))
    }
    if model_key is not None:
        kept["ANTHROPIC_API_KEY"] = model_key
    return kept


def claude_config_dir(environ: Mapping[str, str]) -> Path:
    """The CLI's state directory: ``$CLAUDE_CONFIG_DIR``, else ``$HOME/.claude``."""
    explicit = environ.get("CLAUDE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    return Path(environ.get("HOME", "/root")) / ".claude"


P = TypeVar("P", bound=PurePath)


def transcript_path(config_dir: P, cwd: PurePath, claude_session_id: str) -> P:
    """Where the CLI keeps a conversation; ``--resume`` works only when this file exists."""
    project = re.sub(r"[^A-Za-z0-9]", "-", str(cwd))
    return config_dir / "projects" / project / f"{claude_session_id}.jsonl"
