"""A running session's files, live in its container; saving its workspace on request."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from gateway.api.params import FilePath, PathPrefix
from gateway.api.workspaces import OCTAL_MODE, UPLOAD_BODY
from gateway.db.models import ACTIVE_STATUSES, SessionRow
from gateway.deps import OwnedSession, ServicesDep
from gateway.error_codes import ErrorCode
from gateway.errors import Conflict, SessionNotRunning
from gateway.schemas import ErrorResponse, FileEntry, FileList, SaveOut
from gateway.services.session_files import LiveEntry
from gateway.services.workspaces import MODE_RW

router = APIRouter(
    prefix="/sessions",
    tags=["session files"],
    responses={
        401: {"model": ErrorResponse},
        404: {"model": ErrorResponse, "description": "session_not_found or file_not_found"},
        409: {"model": ErrorResponse, "description": "session_not_running"},
        422: {"model": ErrorResponse, "description": "unsafe_path, not_a_file"},
    },
)


def _container(session: SessionRow) -> str:
    if session.status not in ACTIVE_STATUSES or not session.container_id:
        raise SessionNotRunning(
            f"session {session.id} is {session.status}: its live files are gone; its saved "
            "workspace is under /api/v1/workspaces"
        )
    return session.container_id


def _entry(entry: LiveEntry) -> FileEntry:
    return FileEntry(
        path=entry.path,
        type=entry.kind,  # type: ignore[arg-type]
        size=entry.size,
        mode=f"{entry.mode:04o}",
        mtime=entry.mtime,
    )


@router.post(
    "/{session_id}/workspace/snapshot",
    response_model=SaveOut,
    responses={413: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def snapshot(session: OwnedSession, services: ServicesDep) -> SaveOut:
    """Save the session's workspace now (only what changed is uploaded)."""
    _container(session)
    if session.workspace_mode != MODE_RW:
        raise Conflict(
            f"session {session.id} has a read-only copy of its workspace; it is never saved",
            code=ErrorCode.WORKSPACE_READ_ONLY,
        )
    stats = await services.workspaces.save(session, "request")
    if stats is None:
        raise Conflict(
            f"session {session.id} has no workspace to save", code=ErrorCode.NO_WORKSPACE
        )
    return SaveOut(**vars(stats))


@router.get("/{session_id}/files", response_model=FileList)
async def list_live_files(
    prefix: PathPrefix,
    session: OwnedSession,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> FileList:
    """Entries below ``prefix`` in the running container's workspace."""
    entries, truncated = await services.live_files.list(_container(session), prefix, limit)
    return FileList(files=[_entry(e) for e in entries], truncated=truncated)


@router.get(
    "/{session_id}/files/{path:anypath}",
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_live_file(
    path: FilePath, session: OwnedSession, services: ServicesDep
) -> StreamingResponse:
    """A file of the running container, streamed."""
    size, chunks = await services.live_files.download(_container(session), path)
    return StreamingResponse(
        chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )


@router.put(
    "/{session_id}/files/{path:anypath}",
    response_model=FileEntry,
    status_code=status.HTTP_201_CREATED,
    responses={413: {"model": ErrorResponse}},
    openapi_extra=UPLOAD_BODY,
)
async def upload_live_file(
    path: FilePath,
    session: OwnedSession,
    request: Request,
    services: ServicesDep,
    mode: Annotated[str, Query(pattern=OCTAL_MODE)] = "0644",
) -> FileEntry:
    """Write the request body into the running container (directories are created)."""
    entry = await services.live_files.upload(
        _container(session), path, request.stream(), int(mode, 8)
    )
    return _entry(entry)


@router.delete("/{session_id}/files/{path:anypath}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_live_file(
    path: FilePath, session: OwnedSession, services: ServicesDep
) -> Response:
    """Delete a file, a link (not its target) or a directory tree in the running container."""
    await services.live_files.remove(_container(session), path)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
