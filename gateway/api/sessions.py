"""REST routes of the session lifecycle: create, list, get, chat, interrupt, stop, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from gateway.api import sse
from gateway.cursors import SESSION_CURSOR_PATTERN
from gateway.db.models import SessionStatus
from gateway.deps import CurrentPrincipal, CurrentUser, OwnedSession, ServicesDep
from gateway.error_codes import ErrorCode
from gateway.errors import Conflict, SessionTokenNotAllowed
from gateway.schemas import (
    ChatAccepted,
    ChatRequest,
    ChatResponse,
    CreateSessionRequest,
    ErrorResponse,
    InterruptResponse,
    SessionList,
    SessionOut,
    SessionToken,
    TurnList,
    WaitRequest,
    WaitResponse,
    session_out,
    turn_out,
    workspace_choice,
)
from gateway.security import mint_session_token
from gateway.services import idempotency
from gateway.services.sessions import Created

router = APIRouter(
    prefix="/sessions",
    tags=["sessions"],
    responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such session for this caller."}
}

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        description="Makes the request safe to retry: the same key with the same body answers "
        "the session the first request made (one session, one container), with "
        f"`{idempotency.REPLAYED_HEADER}: true`; with another body, 422 "
        "`idempotency_key_reused`. Kept per owner for IDEMPOTENCY_TTL seconds (at least a day).",
        json_schema_extra={
            "minLength": 1,
            "maxLength": idempotency.MAX_KEY_LENGTH,
            "pattern": idempotency.KEY_PATTERN,
        },
    ),
]

# What create and spawn may answer besides their session (documented in the schema).
CREATED_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {
        "description": "The new session, or (a replayed Idempotency-Key) the session the first "
        "request made, as it is now.",
        "headers": {
            idempotency.REPLAYED_HEADER: {
                "description": "`true` when an earlier request with this Idempotency-Key made "
                "the session and this one changed nothing.",
                "schema": {"type": "string", "enum": ["true"]},
            }
        },
    },
    413: {"model": ErrorResponse, "description": "request_too_large"},
    429: {
        "model": ErrorResponse,
        "description": "owner_limit_reached, engine_at_capacity, rate_limited; retry after "
        "`Retry-After` seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    },
}


def created(result: Created, response: Response) -> SessionOut:
    """The session of a create or spawn, marking a replay in the response's headers."""
    if result.replayed:
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    return session_out(result.session)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionOut,
    responses={
        **CREATED_RESPONSES,
        403: {"model": ErrorResponse, "description": "session_token_not_allowed"},
        503: {"model": ErrorResponse, "description": "The container could not start."},
    },
)
async def create_session(
    body: CreateSessionRequest,
    principal: CurrentUser,
    services: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> SessionOut:
    """Start a session in its own container. It is ``starting`` until the CLI is ready; a
    ``prompt`` given here (or sent by chat meanwhile) runs as soon as it is."""
    key = idempotency.parse(idempotency_key, idempotency.CREATE_SCOPE, body)
    result = await services.sessions.create(
        principal.owner, body.config, body.prompt, workspace_choice(body.workspace), idempotency=key
    )
    return created(result, response)


@router.get("", response_model=SessionList)
async def list_sessions(
    principal: CurrentUser,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(
            description="The `next_cursor` of the previous page.",
            json_schema_extra={"pattern": SESSION_CURSOR_PATTERN},
        ),
    ] = None,
    status_filter: Annotated[SessionStatus | None, Query(alias="status")] = None,
) -> SessionList:
    """The caller's sessions, newest first."""
    rows, next_cursor = await services.sessions.list(principal.owner, limit, cursor, status_filter)
    return SessionList(sessions=[session_out(row) for row in rows], next_cursor=next_cursor)


@router.get("/{session_id}", response_model=SessionOut, responses=_NOT_FOUND)
async def get_session(session: OwnedSession) -> SessionOut:
    return session_out(session)


@router.get("/{session_id}/turns", response_model=TurnList, responses=_NOT_FOUND)
async def list_turns(session: OwnedSession, services: ServicesDep) -> TurnList:
    """Every chat turn of the session, oldest first."""
    rows = await services.sessions.turns(session.id)
    return TurnList(turns=[turn_out(row) for row in rows])


