"""Saving a container's workspace (stage, promote) and restoring it (write_tar), on moto."""

from __future__ import annotations

import io
import math
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from gateway.services.workspaces import trust_mtimes_before
from gateway.store import layout
from gateway.store.objects import ObjectMissing, ObjectStore
from gateway.workspaces.manifest import Entry, Limits, SaveResult, WorkspaceTooLarge
from gateway.workspaces.promote import StagedObjectLost, promote
from gateway.workspaces.tarstream import ContentMismatch, stage_from_container, write_tar
from tests.workspaces.builders import MTIME, M, container_tar, contents, keys, opener, read_tar

OWNER, WS = "alice", "proj"
FINAL = layout.workspace_prefix(OWNER, WS)
NO_LIMITS = Limits()

BASE = [
    M("src", "dir", mode=0o755),
    M("src/main.py", data=b"print('hi')\n", mode=0o644),
    M("src/run.sh", data=b"#!/bin/sh\necho run\n", mode=0o755),
    M("README.md", data=b"# readme\n"),
    M("empty", "dir", mode=0o700),
    M("nested", "dir"),
    M("nested/deeper", "dir"),
    M("nested/deeper/leaf", "dir", mode=0o750),
    M("link-in", "symlink", target="src/main.py"),
    M("src/up", "symlink", target="../README.md"),
    M("abs-in", "symlink", target="/workspace/src"),
]


def final_key(path: str) -> str:
    return layout.file_key(OWNER, WS, path)


def stage(
    store: ObjectStore,
    members: list[M],
    previous: dict[str, Entry],
    save_id: str,
    limits: Limits = NO_LIMITS,
    *,
    trust_mtimes_before: float = math.inf,
) -> SaveResult:
    prefix = layout.staging_prefix(OWNER, WS, save_id)
    return stage_from_container(
        container_tar(members),
        previous,
        store,
        prefix,
        limits,
        trust_mtimes_before=trust_mtimes_before,
    )


def save(
    store: ObjectStore, members: list[M], previous: dict[str, Entry], save_id: str
) -> tuple[SaveResult, dict[str, Entry]]:
    result = stage(store, members, previous, save_id)
    return result, promote(store, result, previous, final_key)


def replaced(members: list[M], *changes: M) -> list[M]:
    names = {change.name for change in changes}
    return [m for m in members if m.name not in names] + list(changes)


def test_first_save_uploads_every_file_and_marks_empty_dirs(store: ObjectStore) -> None:
    result, manifest = save(store, BASE, {}, "s1")
    assert sorted(result.uploaded) == ["README.md", "src/main.py", "src/run.sh"]
    assert result.unchanged == 0 and result.deleted == [] and result.skipped == []
    assert result.bytes_uploaded == sum(len(m.data) for m in BASE)
    assert all(key.startswith(f"{OWNER}/.ccd-staging/{WS}/s1/") for key in result.staged_keys)

    assert contents(store, FINAL) == {
        final_key("README.md"): b"# readme\n",
        final_key("src/main.py"): b"print('hi')\n",
        final_key("src/run.sh"): b"#!/bin/sh\necho run\n",
        FINAL + "empty/": b"",
        FINAL + "nested/deeper/leaf/": b"",
    }
    assert keys(store, f"{OWNER}/.ccd-staging/") == []

    main = manifest["src/main.py"]
    assert main.object_key == final_key("src/main.py")
    assert main.size == 12 and main.mode == 0o644 and main.mtime == MTIME
    assert store.stat(final_key("src/main.py")).metadata["sha256"] == main.sha256
    assert manifest["src/run.sh"].mode == 0o755
    assert manifest["empty"] == Entry("empty", "dir", 0, 0o700, MTIME)
    assert manifest["link-in"].kind == "symlink"
    assert manifest["link-in"].link_target == "src/main.py"
    assert manifest["abs-in"].link_target == "/workspace/src"


def test_second_save_uploads_only_what_changed(store: ObjectStore) -> None:
    _, first = save(store, BASE, {}, "s1")
    changed = replaced(BASE, M("src/main.py", data=b"print('bye')\n", mtime=MTIME + 5))
    result, second = save(store, changed, first, "s2")
    assert result.uploaded == ["src/main.py"]
    assert len(result.staged_keys) == 1
    assert result.unchanged == 2
    assert second["src/main.py"].sha256 != first["src/main.py"].sha256
    assert second["README.md"] == first["README.md"]
    with store.open(final_key("src/main.py")) as body:
        assert body.read() == b"print('bye')\n"


