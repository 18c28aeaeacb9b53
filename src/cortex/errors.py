"""The one exception tree of cortex.

Every failure a client can see is a ``CortexError``; the table of status
codes and dialect error types lives here and nowhere else.

    CortexError                    500 internal
    ├── InvalidRequest             400 bad JSON, missing or wrong fields
    │   ├── ContextOverflow        400 prompt longer than the model's context
    │   └── ModelTooLarge          422 fits on no node even after every allowed eviction
    ├── AuthenticationFailed       401 missing or wrong API key / admin token
    ├── ModelNotFound              404 no model or alias by that name
    ├── RequestTooLarge            413 body over the size limit
    ├── Overloaded                 429 queue full (Retry-After)
    ├── InsufficientMemory         507 the model does not fit what is left
    ├── UpstreamError              502 a neuron failed or answered garbage
    └── Unavailable                503 nothing can serve it now (Retry-After)
        └── ModelRecovering        503 model poisoned and reloading itself
    RelayedError                   any status a neuron answered, passed on as is
"""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal[
    "invalid_request",
    "authentication",
    "not_found",
    "too_large",
    "overloaded",
    "insufficient_memory",
    "upstream",
    "unavailable",
    "internal",
]


class CortexError(Exception):
    """Base of every error a client may see. ``message`` is safe to show."""

    status: int = 500
    kind: ErrorKind = "internal"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s


class InvalidRequest(CortexError):
    status = 400
    kind = "invalid_request"


class ContextOverflow(InvalidRequest):
    """The prompt does not fit the model's context window."""

    def __init__(
        self, *, prompt_tokens: int, context_length: int, model: str, param: str = "messages"
    ) -> None:
        super().__init__(
            f"This model's maximum context length is {context_length} tokens, but the prompt "
            f"is {prompt_tokens} tokens long (model '{model}'). Shorten the prompt or the "
            "conversation history.",
            param=param,
            code="context_length_exceeded",
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class ModelTooLarge(InvalidRequest):
    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="model_too_large")


class AuthenticationFailed(CortexError):
    status = 401
    kind = "authentication"


class ModelNotFound(CortexError):
    status = 404
    kind = "not_found"

    def __init__(self, model: str, *, known: list[str] | None = None) -> None:
        hint = f" Available models: {', '.join(sorted(known))}." if known else ""
        super().__init__(
            f"The model '{model}' does not exist.{hint}", param="model", code="model_not_found"
        )
        self.model = model


class RequestTooLarge(CortexError):
    status = 413
    kind = "too_large"


class Overloaded(CortexError):
    status = 429
    kind = "overloaded"


class InsufficientMemory(CortexError):
    status = 507
    kind = "insufficient_memory"


class UpstreamError(CortexError):
    status = 502
    kind = "upstream"


class Unavailable(CortexError):
    status = 503
    kind = "unavailable"


class ModelRecovering(Unavailable):
    def __init__(self, model: str, *, retry_after_s: float = 2.0) -> None:
        super().__init__(
            f"The model '{model}' hit a fault and is recovering; retry shortly.",
            code="model_recovering",
            retry_after_s=retry_after_s,
        )


_KIND_BY_STATUS: dict[int, ErrorKind] = {
    400: "invalid_request",
    401: "authentication",
    404: "not_found",
    413: "too_large",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
    507: "insufficient_memory",
}


class RelayedError(CortexError):
    """An error a neuron answered, passed on to the client with its status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, retry_after_s=retry_after_s)
        self.status = status
        self.kind = _KIND_BY_STATUS.get(status, "upstream" if status >= 500 else "invalid_request")
