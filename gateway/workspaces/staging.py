"""Step 1 of a save: stage an archive's changed files into the store and build the new
manifest (see ``promote`` for step 3).

Two sources: a container's ``/workspace`` (Docker's ``get_archive``: lenient, what cannot be
kept is skipped and reported) and a user's upload (strict: anything unsafe refuses the whole
archive). Everything here blocks (tar parsing, hashing, network): run it in a worker thread.
Nothing holds a whole file or archive in memory: members are read in ``_PIECE`` slices, uploads
hold at most an S3 part or two (the SDK's), and a file is spooled (memory up to
``spool_threshold``, then a temporary file) only when its hash must be known before deciding
whether to upload it.
"""

from __future__ import annotations

import gzip as gzip_module
import hashlib
import io
import logging
import math
import posixpath
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import IO

from gateway.store.layout import LayoutError, join
from gateway.store.objects import ObjectStore, Source
from gateway.workspaces.manifest import (
    Entry,
    Limits,
    SaveResult,
    UnsafeArchive,
    WorkspaceTooLarge,
)
from gateway.workspaces.paths import UnsafePath, link_stays_inside, normalize
from gateway.workspaces.streams import IteratorReader, open_tar_stream

log = logging.getLogger(__name__)

DEFAULT_SPOOL_THRESHOLD = 256 * 1024
_PIECE = 256 * 1024  # read size from a tar member; tarfile's stream mode copies ~3x per read
_MODE_BITS = 0o1777  # permissions and sticky; set-id bits never survive a save
_MAX_TRAILER = 1 << 20


