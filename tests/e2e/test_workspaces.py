"""Workspaces in S3 end to end: real CLI writing files, saves, restores, resume, file API."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
import time
import uuid
from collections.abc import Iterator

import pytest

from gateway.store.objects import ObjectStore
from tests.client import Api, is_claude, marker, mint_token, read_until
from tests.fake_anthropic import all_text, text, tool_use
from tests.stack import S3_ACCESS_KEY, S3_SECRET_KEY, Gateway, run_gateway

pytestmark = pytest.mark.docker


def bucket_of(gateway: Gateway, s3_endpoint: str) -> ObjectStore:
    return ObjectStore(
        s3_endpoint,
        S3_ACCESS_KEY,
        S3_SECRET_KEY,
        gateway.env["S3_BUCKET"],
        secure=False,
        region="us-east-1",
    )


def keys(store: ObjectStore, prefix: str) -> set[str]:
    return {info.key[len(prefix) :] for info in store.list(prefix)}


def exec_in(docker_client, container_id: str, script: str) -> str:
    code, output = docker_client.containers.get(container_id).exec_run(["sh", "-c", script])
    assert code == 0, output
    return output.decode()


async def run_bash(api: Api, fake_api, session_id: str, command: str) -> str:
    """Have the real CLI run ``command`` with its Bash tool; returns what the tool printed."""
    tag = marker("w")
    fake_api.on(tag, tool_use("Bash", {"command": command}), text(f"done {tag}"))
    reply = await api.chat(session_id, f"please run it {tag}", timeout=120)
    assert reply["result"]["result"] == f"done {tag}", reply
    return all_text(fake_api.requests_for(tag)[-1])


WRITE_FILES = (
    "mkdir -p src/pkg empty/nested && printf 'print(42)\\n' > src/main.py"
    " && printf '#!/bin/sh\\necho hi\\n' > run.sh && chmod 755 run.sh"
    " && head -c 300000 /dev/urandom > src/pkg/blob.bin && chmod 600 src/pkg/blob.bin"
    " && ln -s src/main.py link.py"
)
FINGERPRINT = (
    "cd /workspace && find . -mindepth 1 | sort | while read -r p; do"
    ' if [ -L "$p" ]; then echo "$p link $(readlink "$p")";'
    ' elif [ -d "$p" ]; then echo "$p dir $(stat -c %a "$p")";'
    ' else echo "$p $(stat -c %a "$p") $(sha256sum < "$p" | cut -c1-64)"; fi; done'
)


async def test_files_survive_the_container_byte_for_byte(
    api_for, fake_api, docker_client, gateway, s3_endpoint
) -> None:
    owner = f"ws-{marker('w')}"
    alice = api_for(owner)
    project = f"proj-{uuid.uuid4().hex[:8]}"
    first = await alice.create(workspace={"type": "persistent", "id": project})
    assert first["workspace"] == {
        "id": project,
        "type": "persistent",
        "read_only": False,
        "unsaved": False,
    }
    await run_bash(alice, fake_api, first["id"], WRITE_FILES)
    before = exec_in(docker_client, first["container_id"], FINGERPRINT)
    await alice.stop(first["id"])

    # one object per file at <owner>/<workspace>/<path>, empty dirs as markers
    store = bucket_of(gateway, s3_endpoint)
    stored = keys(store, f"{owner}/{project}/")
    assert {"src/main.py", "run.sh", "src/pkg/blob.bin", "empty/nested/"} <= stored
    assert "link.py" not in stored  # links live in the manifest only

    second = await alice.create(workspace={"type": "persistent", "id": project})
    await alice.wait_status(second["id"], "ready")
    after = exec_in(docker_client, second["container_id"], FINGERPRINT)
    assert after == before
    assert "./run.sh 755" in after and "./src/pkg/blob.bin 600" in after
    assert "./link.py link src/main.py" in after and "./empty/nested dir" in after
    owners = exec_in(docker_client, second["container_id"], "stat -c %u /workspace/run.sh")
    assert owners.strip() == "10001"
    # and the real CLI's own tools see them
    seen = await run_bash(alice, fake_api, second["id"], "./run.sh && python3 src/main.py")
    assert "hi" in seen and "42" in seen
    await alice.stop(second["id"])


async def test_saves_upload_only_what_changed(api_for, fake_api, gateway, s3_endpoint) -> None:
    owner = f"ws-{marker('w')}"
    alice = api_for(owner)
    project = f"proj-{uuid.uuid4().hex[:8]}"
    session = await alice.create(workspace={"type": "persistent", "id": project})
    await run_bash(
        alice, fake_api, session["id"], "for i in 1 2 3 4 5; do echo file $i > f$i.txt; done"
    )
    snap = f"/api/v1/sessions/{session['id']}/workspace/snapshot"
    first = (await alice.http.post(snap)).json()
    assert first["uploaded"] == 5 and first["deleted"] == 0
    await run_bash(alice, fake_api, session["id"], "echo changed >> f3.txt && rm f5.txt")
    second = (await alice.http.post(snap)).json()
    assert (second["uploaded"], second["deleted"], second["unchanged"]) == (1, 1, 3)
    third = (await alice.http.post(snap)).json()
    assert (third["uploaded"], third["deleted"]) == (0, 0)
    store = bucket_of(gateway, s3_endpoint)
    assert keys(store, f"{owner}/{project}/") == {f"f{i}.txt" for i in (1, 2, 3, 4)}
    with store.open(f"{owner}/{project}/f3.txt") as data:
        assert data.read() == b"file 3\nchanged\n"
    info = (await alice.http.get(f"/api/v1/workspaces/{project}")).json()
    assert info["file_count"] == 4 and info["sessions"] == [session["id"]]
    await alice.stop(session["id"])


async def test_a_file_written_again_in_the_second_a_save_read_it_is_saved_again(
    api_for, docker_client
) -> None:
    """Mtimes are whole seconds: a same-size rewrite within the second the last save read the
    file keeps its size and mtime. The next save must read it rather than keep the old bytes."""
    alice = api_for(f"ws-{marker('w')}")
    project = f"proj-{uuid.uuid4().hex[:8]}"
    session = await alice.create(workspace={"type": "persistent", "id": project})
    await alice.wait_status(session["id"], "ready")
    container = session["container_id"]
    # An mtime not before the second the save begins, as a write in that second gets (set
    # ahead here, so that nothing depends on how fast this machine is).
    second = int(time.time()) + 60
    write = "echo 'version {}' > /workspace/notes.txt && touch -d @{} /workspace/notes.txt"
    exec_in(docker_client, container, write.format("one", second))
    snap = f"/api/v1/sessions/{session['id']}/workspace/snapshot"
    assert (await alice.http.post(snap)).json()["uploaded"] == 1
    exec_in(docker_client, container, write.format("two", second))
    again = (await alice.http.post(snap)).json()
    assert (again["uploaded"], again["unchanged"]) == (1, 0), again
    got = await alice.http.get(f"/api/v1/workspaces/{project}/files/notes.txt")
    assert got.status_code == 200 and got.content == b"version two\n"
    # Unchanged, it is read again but not uploaded again.
    third = (await alice.http.post(snap)).json()
    assert (third["uploaded"], third["unchanged"]) == (0, 1), third
    await alice.stop(session["id"])


async def test_resume_continues_the_conversation_in_a_new_container(
    api_for, fake_api, docker_client, gateway, s3_endpoint
) -> None:
    alice = api_for("alice")
    first_tag, later_tag = marker("w"), marker("w")
    fake_api.on(first_tag, text(f"I will remember {first_tag}"))
    fake_api.on(later_tag, text("I remember"))
    session = await alice.create(prompt=f"remember {first_tag}")
    sid = session["id"]
    await alice.wait_status(sid, "ready")
    await run_bash(alice, fake_api, sid, "echo kept > notes.txt")
    old_container = session["container_id"]
    async with alice.stream(sid) as ws:
        history = await read_until(
            ws,
            lambda e: (
                e["event"].get("type") == "status"
                and e["event"].get("status") == "ready"
                and e["id"] > "0"
            ),
        )
    await alice.stop(sid)
    transcript_keys = keys(bucket_of(gateway, s3_endpoint), "alice/.ccd-sessions/" + sid + "/")
    assert len(transcript_keys) == 1 and next(iter(transcript_keys)).endswith(".jsonl")

    resumed = await alice.http.post(f"/api/v1/sessions/{sid}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "starting"
    ready = await alice.wait_status(sid, "ready")
    assert ready["container_id"] != old_container
    assert exec_in(docker_client, ready["container_id"], "cat /workspace/notes.txt") == "kept\n"
    reply = await alice.chat(sid, f"what was it? {later_tag}")
    assert reply["result"]["result"] == "I remember"
    assert reply["turn"]["seq"] == 3  # the numbering goes on too
    earlier = all_text(fake_api.requests_for(later_tag)[-1])
    assert f"remember {first_tag}" in earlier and f"I will remember {first_tag}" in earlier
    # the stream's cursor continues: the resumed container's events come after the old ones
    async with alice.stream(sid, after=history[-1]["id"]) as ws:
        later = await read_until(
            ws, lambda e: is_claude("result")(e) and e["event"].get("result") == "I remember"
        )
    assert all(e["id"] > history[-1]["id"] for e in later)
    assert any(e["event"].get("resumed") is True for e in later)
    conflict = await alice.http.post(f"/api/v1/sessions/{sid}/resume")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "session_not_resumable"
    await alice.stop(sid)


async def test_one_writer_per_workspace_and_read_only_copies(api_for, fake_api) -> None:
    alice = api_for(f"ws-{marker('w')}")
    project = f"proj-{uuid.uuid4().hex[:8]}"
    writer = await alice.create(workspace={"type": "persistent", "id": project})
    refused = await alice.create(expect=409, workspace={"type": "persistent", "id": project})
    assert refused["error"]["code"] == "workspace_in_use"
    assert writer["id"] in refused["error"]["message"]
    reader = await alice.create(workspace={"type": "persistent", "id": project, "read_only": True})
    assert reader["workspace"]["read_only"] is True
    snapshot = await alice.http.post(f"/api/v1/sessions/{reader['id']}/workspace/snapshot")
    assert snapshot.status_code == 409
    assert snapshot.json()["error"]["code"] == "workspace_read_only"
    deleting = await alice.http.delete(f"/api/v1/workspaces/{project}")
    assert deleting.status_code == 409
    await alice.stop(writer["id"])
    await alice.stop(reader["id"])
    assert (await alice.http.delete(f"/api/v1/workspaces/{project}")).status_code == 204
    assert (await alice.http.get(f"/api/v1/workspaces/{project}")).status_code == 404


async def test_a_child_inherits_a_copy_of_its_parents_files(
    api_for, fake_api, docker_client
) -> None:
    alice = api_for("alice")
    child_tag = marker("w")
    fake_api.on(child_tag, text("child here"))
    parent = await alice.create()
    await run_bash(alice, fake_api, parent["id"], "mkdir -p data && echo from-parent > data/x")
    child = (
        await alice.http.post(
            f"/api/v1/sessions/{parent['id']}/spawn",
            json={"prompt": f"look {child_tag}", "workspace": {"type": "inherit"}},
        )
    ).json()
    await alice.wait_status(child["id"], "ready", "busy")
    assert exec_in(docker_client, child["container_id"], "cat /workspace/data/x") == "from-parent\n"
    # a copy: the child's changes do not reach the parent
    exec_in(docker_client, child["container_id"], "echo child > /workspace/data/x")
    assert (
        exec_in(docker_client, parent["container_id"], "cat /workspace/data/x") == "from-parent\n"
    )
    assert child["workspace"]["type"] == "ephemeral"
    await alice.stop(parent["id"])


async def test_file_api_of_stored_workspaces(api_for) -> None:
    alice = api_for(f"ws-{marker('w')}")
    name = f"docs-{uuid.uuid4().hex[:8]}"
    base = f"/api/v1/workspaces/{name}"
    put = await alice.http.put(f"{base}/files/a/b/readme.md", content=b"# hello\n")
    assert put.status_code == 201, put.text
    assert put.json()["sha256"] == hashlib.sha256(b"# hello\n").hexdigest()
    script = await alice.http.put(f"{base}/files/bin/go.sh?mode=0755", content=b"#!/bin/sh\n")
    assert script.json()["mode"] == "0755"
    listing = (await alice.http.get(f"{base}/files")).json()["files"]
    assert [(f["path"], f["type"]) for f in listing] == [
        ("a", "dir"),
        ("a/b", "dir"),
        ("a/b/readme.md", "file"),
        ("bin", "dir"),
        ("bin/go.sh", "file"),
    ]
    # pages read from the database: a prefix (LIKE wildcards in it are literal) and a cursor
    for name in ("x_y/f", "xzy/g"):
        assert (await alice.http.put(f"{base}/files/{name}", content=b"")).status_code == 201
    only = (await alice.http.get(f"{base}/files?prefix=x_y")).json()["files"]
    assert [f["path"] for f in only] == ["x_y", "x_y/f"]
    first = (await alice.http.get(f"{base}/files?limit=2")).json()
    assert [f["path"] for f in first["files"]] == ["a", "a/b"]
    rest = (await alice.http.get(f"{base}/files?after={first['next_after']}&limit=2")).json()
    assert [f["path"] for f in rest["files"]] == ["a/b/readme.md", "bin"]
    for name in ("x_y", "xzy"):
        assert (await alice.http.delete(f"{base}/files/{name}")).status_code == 204
    got = await alice.http.get(f"{base}/files/a/b/readme.md")
    assert got.status_code == 200 and got.content == b"# hello\n"
    assert (await alice.http.get(f"{base}/files/a")).json()["error"]["code"] == "not_a_file"
    archive = await alice.http.get(f"{base}/archive")
    assert archive.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/go.sh"].mode == 0o755
    assert tar is not None and members["a/b/readme.md"].size == 8
    assert (await alice.http.delete(f"{base}/files/a")).status_code == 204
    remaining = [f["path"] for f in (await alice.http.get(f"{base}/files")).json()["files"]]
    assert remaining == ["bin", "bin/go.sh"]
    assert (await alice.http.get(f"{base}/files/a/b/readme.md")).status_code == 404

    # replace everything from a tar.gz
    upload = _targz({"new/one.txt": b"1", "two.txt": b"22"})
    replaced = await alice.http.post(f"{base}/archive", content=upload)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["file_count"] == 3
    paths = [f["path"] for f in (await alice.http.get(f"{base}/files")).json()["files"]]
    assert paths == ["new", "new/one.txt", "two.txt"]
    # another owner sees nothing
    other = (await api_for("mallory").http.get(base)).json()
    assert other["error"]["code"] == "workspace_not_found"


@pytest.mark.parametrize(
    "path", ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "a%2F..%2F..%2Fx", "a%00b"]
)
async def test_traversal_in_stored_paths_is_refused(api_for, path) -> None:
    alice = api_for(f"ws-{marker('w')}")
    base = f"/api/v1/workspaces/trav-{uuid.uuid4().hex[:6]}/files/"
    for method in ("PUT", "GET", "DELETE"):  # PUT creates the workspace; then all look
        response = await alice.http.request(method, base + path, content=b"x")
        assert response.status_code == 422, (method, path, response.text)
        assert response.json()["error"]["code"] == "unsafe_path"


@pytest.mark.parametrize(
    ("name", "kind", "target"),
    [
        ("../evil.txt", tarfile.REGTYPE, None),
        ("/etc/cron.d/evil", tarfile.REGTYPE, None),
        ("ok/../../evil", tarfile.REGTYPE, None),
        ("escape", tarfile.SYMTYPE, "/etc"),
        ("up", tarfile.SYMTYPE, "../../.."),
        ("hard", tarfile.LNKTYPE, "/etc/passwd"),
        ("dev", tarfile.CHRTYPE, None),
    ],
)
async def test_archives_that_escape_are_refused_and_change_nothing(
    api_for, name, kind, target
) -> None:
    alice = api_for(f"ws-{marker('w')}")
    base = f"/api/v1/workspaces/arc-{uuid.uuid4().hex[:6]}"
    assert (await alice.http.put(f"{base}/files/keep.txt", content=b"safe")).status_code == 201
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        good = tarfile.TarInfo("fine.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo(name)
        bad.type = kind
        if target:
            bad.linkname = target
        tar.addfile(bad, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    response = await alice.http.post(f"{base}/archive", content=buffer.getvalue())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "unsafe_archive"
    files = [f["path"] for f in (await alice.http.get(f"{base}/files")).json()["files"]]
    assert files == ["keep.txt"]


async def test_live_files_of_a_running_session(api_for, fake_api, docker_client) -> None:
    alice = api_for("alice")
    session = await alice.create()
    await alice.wait_status(session["id"], "ready")
    base = f"/api/v1/sessions/{session['id']}/files"
    put = await alice.http.put(f"{base}/notes/today.md?mode=0640", content=b"live!")
    assert put.status_code == 201, put.text
    container = session["container_id"]
    assert exec_in(docker_client, container, "cat /workspace/notes/today.md") == "live!"
    assert exec_in(docker_client, container, "stat -c '%a %u' /workspace/notes/today.md") == (
        "640 10001\n"
    )
    assert (await alice.http.get(f"{base}/notes/today.md")).content == b"live!"
    listing = (await alice.http.get(f"{base}?prefix=notes")).json()["files"]
    assert [(f["path"], f["type"], f["mode"]) for f in listing] == [
        ("notes/today.md", "file", "0640")
    ]
    # symlinks that lead out of the workspace are refused, in either direction
    exec_in(docker_client, container, "ln -s /etc /workspace/esc && ln -s /tmp /workspace/out")
    for request in (
        alice.http.get(f"{base}/esc/passwd"),
        alice.http.put(f"{base}/out/dropped", content=b"x"),
        alice.http.get(f"{base}/..%2F..%2Fetc%2Fpasswd"),
    ):
        response = await request
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unsafe_path"
    assert (await alice.http.delete(f"{base}/esc")).status_code == 204  # the link, not /etc
    assert exec_in(
        docker_client, container, "test -d /etc && test ! -e /workspace/esc; echo $?"
    ) == ("0\n")
    assert (await alice.http.delete(f"{base}/notes")).status_code == 204
    assert (await alice.http.get(f"{base}/notes/today.md")).status_code == 404
    await alice.stop(session["id"])
    gone = await alice.http.get(base)
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "session_not_running"


# -- limits and failed saves, on a gateway with a small workspace limit ---------------------------


@pytest.fixture(scope="module")
def small_gateway(infra, fake_api, s3_endpoint, tmp_path_factory) -> Iterator[Gateway]:
    with run_gateway(
        infra,
        fake_api.base_url,
        s3_endpoint,
        tmp_path_factory.mktemp("small"),
        WORKSPACE_MAX_BYTES=str(1_000_000),
    ) as gw:
        yield gw


async def test_a_save_that_fails_midway_keeps_the_last_good_state(
    small_gateway, fake_api, docker_client
) -> None:
    alice = Api(small_gateway.url, mint_token(small_gateway.jwt_secret, "alice"))
    project = f"proj-{uuid.uuid4().hex[:8]}"
    try:
        first = await alice.create(workspace={"type": "persistent", "id": project})
        await run_bash(
            alice,
            fake_api,
            first["id"],
            "for i in 1 2 3; do head -c 100000 /dev/urandom > a$i; done",
        )
        good = exec_in(docker_client, first["container_id"], "cd /workspace && sha256sum a*")
        snap = f"/api/v1/sessions/{first['id']}/workspace/snapshot"
        assert (await alice.http.post(snap)).json()["uploaded"] == 3
        # now change a file and add more than the limit allows: the save aborts midway
        await run_bash(
            alice,
            fake_api,
            first["id"],
            "echo changed > a1 && head -c 1200000 /dev/urandom > zz-big",
        )
        refused = await alice.http.post(snap)
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "workspace_too_large"
        assert "max_bytes=1000000" in refused.json()["error"]["message"]
        await alice.stop(first["id"])  # the save at stop is refused the same way
        second = await alice.create(workspace={"type": "persistent", "id": project})
        await alice.wait_status(second["id"], "ready")
        restored = exec_in(docker_client, second["container_id"], "cd /workspace && sha256sum a*")
        assert restored == good
        assert "zz-big" not in exec_in(docker_client, second["container_id"], "ls /workspace")
        await alice.stop(second["id"])
    finally:
        await alice.aclose()


def _targz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_a_storage_outage_at_stop_keeps_the_container_until_saved(
    infra, fake_api, s3_endpoint, tmp_path, docker_client
) -> None:
    from tests.tcp_proxy import tcp_proxy

    with (
        tcp_proxy(s3_endpoint) as proxy,
        run_gateway(infra, fake_api.base_url, f"127.0.0.1:{proxy.port}", tmp_path) as gw,
    ):
        alice = Api(gw.url, mint_token(gw.jwt_secret, "alice"))
        project = f"proj-{uuid.uuid4().hex[:8]}"
        try:
            session = await alice.create(workspace={"type": "persistent", "id": project})
            await alice.wait_status(session["id"], "ready")
            exec_in(docker_client, session["container_id"], "echo precious > /workspace/work.txt")
            proxy.down()
            stopped = await alice.stop(session["id"])
            assert stopped["status"] == "stopped"
            assert stopped["workspace"]["unsaved"] is True
            container = docker_client.containers.get(session["container_id"])  # still there
            assert container.status == "exited"
            proxy.up()
            deadline = asyncio.get_running_loop().time() + 30
            while (await alice.get(session["id"]))["workspace"]["unsaved"]:
                assert asyncio.get_running_loop().time() < deadline, "never saved"
                await asyncio.sleep(0.5)
            got = await alice.http.get(f"/api/v1/workspaces/{project}/files/work.txt")
            assert got.content == b"precious\n"
            with pytest.raises(Exception, match="No such container"):
                docker_client.containers.get(session["container_id"])
        finally:
            await alice.aclose()


async def test_a_delete_saves_only_the_workspaces_that_outlive_it(
    api_for, gateway, docker_client
) -> None:
    """Deleting a session deletes its own workspace: saving that first would only be undone
    (and would make the delete wait on the upload). A persistent workspace outlives the
    session, so a delete still saves it."""
    alice = api_for(f"ws-{marker('w')}")
    project = f"proj-{uuid.uuid4().hex[:8]}"
    own = await alice.create()
    shared = await alice.create(workspace={"type": "persistent", "id": project})
    for session in (own, shared):
        await alice.wait_status(session["id"], "ready")
        exec_in(docker_client, session["container_id"], "echo kept > /workspace/work.txt")
        assert (await alice.http.delete(f"/api/v1/sessions/{session['id']}")).status_code == 204
    got = await alice.http.get(f"/api/v1/workspaces/{project}/files/work.txt")
    assert got.content == b"kept\n"
    saves = [
        line for line in gateway.log_path.read_text().splitlines() if "saved workspace" in line
    ]
    assert any(f"of session {shared['id']} (stop)" in line for line in saves), saves
    assert not any(own["id"] in line for line in saves), saves
    missing = await alice.http.get(f"/api/v1/workspaces/session-{own['id']}")
    assert missing.status_code == 404


@pytest.mark.parametrize("body", [b"", b"not a tarball at all", b"\x1f\x8b\x08\x00garbage"])
async def test_a_corrupt_archive_is_refused_and_changes_nothing(api_for, body) -> None:
    alice = api_for(f"ws-{marker('w')}")
    base = f"/api/v1/workspaces/bad-{uuid.uuid4().hex[:6]}"
    assert (await alice.http.put(f"{base}/files/keep.txt", content=b"safe")).status_code == 201
    response = await alice.http.post(f"{base}/archive", content=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_archive"
    files = [f["path"] for f in (await alice.http.get(f"{base}/files")).json()["files"]]
    assert files == ["keep.txt"]
