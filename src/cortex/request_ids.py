"""Request ids: the client's ``x-request-id`` or one made here, returned in the response,
carried from the gateway to the neuron, and named in both processes' request log lines."""

from __future__ import annotations

import itertools
import secrets
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_MAX_LENGTH = 128  # a client's id is kept, cut to this

# A random per-process prefix and a counter, 32 hex digits like a UUID's: unique across
# processes all the same, and no urandom syscall per request (measured: uuid4 was ~9% of
# the gateway's own time per request).
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)

current_request_id: ContextVar[str | None] = ContextVar("cortex_request_id", default=None)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def header_of(scope: Scope, name: bytes) -> str | None:
    """A request header from the ASGI scope (names are lower case there)."""
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def request_id_of(scope: Scope) -> str:
    """The client's id for this request, or a new one."""
    return (header_of(scope, REQUEST_ID_HEADER.encode()) or new_request_id())[:_MAX_LENGTH]


class RequestIds:
    """ASGI middleware for the neuron: every ``POST`` gets an id (``current_request_id``),
    echoed in the response. The gateway's ``RequestRecorder`` does this for itself."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self._app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        token = current_request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
