"""``ccd-agent``: the ``sessions`` tools for the shell, so the agent can use them from Bash.

Runs inside the session container with the CLI's environment. Prints the gateway's JSON answer
on stdout; on a gateway error prints ``error: <code>: <message>`` on stderr and exits 1 (2 for
a usage or environment problem). Uses the same ``GatewayClient`` as the MCP tools.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from wrapper.config import AgentSettings
from wrapper.gateway_client import GatewayClient, GatewayError
from wrapper.protocol import ENV_SESSION_TOKEN
from wrapper.token_file import read_token_file

EXIT_GATEWAY_ERROR = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccd-agent",
        description="Spawn and drive child sessions of this Claude Code session. "
        "Prints JSON; errors go to stderr with a non-zero exit code.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spawn = commands.add_parser("spawn", help="start a child session working on PROMPT")
    spawn.add_argument("prompt", metavar="PROMPT")
    spawn.add_argument("--model", help="model for the child")
    spawn.add_argument("--system-prompt", help="replaces the child's system prompt")
    send = commands.add_parser("send", help="send PROMPT to a session as its next turn")
    send.add_argument("session_id", metavar="SESSION_ID")
    send.add_argument("prompt", metavar="PROMPT")
    wait = commands.add_parser("wait", help="wait for a session's turn to end; print its result")
    wait.add_argument("session_id", metavar="SESSION_ID")
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    get = commands.add_parser("get", help="show a session")
    get.add_argument("session_id", metavar="SESSION_ID")
    commands.add_parser("children", help="list this session's children")
    stop = commands.add_parser("stop", help="stop a session")
    stop.add_argument("session_id", metavar="SESSION_ID")
    return parser


async def _run(client: GatewayClient, args: argparse.Namespace) -> Any:
    """The gateway's answer to the command, as JSON-ready data."""
    reply: BaseModel
    match args.command:
        case "spawn":
            reply = await client.spawn(
                args.prompt, model=args.model, system_prompt=args.system_prompt
            )
        case "send":
            reply = await client.send(args.session_id, args.prompt)
        case "wait":
            reply = await client.wait(args.session_id, args.timeout)
        case "get":
            reply = await client.get(args.session_id)
        case "children":
            return {"sessions": [s.model_dump(mode="json") for s in await client.children()]}
        case "stop":
            reply = await client.stop(args.session_id)
        case _:  # argparse refuses unknown commands first
            raise AssertionError(args.command)
    return reply.model_dump(mode="json")


async def _main(settings: AgentSettings, args: argparse.Namespace) -> Any:
    token = read_token_file(settings.token_file) or settings.env_token
    if token is None:
        raise GatewayError(
            None,
            "no_session_token",
            f"no token in {settings.token_file} and {ENV_SESSION_TOKEN} is not set",
        )
    async with GatewayClient(settings.gateway_url, settings.session_id, lambda: token) as client:
        return await _run(client, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = AgentSettings.from_env()
    except KeyError as exc:
        print(f"error: environment: {exc.args[0]} is not set", file=sys.stderr)
        return EXIT_USAGE
    try:
        output = asyncio.run(_main(settings, args))
    except GatewayError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_GATEWAY_ERROR
    json.dump(output, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
