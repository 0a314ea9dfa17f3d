"""``ccd``: the command line of CC-Docker. Configured by CCD_URL and CCD_TOKEN (or --url,
--token). Every command takes --json. Errors are one line on stderr and an exit code:
1 the turn failed, 2 bad usage or configuration, 3 the gateway refused, 4 it cannot be
reached, 130 interrupted."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ccd.aio import AsyncClient, AsyncSession
from ccd.cli import live
from ccd.cli.copy import copy, list_files
from ccd.cli.render import Output
from ccd.errors import ApiError, CcdError, ConnectionFailed, InvalidArgument, SessionEnded
from ccd.transport import ENV_TOKEN, ENV_URL

EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="ccd",
    help="Drive CC-Docker: Claude Code sessions, each in its own container.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

Json = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON lines).")]
SessionId = Annotated[str, typer.Argument(help="A session id.")]


@dataclass
class Settings:
    url: str | None
    token: str | None


@app.callback()
def _options(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(envvar=ENV_URL, help="The gateway, e.g. http://localhost:8000.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar=ENV_TOKEN, help="A user token (JWT).", show_default=False)
    ] = None,
) -> None:
    ctx.obj = Settings(url, token)


def _execute(
    ctx: typer.Context, json_mode: bool, work: Callable[[AsyncClient, Output], Awaitable[int]]
) -> None:
    """Run one command: a client, the work, every failure as one line and an exit code."""
    settings: Settings = ctx.obj
    output = Output(json_mode)
    if not settings.token:
        _fail(output, f"no token: set {ENV_TOKEN} or pass --token", EXIT_USAGE)

    async def main() -> int:
        async with AsyncClient(settings.url, settings.token) as client:
            return await work(client, output)

    try:
        code = asyncio.run(main())
    except ApiError as exc:
        _fail(output, f"{exc.code}: {exc.message}", EXIT_REFUSED)
    except ConnectionFailed as exc:
        _fail(output, str(exc), EXIT_UNREACHABLE)
    except (InvalidArgument, SessionEnded) as exc:
        _fail(output, str(exc), EXIT_USAGE if isinstance(exc, InvalidArgument) else 1)
    except CcdError as exc:
        _fail(output, str(exc), 1)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("CCD_DEBUG"):
            raise
        _fail(output, f"unexpected {type(exc).__name__}: {exc} (CCD_DEBUG=1 shows more)", 1)
    raise typer.Exit(code)


def _fail(output: Output, message: str, code: int) -> None:
    output.err.print(f"[red]ccd: error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def _config(config: str | None, model: str | None) -> dict[str, Any] | None:
    """``--config`` (JSON, or @file) with ``--model`` on top."""
    chosen: dict[str, Any] = {}
    if config:
        text = Path(config[1:]).read_text() if config.startswith("@") else config
        try:
            chosen = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument(f"--config is not JSON: {exc}") from None
    if model:
        chosen["model"] = model
    return chosen or None


def _workspace(name: str | None, read_only: bool) -> dict[str, Any] | None:
    if name is None:
        return None
    return {"type": "persistent", "id": name, "read_only": read_only}


ConfigOpt = Annotated[
    str | None, typer.Option("--config", help="Session config as JSON, or @file.json.")
]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="The model.")]
WorkspaceOpt = Annotated[
    str | None, typer.Option("--workspace", "-w", help="A persistent workspace, by name.")
]
ReadOnlyOpt = Annotated[bool, typer.Option("--read-only", help="A copy never saved back.")]


@app.command()
def create(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="A first turn.")] = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    read_only: ReadOnlyOpt = False,
    idempotency_key: Annotated[str | None, typer.Option(help="Makes a retry safe.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Return once the CLI is up.")] = False,
    json_mode: Json = False,
) -> None:
    """Start a session; prints its id."""

    async def work(client: AsyncClient, output: Output) -> int:
        session = await client.create_session(
            prompt, _config(config, model), _workspace(workspace, read_only), idempotency_key
        )
        if wait:
            await session.wait_until_ready()
        if output.json_mode:
            output.json(session.info)
        else:
            output.out.print(session.id)
        return 0

    _execute(ctx, json_mode, work)


@app.command("ls")
def list_sessions(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only sessions with this status.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many.")] = None,
    json_mode: Json = False,
) -> None:
    """Your sessions, newest first."""

    async def work(client: AsyncClient, output: Output) -> int:
        infos = [s.info for s in await client.list_sessions(status, limit)]
        output.json(infos) if output.json_mode else output.sessions(infos)
        return 0

    _execute(ctx, json_mode, work)


@app.command()
def get(ctx: typer.Context, session_id: SessionId, json_mode: Json = False) -> None:
    """One session."""

    async def work(client: AsyncClient, output: Output) -> int:
        info = (await client.get_session(session_id)).info
        output.json(info) if output.json_mode else output.session(info)
        return 0

    _execute(ctx, json_mode, work)


@app.command()
def chat(
    ctx: typer.Context,
    session_id: SessionId,
    prompt: Annotated[str, typer.Argument(help="The turn; - reads it from stdin.")],
    json_mode: Json = False,
) -> None:
    """Run one turn and show it as it happens. Exit code 1 if it ends in an error."""
    text = sys.stdin.read() if prompt == "-" else prompt
    _execute(ctx, json_mode, lambda c, o: live.chat(c, o, session_id, text))


@app.command()
def attach(
    ctx: typer.Context,
    session_id: SessionId,
    after: Annotated[
        str | None, typer.Option(help="Replay from this cursor (0: everything kept).")
    ] = None,
    json_mode: Json = False,
) -> None:
    """Follow a session live; lines typed are sent as prompts. Ctrl-C interrupts the running
    turn, a second Ctrl-C leaves."""
    _execute(ctx, json_mode, lambda c, o: live.attach(c, o, session_id, after))


@app.command()
def run(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The prompt; - reads it from stdin.")],
    model: ModelOpt = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds the run may take.")] = None,
    json_mode: Json = False,
) -> None:
    """One-shot: a session for this prompt, shown as it runs, removed at the end (a
    persistent workspace is saved first). Exit code 0 on success, 1 if the run failed."""
    text = sys.stdin.read() if prompt == "-" else prompt

    async def work(client: AsyncClient, output: Output) -> int:
        chosen = _workspace(workspace, False)
        return await live.run(client, output, text, _config(config, model), chosen, timeout)

    _execute(ctx, json_mode, work)


@app.command()
def tree(ctx: typer.Context, session_id: SessionId, json_mode: Json = False) -> None:
    """A session and its descendants."""

    async def work(client: AsyncClient, output: Output) -> int:
        root = await (await client.get_session(session_id)).tree()
        output.json(root) if output.json_mode else output.tree(root)
        return 0

    _execute(ctx, json_mode, work)


@app.command()
def usage(
    ctx: typer.Context,
    session_id: Annotated[str | None, typer.Argument(help="A session (default: all).")] = None,
    since: Annotated[datetime | None, typer.Option(help="All yours: from (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="All yours: to (UTC).")] = None,
    json_mode: Json = False,
) -> None:
    """Model usage: a session and its subtree (with its budget), or all of yours."""

    async def work(client: AsyncClient, output: Output) -> int:
        if session_id is None:
            owner = await client.usage(since, until)
            output.json(owner) if output.json_mode else output.usage({"all": owner.usage})
            return 0
        found = await (await client.get_session(session_id)).usage()
        if output.json_mode:
            output.json(found)
        else:
            output.usage({"session": found.session, "tree": found.tree})
            if found.budget is not None:
                output.out.print(f"budget: {found.budget.model_dump_json()}")
        return 0

    _execute(ctx, json_mode, work)


def _print_status(output: Output, session: AsyncSession) -> None:
    """A session as a stop or resume left it: its record, or its id and status."""
    if output.json_mode:
        output.json(session.info)
    else:
        output.out.print(f"{session.id} {session.status}")


@app.command()
def stop(ctx: typer.Context, session_id: SessionId, json_mode: Json = False) -> None:
    """Stop a session and its subtree (files saved, containers removed)."""

    async def work(client: AsyncClient, output: Output) -> int:
        _print_status(output, await (await client.get_session(session_id)).stop())
        return 0

    _execute(ctx, json_mode, work)


@app.command()
def resume(ctx: typer.Context, session_id: SessionId, json_mode: Json = False) -> None:
    """Start a stopped or failed session again (conversation and files restored)."""

    async def work(client: AsyncClient, output: Output) -> int:
        _print_status(output, await (await client.get_session(session_id)).resume())
        return 0

    _execute(ctx, json_mode, work)


@app.command()
def interrupt(ctx: typer.Context, session_id: SessionId, json_mode: Json = False) -> None:
    """Abort the running turn."""

    async def work(client: AsyncClient, output: Output) -> int:
        turn_id = await (await client.get_session(session_id)).interrupt()
        output.json({"turn_id": turn_id}) if output.json_mode else output.out.print(turn_id)
        return 0

    _execute(ctx, json_mode, work)


@app.command("rm")
def remove(
    ctx: typer.Context,
    session_ids: Annotated[list[str], typer.Argument(help="Session ids.")],
    json_mode: Json = False,
) -> None:
    """Delete sessions (and their subtrees) for good."""

    async def work(client: AsyncClient, output: Output) -> int:
        for session_id in session_ids:
            await (await client.get_session(session_id)).delete()
            if not output.json_mode:
                output.out.print(f"{session_id} deleted")
        if output.json_mode:
            output.json({"deleted": session_ids})
        return 0

    _execute(ctx, json_mode, work)


@app.command()
def files(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A session id, or ws:NAME for a workspace.")],
    prefix: Annotated[str, typer.Argument(help="Only entries at or below this path.")] = "",
    json_mode: Json = False,
) -> None:
    """Files of a running session, or of a stored workspace (ws:NAME)."""

    async def work(client: AsyncClient, output: Output) -> int:
        entries = await list_files(client, target, prefix)
        output.json(entries) if output.json_mode else output.files(entries)
        return 0

    _execute(ctx, json_mode, work)


@app.command()
def cp(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="LOCAL, ID:PATH or ws:NAME/PATH (- : stdin).")],
    destination: Annotated[str, typer.Argument(help="LOCAL, ID:PATH or ws:NAME/PATH.")],
    json_mode: Json = False,
) -> None:
    """Copy a file between here and a session (ID:PATH) or a workspace (ws:NAME/PATH).
    ws:NAME alone is the whole workspace as a .tar.gz (downloaded, or uploaded to replace it)."""

    async def work(client: AsyncClient, output: Output) -> int:
        done = await copy(client, source, destination)
        output.json(done) if output.json_mode else output.note(
            f"{done['bytes']} bytes: {source} -> {destination}"
        )
        return 0

    _execute(ctx, json_mode, work)


@app.command()
def workspaces(ctx: typer.Context, json_mode: Json = False) -> None:
    """Your stored workspaces."""

    async def work(client: AsyncClient, output: Output) -> int:
        found = await client.list_workspaces()
        output.json(found) if output.json_mode else output.workspaces(found)
        return 0

    _execute(ctx, json_mode, work)


def main() -> None:
    app()
