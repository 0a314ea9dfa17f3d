"""Every object key of the workspace bucket, built in one place (pure, no I/O).

One bucket holds everything, laid out so that a person browsing the MinIO console sees files
as they are::

    <owner>/<workspace>/<path>                          one object per file
    <owner>/<workspace>/<dir>/                          zero-byte marker of an empty directory
    <owner>/.ccd-staging/<workspace>/<save id>/<path>   a save in progress (see promote)
    <owner>/.ccd-sessions/<session id>/<claude session id>.jsonl   session transcripts

Owners are JWT subjects, so arbitrary strings: ``owner_segment`` turns one into a single safe
key segment. Workspace names start with a letter or digit, so they never collide with the
``.ccd-*`` folders beside them. Keys are at most 1024 bytes of UTF-8 (the S3 limit); a longer
one raises ``KeyTooLong``.
"""

from __future__ import annotations

import re
import string
from urllib.parse import unquote

STAGING_DIR = ".ccd-staging"
SESSIONS_DIR = ".ccd-sessions"
TRANSCRIPT_SUFFIX = ".jsonl"
MAX_KEY_BYTES = 1024

WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Save ids and session ids: uuids in practice; anything that is one plain key segment.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SAFE = frozenset(string.ascii_letters + string.digits + "._@-")


class LayoutError(ValueError):
    """A name or path cannot be turned into a key."""


class KeyTooLong(LayoutError):
    """The key would exceed ``MAX_KEY_BYTES``."""


def owner_segment(owner: str) -> str:
    """The key segment of ``owner``: itself when made of ``[A-Za-z0-9._@-]`` (``alice``,
    ``bob@example.com``), else every other byte of its UTF-8 percent-encoded (``%2F`` for
    ``/``, ``%25`` for ``%``). ``.`` and ``..`` are encoded whole (``%2E``, ``%2E%2E``), so a
    segment is never a path step. The encoding is injective; ``owner_from_segment`` inverts
    it."""
    if not owner:
        raise LayoutError("owner is empty")
    encoded = "".join(
        char if char in _SAFE else "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
        for char in owner
    )
    if encoded in {".", ".."}:
        encoded = "%2E" * len(encoded)
    return encoded


def owner_from_segment(segment: str) -> str:
    """The owner whose ``owner_segment`` is ``segment``."""
    try:
        owner = unquote(segment, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{segment!r} is not an owner segment") from exc
    if not owner or owner_segment(owner) != segment:
        raise LayoutError(f"{segment!r} is not an owner segment")
    return owner


def check_workspace_name(name: str) -> str:
    """``name`` if it is a valid workspace name (callers validate first; this is a backstop)."""
    if not WORKSPACE_NAME.match(name):
        raise LayoutError(f"invalid workspace name {name!r}")
    return name


def _check_id(value: str, what: str) -> str:
    if not _ID.match(value):
        raise LayoutError(f"invalid {what} {value!r}")
    return value


def _check_path(path: str) -> str:
    # Paths arrive normalized (gateway.workspaces.paths); refuse anything that would make a
    # key step outside its prefix all the same.
    if not path or path.startswith("/") or path.endswith("/"):
        raise LayoutError(f"invalid relative path {path!r}")
    if any(part in {"", ".", ".."} for part in path.split("/")) or "\x00" in path:
        raise LayoutError(f"invalid relative path {path!r}")
    return path


def _checked(key: str) -> str:
    if len(key.encode("utf-8", errors="surrogatepass")) > MAX_KEY_BYTES:
        raise KeyTooLong(f"object key longer than {MAX_KEY_BYTES} bytes: {key[:80]!r}...")
    return key


def workspace_prefix(owner: str, workspace: str) -> str:
    """``<owner>/<workspace>/``: every object of the workspace (files and markers)."""
    return f"{owner_segment(owner)}/{check_workspace_name(workspace)}/"


def file_key(owner: str, workspace: str, path: str) -> str:
    """The final object of the file at ``path`` (relative, normalized)."""
    return _checked(workspace_prefix(owner, workspace) + _check_path(path))


def dir_marker_key(owner: str, workspace: str, path: str) -> str:
    """The zero-byte marker of the empty directory at ``path``: ``file_key(...) + "/"``."""
    return _checked(workspace_prefix(owner, workspace) + _check_path(path) + "/")


def staging_root(owner: str, workspace: str) -> str:
    """``<owner>/.ccd-staging/<workspace>/``: all saves in progress of the workspace (what a
    cleanup after a crash deletes)."""
    return f"{owner_segment(owner)}/{STAGING_DIR}/{check_workspace_name(workspace)}/"


def staging_prefix(owner: str, workspace: str, save_id: str) -> str:
    """``<owner>/.ccd-staging/<workspace>/<save id>/``: the objects of one save."""
    return staging_root(owner, workspace) + _check_id(save_id, "save id") + "/"


def staging_key(owner: str, workspace: str, save_id: str, path: str) -> str:
    """The staged object of ``path`` in save ``save_id``."""
    return join(staging_prefix(owner, workspace, save_id), path)


def join(prefix: str, path: str) -> str:
    """``prefix`` (ending in ``/``) + a relative path, checked."""
    if not prefix.endswith("/"):
        raise LayoutError(f"prefix {prefix!r} does not end with '/'")
    return _checked(prefix + _check_path(path))


def sessions_prefix(owner: str) -> str:
    """``<owner>/.ccd-sessions/``: every transcript of the owner."""
    return f"{owner_segment(owner)}/{SESSIONS_DIR}/"


def transcript_key(owner: str, session_id: str, claude_session_id: str) -> str:
    """``<owner>/.ccd-sessions/<session id>/<claude session id>.jsonl``."""
    return (
        sessions_prefix(owner)
        + _check_id(session_id, "session id")
        + "/"
        + _check_id(claude_session_id, "claude session id")
        + TRANSCRIPT_SUFFIX
    )


def relative_path(prefix: str, key: str) -> str:
    """The path of ``key`` below ``prefix`` (``workspace_prefix`` or ``staging_prefix``); a
    directory marker gives its path with the trailing ``/``. Raises if ``key`` is elsewhere."""
    if not key.startswith(prefix) or key == prefix:
        raise LayoutError(f"key {key!r} is not below {prefix!r}")
    return key[len(prefix) :]


def parse_workspace_key(key: str) -> tuple[str, str, str]:
    """``(owner, workspace, path)`` of a workspace object key (``path`` ends in ``/`` for a
    marker). Raises ``LayoutError`` for staging, transcript and foreign keys."""
    parts = key.split("/", 2)
    if len(parts) != 3 or not parts[2]:
        raise LayoutError(f"{key!r} is not a workspace object key")
    segment, workspace, path = parts
    if not WORKSPACE_NAME.match(workspace):
        raise LayoutError(f"{key!r} is not a workspace object key")
    return owner_from_segment(segment), workspace, path
