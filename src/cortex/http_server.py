"""Serving an ASGI app with uvicorn, plus two things uvicorn does not do for us.

- **A header timeout.** uvicorn times out idle keep-alive connections, but a client
  that sends a request's headers a byte at a time (or opens a connection and sends
  nothing) holds it forever: a few hundred such clients exhaust the process's sockets.
  Here the headers of every request must arrive within ``header_timeout_s``; else the
  connection gets a 408 and is closed (nginx's ``client_header_timeout``).
- **A shutdown the app hears about first.** uvicorn stops accepting, waits for open
  requests up to its graceful timeout, cancels what is left, and only then runs the
  lifespan's shutdown: too late for a stream to be ended with an error event. The
  ``on_shutdown`` callback runs when the shutdown begins, so the app can drain.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# What a too-slow client gets before its connection is closed.
_TIMEOUT_TEXT = b"The request's headers took too long to arrive.\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_TEXT), _TIMEOUT_TEXT)
)


def header_timeout_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on each request's headers."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()  # the next request on a kept-alive connection

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            # Only where no answer is being written on this connection (pipelining).
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    return HeaderTimeoutProtocol


class Server(uvicorn.Server):
    """uvicorn's server, calling ``on_shutdown`` as soon as a shutdown begins."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: Any = None) -> None:
        if self._on_shutdown is not None:
            self._on_shutdown()
        await super().shutdown(sockets)


def serve(
    app: Any,
    host: str,
    port: int,
    *,
    header_timeout_s: float,
    graceful_s: float,
    on_shutdown: Callable[[], None] | None = None,
    also: Sequence[tuple[str, int]] = (),
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; open requests get ``graceful_s`` to finish.

    ``also``: more addresses that serve the same app, in the same process (one
    lifespan, one fleet state), such as Ollama's port. ``tls``: (certificate, key)
    PEM files: every address speaks HTTPS."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=header_timeout_protocol(header_timeout_s),
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # nothing here reads X-Forwarded-*; skip parsing them
        timeout_graceful_shutdown=graceful_s,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    if not also:
        Server(config, on_shutdown).run()
        return
    sockets = [_bound(host, port), *(_bound(h, p) for h, p in also)]
    try:
        Server(config, on_shutdown).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()


def _bound(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port``, as uvicorn binds its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock
