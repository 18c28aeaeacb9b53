"""The gateway's Prometheus exposition on its own listen address."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server


def start_metrics_server(host: str, port: int, registry: CollectorRegistry) -> Any:
    """Serve ``/metrics`` from a daemon thread; returns the server (``.shutdown()`` stops it).

    A thread, not the event loop: scrapes never compete with request handling.
    """
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