def test_a_mode_or_mtime_only_change_uploads_nothing(store: ObjectStore) -> None:
    _, first = save(store, BASE, {}, "s1")
    same_bytes = replaced(
        BASE,
        M("src/main.py", data=b"print('hi')\n", mode=0o600, mtime=MTIME + 60),
        M("README.md", data=b"# readme\n", mode=0o640),
    )
    result, second = save(store, same_bytes, first, "s2")
    assert result.uploaded == [] and result.staged_keys == []
    assert result.unchanged == 3
    assert second["src/main.py"].mode == 0o600
    assert second["src/main.py"].mtime == MTIME + 60
    assert second["README.md"].mode == 0o640
    assert second["src/main.py"].object_key == first["src/main.py"].object_key


def test_same_size_new_bytes_are_hashed_then_uploaded(store: ObjectStore) -> None:
    _, first = save(store, BASE, {}, "s1")
    same_size = replaced(BASE, M("README.md", data=b"# README\n", mtime=MTIME + 1))
    result, _ = save(store, same_size, first, "s2")
    assert result.uploaded == ["README.md"]
    with store.open(final_key("README.md")) as body:
        assert body.read() == b"# README\n"


def test_same_size_and_mtime_is_trusted_only_before_the_last_save_began(
    store: ObjectStore,
) -> None:
    _, first = save(store, BASE, {}, "s1")
    sneaky = replaced(BASE, M("README.md", data=b"# README\n"))  # same size, same mtime
    assert stage(store, sneaky, first, "s2", trust_mtimes_before=MTIME + 1).uploaded == []
    # Written again in the second the last save read it: its mtime cannot tell.
    racy = stage(store, sneaky, first, "s3", trust_mtimes_before=MTIME)
    assert racy.uploaded == ["README.md"]
    assert stage(store, sneaky, first, "s4", trust_mtimes_before=-math.inf).uploaded == [
        "README.md"
    ]
    # A racy file that did not change is read (hashed) but not uploaded again.
    assert stage(store, BASE, first, "s5", trust_mtimes_before=MTIME).uploaded == []


def test_a_save_trusts_no_mtime_in_the_seconds_it_began() -> None:
    began = datetime(2026, 12, 4, 12, 0, 0, 500_000, tzinfo=UTC)
    assert trust_mtimes_before(began) == int(began.timestamp()) - 2  # the clocks' allowance
    assert trust_mtimes_before(None) == -math.inf  # never recorded: trust none


def test_deleted_files_and_dirs_are_removed_on_promote(store: ObjectStore) -> None:
    _, first = save(store, BASE, {}, "s1")
    fewer = [m for m in BASE if m.name not in {"README.md", "empty", "link-in"}]
    fewer.append(M("nested/deeper/leaf/now-full", data=b"x"))
    result, second = save(store, fewer, first, "s2")
    assert result.deleted == ["README.md", "empty", "link-in"]
    assert set(second) == set(first) - {"README.md", "empty", "link-in"} | {
        "nested/deeper/leaf/now-full"
    }
    assert keys(store, FINAL) == [
        final_key("nested/deeper/leaf/now-full"),
        final_key("src/main.py"),
        final_key("src/run.sh"),
    ]


def test_a_file_that_becomes_a_directory(store: ObjectStore) -> None:
    _, first = save(store, [M("thing", data=b"file")], {}, "s1")
    _, second = save(store, [M("thing", "dir"), M("thing/inner", data=b"in")], first, "s2")
    assert second["thing"].kind == "dir"
    assert keys(store, FINAL) == [final_key("thing/inner")]
    _, third = save(store, [M("thing", data=b"file again")], second, "s3")
    assert contents(store, FINAL) == {final_key("thing"): b"file again"}
    assert third["thing"].kind == "file"


