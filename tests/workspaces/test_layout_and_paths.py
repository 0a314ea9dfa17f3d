"""Pure pieces: object keys (hostile owners included), path normal form, the symlink rule."""

from __future__ import annotations

import pytest

from gateway.store import layout
from gateway.store.layout import KeyTooLong, LayoutError
from gateway.workspaces.paths import UnsafePath, link_stays_inside, normalize

HOSTILE_OWNERS = [
    "../x",
    "a/b",
    "..",
    ".",
    "...",
    "%2F",
    "a%2Fb",
    "/",
    "a\\b",
    "ünïcødé",
    "用户",
    "a b",
    "tab\there",
    "nul\x00byte",
    ".ccd-staging",
    "auth0|12345",
    "bob@example.com",
]


@pytest.mark.parametrize(
    ("owner", "segment"),
    [
        ("alice", "alice"),
        ("bob@example.com", "bob@example.com"),
        ("A.b-c_d", "A.b-c_d"),
        ("../x", "..%2Fx"),
        ("a/b", "a%2Fb"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("%41", "%2541"),
        ("ü", "%C3%BC"),
        ("auth0|12345", "auth0%7C12345"),
    ],
)
def test_owner_segment_keeps_simple_names_and_encodes_the_rest(owner: str, segment: str) -> None:
    assert layout.owner_segment(owner) == segment
    assert layout.owner_from_segment(segment) == owner


def test_hostile_owners_give_distinct_single_segments() -> None:
    segments = [layout.owner_segment(owner) for owner in HOSTILE_OWNERS]
    assert len(set(segments)) == len(segments)
    for owner, segment in zip(HOSTILE_OWNERS, segments, strict=True):
        assert "/" not in segment and "\\" not in segment and "\x00" not in segment
        assert segment not in {".", ".."}
        assert segment.isascii()
        assert layout.owner_from_segment(segment) == owner
        prefix = layout.workspace_prefix(owner, "proj")
        assert prefix == f"{segment}/proj/"
        assert layout.parse_workspace_key(prefix + "src/a.py") == (owner, "proj", "src/a.py")


def test_owner_segment_refuses_empty_and_non_canonical() -> None:
    with pytest.raises(LayoutError):
        layout.owner_segment("")
    for segment in ["%2f", "a/b", "%C3", "", "%2Ex"]:
        with pytest.raises(LayoutError):
            layout.owner_from_segment(segment)


def test_keys() -> None:
    assert layout.workspace_prefix("alice", "proj") == "alice/proj/"
    assert layout.file_key("alice", "proj", "src/main.py") == "alice/proj/src/main.py"
    assert layout.dir_marker_key("alice", "proj", "empty/dir") == "alice/proj/empty/dir/"
    assert layout.staging_root("a/b", "proj") == "a%2Fb/.ccd-staging/proj/"
    assert layout.staging_prefix("alice", "proj", "s1") == "alice/.ccd-staging/proj/s1/"
    assert layout.staging_key("alice", "proj", "s1", "x/y") == "alice/.ccd-staging/proj/s1/x/y"
    assert (
        layout.transcript_key("alice", "sess-1", "0b1c2d3e-aaaa-bbbb-cccc-0123456789ab")
        == "alice/.ccd-sessions/sess-1/0b1c2d3e-aaaa-bbbb-cccc-0123456789ab.jsonl"
    )
    assert layout.relative_path("alice/proj/", "alice/proj/a/b") == "a/b"
    assert layout.relative_path("alice/proj/", "alice/proj/d/") == "d/"


@pytest.mark.parametrize("name", ["", ".x", "-x", "a/b", "..", "a" * 101, ".ccd-staging", "a b"])
def test_invalid_workspace_names_are_refused(name: str) -> None:
    with pytest.raises(LayoutError):
        layout.workspace_prefix("alice", name)


@pytest.mark.parametrize("path", ["", "/abs", "a/", "a//b", "./a", "a/../b", "..", "a\x00"])
def test_keys_refuse_paths_that_are_not_normal(path: str) -> None:
    with pytest.raises(LayoutError):
        layout.file_key("alice", "proj", path)


@pytest.mark.parametrize("value", ["", "../x", "a/b", ".hidden"])
def test_ids_are_single_segments(value: str) -> None:
    with pytest.raises(LayoutError):
        layout.staging_prefix("alice", "proj", value)
    with pytest.raises(LayoutError):
        layout.transcript_key("alice", value, "c")


def test_keys_longer_than_s3_allows_are_refused() -> None:
    with pytest.raises(KeyTooLong):
        layout.file_key("alice", "proj", "/".join(["d" * 200] * 6))


def test_foreign_keys_do_not_parse_as_workspace_keys() -> None:
    for key in ["alice/.ccd-staging/proj/s1/a", "alice/proj/", "alice", "alice/.ccd-sessions/x"]:
        with pytest.raises(LayoutError):
            layout.parse_workspace_key(key)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("a", "a"),
        ("./a//b/", "a/b"),
        ("a/./b", "a/b"),
        ("a/../b", "b"),
        ("a/b/../../c", "c"),
        ("dir/", "dir"),
        ("..a/a..", "..a/a.."),
        (".hidden/.x", ".hidden/.x"),
        ("ünï/файл.txt", "ünï/файл.txt"),
        ("with space/and+plus", "with space/and+plus"),
        ("a" * 255, "a" * 255),
    ],
)
def test_normalize_accepts(raw: str, normal: str) -> None:
    assert normalize(raw) == normal


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        (".", "empty"),
        ("./", "empty"),
        ("a/..", "empty"),
        ("/etc/passwd", "absolute"),
        ("..", "escapes"),
        ("../x", "escapes"),
        ("a/../../x", "escapes"),
        ("a\x00b", "NUL"),
        ("a\\b", "backslash"),
        ("..\\x", "backslash"),
        ("line\nbreak", "control"),
        ("del\x7f", "control"),
        ("bad\udcffbyte", "UTF-8"),
        ("a" * 256, "name longer"),
        ("/".join(["d" * 100] * 11), "longer than 1024"),
    ],
)
def test_normalize_refuses(raw: str, reason: str) -> None:
    with pytest.raises(UnsafePath, match=reason) as caught:
        normalize(raw)
    assert caught.value.code == "unsafe_path"


def test_normalize_root_only_when_allowed() -> None:
    assert normalize(".", allow_root=True) == ""
    assert normalize("./a/..", allow_root=True) == ""


@pytest.mark.parametrize(
    ("link", "target", "inside"),
    [
        ("l", "a", True),
        ("l", "a/b/c", True),
        ("l", ".", True),
        ("d/l", "..", True),
        ("d/l", "../x", True),
        ("d/e/l", "../../x", True),
        ("d/l", "./../x", True),
        ("l", "/workspace", True),
        ("l", "/workspace/", True),
        ("l", "/workspace/src/x", True),
        ("d/l", "/workspace/d/../x", False),  # '..' after a name: refused on principle
        ("l", "..", False),
        ("l", "../x", False),
        ("d/l", "../../x", False),
        ("l", "a/../x", False),
        ("l", "up/..", False),
        ("l", "/etc", False),
        ("l", "/etc/passwd", False),
        ("l", "/workspacex", False),
        ("l", "/workspace/..", False),
        ("l", "/workspace/../etc", False),
        ("l", "/", False),
        ("l", "", False),
        ("l", "a\x00", False),
    ],
)
def test_link_stays_inside(link: str, target: str, inside: bool) -> None:
    assert link_stays_inside(link, target) is inside
