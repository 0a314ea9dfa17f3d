"""The ``ccd`` command line as a user runs it (a subprocess configured by CCD_URL and
CCD_TOKEN) against the real gateway, the real CLI in real containers and the scripted fake
Anthropic API: readable and --json output, exit codes, errors as one line, attach, cp."""

from __future__ import annotations

import queue
import re
import signal
import tarfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ccd.cli.live import _send
from ccd.cli.render import Output
from ccd.errors import Conflict
from tests.client import marker
from tests.fake_anthropic import api_error, slow_text, text, tool_use

pytestmark = pytest.mark.docker

_SGR = re.compile(r"\x1b\[([0-9;]*)m")


def colours(output: str) -> list[str]:
    """The colour parameters (30-38, 90-97) of the escape sequences in ``output``."""
    found = []
    for params in _SGR.findall(output):
        for param in params.split(";"):
            if param and (30 <= int(param) <= 38 or 90 <= int(param) <= 97):
                found.append(param)
    return found


def one_error_line(stderr: str, *words: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ccd: error:"), stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], stderr


def test_create_ls_get_chat_tree_usage_stop_rm(cli_for, fake_api) -> None:
    tag = marker()
    fake_api.on(tag, tool_use("Bash", {"command": f"echo made-{tag}"}), text(f"all done {tag}"))
    cli = cli_for("cli-alice")

    created = cli.run("create", "--json", "--model", "claude-sonnet-4-5", "--wait")
    assert created.code == 0, created.stderr
    session = created.json()
    sid = session["id"]
    assert session["config"] == {"model": "claude-sonnet-4-5"}
    assert sid in [s["id"] for s in cli.run("ls", "--json").json()]
    assert cli.run("get", sid, "--json").json()["status"] == "ready"
    listed = cli.run("ls")
    assert sid in listed.stdout and "ready" in listed.stdout

    # Readable: the prompt, the tool call and its result summarised, the text, the outcome.
    chat = cli.run("chat", sid, f"make it {tag}")
    assert chat.code == 0, chat.stderr
    out = chat.stdout
    assert f"» make it {tag}" in out
    assert f"→ Bash echo made-{tag}" in out
    assert f"← made-{tag}" in out
    assert f"all done {tag}" in out
    assert re.search(r"✓ done .*\$0\.\d{4}", out), out
    assert "\x1b[" not in out  # no colour when not on a terminal

    # --json: one envelope per line, the turn's events only, the result last.
    again = cli.run("chat", sid, f"again {tag}", "--json")
    assert again.code == 0, again.stderr
    events = again.json_lines()
    assert events[0]["event"]["type"] == "turn_started"
    assert events[-1]["event"]["type"] == "result"
    assert {e["turn_id"] for e in events} == {events[0]["turn_id"]}
    assert all(e["session_id"] == sid for e in events)

    tree = cli.run("tree", sid, "--json")
    assert tree.json()["id"] == sid and tree.json()["last_turn"]["status"] == "completed"
    assert sid in cli.run("tree", sid).stdout
    usage = cli.run("usage", sid, "--json").json()
    assert usage["session"]["requests"] >= 3
    assert "session" in cli.run("usage", sid).stdout
    assert cli.run("usage", "--json").json()["usage"]["requests"] >= 3

    stopped = cli.run("stop", sid, "--json")
    assert stopped.json()["status"] == "stopped"
    removed = cli.run("rm", sid, "--json")
    assert removed.json() == {"deleted": [sid]}
    gone = cli.run("get", sid)
    assert gone.code == 3
    one_error_line(gone.stderr, "session_not_found")


def test_run_exit_codes_and_json(cli_for, fake_api, docker_client) -> None:
    tag = marker()
    fake_api.on(f"ok-{tag}", text(f"fine {tag}"))
    fake_api.on(f"bad-{tag}", api_error(400, f"refused {tag}"))
    cli = cli_for("cli-bob")

    ok = cli.run("run", f"ok-{tag} go")
    assert ok.code == 0, ok.stderr
    assert f"fine {tag}" in ok.stdout and "✓ done" in ok.stdout

    bad = cli.run("run", f"bad-{tag} go", "--json")
    assert bad.code == 1, bad.stderr
    events = bad.json_lines()
    result = events[-1]
    assert result["event"]["type"] == "result" and result["event"]["is_error"] is True
    sid = result["session_id"]
    assert (
        docker_client.containers.list(all=True, filters={"label": f"cc-docker.session-id={sid}"})
        == []
    )
    assert cli.run("get", sid).code == 3  # the one-shot session is gone

    fake_api.on(f"slow-{tag}", slow_text([f"w{i} " for i in range(20)], delay=1.0))
    late = cli.run("run", f"slow-{tag} please", "--timeout", "4")
    assert late.code == 3, late.stderr
    one_error_line(late.stderr, "turn_timeout")


def test_run_saves_a_persistent_workspace_and_cp_reads_it(cli_for, fake_api, tmp_path) -> None:
    tag = marker()
    name = f"cli-{tag}"
    fake_api.on(tag, tool_use("Bash", {"command": f"mkdir -p out && echo {tag} > out/r.txt"}),
                text("written"))  # fmt: skip
    cli = cli_for("cli-carol")
    ran = cli.run("run", f"write it {tag}", "--workspace", name)
    assert ran.code == 0, ran.stderr

    listing = cli.run("files", f"ws:{name}", "--json").json()
    assert "out/r.txt" in [entry["path"] for entry in listing]
    printed = cli.run("cp", f"ws:{name}/out/r.txt", "-")
    assert printed.stdout == f"{tag}\n"
    local = tmp_path / "r.txt"
    copied = cli.run("cp", f"ws:{name}/out/r.txt", str(local), "--json")
    assert copied.json()["bytes"] == len(tag) + 1 and local.read_text() == f"{tag}\n"

    # Upload into the workspace, then the whole workspace as a tar.gz.
    (tmp_path / "in.txt").write_text("uploaded")
    assert cli.run("cp", str(tmp_path / "in.txt"), f"ws:{name}/docs/").code == 0
    assert cli.run("cp", f"ws:{name}/docs/in.txt", "-").stdout == "uploaded"
    archive = tmp_path / "all.tar.gz"
    assert cli.run("cp", f"ws:{name}", str(archive)).code == 0
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "out/r.txt" in names and "docs/in.txt" in names
    assert name in cli.run("workspaces").stdout


def test_cp_and_files_of_a_running_session(cli_for, tmp_path) -> None:
    cli = cli_for("cli-dave")
    sid = cli.run("create", "--wait").stdout.strip()
    source = tmp_path / "notes.txt"
    source.write_bytes(b"live bytes\n")
    assert cli.run("cp", str(source), f"{sid}:in/notes.txt").code == 0
    entries = cli.run("files", sid, "in", "--json").json()
    assert [(e["path"], e["size"]) for e in entries] == [("in/notes.txt", 11)]
    assert "in/notes.txt" in cli.run("files", sid).stdout
    back = cli.run("cp", f"{sid}:in/notes.txt", "-", input=None)
    assert back.stdout == "live bytes\n"
    missing = cli.run("cp", f"{sid}:nope.txt", str(tmp_path / "x"))
    assert missing.code == 3
    one_error_line(missing.stderr, "file_not_found")
    cli.run("rm", sid)


def test_errors_are_one_line_and_an_exit_code(cli_for, gateway) -> None:
    cli = cli_for("cli-erin")
    bad_token = cli.run("ls", CCD_TOKEN="not-a-token")
    assert bad_token.code == 3
    one_error_line(bad_token.stderr, "invalid_token")
    unknown = cli.run("get", str(uuid.uuid4()))
    assert unknown.code == 3
    one_error_line(unknown.stderr, "session_not_found")
    unreachable = cli.run("ls", CCD_URL="http://127.0.0.1:9")
    assert unreachable.code == 4
    one_error_line(unreachable.stderr, "cannot reach the gateway")
    no_token = cli.run("ls", CCD_TOKEN="")
    assert no_token.code == 2
    one_error_line(no_token.stderr, "CCD_TOKEN")
    bad_name = cli.run("create", "--workspace", "session-x")
    assert bad_name.code == 2
    one_error_line(bad_name.stderr, "reserved")
    flags = cli.run("--url", gateway.url, "--token", "nope", "ls", CCD_URL="", CCD_TOKEN="")
    assert flags.code == 3  # the flags, not the environment, reached the gateway
    one_error_line(flags.stderr, "invalid_token")


def test_colour_only_on_a_terminal_and_no_color_respected(cli_for) -> None:
    cli = cli_for("cli-frank")
    sid = cli.run("create", "--wait").stdout.strip()
    piped = cli.run("ls")
    assert "\x1b[" not in piped.stdout
    forced = cli.run("ls", FORCE_COLOR="1")  # as on a terminal
    assert colours(forced.stdout), forced.stdout
    no_color = cli.run("ls", FORCE_COLOR="1", NO_COLOR="1")
    assert sid in no_color.stdout and colours(no_color.stdout) == []
    cli.run("rm", sid)


class Lines:
    """A subprocess's output, line by line, readable with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, predicate: Any, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"not seen in time; output so far:\n{''.join(self.seen)}")


def test_attach_sends_lines_interrupts_on_ctrl_c_and_leaves_on_the_second(
    cli_for, fake_api
) -> None:
    tag = marker()
    fake_api.on(f"first-{tag}", text(f"hello from {tag}"))
    fake_api.on(f"slow-{tag}", slow_text([f"s{i} " for i in range(40)], delay=1.0))
    cli = cli_for("cli-gina")
    sid = cli.run("create", "--wait").stdout.strip()
    process = cli.popen("attach", sid)
    try:
        out, err = Lines(process.stdout), Lines(process.stderr)
        err.until(lambda line: "attached to" in line)
        assert process.stdin is not None
        process.stdin.write(f"first-{tag} hi\n")
        process.stdin.flush()
        out.until(lambda line: f"hello from {tag}" in line)
        out.until(lambda line: "✓ done" in line)

        process.stdin.write(f"slow-{tag} talk\n")
        process.stdin.flush()
        out.until(lambda line: "· claude" in line)  # the CLI works on the turn
        process.send_signal(signal.SIGINT)
        err.until(lambda line: "interrupting the turn" in line)
        out.until(lambda line: "✗" in line, timeout=30)  # the turn ended, interrupted
        assert process.poll() is None  # still attached
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    turns = cli.run("get", sid, "--json").json()
    assert turns["current_turn_id"] is None
    cli.run("rm", sid)


def test_attach_json_and_end_of_input(cli_for, fake_api) -> None:
    """Lines piped in are sent one after another; at the end of input attach leaves once the
    last turn has ended. --json prints one envelope per line."""
    tag = marker()
    fake_api.on(f"a-{tag}", text(f"answer a {tag}"))
    fake_api.on(f"b-{tag}", text(f"answer b {tag}"))
    cli = cli_for("cli-hank")
    sid = cli.run("create", "--wait").stdout.strip()
    done = cli.run("attach", sid, "--json", input=f"a-{tag} one\nb-{tag} two\n", timeout=120)
    assert done.code == 0, done.stderr
    results = [e["event"]["result"] for e in done.json_lines() if e["event"]["type"] == "result"]
    assert results == [f"answer a {tag}", f"answer b {tag}"]
    cli.run("rm", sid)


def test_cp_usage_errors(cli_for, tmp_path: Path) -> None:
    cli = cli_for("cli-ivy")
    both_local = cli.run("cp", str(tmp_path / "a"), str(tmp_path / "b"))
    assert both_local.code == 2
    one_error_line(both_local.stderr, "remote")
    missing = cli.run("cp", str(tmp_path / "absent"), "ws:w/x")
    assert missing.code == 2
    one_error_line(missing.stderr, "no such file")


class FinishingSession:
    """A session whose previous turn is still being recorded when the next prompt comes."""

    def __init__(self, busy_answers: int) -> None:
        self.busy_answers = busy_answers
        self.sent: list[str] = []
        self.waits = 0

    async def send(self, prompt: str) -> SimpleNamespace:
        if self.busy_answers:
            self.busy_answers -= 1
            raise Conflict(409, "session_busy", "A turn is running; one turn runs at a time.")
        self.sent.append(prompt)
        return SimpleNamespace(id="turn-2")

    async def wait(self, timeout: float) -> None:
        self.waits += 1


async def test_attach_sends_a_prompt_that_found_the_session_busy_once_it_is_free() -> None:
    """The CLI's result reaches attach a moment before the gateway makes the session ready: the
    next line must not be dropped as "not sent" then (seen in CI: the second of two piped
    prompts lost)."""
    session = FinishingSession(busy_answers=1)
    assert await _send(session, Output(json_mode=True), "b two") == "turn-2"  # type: ignore[arg-type]
    assert session.sent == ["b two"] and session.waits == 1
    stuck = FinishingSession(busy_answers=10)
    assert await _send(stuck, Output(json_mode=True), "c") is None  # type: ignore[arg-type]
    assert stuck.sent == [] and stuck.waits == 3
