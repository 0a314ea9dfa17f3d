"""Workspace-relative paths: one normal form, and the rule for symlinks (pure).

The normal form is what manifests, object keys and archives use: relative POSIX, no empty,
``.`` or ``..`` step, no trailing ``/``. Refused outright: an absolute path, NUL and other
control characters, a backslash (Windows clients mean a separator by it; refusing beats
guessing), names that are not valid UTF-8, more than ``MAX_PATH_BYTES`` in all or a step longer
than ``MAX_NAME_BYTES``, and ``..`` that climbs above the root. ``..`` that stays inside is
resolved lexically (``a/../b`` is ``b``): nothing here touches a file system, so no symlink can
make that resolution lie about where a *key* goes.
"""

from __future__ import annotations

import posixpath

from gateway.error_codes import ErrorCode
from gateway.workspaces.manifest import WorkspaceError
from wrapper.protocol import WORKSPACE_DIR

MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
WORKSPACE_ROOT = WORKSPACE_DIR


class UnsafePath(WorkspaceError, ValueError):
    code = ErrorCode.UNSAFE_PATH

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"unsafe path {path!r}: {reason}")
        self.path = path
        self.reason = reason


def normalize(path: str, *, allow_root: bool = False) -> str:
    """``path`` in normal form, or ``UnsafePath``. ``./a//b/`` gives ``a/b``. The root itself
    (``""``, ``.``, ``./``) is refused unless ``allow_root``, which returns ``""`` for it."""
    if "\x00" in path:
        raise UnsafePath(path, "contains NUL")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        raise UnsafePath(path, "contains a control character")
    if "\\" in path:
        raise UnsafePath(path, "contains a backslash")
    if path.startswith("/"):
        raise UnsafePath(path, "is absolute")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # tarfile decodes foreign bytes to lone surrogates
        raise UnsafePath(path, "is not valid UTF-8") from None
    parts: list[str] = []
    for part in path.split("/"):
        if part in {"", "."}:
            continue
        if part == "..":
            if not parts:
                raise UnsafePath(path, "escapes the workspace with '..'")
            parts.pop()
            continue
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise UnsafePath(path, f"has a name longer than {MAX_NAME_BYTES} bytes")
        parts.append(part)
    result = "/".join(parts)
    if not result and not allow_root:
        raise UnsafePath(path, "is empty")
    if len(result.encode("utf-8")) > MAX_PATH_BYTES:
        raise UnsafePath(path, f"is longer than {MAX_PATH_BYTES} bytes")
    return result


def link_stays_inside(link_path: str, target: str, *, root: str = WORKSPACE_ROOT) -> bool:
    """Whether the symlink at ``link_path`` (normal form) pointing at ``target`` resolves inside
    the workspace, judged without a file system.

    - A relative target is resolved against the link's directory. Leading ``..`` steps may
      climb only as far as the root. A ``..`` *after* a name is refused: that name may itself be
      a symlink (``up -> ..``), and then ``up/..`` is the root's parent on disk while it looks
      like the root on paper. With that rule every kept link lands inside: its leading ``..``
      walk real directories, and each name after them is a directory, a file or a kept link.
    - An absolute target is inside only under ``root`` (``/workspace``, where every session
      mounts its workspace); it is judged like a relative one from the root and kept *as
      written*, since after a restore ``/workspace/...`` means the same thing again.
    - Empty targets and targets with NUL are outside.
    """
    if not target or "\x00" in target:
        return False
    if target.startswith("/"):
        root = root.rstrip("/")
        if target != root and not target.startswith(root + "/"):
            return False
        base: list[str] = []
        steps = target[len(root) :].split("/")
    else:
        base = [part for part in posixpath.dirname(link_path).split("/") if part]
        steps = target.split("/")
    seen_name = False
    for step in steps:
        if step in {"", "."}:
            continue
        if step == "..":
            if seen_name or not base:
                return False
            base.pop()
        else:
            seen_name = True
    return True