class _Stager:
    """The state of one staging pass; ``strict`` (uploads) raises where a container save
    skips."""

    def __init__(
        self,
        store: ObjectStore,
        staging_prefix: str,
        limits: Limits,
        previous: Mapping[str, Entry],
        *,
        strip: Callable[[str], str | None],
        strict: bool,
        spool_threshold: int,
        trust_mtimes_before: float,
    ) -> None:
        self.strip = strip
        self.store = store
        self.prefix = staging_prefix
        self.limits = limits
        self.previous = previous
        self.strict = strict
        self.spool_threshold = spool_threshold
        self.trust_mtimes_before = trust_mtimes_before
        self.result = SaveResult()
        self.total_bytes = 0

    def refuse(self, name: str, reason: str) -> None:
        if self.strict:
            raise UnsafeArchive(name, reason)
        self.result.skipped.append((name, reason))

    def blocked_by(self, path: str) -> str | None:
        """The ancestor of ``path`` that is a file or symlink, if any."""
        parent = posixpath.dirname(path)
        while parent:
            entry = self.result.entries.get(parent)
            if entry is not None and entry.kind != "dir":
                return parent
            parent = posixpath.dirname(parent)
        return None

    def check_limits(self, path: str, size: int) -> None:
        old = self.result.entries.get(path)
        count = len(self.result.entries) + (0 if old is not None else 1)
        total = self.total_bytes + size - (old.size if old is not None else 0)
        if self.limits.max_files is not None and count > self.limits.max_files:
            raise WorkspaceTooLarge("max_files", self.limits.max_files, count)
        if self.limits.max_bytes is not None and total > self.limits.max_bytes:
            raise WorkspaceTooLarge("max_bytes", self.limits.max_bytes, total)

    def add(self, entry: Entry) -> None:
        old = self.result.entries.get(entry.path)
        if old is not None:
            self.total_bytes -= old.size
        self.result.entries[entry.path] = entry
        self.total_bytes += entry.size

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        blocker = self.blocked_by(path)
        if blocker is not None:
            self.refuse(member.name, f"is below {blocker!r}, which is not a directory")
            return
        mode = member.mode & _MODE_BITS
        mtime = int(member.mtime)
        if member.isdir():
            self.check_limits(path, 0)
            self.add(Entry(path, "dir", 0, mode, mtime))
        elif member.issym():
            if not link_stays_inside(path, member.linkname):
                self.refuse(member.name, f"symlink to {member.linkname!r} leaves the workspace")
                return
            self.check_limits(path, 0)
            self.add(Entry(path, "symlink", 0, 0o777, mtime, link_target=member.linkname))
        elif member.islnk():
            self.hardlink(member, path, mode, mtime)
        elif member.isreg():
            self.check_limits(path, member.size)
            self.add(self.file(tar, member, path, mode, mtime))
        elif member.ischr() or member.isblk():
            self.refuse(member.name, "is a device")
        elif member.isfifo():
            self.refuse(member.name, "is a fifo")
        else:
            self.refuse(member.name, f"has unsupported tar type {member.type!r}")

    def hardlink(self, member: tarfile.TarInfo, path: str, mode: int, mtime: int) -> None:
        """A hard link to a file seen earlier in the archive becomes a file with the same
        bytes (``git clone`` of a local repository makes these); any other is refused."""
        try:
            target_path = normalize(self.strip(member.linkname) or "")
        except (UnsafePath, UnsafeArchive, _Outside):
            self.refuse(member.name, f"hard link to {member.linkname!r} leaves the workspace")
            return
        target = self.result.entries.get(target_path)
        if target is None or target.kind != "file":
            self.refuse(member.name, f"hard link to {member.linkname!r}, not an earlier file")
            return
        self.check_limits(path, target.size)
        previous = self.previous.get(path)
        if previous is not None and previous.kind == "file" and previous.sha256 == target.sha256:
            key = previous.object_key
            self.result.unchanged += 1
        else:
            key = target.object_key  # promote copies it into place from there
        self.add(replace(target, path=path, mode=mode, mtime=mtime, object_key=key))

    def file(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, mode: int, mtime: int
    ) -> Entry:
        size = member.size
        previous = self.previous.get(path)
        same_size = (
            previous is not None
            and previous.kind == "file"
            and previous.size == size
            and previous.sha256 is not None
            and previous.object_key is not None
        )
        if (
            previous is not None
            and same_size
            and previous.mtime == mtime
            and previous.mtime < self.trust_mtimes_before
        ):
            # Same size and mtime: taken as unchanged without reading (as git and rsync do).
            self.result.unchanged += 1
            return replace(previous, mode=mode)
        data = tar.extractfile(member)
        if data is None:  # isreg() members always have data; keeps the types honest
            raise UnsafeArchive(member.name, "has no data")
        key = self.staging_key(member.name, path)
        if previous is not None and same_size:
            # The bytes may be the same: hash first, upload only if they are not.
            with tempfile.SpooledTemporaryFile(max_size=self.spool_threshold) as spool:
                digest = _copy(data, spool, size)
                if digest == previous.sha256:
                    self.result.unchanged += 1
                    return replace(previous, mode=mode, mtime=mtime)
                spool.seek(0)
                self.upload(key, spool, size)
        else:
            reader = _HashingReader(data)
            self.upload(key, reader, size)
            digest = reader.hexdigest()
        self.result.uploaded.append(path)
        self.result.bytes_uploaded += size
        return Entry(path, "file", size, mode, mtime, sha256=digest, object_key=key)

    def staging_key(self, name: str, path: str) -> str:
        try:
            return join(self.prefix, path)
        except LayoutError as exc:
            raise UnsafeArchive(name, str(exc)) from exc

    def upload(self, key: str, stream: Source, size: int) -> None:
        self.result.staged_keys.append(key)  # before: a failed multipart may still leave it
        self.store.put_stream(key, stream, size)

    def run(self, tar: tarfile.TarFile, finish: Callable[[], None] | None = None) -> SaveResult:
        try:
            # next() rather than iteration, forgetting each header: TarFile keeps every
            # member it has read, which would grow with the number of files.
            while (member := tar.next()) is not None:
                tar.members.clear()  # type: ignore[attr-defined]  # untyped in typeshed
                try:
                    relative = self.strip(member.name)
                except _Outside as exc:
                    self.refuse(member.name, str(exc))
                    continue
                if relative is None:
                    continue
                try:
                    path = normalize(relative)
                except UnsafePath as exc:
                    self.refuse(member.name, exc.reason)
                    continue
                self.member(tar, member, path)
            if finish is not None:
                finish()
            self.settle()
        except BaseException:
            self.discard()
            raise
        result = self.result
        result.deleted = sorted(path for path in self.previous if path not in result.entries)
        return result

    def settle(self) -> None:
        """Give every entry its parent directories (an archive may omit them; a restore
        would then create them owned by root) and drop what ended up below a non-directory."""
        entries = self.result.entries
        for path in sorted(entries):
            if path not in entries:
                continue  # dropped below
            missing: list[str] = []
            parent = posixpath.dirname(path)
            blocker = None
            while parent:
                found = entries.get(parent)
                if found is None:
                    missing.append(parent)
                elif found.kind != "dir":
                    blocker = parent
                    break
                parent = posixpath.dirname(parent)
            if blocker is not None:
                self.refuse(path, f"is below {blocker!r}, which is not a directory")
                dropped = entries.pop(path)
                self.total_bytes -= dropped.size
                if path in self.result.uploaded:  # its staged object goes with the others
                    self.result.uploaded.remove(path)
                    self.result.bytes_uploaded -= dropped.size
                continue
            for directory in missing:
                self.check_limits(directory, 0)
                self.add(Entry(directory, "dir", 0, 0o755, entries[path].mtime))

    def discard(self) -> None:
        """Best effort: delete what this pass staged (the previous state is untouched)."""
        if not self.result.staged_keys:
            return
        try:
            self.store.delete_many(self.result.staged_keys)
        except Exception as exc:
            count = len(self.result.staged_keys)
            log.warning("could not delete %d staged object(s): %s", count, exc)


