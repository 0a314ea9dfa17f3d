"""Request and response bodies of the REST API: the classes are the SDK's (``ccd/models.py``,
one module for both sides, so the two cannot drift); here are only what the gateway adds, the
constructors from its rows and the workspace choice a request names."""

from __future__ import annotations

import uuid
from typing import Any

from ccd.models import (
    MAX_PROMPT_CHARS,
    RESERVED_WORKSPACE_PREFIX,
    WORKSPACE_NAME,
    ChatAccepted,
    ChatRequest,
    ChatResponse,
    ChildWorkspace,
    CreateSessionRequest,
    EphemeralWorkspace,
    ErrorBody,
    ErrorResponse,
    ExecuteRequest,
    FileEntry,
    FileList,
    Health,
    InheritWorkspace,
    InterruptResponse,
    PersistentWorkspace,
    Readiness,
    RootWorkspace,
    SaveOut,
    SessionList,
    SessionOut,
    SessionStatus,
    SessionToken,
    SessionTree,
    SessionWorkspace,
    SpawnRequest,
    TurnList,
    TurnOut,
    TurnStatus,
    UsageFigures,
    WaitRequest,
    WaitResponse,
    WorkspaceList,
    WorkspaceOut,
)
from gateway.db.models import SessionRow, TurnRow, WorkspaceKind, WorkspaceRow
from gateway.services.trees import TreeNode
from gateway.services.workspaces import MODE_RO, WorkspaceChoice

__all__ = [
    "MAX_PROMPT_CHARS",
    "RESERVED_WORKSPACE_PREFIX",
    "WORKSPACE_NAME",
    "ChatAccepted",
    "ChatRequest",
    "ChatResponse",
    "ChildWorkspace",
    "CreateSessionRequest",
    "EphemeralWorkspace",
    "ErrorBody",
    "ErrorResponse",
    "ExecuteRequest",
    "FileEntry",
    "FileList",
    "Health",
    "InheritWorkspace",
    "InterruptResponse",
    "PersistentWorkspace",
    "Readiness",
    "RootWorkspace",
    "SaveOut",
    "SessionList",
    "SessionOut",
    "SessionToken",
    "SessionTree",
    "SessionWorkspace",
    "SpawnRequest",
    "TurnList",
    "TurnOut",
    "UsageFigures",
    "WaitRequest",
    "WaitResponse",
    "WorkspaceList",
    "WorkspaceOut",
    "session_out",
    "session_tree",
    "turn_out",
    "usage_figures",
    "workspace_choice",
    "workspace_out",
]


def workspace_choice(
    workspace: EphemeralWorkspace | PersistentWorkspace | InheritWorkspace,
) -> WorkspaceChoice:
    """What the session service makes of a request's ``workspace``."""
    if isinstance(workspace, PersistentWorkspace):
        return WorkspaceChoice(type="persistent", name=workspace.id, read_only=workspace.read_only)
    return WorkspaceChoice(type=workspace.type)


def session_workspace(row: SessionRow) -> SessionWorkspace | None:
    if row.workspace_name is None:
        return None
    own = row.workspace_name.startswith(RESERVED_WORKSPACE_PREFIX)
    return SessionWorkspace(
        id=row.workspace_name,
        type="ephemeral" if own else "persistent",
        read_only=row.workspace_mode == MODE_RO,
        unsaved=row.workspace_dirty,
    )


def usage_figures(figures: Any) -> UsageFigures:
    """From anything with those attributes (a session row, a tree's totals, a sum)."""
    return UsageFigures(
        requests=figures.requests,
        input_tokens=figures.input_tokens,
        output_tokens=figures.output_tokens,
        cache_creation_input_tokens=figures.cache_creation_input_tokens,
        cache_read_input_tokens=figures.cache_read_input_tokens,
        cost_usd=float(figures.cost_usd),
    )


def _session_fields(row: SessionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "owner": row.owner,
        "parent_id": row.parent_id,
        "root_id": row.root_id,
        "depth": row.depth,
        "status": SessionStatus(row.status),
        "image": row.image,
        "config": row.config,
        "workspace": session_workspace(row),
        "container_id": row.container_id,
        "current_turn_id": row.current_turn_id,
        "exit_code": row.exit_code,
        "failure_reason": row.failure_reason,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "last_activity_at": row.last_activity_at,
        "stopped_at": row.stopped_at,
        "usage": usage_figures(row),
    }


def session_out(row: SessionRow) -> SessionOut:
    return SessionOut(**_session_fields(row))


def turn_out(row: TurnRow) -> TurnOut:
    return TurnOut(
        id=row.id,
        session_id=row.session_id,
        seq=row.seq,
        prompt=row.prompt,
        status=TurnStatus(row.status),
        result_text=row.result_text,
        is_error=row.is_error,
        error=row.error,
        cost_usd=row.cost_usd,
        usage=row.usage,
        duration_ms=row.duration_ms,
        num_turns=row.num_turns,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def session_tree(node: TreeNode) -> SessionTree:
    return SessionTree(
        **_session_fields(node.session),
        last_turn=turn_out(node.last_turn) if node.last_turn else None,
        children=[session_tree(child) for child in node.children],
    )


def workspace_out(row: WorkspaceRow, sessions: list[uuid.UUID]) -> WorkspaceOut:
    return WorkspaceOut(
        id=row.name,
        type="ephemeral" if row.kind == WorkspaceKind.EPHEMERAL else "persistent",
        size_bytes=row.size_bytes,
        file_count=row.file_count,
        save_count=row.save_count,
        last_saved_at=row.last_saved_at,
        created_at=row.created_at,
        sessions=sessions,
    )
