"""Stored workspaces: list, inspect, delete; their files; tar.gz in and out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from gateway.api.params import AfterPath, FilePath, PathPrefix
from gateway.db.models import WorkspaceRow
from gateway.deps import CurrentUser, ServicesDep
from gateway.schemas import (
    WORKSPACE_NAME,
    ErrorResponse,
    FileEntry,
    FileList,
    WorkspaceList,
    WorkspaceOut,
    workspace_out,
)
from gateway.workspaces.manifest import Entry

router = APIRouter(
    prefix="/workspaces",
    tags=["workspaces"],
    responses={
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse, "description": "session_token_not_allowed"},
        503: {"model": ErrorResponse, "description": "store_unavailable"},
    },
)

_NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorResponse, "description": "workspace_not_found or file_not_found"}
}
_IN_USE: dict[int | str, dict[str, object]] = {
    409: {"model": ErrorResponse, "description": "workspace_in_use"}
}
OCTAL_MODE = r"^[0-7]{3,4}$"
# Uploads create the workspace on first use, so its name is validated there. File routes take
# the path (``FilePath``) first: a refused path answers 422 before any lookup or creation.
NewWorkspaceName = Annotated[str, Path(pattern=WORKSPACE_NAME)]
# Upload bodies are streamed, not parsed by FastAPI: the schema says what they are.
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "description": "The file's bytes (any Content-Type is taken as is).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
ARCHIVE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A tar archive, gzip-compressed, whose members stay inside the workspace.",
        "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
    }
}


async def owned_workspace(
    workspace_id: str, principal: CurrentUser, services: ServicesDep
) -> WorkspaceRow:
    """The caller's workspace of that name; 404 for anyone else's, exactly like a missing one."""
    return await services.files.get(principal.owner, workspace_id)


OwnedWorkspace = Annotated[WorkspaceRow, Depends(owned_workspace)]


def file_entry(entry: Entry) -> FileEntry:
    return FileEntry(
        path=entry.path,
        type=entry.kind,
        size=entry.size,
        mode=f"{entry.mode:04o}",
        mtime=entry.mtime,
        link_target=entry.link_target,
        sha256=entry.sha256,
    )


@router.get("", response_model=WorkspaceList)
async def list_workspaces(principal: CurrentUser, services: ServicesDep) -> WorkspaceList:
    """The caller's workspaces: persistent ones and sessions' own."""
    rows = await services.files.all_of(principal.owner)
    return WorkspaceList(workspaces=[workspace_out(row, used) for row, used in rows])


@router.get("/{workspace_id}", response_model=WorkspaceOut, responses=_NOT_FOUND)
async def get_workspace(workspace: OwnedWorkspace, services: ServicesDep) -> WorkspaceOut:
    """Size, entry count, last save, and the sessions using it."""
    return workspace_out(workspace, await services.files.holders(workspace))


@router.delete(
    "/{workspace_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_NOT_FOUND, **_IN_USE},
)
async def delete_workspace(workspace: OwnedWorkspace, services: ServicesDep) -> Response:
    """Delete a persistent workspace and its objects; refused while a session uses it."""
    await services.files.delete(workspace)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{workspace_id}/files", response_model=FileList, responses=_NOT_FOUND)
async def list_files(
    prefix: PathPrefix,
    after: AfterPath,
    workspace: OwnedWorkspace,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> FileList:
    """Entries below ``prefix`` in path order; pass ``next_after`` back as ``after``."""
    entries, next_after = await services.files.entries(workspace, prefix, after, limit)
    return FileList(files=[file_entry(e) for e in entries], next_after=next_after)


@router.get(
    "/{workspace_id}/files/{path:anypath}",
    responses={**_NOT_FOUND, 200: {"content": {"application/octet-stream": {}}}},
)
async def download_file(
    path: FilePath, workspace: OwnedWorkspace, services: ServicesDep
) -> StreamingResponse:
    """A stored file's bytes, streamed."""
    entry, chunks = await services.files.download(workspace, path)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"Content-Length": str(entry.size), "X-Content-SHA256": entry.sha256 or ""},
    )


@router.put(
    "/{workspace_id}/files/{path:anypath}",
    response_model=FileEntry,
    status_code=status.HTTP_201_CREATED,
    responses={**_IN_USE, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    openapi_extra=UPLOAD_BODY,
)
async def upload_file(
    path: FilePath,
    workspace_id: NewWorkspaceName,
    request: Request,
    principal: CurrentUser,
    services: ServicesDep,
    mode: Annotated[str, Query(pattern=OCTAL_MODE)] = "0644",
) -> FileEntry:
    """Store the request body as the file (missing directories are created). Creates the
    workspace on first use. Refused while a session that saves it back is running."""
    workspace = await services.files.get_or_create(principal.owner, workspace_id)
    entry = await services.files.upload(workspace, path, request.stream(), int(mode, 8))
    return file_entry(entry)


@router.delete(
    "/{workspace_id}/files/{path:anypath}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_NOT_FOUND, **_IN_USE},
)
async def delete_file(path: FilePath, workspace: OwnedWorkspace, services: ServicesDep) -> Response:
    """Delete a file, a link, or a directory with everything below it."""
    await services.files.remove(workspace, path)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{workspace_id}/archive",
    responses={**_NOT_FOUND, 200: {"content": {"application/gzip": {}}}},
)
async def download_archive(workspace: OwnedWorkspace, services: ServicesDep) -> StreamingResponse:
    """The workspace as a tar.gz, streamed as it is built."""
    return StreamingResponse(
        await services.files.archive(workspace),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{workspace.name}.tar.gz"'},
    )


@router.post(
    "/{workspace_id}/archive",
    response_model=WorkspaceOut,
    responses={**_IN_USE, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    openapi_extra=ARCHIVE_BODY,
)
async def upload_archive(
    workspace_id: NewWorkspaceName, request: Request, principal: CurrentUser, services: ServicesDep
) -> WorkspaceOut:
    """Replace the workspace's contents with the tar.gz in the body. A member that would
    escape the workspace (``..``, an absolute name, a link out) refuses the whole upload and
    nothing changes. Creates the workspace on first use."""
    workspace = await services.files.get_or_create(principal.owner, workspace_id)
    await services.files.replace_from_archive(workspace, request.stream())
    refreshed = await services.files.get(principal.owner, workspace_id)
    return workspace_out(refreshed, await services.files.holders(refreshed))