def test_round_trip_through_write_tar(store: ObjectStore) -> None:
    _, manifest = save(store, BASE, {}, "s1")
    out = io.BytesIO()
    written = write_tar(manifest, opener(store), out, prefix="workspace/")
    assert written == len(out.getvalue())
    restored = read_tar(out.getvalue())

    names = list(restored)
    assert names[0] == "workspace"
    for name in names:  # every directory comes before what it holds
        parent = name.rsplit("/", 1)[0]
        assert parent in names[: names.index(name)] or name == "workspace"
    for info, _ in restored.values():
        assert (info.uid, info.gid) == (10001, 10001)

    again = stage_from_container(
        iter([out.getvalue()]), {}, store, layout.staging_prefix(OWNER, WS, "s2"), NO_LIMITS
    )
    assert again.skipped == []
    assert {
        path: (e.kind, e.size, e.mode, e.mtime, e.sha256, e.link_target)
        for path, e in again.entries.items()
    } == {
        path: (e.kind, e.size, e.mode, e.mtime, e.sha256, e.link_target)
        for path, e in manifest.items()
    }
    assert restored["workspace/src/run.sh"][1] == b"#!/bin/sh\necho run\n"
    assert restored["workspace/src/run.sh"][0].mode == 0o755
    assert restored["workspace/empty"][0].isdir()
    assert restored["workspace/nested/deeper/leaf"][0].mode == 0o750
    assert restored["workspace/src/up"][0].linkname == "../README.md"


def test_write_tar_gzip_without_prefix(store: ObjectStore) -> None:
    _, manifest = save(store, BASE, {}, "s1")
    out = io.BytesIO()
    write_tar(manifest.values(), opener(store), out, gzip=True)
    restored = read_tar(out.getvalue(), gzip=True)
    assert restored["src/main.py"][1] == b"print('hi')\n"
    assert "workspace" not in restored


def test_write_tar_refuses_an_object_that_does_not_match(store: ObjectStore) -> None:
    _, manifest = save(store, BASE, {}, "s1")
    store.put_bytes(final_key("src/main.py"), b"print('XX')\n")  # same size, other bytes
    with pytest.raises(ContentMismatch, match="sha256"):
        write_tar(manifest, opener(store), io.BytesIO())
    store.put_bytes(final_key("src/main.py"), b"short")
    with pytest.raises((ContentMismatch, tarfile.TarError, OSError)):
        write_tar(manifest, opener(store), io.BytesIO())


def test_a_restore_cut_short_is_never_a_valid_archive(store: ObjectStore) -> None:
    _, manifest = save(store, BASE, {}, "s1")
    store.delete_many([final_key("src/run.sh")])  # the last file written
    out = io.BytesIO()
    with pytest.raises(ObjectMissing):
        write_tar(manifest, opener(store), out, gzip=True)
    with pytest.raises((tarfile.TarError, EOFError)):
        read_tar(out.getvalue(), gzip=True)


def test_escaping_symlinks_and_special_files_are_skipped(store: ObjectStore) -> None:
    members = [
        *BASE,
        M("etc", "symlink", target="/etc"),
        M("src/out", "symlink", target="../../x"),
        M("trick", "symlink", target="src/../.."),
        M("pipe", "fifo"),
        M("tty", "chr"),
        M("bad\\name", data=b"x"),
    ]
    result = stage(store, members, {}, "s1")
    skipped = dict(result.skipped)
    assert set(skipped) == {
        "workspace/etc",
        "workspace/src/out",
        "workspace/trick",
        "workspace/pipe",
        "workspace/tty",
        "workspace/bad\\name",
    }
    assert "leaves the workspace" in skipped["workspace/etc"]
    assert skipped["workspace/pipe"] == "is a fifo"
    assert skipped["workspace/tty"] == "is a device"
    assert "backslash" in skipped["workspace/bad\\name"]
    assert "etc" not in result.entries and "pipe" not in result.entries


def test_hard_links_inside_become_copies(store: ObjectStore) -> None:
    members = [
        M("objects", "dir"),
        M("objects/pack", data=b"packdata"),
        M("clone", "dir"),
        M("clone/pack", "hardlink", target="workspace/objects/pack"),
        M("out", "hardlink", target="/etc/passwd"),
    ]
    result, manifest = save(store, members, {}, "s1")
    assert result.uploaded == ["objects/pack"]
    assert dict(result.skipped).keys() == {"workspace/out"}
    assert manifest["clone/pack"].sha256 == manifest["objects/pack"].sha256
    with store.open(final_key("clone/pack")) as body:
        assert body.read() == b"packdata"


def test_missing_parent_dirs_are_added(store: ObjectStore) -> None:
    result = stage(store, [M("a/b/c.txt", data=b"c")], {}, "s1")
    assert result.entries["a"].kind == "dir" and result.entries["a/b"].kind == "dir"


