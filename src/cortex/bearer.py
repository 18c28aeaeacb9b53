"""Bearer tokens, checked the same way by the gateway (API keys) and the neuron (its
admin token): ``Authorization: Bearer <token>``, the scheme in any case (RFC 7235),
compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header; ``None`` without one."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def token_matches(supplied: str | None, secrets: Iterable[str]) -> bool:
    """Whether ``supplied`` is one of ``secrets``. Compared with every one of them in
    constant time, so how long it takes says nothing about any secret."""
    if not supplied:
        return False
    given = supplied.encode()
    return any([hmac.compare_digest(given, secret.encode()) for secret in secrets])
