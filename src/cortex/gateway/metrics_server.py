"""The gateway's Prometheus exposition on its own listen address."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, start_http_server
from prometheus_client.exposition import ThreadingWSGIServer

from cortex.bearer import bearer_token, token_matches


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry, token: str | None = None
) -> Any:
    """Serve ``/metrics`` from a daemon thread; returns the server (``.shutdown()`` stops it).
    ``token``: scrapes must send it as a Bearer token (``protect_ui``; Prometheus's
    ``authorization`` setting sends one).

    A thread, not the event loop: scrapes never compete with request handling.
    """
    if token is None:
        server, _thread = start_http_server(port, addr=host, registry=registry)
        return server
    exposition = make_wsgi_app(registry)

    def guarded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        supplied = bearer_token({"authorization": environ.get("HTTP_AUTHORIZATION", "")})
        if not token_matches(supplied, [token]):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", "Bearer")])  # fmt: skip
            return [b"metrics need the admin token: Authorization: Bearer <admin_token>\n"]
        return exposition(environ, start_response)

    server = make_server(host, port, guarded, ThreadingWSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log line per scrape."""
