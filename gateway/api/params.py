"""Workspace paths as the HTTP API takes them: the pattern its schema states, checked here.

A path in a URL or query is what ``gateway.workspaces.paths.normalize`` accepts, minus ``..``
steps (a URL's own dot segments; refusing them beats resolving them) and minus raw spellings
longer than the normal form's limit, so that one regular expression (in the OpenAPI schema)
says which paths are taken. Refusals answer 422 ``unsafe_path``. JSON Schema counts characters
where the file system counts UTF-8 bytes: a name of 255 characters that needs more than 255
bytes matches the pattern and is still refused.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import Depends, Path, Query, Request
from starlette.convertors import Convertor, register_url_convertor

from gateway.workspaces.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, UnsafePath, normalize

_CHAR = r"[^\x00-\x1f\x7f\\/]"  # no control character, backslash or separator
# A name: not "." nor "..".
_NAME = rf"(?!\.\.?(?:/|$)){_CHAR}{{1,{MAX_NAME_BYTES}}}"
_BODY = rf"(?:\./+)*{_NAME}(?:/+(?:{_NAME}|\.))*/*"
FILE_PATH_PATTERN = rf"^{_BODY}$"
# A prefix may also name the workspace root ("", ".", "./").
PREFIX_PATTERN = rf"^(?:(?:\./+)*\.?|{_BODY})$"
_FILE_PATH = re.compile(FILE_PATH_PATTERN)
_PREFIX = re.compile(PREFIX_PATTERN)

_DESCRIPTION = (
    "Relative to the workspace: no `..` step, control character or backslash; names of at "
    f"most {MAX_NAME_BYTES} bytes, {MAX_PATH_BYTES} bytes in all (UTF-8)."
)


def _schema(pattern: str) -> dict[str, Any]:
    return {"pattern": pattern, "maxLength": MAX_PATH_BYTES}


def checked_path(path: str, *, allow_root: bool = False) -> str:
    """``path`` unchanged if the API takes it, else ``UnsafePath`` (with the precise reason
    ``normalize`` gives where it refuses too)."""
    normalize(path, allow_root=allow_root)
    if len(path) > MAX_PATH_BYTES:
        raise UnsafePath(path, f"is longer than {MAX_PATH_BYTES} characters")
    if not (_PREFIX if allow_root else _FILE_PATH).fullmatch(path):
        raise UnsafePath(path, "has a '..' step")
    return path


def _intact(path: str, raw: bytes) -> str:
    """``path`` as decoded from the request, unless the request's percent-encoded ``raw`` form
    was not UTF-8: the server's decoding then put U+FFFD where the bytes were, and the file
    would be stored under a name the client never sent."""
    if "\ufffd" in path:
        try:
            unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafePath(path, "is not valid UTF-8 once percent-decoded") from None
    return path


class _AnyPath(Convertor[str]):
    """Starlette's ``path`` convertor, newlines included (its ``.*`` stops at one, and the
    route then answers 404 where the path deserves its 422)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# File routes end in "/{path:anypath}"; ``FilePath`` checks the value.
register_url_convertor("anypath", _AnyPath())


def _file_path(
    request: Request,
    path: Annotated[
        str,
        Path(
            description=_DESCRIPTION,
            json_schema_extra=_schema(FILE_PATH_PATTERN),
            openapi_examples={
                "nested": {"summary": "a file in a directory", "value": "src/app.py"}
            },
        ),
    ],
) -> str:
    return _intact(checked_path(path), request.scope.get("raw_path") or b"")


def _prefix(
    request: Request,
    prefix: Annotated[
        str,
        Query(
            description="Only entries at or below this path. " + _DESCRIPTION,
            json_schema_extra=_schema(PREFIX_PATTERN),
        ),
    ] = "",
) -> str:
    return _intact(checked_path(prefix, allow_root=True), request.scope.get("query_string", b""))


def _after(
    request: Request,
    after: Annotated[
        str | None,
        Query(
            description="The `next_after` of the previous page.",
            json_schema_extra=_schema(FILE_PATH_PATTERN),
        ),
    ] = None,
) -> str | None:
    if after is None:
        return None
    return _intact(checked_path(after), request.scope.get("query_string", b""))


FilePath = Annotated[str, Depends(_file_path)]
PathPrefix = Annotated[str, Depends(_prefix)]
AfterPath = Annotated[str | None, Depends(_after)]
