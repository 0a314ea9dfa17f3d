"""How the command line shows things: for people (rich, colour only on a terminal, NO_COLOR
respected) or as JSON (``--json``: one document, or one line per event for streams)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from ccd.models import Event, FileEntry, SessionOut, SessionTree, UsageTotals, WorkspaceOut

_LINE = 120  # summaries are cut to this many characters


def _short(text: str, limit: int = _LINE) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


class Output:
    """Where a command writes: ``out`` (stdout) for results, ``err`` (stderr) for messages."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    # -- machine-readable ---------------------------------------------------------------------

    def json(self, value: Any) -> None:
        """One JSON document (a model, a list of models, or plain data) on one line."""
        if isinstance(value, BaseModel):
            text = value.model_dump_json()
        elif isinstance(value, list) and all(isinstance(v, BaseModel) for v in value):
            text = "[" + ",".join(v.model_dump_json() for v in value) + "]"
        else:
            text = json.dumps(value, separators=(",", ":"), default=str)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def note(self, message: str) -> None:
        """A message for the person at the terminal (stderr: never mixed into results)."""
        self.err.print(f"[dim]{escape(message)}[/]")

    # -- sessions -----------------------------------------------------------------------------

    def sessions(self, sessions: Sequence[SessionOut]) -> None:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("ID", "STATUS", "CREATED", "COST", "WORKSPACE", "PARENT"):
            table.add_column(column, no_wrap=True)
        for s in sessions:
            table.add_row(
                str(s.id),
                _status(s.status),
                _ago(s.created_at),
                _money(s.usage.cost_usd),
                s.workspace.id if s.workspace else "-",
                str(s.parent_id) if s.parent_id else "-",
            )
        self.out.print(table)

    def session(self, s: SessionOut) -> None:
        rows = {
            "id": str(s.id),
            "status": _status(s.status),
            "owner": escape(s.owner),
            "parent": str(s.parent_id or "-"),
            "depth": str(s.depth),
            "workspace": escape(s.workspace.id) if s.workspace else "-",
            "turn": str(s.current_turn_id or "-"),
            "created": s.created_at.isoformat(),
            "cost": _money(s.usage.cost_usd),
            "model calls": str(s.usage.requests),
        }
        if s.failure_reason:
            rows["failure"] = f"[red]{escape(s.failure_reason)}[/]"
        if s.config:
            rows["config"] = escape(json.dumps(s.config))
        for key, value in rows.items():
            self.out.print(f"[bold]{key:>12}[/]  {value}")

    def tree(self, root: SessionTree) -> None:
        def label(node: SessionTree) -> str:
            last = node.last_turn.result_text if node.last_turn else None
            tail = f"  [dim]{escape(_short(last, 60))}[/]" if last else ""
            return f"{node.id} {_status(node.status)} {_money(node.usage.cost_usd)}{tail}"

        def add(branch: Tree, node: SessionTree) -> None:
            for child in node.children:
                add(branch.add(label(child)), child)

        top = Tree(label(root))
        add(top, root)
        self.out.print(top)

    def usage(self, rows: dict[str, UsageTotals]) -> None:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("", "MODEL", "CALLS", "INPUT", "OUTPUT", "CACHE W", "CACHE R", "COST"):
            table.add_column(column, no_wrap=True)
        for name, totals in rows.items():
            table.add_row(name, "all", *_figures(totals))
            for model, figures in sorted(totals.models.items()):
                table.add_row("", escape(model), *_figures(figures))
        self.out.print(table)

    def files(self, entries: Sequence[FileEntry]) -> None:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("MODE", "SIZE", "MODIFIED", "PATH"):
            table.add_column(column, no_wrap=True)
        for e in entries:
            path = escape(e.path) + ("/" if e.type == "dir" else "")
            if e.link_target:
                path += f" -> {escape(e.link_target)}"
            modified = datetime.fromtimestamp(e.mtime, UTC).strftime("%Y-%m-%d %H:%M")
            table.add_row(e.mode, str(e.size), modified, path)
        self.out.print(table)

    def workspaces(self, workspaces: Sequence[WorkspaceOut]) -> None:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("ID", "TYPE", "FILES", "BYTES", "SAVED", "IN USE BY"):
            table.add_column(column, no_wrap=True)
        for w in workspaces:
            saved = _ago(w.last_saved_at) if w.last_saved_at else "never"
            users = ", ".join(str(s) for s in w.sessions) or "-"
            table.add_row(escape(w.id), w.type, str(w.file_count), str(w.size_bytes), saved, users)
        self.out.print(table)

    # -- events -------------------------------------------------------------------------------

    def event(self, event: Event) -> None:
        """One event of a stream: JSON, or a readable line or block."""
        if self.json_mode:
            sys.stdout.write(event.to_json() + "\n")
            sys.stdout.flush()
            return
        if event.source == "claude":
            self._claude(event)
        else:
            self._gateway(event)

    def result(self, event: Event, cost_usd: float | None) -> None:
        """The line that closes a turn: how it ended, how long, what it cost."""
        if self.json_mode:
            return
        data = event.data
        seconds = data.get("duration_ms", 0) / 1000 if data.get("duration_ms") else None
        parts = [f"{data.get('num_turns')} model turns" if data.get("num_turns") else None]
        parts += [f"{seconds:.1f} s" if seconds is not None else None, _money(cost_usd)]
        detail = " · ".join(p for p in parts if p)
        if data.get("is_error"):
            reason = escape(_short(str(data.get("result") or data.get("subtype") or "error")))
            self.out.print(f"[bold red]✗ {reason}[/] [dim]{detail}[/]")
        else:
            self.out.print(f"[bold green]✓ done[/] [dim]{detail}[/]")

    def _claude(self, event: Event) -> None:
        data = event.data
        kind = event.type
        if kind == "assistant":
            for block in _blocks(data):
                if block.get("type") == "text" and block.get("text"):
                    self.out.print(escape(str(block["text"])))
                elif block.get("type") == "tool_use":
                    name = escape(str(block.get("name", "tool")))
                    summary = escape(_tool_summary(block.get("input")))
                    self.out.print(f"[yellow]→ {name}[/] {summary}")
        elif kind == "user":
            for block in _blocks(data):
                if block.get("type") == "tool_result":
                    self._tool_result(block)
        elif kind == "system" and data.get("subtype") == "init":
            self.out.print(f"[dim]· claude {escape(str(data.get('model', '')))}[/]")

    def _tool_result(self, block: dict[str, Any]) -> None:
        content = block.get("content")
        if isinstance(content, list):
            text = "\n".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        else:
            text = str(content or "")
        lines = text.strip().splitlines()
        first = escape(_short(lines[0])) if lines else "(no output)"
        more = f" [dim](+{len(lines) - 1} lines)[/]" if len(lines) > 1 else ""
        if block.get("is_error"):
            self.out.print(f"[red]← {first}[/]{more}")
        else:
            self.out.print(f"[green]←[/] [dim]{first}[/]{more}")

    def _gateway(self, event: Event) -> None:
        data = event.data
        kind = event.type
        if kind == "turn_started":
            self.out.print(f"[bold cyan]» {escape(_short(str(data.get('prompt', ''))))}[/]")
        elif kind == "status":
            reason = f" ({escape(str(data['reason']))})" if data.get("reason") else ""
            self.out.print(f"[dim]· {escape(str(data.get('status')))}{reason}[/]")
        elif kind in ("turn_failed", "error", "wrapper_fatal", "workspace_save_failed"):
            detail = data.get("reason") or data.get("message") or data.get("error") or ""
            self.out.print(f"[bold red]✗ {kind}: {escape(_short(str(detail)))}[/]")
        elif kind == "gap":
            self.out.print(
                f"[bold yellow]! events after {data.get('after')} are gone; the stream goes "
                f"on from {data.get('first_available')} ({escape(str(data.get('reason')))})[/]"
            )
        elif kind == "workspace_saved":
            self.out.print(f"[dim]· workspace {escape(str(data.get('workspace')))} saved[/]")
        elif kind == "budget_exceeded":
            self.out.print("[bold yellow]! the spawn tree's model budget is spent[/]")
        elif kind.startswith("child_"):
            self.out.print(f"[dim]· {kind} {data.get('child_id')}[/]")
        elif kind == "interrupt_sent":
            self.out.print("[dim]· interrupt sent[/]")


def _blocks(data: dict[str, Any]) -> list[dict[str, Any]]:
    message = data.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _tool_summary(arguments: Any) -> str:
    """The gist of a tool call: its command, file or pattern, else its arguments."""
    if isinstance(arguments, dict):
        for key in ("command", "file_path", "path", "pattern", "url", "prompt"):
            if isinstance(arguments.get(key), str):
                return _short(arguments[key])
    return _short(json.dumps(arguments, separators=(",", ":")))


def _figures(figures: Any) -> list[str]:
    return [
        str(figures.requests),
        str(figures.input_tokens),
        str(figures.output_tokens),
        str(figures.cache_creation_input_tokens),
        str(figures.cache_read_input_tokens),
        _money(figures.cost_usd),
    ]


_STATUS_STYLE = {
    "starting": "yellow",
    "ready": "green",
    "busy": "cyan",
    "stopping": "yellow",
    "stopped": "dim",
    "failed": "red",
}


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'default')}]{status}[/]"


def _ago(when: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
