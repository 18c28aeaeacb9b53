"""Requests that crashed an engine, remembered for a while and refused fleet-wide.

A request in flight when its engine crashed (a signal, not a clean fault) may be what
crashed it: sending it to the next node could crash that engine too, and the next.
So such a request is answered with its error, never retried elsewhere, and its
fingerprint (a hash of the route and the body as forwarded) is kept for ``ttl_s``:
the same request sent again meanwhile is refused at once, without reaching a node.
"""

from __future__ import annotations

import hashlib
import logging
import time

from cortex.errors import InvalidRequest

log = logging.getLogger("cortex.gateway.poison")

CRASHED_CODE = "engine_crashed"  # the neuron's error code for such a request


def fingerprint(path: str, body: bytes) -> str:
    return hashlib.sha256(path.encode() + b"\0" + body).hexdigest()


class PoisonGuard:
    def __init__(self, ttl_s: float = 300, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._until: dict[str, float] = {}

    def remember(self, key: str, model_id: str) -> None:
        if len(self._until) >= self._max:  # bounded: forget the oldest
            self._until.pop(next(iter(self._until)))
        self._until[key] = time.monotonic() + self._ttl_s
        log.warning(
            "request %s crashed an engine of model=%s: refused for %.0f s", key[:12], model_id,
            self._ttl_s,
        )  # fmt: skip

    def check(self, key: str, model_id: str) -> None:
        """Refuse a request that crashed an engine within ``ttl_s``."""
        until = self._until.get(key)
        if until is None:
            return
        if until < time.monotonic():
            del self._until[key]
            return
        log.warning("request %s refused: it crashed model=%s recently", key[:12], model_id)
        raise InvalidRequest(
            f"This request crashed the model '{model_id}' a moment ago; the same request is "
            "refused for a few minutes. Change it (a smaller schema, a shorter prompt) or "
            "report it.",
            code="poison_request",
        )