@router.post(
    "/{session_id}/chat",
    response_model=ChatResponse,
    responses={
        **_NOT_FOUND,
        200: {
            "description": "The turn's result; with `stream: true`, text/event-stream with one "
            "event per line of the turn, ending with the result.",
            "content": {"text/event-stream": {}},
        },
        202: {"model": ChatAccepted, "description": "`wait: false`: the accepted turn."},
        409: {"model": ErrorResponse, "description": "session_busy or session_not_running"},
        502: {"model": ErrorResponse, "description": "turn_failed: the CLI died mid-turn"},
        504: {"model": ErrorResponse, "description": "turn_timeout: the turn goes on"},
    },
)
async def chat(
    body: ChatRequest, session: OwnedSession, services: ServicesDep
) -> ChatResponse | EventSourceResponse | JSONResponse:
    """Send one user turn and wait for its result, or stream it as server-sent events, or
    (``wait: false``) answer 202 with the accepted turn at once."""
    timeout = body.timeout or services.settings.chat_timeout_default
    turn, started = await services.turns.begin(session.id, body.prompt)
    if not body.wait:
        accepted = ChatAccepted(turn=turn_out(turn))
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202)
    if body.stream:
        events = services.turns.events(session.id, turn, started, timeout)
        return EventSourceResponse(sse.messages(events), ping=sse.PING_SECONDS)
    result, recorded = await services.turns.wait(session.id, turn, started, timeout)
    return ChatResponse(result=result, turn=turn_out(recorded))


@router.post(
    "/{session_id}/interrupt",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=InterruptResponse,
    responses={**_NOT_FOUND, 409: {"model": ErrorResponse, "description": "no_running_turn"}},
)
async def interrupt(session: OwnedSession, services: ServicesDep) -> InterruptResponse:
    """Abort the running turn; it ends with a result of subtype ``error_during_execution``."""
    turn_id = await services.turns.interrupt(session.id)
    return InterruptResponse(turn_id=turn_id)


@router.post(
    "/{session_id}/wait",
    response_model=WaitResponse,
    responses={
        **_NOT_FOUND,
        409: {"model": ErrorResponse, "description": "wait_on_self"},
        504: {"model": ErrorResponse, "description": "wait_timeout"},
    },
)
async def wait_for_session(
    body: WaitRequest, session: OwnedSession, principal: CurrentPrincipal, services: ServicesDep
) -> WaitResponse:
    """Wait until the session runs no turn (or has ended); answers its status and the result
    of its last finished turn. A session cannot wait for itself (409 ``wait_on_self``)."""
    if principal.session_id == session.id:
        raise Conflict("a session cannot wait for its own turn to end", code=ErrorCode.WAIT_ON_SELF)
    row, turn = await services.turns.wait_idle(session.id, body.timeout)
    return WaitResponse(
        session=session_out(row),
        turn=turn_out(turn) if turn else None,
        result=turn.result_text if turn else None,
    )


@router.post(
    "/{session_id}/token",
    response_model=SessionToken,
    responses={**_NOT_FOUND, 403: {"model": ErrorResponse}},
)
async def session_token(
    session: OwnedSession, principal: CurrentPrincipal, services: ServicesDep
) -> SessionToken:
    """A fresh capability token for the session: its container refreshes its own with it, and
    the owner may mint one. Valid only while the session runs."""
    if principal.session_id not in (None, session.id):
        raise SessionTokenNotAllowed("a session token may only refresh itself")
    await services.sessions.require_running(session.id)
    issued = mint_session_token(
        services.settings,
        session.id,
        session.root_id,
        session.owner,
        budgeted=await services.sessions.tree_budgeted(session.root_id),
    )
    return SessionToken(
        token=issued.token, expires_at=issued.expires_at, expires_in=issued.expires_in
    )


@router.post(
    "/{session_id}/resume",
    response_model=SessionOut,
    responses={
        **_NOT_FOUND,
        409: {"model": ErrorResponse, "description": "session_not_resumable, workspace_in_use"},
        429: CREATED_RESPONSES[429],
        503: {"model": ErrorResponse, "description": "workspace_unsaved, image_not_found"},
    },
)
async def resume_session(session: OwnedSession, services: ServicesDep) -> SessionOut:
    """Start a stopped or failed session again in a fresh container, with its workspace and
    its conversation restored: the model sees the earlier turns; the stream's cursor goes on."""
    return session_out(await services.sessions.resume(session.id))


@router.post("/{session_id}/stop", response_model=SessionOut, responses=_NOT_FOUND)
async def stop_session(session: OwnedSession, services: ServicesDep) -> SessionOut:
    """Stop the session and its whole subtree, deepest first: interrupt, SIGTERM, SIGKILL after
    the grace period; containers are removed. Stopping an ended session returns it unchanged."""
    return session_out(await services.terminator.stop(session.id))


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND)
async def delete_session(
    session: OwnedSession, services: ServicesDep, _user: CurrentUser
) -> Response:
    """Stop the session and its subtree if needed and remove their records and events.
    Needs a user token."""
    await services.terminator.delete(session.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
