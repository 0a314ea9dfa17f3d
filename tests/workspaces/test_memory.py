"""Memory stays bounded by the part size, not the file size: a 50 MB file is saved (streamed
straight up, then hashed through a spool on a same-size change), promoted and restored
through a pipe while tracemalloc watches the peak."""

from __future__ import annotations

import hashlib
import tarfile
import threading
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

import pytest

from gateway.store import layout
from gateway.store.objects import ObjectStore
from gateway.workspaces.manifest import Entry, Limits
from gateway.workspaces.promote import promote
from gateway.workspaces.streams import pipe
from gateway.workspaces.tarstream import stage_from_container, write_tar
from tests.workspaces.builders import StreamedTar, opener

MiB = 1024 * 1024
SIZE = 50 * MiB
# The minio SDK holds a whole S3 part (5 MiB, the S3 minimum) in memory to upload it, and
# reads the next part while the last is still referenced: about two parts, measured ~10-11 MiB,
# whatever the file size.
BOUND = 16 * MiB
T = TypeVar("T")


def peak_of(action: Callable[[], T]) -> tuple[T, int]:
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    value = action()
    return value, tracemalloc.get_traced_memory()[1] - before


def restore_and_hash(store: ObjectStore, manifest: dict[str, Entry]) -> str:
    """write_tar -> pipe -> tarfile in another thread, hashing the big member as it passes."""
    reader, writer = pipe(capacity=MiB)

    def produce() -> None:
        with writer:
            write_tar(manifest, opener(store), writer, prefix="workspace/")

    thread = threading.Thread(target=produce)
    thread.start()
    hasher = hashlib.sha256()
    with reader, tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            body = tar.extractfile(member)
            while body is not None and (piece := body.read(64 * 1024)):
                hasher.update(piece)
    thread.join(30)
    return hasher.hexdigest()


def test_a_50_mb_workspace_saves_and_restores_in_bounded_memory(
    store: ObjectStore, capsys: pytest.CaptureFixture[str]
) -> None:
    owner, workspace = "mem", "big"

    def final_key(path: str) -> str:
        return layout.file_key(owner, workspace, path)

    first = StreamedTar("big.bin", SIZE, seed=1)
    second = StreamedTar("big.bin", SIZE, seed=2)  # same size, other bytes and mtime
    tracemalloc.start()
    try:
        result, stage_peak = peak_of(
            lambda: stage_from_container(
                first, {}, store, layout.staging_prefix(owner, workspace, "s1"), Limits()
            )
        )
        manifest, promote_peak = peak_of(lambda: promote(store, result, {}, final_key))
        restored, restore_peak = peak_of(lambda: restore_and_hash(store, manifest))
        again, spool_peak = peak_of(
            lambda: stage_from_container(
                second, manifest, store, layout.staging_prefix(owner, workspace, "s2"), Limits()
            )
        )
    finally:
        tracemalloc.stop()

    assert result.entries["big.bin"].sha256 == first.sha256
    assert restored == first.sha256
    assert again.uploaded == ["big.bin"]
    assert again.entries["big.bin"].sha256 == second.sha256
    figures = {
        "stage (streamed upload)": stage_peak,
        "promote (server-side copy)": promote_peak,
        "restore (write_tar through a pipe)": restore_peak,
        "stage (same size: spool, hash, upload)": spool_peak,
    }
    with capsys.disabled():
        print(f"\npeak Python allocations for a {SIZE // MiB} MB file:")
        for what, peak in figures.items():
            print(f"  {what:40s} {peak / MiB:6.2f} MiB")
    for what, peak in figures.items():
        assert peak < BOUND, f"{what} peaked at {peak / MiB:.1f} MiB"
