"""ObjectStore against a real S3 API (moto's server): every method and its error mapping."""

from __future__ import annotations

import io
import os

import pytest

from gateway.store.objects import ObjectMissing, ObjectStore, StoreError, StoreUnavailable
from tests.workspaces.builders import keys, make_store


def test_put_stat_open_list(store: ObjectStore) -> None:
    store.put_bytes("o/w/a.txt", b"hello")
    store.put_stream("o/w/b.bin", io.BytesIO(b"x" * 1000), 1000, metadata={"sha256": "abc"})
    store.put_bytes("o/w/empty/", b"")

    info = store.stat("o/w/b.bin")
    assert info.size == 1000
    assert info.metadata == {"sha256": "abc"}
    assert info.etag
    with store.open("o/w/a.txt") as body:
        assert body.read(2) == b"he"
        assert body.read() == b"llo"

    listed = list(store.list("o/w/"))
    assert [item.key for item in listed] == ["o/w/a.txt", "o/w/b.bin", "o/w/empty/"]
    assert [item.size for item in listed] == [5, 1000, 0]
    assert listed[2].is_dir_marker
    top = [item.key for item in store.list("o/", recursive=False)]
    assert top == ["o/w/"]


def test_multipart_upload_round_trip(store: ObjectStore) -> None:
    size = 12 * 1024 * 1024 + 123  # three parts of 5 MiB
    data = os.urandom(size)
    store.put_stream("big", io.BytesIO(data), size)
    assert store.stat("big").size == size
    with store.open("big") as body:
        assert body.read() == data


def test_a_short_stream_fails_and_leaves_no_object(store: ObjectStore) -> None:
    with pytest.raises(StoreError, match="not enough data"):
        store.put_stream("short", io.BytesIO(b"abc"), 10)
    assert not store.exists("short")


def test_the_streams_own_failure_is_not_blamed_on_the_store(store: ObjectStore) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise ConnectionResetError("docker went away")

    with pytest.raises(ConnectionResetError, match="docker went away"):
        store.put_stream("k", Broken(), 10)


def test_copy_keeps_or_replaces_metadata(store: ObjectStore) -> None:
    store.put_stream("src", io.BytesIO(b"data"), 4, metadata={"sha256": "one"})
    store.copy("src", "kept")
    store.copy("src", "replaced", metadata={"sha256": "two"})
    assert store.stat("kept").metadata == {"sha256": "one"}
    assert store.stat("replaced").metadata == {"sha256": "two"}
    with store.open("replaced") as body:
        assert body.read() == b"data"


def test_missing_objects(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing):
        store.stat("nope")
    with pytest.raises(ObjectMissing), store.open("nope"):
        pass
    with pytest.raises(ObjectMissing):
        store.copy("nope", "dst")
    assert not store.exists("nope")


def test_delete_many_and_prefix(store: ObjectStore) -> None:
    for index in range(1005):  # more than one DeleteObjects batch
        store.put_bytes(f"p/{index:04d}", b"")
    store.put_bytes("q/keep", b"")
    assert store.delete_many(["p/0000", "p/0001", "never/existed"]) == 3
    assert store.delete_prefix("p/") == 1003
    assert keys(store, "") == ["q/keep"]
    for bad in ["", "/", "p"]:
        with pytest.raises(ValueError):
            store.delete_prefix(bad)


def test_ensure_bucket_is_idempotent_and_ping(s3_endpoint: str) -> None:
    created = make_store(s3_endpoint)
    with pytest.raises(ObjectMissing, match="does not exist"):
        created.ping()
    created.ensure_bucket()
    created.ensure_bucket()
    created.ping()
    created.close()


def test_an_unreachable_server_is_unavailable() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = make_store(f"127.0.0.1:{port}", retries=0, connect_timeout=1.0)
    with pytest.raises(StoreUnavailable, match="unreachable"):
        dead.ping()
    with pytest.raises(StoreUnavailable):
        dead.put_bytes("k", b"v")
    with pytest.raises(StoreUnavailable):
        list(dead.list("x/"))


def test_endpoint_must_not_carry_a_scheme() -> None:
    with pytest.raises(ValueError, match="without a scheme"):
        ObjectStore("http://minio:9000", "a", "b", "bucket", secure=False)
