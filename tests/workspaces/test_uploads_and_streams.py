"""User uploads (strict), single-file extraction, and the stream helpers."""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Iterator

import pytest

from gateway.store import layout
from gateway.store.objects import ObjectStore
from gateway.workspaces.manifest import (
    Limits,
    NotAFile,
    SaveResult,
    UnsafeArchive,
    WorkspaceTooLarge,
)
from gateway.workspaces.promote import promote
from gateway.workspaces.streams import IteratorReader, PipeAborted, pipe
from gateway.workspaces.tarstream import extract_single, stage_from_upload, write_tar
from tests.workspaces.builders import M, chunks, contents, keys, opener, read_tar, tar_bytes

OWNER, WS = "bob@example.com", "upload"
STAGING = layout.staging_prefix(OWNER, WS, "u1")
FINAL = layout.workspace_prefix(OWNER, WS)
GOOD = [M("./a.txt", data=b"first"), M("./big.bin", data=b"x" * 70_000)]


def upload(store: ObjectStore, members: list[M], *, gzip: bool = True) -> SaveResult:
    data = tar_bytes(members, gzip=gzip)
    return stage_from_upload(io.BytesIO(data), store, STAGING, Limits(), gzip=gzip)


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (M("../x", data=b"x"), "escapes"),
        (M("./../../x", data=b"x"), "escapes"),
        (M("/etc/passwd", data=b"x"), "absolute"),
        (M("etc", "symlink", target="/etc"), "leaves the workspace"),
        (M("up", "symlink", target="../.."), "leaves the workspace"),
        (M("sneaky", "symlink", target="ok/../.."), "leaves the workspace"),
        (M("hl", "hardlink", target="../outside"), "hard link"),
        (M("hl", "hardlink", target="/etc/passwd"), "hard link"),
        (M("hl", "hardlink", target="not-seen-yet"), "not an earlier file"),
        (M("dev", "chr"), "device"),
        (M("fifo", "fifo"), "fifo"),
        (M("a.txt/inside", data=b"x"), "not a directory"),
        (M("back\\slash", data=b"x"), "backslash"),
    ],
)
def test_uploads_refuse_unsafe_members(store: ObjectStore, member: M, reason: str) -> None:
    # Good files come first, so something is staged before the refusal: it must not survive.
    with pytest.raises(UnsafeArchive, match=reason) as caught:
        upload(store, [*GOOD, member])
    assert caught.value.code == "unsafe_archive"
    assert caught.value.member == member.name
    assert keys(store, "") == []


def test_a_member_below_an_inside_symlink_is_refused(store: ObjectStore) -> None:
    members = [M("real", "dir"), M("alias", "symlink", target="real"), M("alias/f", data=b"f")]
    with pytest.raises(UnsafeArchive, match="not a directory"):
        upload(store, members)


def test_a_normal_upload_is_staged_whole(store: ObjectStore) -> None:
    members = [
        M(".", "dir", mode=0o755),
        *GOOD,
        M("./dir", "dir", mode=0o700),
        M("./dir/link", "symlink", target="../a.txt"),
        M("dir/abs", "symlink", target="/workspace/a.txt"),
        M("no/parents/given.txt", data=b"deep"),
        M("same", "hardlink", target="./a.txt"),
        M("./suid", data=b"s", mode=0o4755),
    ]
    result = upload(store, members)
    assert sorted(result.uploaded) == ["a.txt", "big.bin", "no/parents/given.txt", "suid"]
    assert result.entries["dir"].mode == 0o700
    assert result.entries["no/parents"].kind == "dir"
    assert result.entries["suid"].mode == 0o755  # set-id bits dropped
    assert result.entries["same"].sha256 == result.entries["a.txt"].sha256
    manifest = promote(
        store, result, {}, lambda path: layout.file_key(OWNER, WS, path), sweep_prefix=FINAL
    )
    stored = contents(store, FINAL)
    assert stored[layout.file_key(OWNER, WS, "big.bin")] == b"x" * 70_000
    assert stored[layout.file_key(OWNER, WS, "same")] == b"first"
    assert keys(store, layout.staging_root(OWNER, WS)) == []
    out = io.BytesIO()
    write_tar(manifest, opener(store), out, gzip=True)
    assert read_tar(out.getvalue(), gzip=True)["dir/link"][0].linkname == "../a.txt"


