"""FastAPI dependencies: settings, services, the caller and the session they may touch."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.db.models import SessionRow
from gateway.errors import Unauthorized
from gateway.events.bus import EventBus
from gateway.events.hub import EventHub
from gateway.runtime import SessionRuntime
from gateway.security import Principal, authenticate_user_token, bearer_token
from gateway.services.sessions import SessionService
from gateway.services.turns import TurnService


@dataclass(frozen=True)
class Services:
    """Everything the routes use, built once by the lifespan."""

    settings: Settings
    db: async_sessionmaker[AsyncSession]
    runtime: SessionRuntime
    bus: EventBus
    hub: EventHub
    sessions: SessionService
    turns: TurnService


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def authenticate(
    settings: Settings, authorization: str | None, query_token: str | None = None
) -> Principal:
    token = bearer_token(authorization) or query_token
    if not token:
        raise Unauthorized("missing bearer token", code="missing_token")
    return authenticate_user_token(settings, token)


async def current_principal(
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    return authenticate(services.settings, authorization)


CurrentUser = Annotated[Principal, Depends(current_principal)]


async def owned_session(
    session_id: uuid.UUID, principal: CurrentUser, services: ServicesDep
) -> SessionRow:
    """The session named in the path, if the caller owns it; 404 otherwise (also for sessions
    of other owners, so ids cannot be probed)."""
    return await services.sessions.get(session_id, owner=principal.owner)


OwnedSession = Annotated[SessionRow, Depends(owned_session)]
