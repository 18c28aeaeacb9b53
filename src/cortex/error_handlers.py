"""Starlette exception handlers that answer in the client's dialect's error envelope."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.errors import CortexError, RequestTooLarge
from cortex.protocol.errors import (
    anthropic_error_body,
    anthropic_status,
    error_headers,
    openai_error_body,
)
from cortex.protocol.ollama import ollama_error_body

Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]

ANTHROPIC_PATH = "/v1/messages"  # and /v1/messages/count_tokens
OLLAMA_PATH = "/api/"  # Ollama's API: /api/chat, /api/tags, ...


def error_body(request: Request, error: CortexError) -> dict:
    """The envelope of the dialect the route speaks."""
    if request.url.path.startswith(ANTHROPIC_PATH):
        return anthropic_error_body(error)
    if request.url.path.startswith(OLLAMA_PATH):
        return ollama_error_body(error)
    return openai_error_body(error)


def error_status(request: Request, error: CortexError) -> int:
    if request.url.path.startswith(ANTHROPIC_PATH):
        return anthropic_status(error)
    return error.status


def error_handlers(log: logging.Logger) -> dict[Any, Handler]:
    async def known(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CortexError)
        headers = error_headers(exc)
        if isinstance(exc, RequestTooLarge):
            headers["Connection"] = "close"  # the rest of the body is never read: drop it
        return JSONResponse(
            error_body(request, exc), status_code=error_status(request, exc), headers=headers
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        # A bug, not the client's fault: log it whole, answer without internals.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        error = CortexError("Internal error; see the server log.")
        return JSONResponse(error_body(request, error), status_code=500)

    return {CortexError: known, Exception: unexpected}
