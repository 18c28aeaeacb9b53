"""API keys: when configured, every API route needs one (Bearer or x-api-key)."""

from __future__ import annotations

from starlette.requests import Request

from cortex.bearer import bearer_token, token_matches
from cortex.errors import AuthenticationFailed


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._keys = list(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, request: Request) -> None:
        if not self._keys:
            return
        # OpenAI's SDKs send a Bearer token, Anthropic's x-api-key (or a Bearer token).
        supplied = (request.headers.get("x-api-key"), bearer_token(request.headers))
        if not any([token_matches(key, self._keys) for key in supplied]):
            raise AuthenticationFailed(
                "Invalid or missing API key: send it as 'Authorization: Bearer <key>' or "
                "'x-api-key: <key>'.",
                code="invalid_api_key",
            )
