"""One-shot execution: ``POST /execute`` runs one prompt in a session of its own, streams the
run as server-sent events, and removes the session (a persistent workspace saved first)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from gateway.api import sse
from gateway.api.sessions import CREATED_RESPONSES
from gateway.deps import CurrentUser, ServicesDep
from gateway.schemas import ErrorResponse, ExecuteRequest, workspace_choice
from gateway.services.execute import ExecuteService, Run

router = APIRouter(tags=["execute"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "text/event-stream: every event of the run's session as on its "
        "WebSocket (`event:` the source, `id:` the cursor, `data:` the envelope), the CLI's "
        "`result` last. The stream ends once the session is stopped and deleted. Errors after "
        "the stream began (turn_timeout, turn_failed, session_not_running, workspace_unsaved) "
        "are a last `event: error`.",
        "content": {"text/event-stream": {}},
    },
    403: {"model": ErrorResponse, "description": "session_token_not_allowed"},
    413: CREATED_RESPONSES[413],
    429: CREATED_RESPONSES[429],
    502: {"model": ErrorResponse, "description": "store_error"},
    503: {"model": ErrorResponse, "description": "The session's container could not start."},
}


@router.post("/execute", response_class=EventSourceResponse, responses=_RESPONSES)
async def execute(
    body: ExecuteRequest, principal: CurrentUser, services: ServicesDep
) -> EventSourceResponse:
    """Run ``prompt`` once in a new session and stream everything it does; then the session
    is stopped (its persistent workspace saved) and deleted, its container removed. A client
    that disconnects mid-run ends the run the same way."""
    run = await services.execute.start(
        principal.owner,
        body.prompt,
        body.config,
        workspace_choice(body.workspace),
        body.timeout or services.settings.chat_timeout_default,
    )
    return EventSourceResponse(
        sse.messages(services.execute.events(run)),
        ping=sse.PING_SECONDS,
        # Runs after the response, even when the client left before the stream started.
        background=BackgroundTask(_abandon, services.execute, run),
    )


async def _abandon(execute: ExecuteService, run: Run) -> None:
    execute.ensure_cleanup(run)