def test_plain_tar_uploads_and_limits(store: ObjectStore) -> None:
    result = upload(store, GOOD, gzip=False)
    assert sorted(result.entries) == ["a.txt", "big.bin"]
    data = tar_bytes(GOOD, gzip=True)
    with pytest.raises(WorkspaceTooLarge, match="max_bytes=1000"):
        stage_from_upload(io.BytesIO(data), store, STAGING + "x/", Limits(max_bytes=1000))
    assert keys(store, STAGING + "x/") == []


def test_a_corrupt_upload_fails_cleanly(store: ObjectStore) -> None:
    data = tar_bytes(GOOD, gzip=True)
    with pytest.raises((tarfile.TarError, EOFError, OSError)):
        stage_from_upload(io.BytesIO(data[: len(data) // 2]), store, STAGING, Limits())
    assert keys(store, "") == []


def test_extract_single_streams_the_file() -> None:
    archive = tar_bytes([M("notes.txt", data=b"n" * 100_000, mode=0o600)])
    with extract_single(chunks(archive, 4096)) as (info, body):
        assert info.name == "notes.txt" and info.size == 100_000 and info.mode == 0o600
        assert body.read(10) == b"n" * 10
        assert len(body.read()) == 99_990


@pytest.mark.parametrize("member", [M("d", "dir"), M("l", "symlink", target="x")])
def test_extract_single_refuses_what_is_not_a_file(member: M) -> None:
    with pytest.raises(NotAFile), extract_single(chunks(tar_bytes([member]))):
        pass


def test_extract_single_closes_the_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[bytes]:
        try:
            yield from chunks(tar_bytes([M("f", data=b"x" * 50_000)]), 1000)
        finally:
            closed.set()

    with extract_single(source()) as (_, body):
        body.read(10)  # stop early
    assert closed.is_set()


def test_iterator_reader_feeds_gzip_stream_mode() -> None:
    archive = tar_bytes(GOOD, gzip=True)
    with (
        IteratorReader(chunks(archive, 333)) as raw,
        tarfile.open(fileobj=raw, mode="r|gz") as tar,
    ):
        names = [member.name for member in tar]
    assert names == ["./a.txt", "./big.bin"]
    assert raw.bytes_read == len(archive)


def test_pipe_connects_a_tar_writer_to_a_reader(store: ObjectStore) -> None:
    members = [M("a", data=b"a" * 300_000), M("d", "dir"), M("d/b", data=b"b")]
    result = upload(store, members, gzip=False)
    manifest = promote(store, result, {}, lambda p: layout.file_key(OWNER, WS, p))
    reader, writer = pipe(capacity=16 * 1024)

    def produce() -> None:
        with writer:
            write_tar(manifest, opener(store), writer, prefix="workspace/")

    thread = threading.Thread(target=produce)
    thread.start()
    with reader, tarfile.open(fileobj=reader, mode="r|") as tar:
        seen = {}
        for member in tar:
            body = tar.extractfile(member)
            seen[member.name] = body.read() if body else b""
    thread.join(10)
    assert seen["workspace/a"] == b"a" * 300_000
    assert seen["workspace/d/b"] == b"b"


def test_a_failing_producer_is_never_a_clean_end() -> None:
    reader, writer = pipe(capacity=1024)

    def produce() -> None:
        try:
            with writer:
                writer.write(b"partial archive")
                raise RuntimeError("object store died")
        except RuntimeError:
            pass

    thread = threading.Thread(target=produce)
    thread.start()
    thread.join(10)
    with pytest.raises(PipeAborted, match="object store died") as caught:
        reader.read(100)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_a_reader_that_goes_away_breaks_the_producer() -> None:
    reader, writer = pipe(capacity=1024)
    failures: list[BaseException] = []

    def produce() -> None:
        try:
            with writer:
                for _ in range(1000):
                    writer.write(b"x" * 512)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=produce)
    thread.start()
    assert reader.read(100) == b"x" * 100
    reader.close()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(failures[0], BrokenPipeError)


def test_pipe_iteration_and_read_to_end() -> None:
    reader, writer = pipe()
    with writer:
        writer.write(b"one")
        writer.write(b"two")
    assert list(reader) == [b"one", b"two"]
    reader, writer = pipe()
    with writer:
        writer.write(b"abc")
    assert reader.read() == b"abc"
    assert reader.read(5) == b""


def test_a_dropped_writer_aborts() -> None:
    reader, writer = pipe()
    writer.write(b"half")
    del writer
    with pytest.raises(PipeAborted, match="dropped"):
        reader.read(10)
