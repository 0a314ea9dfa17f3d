"""Test-only builders: archives shaped like Docker's ``get_archive`` of ``/workspace``, made in
memory, and a streamed one for big files that never is."""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from gateway.store.objects import ObjectStore, Readable
from gateway.workspaces.manifest import Entry

MTIME = 1_700_000_000


def make_store(endpoint: str, bucket: str | None = None, **options: object) -> ObjectStore:
    return ObjectStore(
        endpoint,
        access_key="test-access",
        secret_key="test-secret-key",
        bucket=bucket or f"ws-{uuid.uuid4().hex[:16]}",
        secure=False,
        region="us-east-1",
        **options,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class M:
    """One archive member: ``kind`` is file, dir, symlink, hardlink, fifo or chr."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    mtime: int = MTIME
    target: str = ""


def tar_bytes(members: Iterable[M], *, gzip: bool = False) -> bytes:
    buffer = io.BytesIO()
    types = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
        "chr": tarfile.CHRTYPE,
    }
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w", format=tarfile.PAX_FORMAT) as t:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = types[member.kind]
            info.mode = member.mode
            info.mtime = member.mtime
            info.uid = info.gid = 10001
            info.linkname = member.target
            if member.kind == "file":
                info.size = len(member.data)
                t.addfile(info, io.BytesIO(member.data))
            else:
                t.addfile(info)
    return buffer.getvalue()


def chunks(data: bytes, size: int = 7919) -> Iterator[bytes]:
    """Odd-sized chunks, so that no header or file lines up with one."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def container_tar(members: Iterable[M], root: str = "workspace") -> Iterator[bytes]:
    """What Docker's ``get_archive("/workspace")`` streams: ``workspace`` then its contents."""
    prefixed = [M(root, "dir", mode=0o755)] + [
        M(f"{root}/{m.name}", m.kind, m.data, m.mode, m.mtime, m.target) for m in members
    ]
    return chunks(tar_bytes(prefixed))


class StreamedTar:
    """A tar of one big file, generated chunk by chunk (never whole in memory); the sha256 of
    the file is known once the stream has been consumed."""

    def __init__(self, name: str, size: int, *, seed: int = 1, chunk: int = 64 * 1024) -> None:
        self.name = name
        self.size = size
        self.seed = seed
        self.chunk = chunk
        self.sha256 = ""

    def __iter__(self) -> Iterator[bytes]:
        root = tarfile.TarInfo("workspace")
        root.type = tarfile.DIRTYPE
        root.mode = 0o755
        yield root.tobuf(format=tarfile.PAX_FORMAT)
        info = tarfile.TarInfo(f"workspace/{self.name}")
        info.size = self.size
        info.mtime = MTIME + self.seed
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        rng = random.Random(self.seed)
        hasher = hashlib.sha256()
        remaining = self.size
        while remaining:
            piece = rng.randbytes(min(self.chunk, remaining))
            hasher.update(piece)
            remaining -= len(piece)
            yield piece
        self.sha256 = hasher.hexdigest()
        yield b"\0" * (-self.size % tarfile.BLOCKSIZE)
        yield b"\0" * (tarfile.BLOCKSIZE * 2)


def opener(store: ObjectStore) -> Callable[[Entry], contextlib.AbstractContextManager[Readable]]:
    """``write_tar``'s ``open_object`` over the store."""

    def open_object(entry: Entry) -> contextlib.AbstractContextManager[Readable]:
        assert entry.object_key is not None
        return store.open(entry.object_key)

    return open_object


def read_tar(data: bytes, *, gzip: bool = False) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """Every member of an archive with its bytes (files) or ``b""``."""
    found: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz" if gzip else "r:") as t:
        for member in t:
            extracted = t.extractfile(member) if member.isreg() else None
            found[member.name] = (member, extracted.read() if extracted else b"")
    return found


def keys(store: ObjectStore, prefix: str) -> list[str]:
    return [info.key for info in store.list(prefix)]


def contents(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` with its bytes (small test workspaces only)."""
    found: dict[str, bytes] = {}
    for key in keys(store, prefix):
        with store.open(key) as body:
            found[key] = body.read()
    return found
