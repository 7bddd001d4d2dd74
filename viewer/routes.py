"""The viewer's routes: one HTML page at ``/`` and its static script and style sheet.

The page is a shell with no data in it; ``app.js`` fetches everything from ``/v1`` and
renders what agents wrote with ``textContent`` only, never as HTML. The page has no
inline script or style, so the app's Content-Security-Policy (``script-src 'self'``) holds.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

__all__ = ["STATIC", "viewer_routes"]

STATIC = Path(__file__).parent / "static"


@get("/", include_in_schema=False, sync_to_thread=False)
def index() -> Response[bytes]:
    """The viewer's page (every view is a fragment of it: ``#/tree/ID``, ``#/summary``)."""
    return Response((STATIC / "index.html").read_bytes(), media_type="text/html")


def viewer_routes() -> list[ControllerRouterHandler]:
    return [index, create_static_files_router(path="/static", directories=[STATIC],
                                              include_in_schema=False)]
