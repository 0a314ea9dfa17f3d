"""Workspaces as tar streams, for the gateway's other half: write a manifest out as an archive
(a restore into a container, a download) and pull one file out of a container's archive.

This module is also the one place to import the archive operations from: staging
(``staging.py``), ``promote`` (``promote.py``) and the stream helpers (``streams.py``) are
re-exported here. Everything blocks: run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Protocol

from gateway.error_codes import ErrorCode
from gateway.store.objects import Readable
from gateway.workspaces.manifest import Entry, NotAFile, WorkspaceError
from gateway.workspaces.promote import promote
from gateway.workspaces.staging import stage_from_container, stage_from_upload
from gateway.workspaces.streams import IteratorReader, PipeAborted, open_tar_stream, pipe
from wrapper.protocol import CONTAINER_GID, CONTAINER_UID

__all__ = [
    "ContentMismatch",
    "IteratorReader",
    "PipeAborted",
    "extract_single",
    "pipe",
    "promote",
    "stage_from_container",
    "stage_from_upload",
    "write_tar",
]

SESSION_UID = CONTAINER_UID
SESSION_GID = CONTAINER_GID  # the session image's user (wrapper.protocol)


class ContentMismatch(WorkspaceError):
    """A stored object does not hold the bytes its manifest entry describes."""

    code = ErrorCode.CONTENT_MISMATCH


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


# -- writing ---------------------------------------------------------------------------------


def write_tar(
    entries: Iterable[Entry] | Mapping[str, Entry],
    open_object: Callable[[Entry], contextlib.AbstractContextManager[Readable]],
    out: _Writable,
    *,
    prefix: str = "",
    uid: int = SESSION_UID,
    gid: int = SESSION_GID,
    gzip: bool = False,
) -> int:
    """Write ``entries`` as a tar (or tar.gz) to ``out``; returns the bytes written.

    Directories come before their contents (sorted by path), modes and mtimes are the
    entries', everything is owned by ``uid``/``gid``. File bytes stream from
    ``open_object(entry)`` and are checked against the entry's size and sha256
    (``ContentMismatch``). With a ``prefix`` such as ``"workspace/"`` every name goes below it
    and the prefix directory itself comes first (mode 0755), so extracting at ``/`` also sets
    the owner of ``/workspace``. ``out`` needs only ``write``; it is not closed.
    """
    items = entries.values() if isinstance(entries, Mapping) else entries
    ordered = sorted(items, key=lambda entry: entry.path)
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    sink = _CountingWriter(out)
    # Not gzip.GzipFile: on failure it would still write a valid trailer when collected.
    target: _CountingWriter | _GzipWriter = _GzipWriter(sink) if gzip else sink

    def info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
        header = tarfile.TarInfo(prefix + name if name else prefix.rstrip("/"))
        header.type = kind
        header.mode = mode
        header.mtime = mtime
        header.uid, header.gid = uid, gid
        header.uname = header.gname = ""
        return header

    with tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if prefix:
            tar.addfile(info("", tarfile.DIRTYPE, 0o755, int(time.time())))
        for entry in ordered:
            if entry.kind == "dir":
                tar.addfile(info(entry.path, tarfile.DIRTYPE, entry.mode, entry.mtime))
            elif entry.kind == "symlink":
                header = info(entry.path, tarfile.SYMTYPE, 0o777, entry.mtime)
                header.linkname = entry.link_target or ""
                tar.addfile(header)
            else:
                header = info(entry.path, tarfile.REGTYPE, entry.mode, entry.mtime)
                header.size = entry.size
                with open_object(entry) as source:
                    tar.addfile(header, _VerifyingReader(source, entry))
    if isinstance(target, _GzipWriter):
        target.finish()
    return sink.count


# -- reading one file ------------------------------------------------------------------------


@contextlib.contextmanager
def extract_single(chunks: Iterable[bytes]) -> Iterator[tuple[tarfile.TarInfo, IO[bytes]]]:
    """The one regular file in Docker's ``get_archive`` of a file path: yields its header and
    a readable that streams its bytes. ``NotAFile`` if the archive holds something else (a
    directory, a symlink). ``chunks`` is closed on exit."""
    with IteratorReader(chunks) as raw, open_tar_stream(raw) as tar:
        member = tar.next()
        if member is None:
            raise NotAFile("the archive is empty")
        if not member.isreg():
            kind = "directory" if member.isdir() else "symlink" if member.issym() else "special"
            raise NotAFile(f"{member.name!r} is a {kind}, not a regular file")
        data = tar.extractfile(member)
        if data is None:
            raise NotAFile(f"{member.name!r} has no data")
        yield member, data


# -- helpers ---------------------------------------------------------------------------------


class _VerifyingReader:
    """Reads an object for ``write_tar`` and checks its bytes against the entry."""

    def __init__(self, source: Readable, entry: Entry) -> None:
        self._source = source
        self._entry = entry
        self._hasher = hashlib.sha256()
        self._count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size if size >= 0 else None)
        self._hasher.update(data)
        self._count += len(data)
        if self._count > self._entry.size or (not data and self._count < self._entry.size):
            raise ContentMismatch(
                f"object of {self._entry.path!r} does not have {self._entry.size} bytes"
            )
        if (
            self._count == self._entry.size
            and self._entry.sha256 is not None
            and self._hasher.hexdigest() != self._entry.sha256
        ):
            raise ContentMismatch(f"object of {self._entry.path!r} does not match its sha256")
        return data


class _CountingWriter:
    """What ``tarfile``/``GzipFile`` need of ``out`` (``write``, ``tell``), counting bytes."""

    def __init__(self, out: _Writable) -> None:
        self._out = out
        self.count = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.count += len(data)
        return len(data)

    def read(self, size: int) -> bytes:
        raise io.UnsupportedOperation("write-only")

    def tell(self) -> int:
        return self.count

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("not seekable")

    def close(self) -> None:
        """``out`` belongs to the caller: nothing to close."""

    def flush(self) -> None:
        flush = getattr(self._out, "flush", None)
        if callable(flush):
            flush()


class _GzipWriter:
    """A gzip stream (RFC 1952) over ``_CountingWriter``: ends properly only on ``finish``, so
    an archive cut short by an error never passes its CRC check."""

    def __init__(self, out: _CountingWriter, level: int = 6) -> None:
        self._out = out
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0
        # magic, deflate, no flags, mtime 0 (reproducible), no extra flags, unknown OS
        out.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\xff")

    def write(self, data: bytes) -> int:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        compressed = self._deflate.compress(data)
        if compressed:
            self._out.write(compressed)
        return len(data)

    def finish(self) -> None:
        self._out.write(self._deflate.flush())
        self._out.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))

    def read(self, size: int) -> bytes:
        raise io.UnsupportedOperation("write-only")

    def tell(self) -> int:
        return self._size

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("not seekable")

    def close(self) -> None:
        """Nothing: ``finish`` ends the stream, and only on success."""
