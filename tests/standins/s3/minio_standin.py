#!/opt/minio-standin/bin/python
"""``minio`` of the CC-Docker MinIO stand-in (installed as /usr/bin/minio in the image).

``minio server DIR... [--address ADDR] [--console-address ADDR]`` serves, in one process:

- on the API address (``:9000`` by default): moto's S3 Flask app (server mode), behind a small
  WSGI wrapper that answers MinIO's health checks (``/minio/health/live``, ``.../ready``,
  ``.../cluster``, ``.../cluster/read``) with 200 and every other ``/minio/...`` path (MinIO's
  admin and internal APIs) with 501. ``minio`` is a reserved bucket name in MinIO too.
- on the console address: a read-only HTML page listing the buckets and their objects (keys,
  sizes, dates, download links), read straight from moto's in-memory backend.

What it is not (see README.md): credentials are accepted but never verified, objects live in
memory only (the data directories are accepted and not used), plain HTTP only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import importlib.metadata
import logging
import os
import signal
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

PROG = "minio"
HEALTH_PATHS = frozenset(
    {
        "/minio/health/live",
        "/minio/health/ready",
        "/minio/health/cluster",
        "/minio/health/cluster/read",
    }
)
# MinIO's server and global flags that take a value (so the value is not taken for a DIR).
VALUE_FLAGS = frozenset(
    {
        "address",
        "console-address",
        "config",
        "listeners",
        "shutdown-timeout",
        "idle-timeout",
        "read-header-timeout",
        "conn-user-timeout",
        "interface",
        "dns-cache-ttl",
        "max-idle-conns-per-host",
        "ftp",
        "sftp",
        "crossdomain-xml",
        "memlimit",
        "send-buf-size",
        "recv-buf-size",
        "log-dir",
        "log-size",
        "log-prefix",
        "certs-dir",
        "S",
        "config-dir",
        "C",
    }
)
BOOL_FLAGS = frozenset({"quiet", "anonymous", "json", "log-compress"})
OVERVIEW_LIMIT = 1000  # objects shown per bucket on the console's front page

T = TypeVar("T")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

HELP = """\
NAME:
  minio - CC-Docker stand-in for the MinIO server (moto's S3 in memory)

USAGE:
  minio server [--address ADDR] [--console-address ADDR] DIR1 [DIR2..]
  minio --version

Only `server` is supported. Objects are kept in memory (the DIRs are accepted, not used) and
credentials are not verified. See the image's README.md.
"""


class UsageError(Exception):
    pass


def note(message: str) -> None:
    print(f"{PROG}: note: {message}", file=sys.stderr, flush=True)


def fatal(message: str) -> NoReturn:
    print(f"{PROG}: ERROR {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def moto_version() -> str:
    try:
        return importlib.metadata.version("moto")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- command line -----------------------------------------------------------------------------


@dataclass
class ServerArgs:
    address: str
    console_address: str | None
    dirs: list[str]
    ignored: list[str]


def parse_server_args(args: list[str], env: dict[str, str]) -> ServerArgs:
    """``minio server`` flags and DIRs; flags may also come from MINIO_ADDRESS,
    MINIO_CONSOLE_ADDRESS and the DIRs from MINIO_VOLUMES, as with MinIO."""
    values: dict[str, str] = {}
    dirs: list[str] = []
    ignored: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            dirs.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            dirs.append(arg)
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in {"help", "h"}:
            print(HELP, end="")
            raise SystemExit(0)
        if name in VALUE_FLAGS and not has_value:
            if i >= len(args):
                raise UsageError(f"flag needs an argument: {arg}")
            value = args[i]
            i += 1
        if name in {"address", "console-address"}:
            values[name] = value
        elif name in VALUE_FLAGS or name in BOOL_FLAGS:
            ignored.append(arg if has_value or name in BOOL_FLAGS else f"{arg} {value}")
        else:
            # MinIO would refuse an unknown flag; the stand-in lets it pass (as a boolean
            # unless written --flag=value) so that a newer compose file still starts.
            ignored.append(f"{arg} (unknown flag)")
    if not dirs:
        for variable in ("MINIO_ARGS", "MINIO_VOLUMES", "MINIO_ENDPOINTS"):
            if env.get(variable, "").strip():
                dirs = env[variable].split()
                break
    if not dirs:
        raise UsageError("no data directory given (usage: minio server [FLAGS] DIR1 [DIR2..])")
    return ServerArgs(
        address=values.get("address") or env.get("MINIO_ADDRESS") or ":9000",
        console_address=values.get("console-address") or env.get("MINIO_CONSOLE_ADDRESS"),
        dirs=dirs,
        ignored=ignored,
    )


def parse_address(value: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[V6]:PORT``; an empty host means every IPv4 address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"invalid {flag}={value!r}: expected HOST:PORT or :PORT")
    host = host.strip("[]")
    return (host or "0.0.0.0"), int(port)


def _secret_from_file(name: str, env: dict[str, str]) -> str | None:
    """``NAME_FILE``: a path, or a Docker secret's name under /run/secrets, as in MinIO."""
    pointer = env.get(f"{name}_FILE")
    if not pointer:
        return None
    for path in (pointer, os.path.join("/run/secrets", pointer)):
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    return handle.read().strip()
            except OSError:
                return None
    return None


def root_credentials(env: dict[str, str]) -> tuple[str, str]:
    """MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (or their _FILE forms, or the deprecated
    MINIO_ACCESS_KEY / MINIO_SECRET_KEY), checked as MinIO checks them; never enforced."""
    user = (
        env.get("MINIO_ROOT_USER")
        or _secret_from_file("MINIO_ROOT_USER", env)
        or env.get("MINIO_ACCESS_KEY")
    )
    password = (
        env.get("MINIO_ROOT_PASSWORD")
        or _secret_from_file("MINIO_ROOT_PASSWORD", env)
        or env.get("MINIO_SECRET_KEY")
    )
    if user is None and password is None:
        return "minioadmin", "minioadmin"
    if user is None:
        fatal('Missing credential environment variable, "MINIO_ROOT_USER"')
    if password is None:
        fatal('Missing credential environment variable, "MINIO_ROOT_PASSWORD"')
    if len(user) < 3 or len(password) < 8:
        fatal(
            "Invalid credentials: MINIO_ROOT_USER length should be at least 3, and "
            "MINIO_ROOT_PASSWORD length at least 8 characters"
        )
    return user, password


# -- S3 API -----------------------------------------------------------------------------------


def _drain(environ: dict[str, Any]) -> None:
    """Read an unwanted request body so that a keep-alive connection stays in step."""
    try:
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    stream = environ["wsgi.input"]
    while remaining > 0:
        chunk = stream.read(min(remaining, 65536))
        if not chunk:
            break
        remaining -= len(chunk)


def make_api_app(s3_app: WSGIApp) -> WSGIApp:
    """moto's S3 app, with MinIO's reserved ``/minio/`` prefix answered here."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != "/minio" and not path.startswith("/minio/"):
            return s3_app(environ, start_response)
        _drain(environ)
        if path.rstrip("/") in HEALTH_PATHS and environ.get("REQUEST_METHOD") in {
            "GET",
            "HEAD",
        }:
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code>'
            "<Message>The CC-Docker MinIO stand-in implements the S3 API and the health checks"
            " only, not MinIO's admin or internal APIs</Message>"
            f"<Resource>{html.escape(path)}</Resource></Error>"
        ).encode()
        start_response(
            "501 Not Implemented",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


# -- console ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    last_modified: dt.datetime | None


def _stable(read: Callable[[], T]) -> T:
    """Copy out of moto's dicts while the API may be changing them."""
    for _ in range(10):
        try:
            return read()
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return read()


def bucket_names() -> list[str]:
    from moto.s3.models import s3_backends

    return sorted(_stable(lambda: list(s3_backends.bucket_accounts)))


def bucket_objects(name: str) -> list[Entry] | None:
    """The latest version of every object in bucket ``name``, in key order; None if the
    bucket does not exist."""
    from moto.s3.models import FakeKey, s3_backends

    location = s3_backends.bucket_accounts.get(name)
    if location is None:
        return None
    partition, account_id = location
    bucket = s3_backends[account_id][partition].buckets.get(name)
    if bucket is None:
        return None
    entries = []
    for key_name in sorted(_stable(lambda: list(bucket.keys.keys()))):
        key = bucket.keys.get(key_name)
        if isinstance(key, FakeKey):  # not a delete marker
            modified = key.last_modified if isinstance(key.last_modified, dt.datetime) else None
            entries.append(Entry(key_name, int(key.size), modified))
    return entries


def object_bytes(bucket_name: str, key_name: str) -> bytes | None:
    from moto.s3.models import FakeKey, s3_backends

    location = s3_backends.bucket_accounts.get(bucket_name)
    if location is None:
        return None
    partition, account_id = location
    bucket = s3_backends[account_id][partition].buckets.get(bucket_name)
    key = bucket.keys.get(key_name) if bucket is not None else None
    return key.value if isinstance(key, FakeKey) else None


def human_size(size: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, index = float(size), 0
    while value >= 1024 and index < len(units) - 1:
        value /= 1024
        index += 1
    return f"{size} B" if index == 0 else f"{value:.1f} {units[index]}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


PAGE_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.2em 1em 0.2em 0; border-bottom: 1px solid #ddd; }}
td.size {{ text-align: right; }}
.note {{ background: #fff6dd; padding: 0.6em 1em; border-left: 4px solid #e0b000; }}
code {{ background: #f2f2f2; padding: 0 0.2em; }}
</style></head><body>
<h1>CC-Docker MinIO stand-in</h1>
<p class="note">This is not MinIO: it is moto {moto} serving the S3 API on port {api_port},
for machines that cannot pull the <code>minio/minio</code> image. Objects are kept in memory
and are lost when the container stops; credentials are not checked. This page is read-only.
</p>
"""


def _object_table(bucket: str, entries: list[Entry]) -> str:
    if not entries:
        return "<p>(no objects)</p>\n"
    rows = []
    for entry in entries:
        link = "/download?" + urllib.parse.urlencode({"bucket": bucket, "key": entry.key})
        modified = entry.last_modified.strftime("%Y-%m-%d %H:%M:%S") if entry.last_modified else ""
        rows.append(
            f'<tr><td><a href="{_e(link)}">{_e(entry.key)}</a></td>'
            f'<td class="size" title="{entry.size} bytes">{_e(human_size(entry.size))}</td>'
            f"<td>{_e(modified)}</td></tr>"
        )
    return (
        "<table><tr><th>Key</th><th>Size</th><th>Last modified (UTC)</th></tr>\n"
        + "\n".join(rows)
        + "\n</table>\n"
    )


def _bucket_section(name: str, entries: list[Entry], limit: int | None) -> str:
    total = sum(entry.size for entry in entries)
    href = "/browser/" + urllib.parse.quote(name, safe="")
    parts = [
        f'<h2 id="{_e(name)}"><a href="{_e(href)}">{_e(name)}</a></h2>\n'
        f"<p>{len(entries)} object(s), {_e(human_size(total))}</p>\n"
    ]
    shown = entries if limit is None else entries[:limit]
    parts.append(_object_table(name, shown))
    if len(shown) < len(entries):
        parts.append(
            f'<p>First {len(shown)} shown: <a href="{_e(href)}">all objects of {_e(name)}</a></p>\n'
        )
    return "".join(parts)


def make_console_app(api_port: int) -> WSGIApp:
    from werkzeug.wrappers import Request, Response

    head = {"moto": _e(moto_version()), "api_port": api_port}

    def page(title: str, body: str, status: int = 200) -> Response:
        text = PAGE_HEAD.format(title=_e(title), **head) + body + "</body></html>\n"
        return Response(text, status=status, content_type="text/html; charset=utf-8")

    def overview() -> Response:
        names = bucket_names()
        parts = [f"<p>{len(names)} bucket(s).</p>\n"]
        for name in names:
            entries = bucket_objects(name)
            if entries is not None:
                parts.append(_bucket_section(name, entries, OVERVIEW_LIMIT))
        return page("CC-Docker MinIO stand-in", "".join(parts))

    def browse(name: str) -> Response:
        entries = bucket_objects(name)
        if entries is None:
            return page("No such bucket", f"<p>No bucket named {_e(name)}.</p>\n", 404)
        back = '<p><a href="/">All buckets</a></p>\n'
        body = back + _bucket_section(name, entries, None)
        return page(f"{name} - CC-Docker MinIO stand-in", body)

    def download(request: Request) -> Response:
        bucket = request.args.get("bucket", "")
        key = request.args.get("key", "")
        data = object_bytes(bucket, key)
        if data is None:
            return page("No such object", f"<p>No object {_e(key)} in {_e(bucket)}.</p>\n", 404)
        filename = urllib.parse.quote(key.rsplit("/", 1)[-1] or "object", safe="")
        return Response(
            data,
            content_type="application/octet-stream",
            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{filename}"},
        )

    @Request.application
    def app(request: Request) -> Response:
        if request.method not in {"GET", "HEAD"}:
            return Response("read-only\n", status=405, headers={"Allow": "GET, HEAD"})
        path = request.path
        if path in {"/", "/browser", "/browser/"}:
            return overview()
        if path.startswith("/browser/"):
            return browse(path[len("/browser/") :].strip("/"))
        if path == "/download":
            return download(request)
        return page("Not found", '<p>Not found. <a href="/">All buckets</a></p>\n', 404)

    return app


# -- server -----------------------------------------------------------------------------------


def _urls(host: str, port: int) -> str:
    if host not in {"0.0.0.0", "::"}:
        return f"http://{host}:{port}"
    urls = []
    with contextlib.suppress(OSError):
        urls.append(f"http://{socket.gethostbyname(socket.gethostname())}:{port}")
    urls.append(f"http://127.0.0.1:{port}")
    return "  ".join(urls)


def serve(args: list[str]) -> None:
    env = dict(os.environ)
    try:
        options = parse_server_args(args, env)
        api_host, api_port = parse_address(options.address, "--address")
        console = options.console_address
        console_host, console_port = (
            parse_address(console, "--console-address") if console else (api_host, 0)
        )
    except UsageError as exc:
        fatal(f"Invalid command line arguments: {exc}")
    if console_port and console_port == api_port:
        fatal("Invalid command line arguments: --console-address port cannot be same as --address")
    user, password = root_credentials(env)

    # Request lines in the log only on demand: MinIO does not log requests either, and a
    # health check every few seconds would drown everything else.
    if env.get("MINIO_STANDIN_ACCESS_LOG", "").lower() not in {"1", "on", "true", "yes"}:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    # Only S3: build moto's S3 app directly instead of its DomainDispatcherApplication, which
    # guesses the AWS service per request and keeps paths such as /moto-api for itself.
    s3_app = create_backend_app("s3")
    try:
        api = make_server(
            api_host,
            api_port,
            make_api_app(s3_app),
            threaded=True,
            request_handler=MotoRequestHandler,  # keeps headers with underscores (metadata)
        )
        ui = make_server(console_host, console_port, make_console_app(api.port), threaded=True)
    except OSError as exc:
        fatal(f"Unable to start the server: {exc}")

    print(
        f"MinIO Object Storage Server: CC-Docker stand-in (moto {moto_version()}, in memory)\n"
        f"API: {_urls(api_host, api.port)}\n"
        f"   RootUser: {user}\n"
        f"WebUI: {_urls(console_host, ui.port)}\n",
        flush=True,
    )
    if not console:
        print(
            f"WARNING: Console endpoint is listening on a dynamic port ({ui.port}), please use "
            '--console-address ":PORT" to choose a static port.',
            file=sys.stderr,
            flush=True,
        )
    if (user, password) == ("minioadmin", "minioadmin"):
        print(
            "WARNING: Detected default credentials 'minioadmin:minioadmin', we recommend that "
            "you change these values with 'MINIO_ROOT_USER' and 'MINIO_ROOT_PASSWORD' "
            "environment variables",
            file=sys.stderr,
            flush=True,
        )
    note("credentials are accepted but not verified: any access key and signature will do")
    note(
        f"data directory {' '.join(options.dirs)} accepted but not used: objects are kept in "
        "memory and lost when the server stops"
    )
    for flag in options.ignored:
        note(f"flag {flag} ignored by the stand-in")

    threading.Thread(target=ui.serve_forever, name="console", daemon=True).start()
    api.serve_forever()


def _stop(signum: int, frame: object) -> None:
    # PID 1 gets no default action for SIGTERM: without this `docker stop` would wait 10 s.
    raise SystemExit(0)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    args = argv[1:]
    if args[:1] == ["minio"]:  # `minio minio server ...` from a doubled entrypoint
        args = args[1:]
    if not args or args[0] in {"help", "--help", "-h"}:
        print(HELP, end="")
        return
    if args[0] in {"--version", "-v", "version"}:
        print(f"minio version RELEASE.stand-in (CC-Docker MinIO stand-in, moto {moto_version()})")
        return
    # Global flags before the command (`minio --quiet server ...`) are ignored.
    while args and args[0].startswith("-"):
        name, has_value, _ = args[0].lstrip("-").partition("=")
        taken = 2 if name in VALUE_FLAGS and not has_value else 1
        note(f"flag {' '.join(args[:taken])} ignored by the stand-in")
        args = args[taken:]
    if not args or args[0] != "server":
        command = args[0] if args else ""
        fatal(
            f"'{command}' is not a command of the CC-Docker MinIO stand-in: only "
            "`minio server DIR...` is supported"
        )
    serve(args[1:])


if __name__ == "__main__":
    main(sys.argv)