class _Outside(Exception):
    pass


def _drain(stream: gzip_module.GzipFile) -> None:
    """Read a gzip stream to its end, so that its CRC and length are checked (tarfile's own
    gzip reading checks neither); a little padding after the tar end is normal."""
    extra = 0
    while piece := stream.read(_PIECE):
        extra += len(piece)
        if extra > _MAX_TRAILER:
            raise UnsafeArchive("(end)", "more than 1 MiB of data after the end of the archive")


def _below_root(root: str) -> Callable[[str], str | None]:
    """Names of a container archive: ``root/...``; ``None`` for ``root`` itself."""
    root = root.strip("/")

    def strip(name: str) -> str | None:
        name = name.removeprefix("./").rstrip("/")
        if name == root:
            return None
        if not name.startswith(root + "/"):
            raise _Outside(f"is outside {root}/")
        return name[len(root) + 1 :]

    return strip


def _upload_name(name: str) -> str | None:
    """Names of an uploaded archive: relative, ``./`` optional; ``None`` for ``.``."""
    if name.startswith("/"):
        raise UnsafeArchive(name, "is absolute")
    while name.startswith("./"):
        name = name[2:]
    return None if name in {"", "."} else name


def stage_from_container(
    chunks: Iterable[bytes],
    previous: Mapping[str, Entry],
    store: ObjectStore,
    staging_prefix: str,
    limits: Limits,
    root: str = "workspace",
    *,
    spool_threshold: int = DEFAULT_SPOOL_THRESHOLD,
    trust_mtimes_before: float = math.inf,
) -> SaveResult:
    """Stage a container's workspace from Docker's ``get_archive`` of ``/workspace``.

    Members are ``root/...``; the root itself is skipped. Regular files, directories and
    symlinks are kept; a symlink leaving the workspace, a device, a fifo or an unsafe name is
    skipped and listed in ``skipped`` (the agent may have made one; that is not an error). A
    hard link to a file earlier in the archive is kept as a copy of that file.

    A file whose size and mtime match ``previous`` is taken as unchanged without reading it,
    if that mtime (whole seconds) is before ``trust_mtimes_before``: a file read in the second
    it was written may have been written again within that second, its size and mtime kept, so
    the caller passes the second its previous save began (``-math.inf`` trusts no mtime). A
    file of the same size is hashed first and uploaded only if its hash differs; any other file
    is streamed straight to its staging key while hashed. Limits are enforced on the running
    totals (``WorkspaceTooLarge``).

    On any failure, what was staged is deleted (best effort) and the exception propagates:
    the previous saved state is untouched. ``chunks`` is closed in every case.
    """
    stager = _Stager(
        store=store,
        staging_prefix=staging_prefix,
        limits=limits,
        previous=previous,
        strip=_below_root(root),
        strict=False,
        spool_threshold=spool_threshold,
        trust_mtimes_before=trust_mtimes_before,
    )
    with IteratorReader(chunks) as raw, open_tar_stream(raw) as tar:
        return stager.run(tar)


