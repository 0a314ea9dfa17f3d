"""Spawn trees: a session starts children (each in its own container) and looks at them."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from gateway.api.sessions import CREATED_RESPONSES, IdempotencyKeyHeader, created
from gateway.deps import CurrentPrincipal, OwnedSession, ServicesDep
from gateway.schemas import (
    ErrorResponse,
    SessionList,
    SessionOut,
    SessionTree,
    SpawnRequest,
    session_out,
    session_tree,
    workspace_choice,
)
from gateway.services import idempotency

router = APIRouter(
    prefix="/sessions",
    tags=["spawn trees"],
    responses={
        401: {"model": ErrorResponse},
        404: {"model": ErrorResponse, "description": "No such session for this caller."},
    },
)


@router.post(
    "/{session_id}/spawn",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionOut,
    responses={
        **CREATED_RESPONSES,
        403: {
            "model": ErrorResponse,
            "description": "A recursion limit (spawn_depth_exceeded, children_limit_reached, "
            "tree_limit_reached), or workspace_not_allowed (a session token asked for a "
            "workspace its tree may not give)",
        },
        409: {"model": ErrorResponse, "description": "session_not_running"},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def spawn(
    body: SpawnRequest,
    session: OwnedSession,
    principal: CurrentPrincipal,
    services: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> SessionOut:
    """Start a child session running ``prompt``: same owner, one level deeper, the parent's
    config unless overridden. With a user token (the owner) or the session's own token; a
    session token may give the child only its own kind of workspace (``ephemeral``,
    ``inherit``) or a read-only copy of a persistent workspace its tree holds."""
    key = idempotency.parse(idempotency_key, idempotency.spawn_scope(session.id), body)
    result = await services.sessions.spawn(
        session.id,
        body.prompt,
        body.config,
        workspace_choice(body.workspace),
        idempotency=key,
        by_session=principal.is_session,
    )
    return created(result, response)


@router.get("/{session_id}/children", response_model=SessionList)
async def children(session: OwnedSession, services: ServicesDep) -> SessionList:
    """Direct children, oldest first."""
    rows = await services.trees.children(session.id)
    return SessionList(sessions=[session_out(row) for row in rows], next_cursor=None)


@router.get("/{session_id}/tree", response_model=SessionTree)
async def tree(session: OwnedSession, services: ServicesDep) -> SessionTree:
    """The session and all its descendants, with statuses and last results."""
    return session_tree(await services.trees.subtree(session))
