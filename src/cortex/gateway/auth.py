"""API keys: when configured, every API route needs one (Bearer or x-api-key)."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from cortex.errors import AuthenticationFailed


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, request: Request) -> None:
        if not self._keys:
            return
        supplied = (
            request.headers.get("x-api-key")
            or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        )
        # compare against every key in constant time, so timing says nothing about keys
        if not any(hmac.compare_digest(supplied.encode(), key) for key in self._keys):
            raise AuthenticationFailed(
                "Invalid or missing API key: send it as 'Authorization: Bearer <key>' or "
                "'x-api-key: <key>'.",
                code="invalid_api_key",
            )
