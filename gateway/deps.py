"""FastAPI dependencies: services, the caller, and the sessions the caller may touch."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.db.models import SessionRow
from gateway.errors import SessionNotFound, SessionTokenNotAllowed
from gateway.events.bus import EventBus
from gateway.events.hub import EventHub
from gateway.logging_setup import bind_session
from gateway.metrics import Metrics
from gateway.model.proxy import ModelProxy
from gateway.model.usage import UsageService
from gateway.ratelimit import RateLimiter
from gateway.runtime import SessionRuntime
from gateway.security import Principal, verify_credentials
from gateway.services.execute import ExecuteService
from gateway.services.session_files import LiveFiles
from gateway.services.sessions import SessionService
from gateway.services.termination import Terminator
from gateway.services.trees import TreeService
from gateway.services.turns import TurnService
from gateway.services.workspace_files import StoredFiles
from gateway.services.workspaces import WorkspaceService


@dataclass(frozen=True)
class Services:
    """Everything the routes use, built once by the lifespan."""

    settings: Settings
    metrics: Metrics
    db: async_sessionmaker[AsyncSession]
    runtime: SessionRuntime
    bus: EventBus
    hub: EventHub
    sessions: SessionService
    terminator: Terminator
    turns: TurnService
    trees: TreeService
    workspaces: WorkspaceService
    files: StoredFiles
    live_files: LiveFiles
    rate_limiter: RateLimiter
    model_proxy: ModelProxy
    usage: UsageService
    execute: ExecuteService


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def authenticate(
    services: Services, authorization: str | None, query_token: str | None = None
) -> Principal:
    """The caller of a request. A session token is refused once its session has ended."""
    principal = verify_credentials(services.settings, authorization, query_token)
    if principal.session_id is not None:
        await services.sessions.require_running(principal.session_id)
    return principal


async def current_principal(
    services: ServicesDep,
    # Declared as the schema's bearer scheme (gateway/api/openapi.py), not as a parameter.
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    return await authenticate(services, authorization)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def current_user(principal: CurrentPrincipal) -> Principal:
    """Routes only a user may call (list, create, delete): not a session's own token."""
    if principal.is_session:
        raise SessionTokenNotAllowed(
            "this operation needs a user token; a session token may only act on its own "
            "session and its descendants (get, chat, wait, spawn, stop, ...)"
        )
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def may_access(principal: Principal, session: SessionRow) -> bool:
    """The owner may touch all their sessions; a session token only itself and its
    descendants."""
    if session.owner != principal.owner:
        return False
    return principal.session_id is None or (
        session.id == principal.session_id or principal.session_id in session.path
    )


async def accessible_session(
    session_id: uuid.UUID, principal: CurrentPrincipal, services: ServicesDep
) -> SessionRow:
    """The session named in the path, if the caller may touch it; 404 otherwise (also for
    sessions of other owners and outside a session token's subtree, so ids cannot be probed)."""
    session = await services.sessions.get(session_id)
    if not may_access(principal, session):
        raise SessionNotFound(session_id)
    bind_session(session.id)  # this request's log lines name it
    return session


OwnedSession = Annotated[SessionRow, Depends(accessible_session)]
