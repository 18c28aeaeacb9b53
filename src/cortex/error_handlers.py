"""Starlette exception handlers that answer in the OpenAI error envelope."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.errors import CortexError
from cortex.protocol.errors import error_headers, openai_error_body

Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]


def openai_error_handlers(log: logging.Logger) -> dict[Any, Handler]:
    async def known(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CortexError)
        return JSONResponse(
            openai_error_body(exc), status_code=exc.status, headers=error_headers(exc)
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        # A bug, not the client's fault: log it whole, answer without internals.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        error = CortexError("Internal error; see the server log.")
        return JSONResponse(openai_error_body(error), status_code=500)

    return {CortexError: known, Exception: unexpected}
