"""The ``/ui`` dashboard: one static page whose script polls ``/fleet`` and ``/fleet/stats``.

The page and its assets hold no data, so they are served without an API key; the
script sends the key the user pastes (kept in the browser's localStorage) with its
own requests. Only the files in the package's ``ui/`` folder are served, found by
exact name among those listed there, so no path can lead out of it.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
HEADERS = {
    "Cache-Control": "no-cache",  # revalidate, so an upgraded gateway serves its new page
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # everything the page needs comes from this gateway: no CDN, no inline script
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
}


async def page(request: Request) -> Response:
    return _serve("index.html")


async def asset(request: Request) -> Response:
    return _serve(request.path_params["asset"])


def _serve(name: str) -> Response:
    found = _files().get(name)
    if found is None:
        return PlainTextResponse("Not found", status_code=404, headers=HEADERS)
    suffix = name[name.rfind(".") :]
    return Response(found.read_bytes(), media_type=MEDIA_TYPES[suffix], headers=HEADERS)


def _files() -> dict[str, Traversable]:
    """The servable files of ``cortex/gateway/ui/``, by name."""
    folder = files("cortex.gateway").joinpath("ui")
    return {
        entry.name: entry
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(suffix) for suffix in MEDIA_TYPES)
    }
