"""The one exception tree of cortex.

Every failure a client can see is a ``CortexError``. Each class below carries its
HTTP status and its ``kind``; ``protocol/errors.py`` turns a kind into each dialect's
error envelope (OpenAI's and Anthropic's ``type``, Anthropic's 529 when overloaded),
which ``error_handlers.py`` answers with (and a stream ends with, in band).

    CortexError                    500 internal
    ├── InvalidRequest             400 bad JSON, missing or wrong fields
    │   ├── ClientDisconnected     499 the client left before a non-streamed answer
    │   ├── ContextOverflow        400 prompt longer than the model's context
    │   ├── ModelTooLarge          422 fits on no node even after every allowed eviction
    │   └── PreflightRejected      422 the source cannot be served as the spec asks
    ├── AuthenticationFailed       401 missing or wrong API key / admin token
    ├── ModelNotFound              404 no model or alias by that name
    ├── RequestTooLarge            413 body over the size limit
    ├── Overloaded                 429 queue full (Retry-After)
    ├── RateLimited                429 a key's own limit or budget (Retry-After)
    ├── InsufficientMemory         507 the model does not fit what is left
    ├── UpstreamError              502 a neuron failed or answered garbage
    └── Unavailable                503 nothing can serve it now (Retry-After)
        └── ModelRecovering        503 model poisoned and reloading itself
    RelayedError                   any status a neuron answered, passed on as is
"""

from __future__ import annotations

from typing import Any, Literal

ErrorKind = Literal[
    "invalid_request",
    "authentication",
    "not_found",
    "too_large",
    "overloaded",
    "rate_limited",
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

    @property
    def reason(self) -> str:
        """What went wrong, in one word for logs (``reason=...``)."""
        return self.kind

    def details(self) -> dict[str, Any]:
        """Fields a subclass adds to the error object of its envelope."""
        return {}


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


PreflightKind = Literal[
    "not_found",  # no such repository, file or directory
    "access_denied",  # a gated or private repository this node has no token for
    "offline_not_cached",  # HF_HUB_OFFLINE is set and the cache does not hold the source
    "empty_source",  # neither GGUF nor safetensors weights
    "gguf_tensor_parallel",  # tensor_parallel > 1 asked of GGUF-only weights
    "quant_required",  # several GGUF files and no quant to choose one
    "quant_not_found",  # no GGUF file matches the quant
    "quant_ambiguous",  # several GGUF files match the quant
    "quant_without_gguf",  # a quant asked of safetensors-only weights
    "too_many_ranks",  # tensor_parallel larger than the devices that can take part
    "split_needs_gpus",  # a GGUF split over more GPUs than llama.cpp can use here
    "split_not_gguf",  # split asked of dense weights (tensor_parallel is theirs)
    "insufficient_memory",  # the weights alone are larger than the device can ever hold
]


class PreflightRejected(InvalidRequest):
    """The model's source cannot be served as its spec asks; found before any download
    or device allocation. ``reason`` names the failure class, ``suggestion`` the fix."""

    status = 422

    def __init__(
        self, reason: PreflightKind, *, model_id: str, detail: str, suggestion: str
    ) -> None:
        super().__init__(f"{detail} {suggestion}".strip(), param="source", code=reason)
        self.preflight_kind: PreflightKind = reason
        self.model_id = model_id
        self.detail = detail
        self.suggestion = suggestion

    @property
    def reason(self) -> str:
        return self.preflight_kind

    def details(self) -> dict[str, Any]:
        return {
            "kind": self.preflight_kind,
            "model_id": self.model_id,
            "detail": self.detail,
            "suggestion": self.suggestion,
        }


class ClientDisconnected(InvalidRequest):
    """The client left before its answer was ready; nobody reads the response."""

    status = 499  # nginx's "client closed request"


class AuthenticationFailed(CortexError):
    status = 401
    kind = "authentication"


class NotFound(CortexError):
    """Something named in the path is not here (a finished request, a stored response)."""

    status = 404
    kind = "not_found"


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


class RateLimited(CortexError):
    """A virtual key is over one of its limits (rpm, tpm, parallel) or its budget.
    ``reason`` says which, for logs and ``cortex_rate_limited_total``."""

    status = 429
    kind = "rate_limited"

    def __init__(self, message: str, *, reason: str, retry_after_s: float) -> None:
        code = "insufficient_quota" if reason == "budget" else "rate_limit_exceeded"
        super().__init__(message, code=code, retry_after_s=retry_after_s)
        self.limit = reason

    @property
    def reason(self) -> str:
        return self.limit


class InsufficientMemory(CortexError):
    """A node's memory refused the load: ``need_mb`` (its estimate) is more than the
    ``free_mb`` left on ``device``, where the node said so."""

    status = 507
    kind = "insufficient_memory"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = "insufficient_memory",
        need_mb: int | None = None,
        free_mb: int | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.need_mb, self.free_mb, self.device = need_mb, free_mb, device

    def details(self) -> dict[str, Any]:
        numbers = {"need_mb": self.need_mb, "free_mb": self.free_mb, "device": self.device}
        return {key: value for key, value in numbers.items() if value is not None}


class UpstreamError(CortexError):
    status = 502
    kind = "upstream"


class Unavailable(CortexError):
    status = 503
    kind = "unavailable"


class ModelRecovering(Unavailable):
    """``crashed``: its engine crashed with this request in it (``engine_crashed``); the
    gateway does not send the same request to another node, which it could crash too."""

    def __init__(self, model: str, *, retry_after_s: float = 2.0, crashed: bool = False) -> None:
        if crashed:
            message = (
                f"The model '{model}' crashed while running this request and is recovering; "
                "the same request may crash it again."
            )
        else:
            message = f"The model '{model}' hit a fault and is recovering; retry shortly."
        super().__init__(
            message,
            code="engine_crashed" if crashed else "model_recovering",
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
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, retry_after_s=retry_after_s)
        self.status = status
        self.kind = _KIND_BY_STATUS.get(status, "upstream" if status >= 500 else "invalid_request")
        self._details = details or {}

    def details(self) -> dict[str, Any]:
        return self._details
