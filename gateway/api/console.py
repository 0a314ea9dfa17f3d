"""The web console at ``/console``: static files shipped in the package (``gateway/console``),
plain HTML, CSS and JavaScript modules with no build step and nothing fetched from elsewhere.

The page talks only to the public API (``/api/v1`` and the session WebSocket, authenticated by
the token the user pasted, kept in the tab's ``sessionStorage``). Its responses carry a strict
Content-Security-Policy: scripts, styles and connections from this origin only, so even text a
session writes could not load or run anything else.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
CONSOLE_PATH = "/console"

SECURITY_HEADERS = {
    # 'self' covers the same origin's ws:// and wss:// too (CSP level 3).
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Always revalidated: a gateway upgrade must never leave an old script running.
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def install_console(app: FastAPI) -> None:
    """Serve the console under ``/console/`` (``/console`` redirects there, so relative asset
    paths resolve)."""

    @app.get(CONSOLE_PATH, include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse(f"{CONSOLE_PATH}/", status_code=308)

    app.mount(CONSOLE_PATH, ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console")
