"""The neuron's token: when it has one, every route but ``/health`` needs it.

Inference routes included: a neuron listening beyond loopback must not let a client
past the gateway's API keys. ``/health`` stays open for supervisors and probes.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from cortex.bearer import bearer_token, token_matches
from cortex.errors import AuthenticationFailed
from cortex.protocol.errors import openai_error_body

OPEN_PATHS = frozenset({"/health"})


class RequireToken:
    """ASGI middleware: a 401 in OpenAI's envelope unless the Bearer token matches."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self._app = app
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._token is None
            or scope["type"] != "http"
            or scope["path"] in OPEN_PATHS
            or token_matches(bearer_token(Headers(scope=scope)), [self._token])
        ):
            await self._app(scope, receive, send)
            return
        error = AuthenticationFailed("This neuron needs its token as a Bearer token.")
        body = json.dumps(openai_error_body(error)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
