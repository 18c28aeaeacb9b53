"""Error envelopes of each dialect, built from the one exception tree."""

from __future__ import annotations

import json

from cortex.errors import CortexError, RelayedError

_OPENAI_TYPE = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "not_found": "not_found_error",
    "too_large": "invalid_request_error",
    "overloaded": "rate_limit_error",
    "rate_limited": "rate_limit_error",
    "insufficient_memory": "insufficient_memory_error",
    "upstream": "api_error",
    "unavailable": "service_unavailable_error",
    "internal": "api_error",
}

_ANTHROPIC_TYPE = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "not_found": "not_found_error",
    "too_large": "request_too_large",
    # Anthropic keeps 429 for a key's rate limit; a full server is 529 overloaded_error.
    "overloaded": "overloaded_error",
    "rate_limited": "rate_limit_error",  # a key's own limit: 429, as Anthropic answers it
    "insufficient_memory": "api_error",
    "upstream": "api_error",
    "unavailable": "overloaded_error",
    "internal": "api_error",
}


_STRUCTURED_FIELDS = ("kind", "model_id", "detail", "suggestion")


def openai_error_body(error: CortexError) -> dict:
    """OpenAI's envelope; an error's own fields (a preflight rejection's ``kind``,
    ``model_id``, ``detail``, ``suggestion``) sit beside OpenAI's in the one object."""
    return {
        "error": {
            **error.details(),
            "message": error.message,
            "type": _OPENAI_TYPE[error.kind],
            "param": error.param,
            "code": error.code,
        }
    }


def anthropic_error_body(error: CortexError) -> dict:
    return {
        "type": "error",
        "error": {
            **error.details(),
            "type": _ANTHROPIC_TYPE[error.kind],
            "message": error.message,
        },
    }


def anthropic_status(error: CortexError) -> int:
    """The HTTP status Anthropic's API gives this error (529 when overloaded)."""
    return 529 if error.kind == "overloaded" else error.status


def error_headers(error: CortexError) -> dict[str, str]:
    if error.retry_after_s is None:
        return {}
    return {"Retry-After": str(max(1, round(error.retry_after_s)))}


def error_from_openai_body(status: int, body: bytes, retry_after: str | None = None) -> CortexError:
    """Rebuild a typed error from a neuron's OpenAI-envelope answer, keeping its status."""
    try:
        detail = json.loads(body).get("error", {})
        message = str(detail.get("message") or "")
        param, code = detail.get("param"), detail.get("code")
        # a preflight rejection's structured fields reach the client too
        extra = {k: v for k, v in detail.items() if k in _STRUCTURED_FIELDS}
    except (ValueError, AttributeError):
        message, param, code, extra = "", None, None, {}
    return RelayedError(
        message or body[:500].decode(errors="replace") or f"upstream answered {status}",
        status=status,
        param=param,
        code=code,
        retry_after_s=float(retry_after) if retry_after and retry_after.isdigit() else None,
        details=extra,
    )