@pytest.mark.parametrize(
    ("limits", "limit"),
    [(Limits(max_files=len(BASE) + 3), "max_files"), (Limits(max_bytes=100), "max_bytes")],
)
def test_limits_abort_midway_and_leave_the_previous_state(
    store: ObjectStore, limits: Limits, limit: str
) -> None:
    _, first = save(store, BASE, {}, "s1")
    before = contents(store, FINAL)
    bigger = replaced(BASE, M("src/main.py", data=b"changed!!!!!\n", mtime=MTIME + 9)) + [
        M(f"more/f{index}", data=b"y" * 40) for index in range(10)
    ]
    with pytest.raises(WorkspaceTooLarge) as caught:
        stage(store, bigger, first, "s2", limits)
    assert caught.value.limit == limit
    assert str(caught.value.value) in str(caught.value)
    assert keys(store, f"{OWNER}/.ccd-staging/") == []
    assert contents(store, FINAL) == before


def test_a_broken_container_stream_leaves_nothing_staged(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged: list[str] = []
    put_stream = store.put_stream

    def spy(key: str, *args: object, **kwargs: object) -> str:
        staged.append(key)
        return put_stream(key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "put_stream", spy)

    def broken() -> Iterator[bytes]:
        data = b"".join(container_tar([M("a", data=b"a" * 5000), M("b", data=b"b" * 50_000)]))
        yield data[:20_000]  # 'a' is staged, 'b' is cut off
        raise ConnectionError("engine went away")

    with pytest.raises(ConnectionError):
        stage_from_container(broken(), {}, store, layout.staging_prefix(OWNER, WS, "s1"), NO_LIMITS)
    assert staged == [layout.staging_key(OWNER, WS, "s1", p) for p in ("a", "b")]
    assert keys(store, "") == []


@pytest.mark.parametrize("damage", ["cut between members", "corrupt header", "no end marker"])
def test_a_truncated_archive_is_an_error_not_fewer_files(store: ObjectStore, damage: str) -> None:
    _, first = save(store, BASE, {}, "s1")
    whole = b"".join(container_tar([M("a", data=b"a" * 1000), M("b", data=b"b" * 1000)]))
    with tarfile.open(fileobj=io.BytesIO(whole)) as parsed:
        b_starts = parsed.getmember("workspace/b").offset
        b_ends = parsed.getmember("workspace/b").offset_data + 1024
    damaged = {
        "cut between members": whole[:b_starts],
        "corrupt header": whole[:b_starts] + b"\xff" * 512 + whole[b_starts + 512 :],
        "no end marker": whole[:b_ends],
    }[damage]
    with pytest.raises(tarfile.ReadError):
        stage_from_container(
            iter([damaged]), first, store, layout.staging_prefix(OWNER, WS, "s2"), NO_LIMITS
        )
    assert keys(store, f"{OWNER}/.ccd-staging/") == []


def test_promote_is_idempotent(store: ObjectStore) -> None:
    _, first = save(store, BASE, {}, "s1")
    changed = replaced(
        [m for m in BASE if m.name != "README.md"],
        M("src/main.py", data=b"print('v2')\n", mtime=MTIME + 1),
        M("new.txt", data=b"new"),
    )
    result = stage(store, changed, first, "s2")
    once = promote(store, result, first, final_key)
    snapshot = contents(store, "")
    twice = promote(store, result, first, final_key)
    assert once == twice
    assert contents(store, "") == snapshot
    # After a crash the caller may know only the committed manifest: sweep instead.
    thrice = promote(store, result.entries, None, final_key, sweep_prefix=FINAL)
    assert thrice == once
    assert contents(store, "") == snapshot


def test_recovery_promote_from_the_committed_manifest(store: ObjectStore) -> None:
    _, first = save(store, BASE, {}, "s1")
    changed = [m for m in BASE if m.name != "README.md"] + [M("new.txt", data=b"new")]
    result = stage(store, changed, first, "s2")
    # Crash: the manifest was committed, promote never ran. Recover with only the manifest.
    recovered = promote(store, result.entries, None, final_key, sweep_prefix=FINAL)
    assert recovered["new.txt"].object_key == final_key("new.txt")
    assert final_key("README.md") not in keys(store, FINAL)
    assert keys(store, f"{OWNER}/.ccd-staging/") == []


def test_promote_reports_bytes_that_are_really_lost(store: ObjectStore) -> None:
    result = stage(store, [M("a", data=b"a")], {}, "s1")
    store.delete_many(result.staged_keys)
    with pytest.raises(StagedObjectLost):
        promote(store, result, {}, final_key)


def test_promote_needs_to_know_what_to_delete(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        promote(store, {}, None, final_key)
