"""What a saved workspace is: a manifest of entries, the result of a save, limits and errors.

Pure data. The database stores manifests; this package only builds and consumes them as
``dict[str, Entry]`` keyed by path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.error_codes import ErrorCode

EntryKind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of a workspace.

    ``path`` is relative and normalized (``gateway.workspaces.paths.normalize``). ``mode`` holds
    the permission bits (``0o755``), ``mtime`` whole seconds. Files carry ``size``, ``sha256``
    (hex) and ``object_key``: where their bytes are right now, the final key or, until
    ``promote``, a staging key. Symlinks carry ``link_target`` exactly as the link says.
    Directories and symlinks have no object (``object_key`` is ``None``).
    """

    path: str
    kind: EntryKind
    size: int = 0
    mode: int = 0o644
    mtime: int = 0
    sha256: str | None = None
    link_target: str | None = None
    object_key: str | None = None


@dataclass
class SaveResult:
    """What staging a workspace found and did.

    ``entries`` is the new manifest (``object_key`` of changed files = their staging key,
    unchanged files keep the previous key). ``uploaded`` lists the paths whose bytes were staged,
    ``unchanged`` counts files whose bytes were not uploaded because they did not change (a
    mode- or mtime-only change included), ``deleted`` the previous paths that are gone,
    ``skipped`` the ``(path, reason)`` of members left out (an escaping symlink, a device, ...).
    ``staged_keys`` are every object this save wrote, for ``promote`` or cleanup.
    """

    entries: dict[str, Entry] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)
    unchanged: int = 0
    deleted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    bytes_uploaded: int = 0
    staged_keys: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Sum of file sizes in the new manifest."""
        return sum(entry.size for entry in self.entries.values() if entry.kind == "file")

    @property
    def file_count(self) -> int:
        """Entries of any kind in the new manifest (what ``Limits.max_files`` counts)."""
        return len(self.entries)


@dataclass(frozen=True)
class Limits:
    """Caps on one workspace; ``None`` means no cap. ``max_files`` counts entries of any kind
    (files, directories, symlinks); ``max_bytes`` counts file sizes."""

    max_bytes: int | None = None
    max_files: int | None = None


class WorkspaceError(Exception):
    """A workspace operation refused its input; ``code`` (each subclass has its own) says why
    and decides the HTTP status."""

    code: ErrorCode

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WorkspaceTooLarge(WorkspaceError):
    code = ErrorCode.WORKSPACE_TOO_LARGE

    def __init__(self, limit: Literal["max_bytes", "max_files"], value: int, found: int) -> None:
        what = "bytes" if limit == "max_bytes" else "entries"
        super().__init__(
            f"workspace exceeds {limit}={value}: found at least {found} {what} (aborted there)"
        )
        self.limit = limit
        self.value = value
        self.found = found


class UnsafeArchive(WorkspaceError):
    code = ErrorCode.UNSAFE_ARCHIVE

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"archive member {member!r} refused: {reason}")
        self.member = member
        self.reason = reason


class NotAFile(WorkspaceError):
    code = ErrorCode.NOT_A_FILE
