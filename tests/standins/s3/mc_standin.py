#!/usr/bin/python3
"""``mc`` of the CC-Docker MinIO stand-in (installed as /usr/bin/mc in the image).

The official MinIO image ships the ``mc`` client, and compose health checks run
``mc ready local``. This script supports exactly that command and refuses everything else:

    mc ready ALIAS [--cluster-read] [--maintenance]

ALIAS is ``local`` (http://localhost:9000, mc's built-in alias) or one defined by an
``MC_HOST_<ALIAS>=http[s]://[USER:PASSWORD@]HOST:PORT`` variable. As with the real ``mc``, an
unreachable server is an error at once (exit 1), and a server that answers "not ready" is asked
again every 5 seconds until it is ready.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

BUILTIN_ALIASES = {"local": "http://localhost:9000"}
RETRY_SECONDS = 5.0
USAGE = (
    "usage: mc ready ALIAS [--cluster-read] [--maintenance]\n"
    "This is the CC-Docker MinIO stand-in's mc: it supports only `mc ready ALIAS` (the health\n"
    "check of compose files). Use the real mc or any S3 client for everything else.\n"
)


def fail(message: str) -> int:
    print(f"mc: <ERROR> {message}", file=sys.stderr)
    return 1


def alias_url(alias: str) -> str | None:
    """Base URL (scheme://host:port) of ``alias``, without credentials."""
    defined = os.environ.get(f"MC_HOST_{alias}")
    if not defined:
        return BUILTIN_ALIASES.get(alias)
    parts = urllib.parse.urlsplit(defined)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def ready(args: list[str]) -> int:
    cluster_read = maintenance = False
    targets = []
    for arg in args:
        if arg in {"--cluster-read", "-cluster-read"}:
            cluster_read = True
        elif arg in {"--maintenance", "-maintenance"}:
            maintenance = True
        elif arg.startswith("-"):
            return fail(f"unknown flag {arg} for `mc ready`\n{USAGE}")
        else:
            targets.append(arg)
    if len(targets) != 1:
        print(USAGE, end="", file=sys.stderr)
        return 1
    alias = targets[0].split("/", 1)[0]
    base = alias_url(alias)
    if base is None:
        return fail(
            f"`{alias}` is not a known alias: the stand-in knows `local` and aliases "
            f"given as MC_HOST_{alias}=http://HOST:PORT"
        )
    url = base + ("/minio/health/cluster/read" if cluster_read else "/minio/health/cluster")
    if maintenance:
        url += "?maintenance=true"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
            print("The cluster is ready")
            return 0
        except urllib.error.HTTPError as exc:
            # Reachable but not ready: mc keeps asking.
            exc.close()
            print("The cluster is not ready")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return fail(f"Couldn't get the health status for `{targets[0]}`: {url}: {reason}")
        sys.stdout.flush()
        time.sleep(RETRY_SECONDS)


def main(argv: list[str]) -> int:
    args = argv[1:]
    if args[:1] == ["ready"]:
        return ready(args[1:])
    if args[:1] in (["--help"], ["-h"], ["help"], []):
        print(USAGE, end="")
        return 0 if args else 1
    return fail(f"`mc {' '.join(args)}` is not supported by the stand-in's mc\n{USAGE}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