def stage_from_upload(
    fileobj: IO[bytes],
    store: ObjectStore,
    staging_prefix: str,
    limits: Limits,
    gzip: bool = True,
    *,
    spool_threshold: int = DEFAULT_SPOOL_THRESHOLD,
) -> SaveResult:
    """Stage a user's archive (tar.gz, or plain tar with ``gzip=False``) that replaces a
    workspace. Member names are workspace-relative, with or without a leading ``./``.

    Strict: an absolute name, a ``..`` escape, a symlink or hard link leaving the workspace, a
    device, a fifo, an entry below a file or symlink -> ``UnsafeArchive`` naming the member,
    and nothing staged survives. A truncated or corrupt archive (the gzip CRC and length are
    checked too) raises ``tarfile.ReadError``, ``EOFError`` or ``gzip.BadGzipFile``. Everything is
    staged (there is no previous manifest), so every file is in ``uploaded``.
    """
    stager = _Stager(
        store=store,
        staging_prefix=staging_prefix,
        limits=limits,
        previous={},
        strip=_upload_name,
        strict=True,
        spool_threshold=spool_threshold,
        trust_mtimes_before=-math.inf,
    )
    if not gzip:
        with open_tar_stream(fileobj) as tar:
            return stager.run(tar)
    with gzip_module.GzipFile(fileobj=fileobj, mode="rb") as unzipped:
        try:
            tar = open_tar_stream(unzipped)
        except gzip_module.BadGzipFile as exc:
            raise tarfile.ReadError(f"not a gzip file: {exc}") from None
        with tar:
            return stager.run(tar, finish=lambda: _drain(unzipped))


def _copy(source: IO[bytes], target: IO[bytes], size: int) -> str:
    """Copy ``size`` bytes, returning their sha256 (hex)."""
    hasher = hashlib.sha256()
    remaining = size
    while remaining > 0:
        piece = source.read(min(_PIECE, remaining))
        if not piece:
            raise tarfile.ReadError("unexpected end of data")
        hasher.update(piece)
        target.write(piece)
        remaining -= len(piece)
    return hasher.hexdigest()


class _HashingReader(io.RawIOBase):
    """Hashes what is read through it. ``read(n)`` gathers ``n`` bytes in small pieces: the
    SDK asks for a whole part at once, and tarfile's stream mode would copy a large read
    about three times."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source
        self._hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = 1 << 62
        buffer = io.BytesIO()
        while buffer.tell() < size:
            piece = self._source.read(min(_PIECE, size - buffer.tell()))
            if not piece:
                break
            self._hasher.update(piece)
            buffer.write(piece)
        # getvalue() hands over BytesIO's own buffer when it can, without a copy.
        return buffer.getvalue()

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()
